//! The static site: `www/`, embedded in the binary or read from a folder.
//!
//! A request path reaches a file in two steps. [`page_for`] maps the
//! original site's routes (`/`, `/room/`, `/room/<name>`, `/room/echo`) to
//! their HTML files; any other path goes through [`safe_relative_path`],
//! which accepts only plain segments of `[A-Za-z0-9._-]` with no leading dot.
//! Traversal tricks (`..`, `%2e%2e`, `%2f`, backslashes, NUL, absolute-form
//! targets) therefore never reach the file system: they are refused before
//! any lookup, not cleaned up and retried. With `--www DIR`, the joined path
//! is also canonicalised and must still lie inside the root, so a symlink
//! pointing outside gives 404.
//!
//! Every file gets an ETag (a hash of its bytes; for `--www`, of its size and
//! modification time) and `Cache-Control: no-cache`, so browsers revalidate
//! and get a cheap 304 when nothing changed.

use std::path::{Path, PathBuf};

use crate::outbuf::Chunk;
use crate::response::Response;
use crate::route::valid_room_name;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/www_files.rs"));
}

/// A file ready to be sent.
#[derive(Debug, Clone)]
pub struct File {
    /// The body: embedded bytes, or bytes read from disk.
    pub body: Chunk,
    /// `Content-Type`, with a charset for text.
    pub content_type: &'static str,
    /// Strong validator, quoted.
    pub etag: String,
}

/// Why a path has no file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// A path no file can have (traversal, bad bytes): 400.
    BadPath,
    /// A well-formed path with no file: 404.
    NotFound,
}

/// Where files come from.
#[derive(Debug)]
pub enum Site {
    /// The copy of `www/` compiled into the binary, with precomputed ETags.
    Embedded(Vec<(&'static str, File)>),
    /// A folder on disk, read on every request (for editing pages live).
    Dir(PathBuf),
}

impl Site {
    /// The embedded site.
    pub fn embedded() -> Site {
        let files = embedded::FILES
            .iter()
            .map(|(path, bytes)| {
                let file = File {
                    body: Chunk::Static(bytes),
                    content_type: content_type(path),
                    etag: format!("\"{:016x}\"", fnv1a(bytes)),
                };
                (*path, file)
            })
            .collect();
        Site::Embedded(files)
    }

    /// A site served from `dir`, which must exist.
    pub fn dir(dir: &Path) -> std::io::Result<Site> {
        let root = dir.canonicalize().map_err(|e| {
            std::io::Error::new(e.kind(), format!("--www {}: {e} (give a folder that exists)", dir.display()))
        })?;
        if !root.is_dir() {
            return Err(std::io::Error::other(format!("--www {}: not a folder", dir.display())));
        }
        Ok(Site::Dir(root))
    }

    /// Looks up `rel`, a path already checked by [`safe_relative_path`].
    pub fn file(&self, rel: &str) -> Result<File, Missing> {
        match self {
            Site::Embedded(files) => {
                files.iter().find(|(p, _)| *p == rel).map(|(_, f)| f.clone()).ok_or(Missing::NotFound)
            }
            Site::Dir(root) => {
                let path = root.join(rel);
                // Canonicalise to resolve symlinks, then insist on the root:
                // a link to /etc/passwd inside www/ must not be served.
                let real = path.canonicalize().map_err(|_| Missing::NotFound)?;
                if !real.starts_with(root) || !real.is_file() {
                    return Err(Missing::NotFound);
                }
                let meta = std::fs::metadata(&real).map_err(|_| Missing::NotFound)?;
                let modified = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                let bytes = std::fs::read(&real).map_err(|_| Missing::NotFound)?;
                Ok(File {
                    body: Chunk::Owned(bytes),
                    content_type: content_type(rel),
                    etag: format!("\"{:x}-{:x}\"", meta.len(), modified),
                })
            }
        }
    }
}

/// The HTML file behind one of the site's page routes, if `path` is one.
pub fn page_for(path: &str) -> Option<&'static str> {
    match path {
        "/" | "/index.html" => Some("index.html"),
        "/room" | "/room/" => Some("rooms.html"),
        "/room/echo" | "/room/echo/" => Some("echo.html"),
        "/learn" | "/learn/" => Some("learn.html"),
        "/stats" | "/stats/" => Some("stats.html"),
        _ => {
            let name = path.strip_prefix("/room/")?;
            let name = name.strip_suffix('/').unwrap_or(name);
            valid_room_name(name).then_some("room.html")
        }
    }
}

/// Turns a request path into a path relative to the site root, or refuses it.
///
/// Only plain names pass: each segment made of `[A-Za-z0-9._-]`, not starting
/// with a dot (so no `..`, no hidden files). A `%` anywhere is refused rather
/// than decoded, because none of our files needs one and decoding is where
/// `%2e%2e%2f` tricks live.
pub fn safe_relative_path(path: &str) -> Result<&str, Missing> {
    let Some(rel) = path.strip_prefix('/') else {
        // Absolute-form (`http://host/x`) or asterisk-form targets.
        return Err(Missing::BadPath);
    };
    if rel.is_empty() || rel.ends_with('/') {
        return Err(Missing::NotFound);
    }
    for segment in rel.split('/') {
        let plain = segment.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
        if segment.is_empty() || segment.starts_with('.') || !plain {
            return Err(Missing::BadPath);
        }
    }
    Ok(rel)
}

/// The response for `file`, or 304 when the client's copy is current.
pub(crate) fn file_response(file: File, if_none_match: Option<&str>) -> Response {
    let matches = if_none_match.is_some_and(|v| {
        v.split(',').map(str::trim).any(|tag| tag == "*" || tag.trim_start_matches("W/") == file.etag)
    });
    let mut r = Response::new(if matches { 304 } else { 200 })
        .header("ETag", &file.etag)
        .header("Cache-Control", "no-cache")
        .header("Content-Type", file.content_type);
    if file.content_type.starts_with("text/html") {
        r = r.page_headers();
    } else {
        r = r.header("X-Content-Type-Options", "nosniff");
    }
    if !matches {
        r.set_body(file.body);
    }
    r
}

/// Content-Type by extension; text types carry their charset.
pub fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("txt" | "md") => "text/plain; charset=utf-8",
        Some("woff2") => "font/woff2",
        _ => "application/octet-stream",
    }
}

/// FNV-1a, 64-bit: a tiny, dependency-free hash, good enough for ETags of
/// files that are fixed at build time.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_routes() {
        assert_eq!(page_for("/"), Some("index.html"));
        assert_eq!(page_for("/room/"), Some("rooms.html"));
        assert_eq!(page_for("/room/echo"), Some("echo.html"));
        assert_eq!(page_for("/room/welcome"), Some("room.html"));
        assert_eq!(page_for("/room/welcome/"), Some("room.html"));
        assert_eq!(page_for("/room/a%20b"), None);
        assert_eq!(page_for("/room/a/b"), None);
        assert_eq!(page_for("/css/style.css"), None);
    }

    #[test]
    fn traversal_is_refused() {
        for bad in [
            "/../etc/passwd",
            "/css/../../etc/passwd",
            "/%2e%2e/etc/passwd",
            "/..%2fetc%2fpasswd",
            "/css%2fstyle.css",
            "/css\\..\\x",
            "/a\0b",
            "http://example.com/index.html",
            "*",
            "//etc/passwd",
            "/.git/config",
        ] {
            assert_eq!(safe_relative_path(bad), Err(Missing::BadPath), "{bad:?}");
        }
        assert_eq!(safe_relative_path("/css/style.css"), Ok("css/style.css"));
        assert_eq!(safe_relative_path("/css/"), Err(Missing::NotFound));
    }

    /// The status line's code, as the response goes out on the wire.
    fn status_sent(response: crate::response::Response) -> String {
        let mut out = crate::outbuf::OutQueue::new();
        response.write_into(&mut out, "Thu, 01 Jan 1970 00:00:00 GMT");
        String::from_utf8_lossy(out.to_vec().get(9..12).unwrap_or_default()).into_owned()
    }

    #[test]
    fn etags_revalidate() {
        let file = File { body: Chunk::Static(b"x"), content_type: "text/css; charset=utf-8", etag: "\"abc\"".into() };
        assert_eq!(status_sent(file_response(file.clone(), Some("\"abc\""))), "304");
        assert_eq!(status_sent(file_response(file.clone(), Some("W/\"abc\", \"zzz\""))), "304");
        assert_eq!(status_sent(file_response(file.clone(), Some("\"zzz\""))), "200");
        assert_eq!(status_sent(file_response(file, None)), "200");
    }
}
