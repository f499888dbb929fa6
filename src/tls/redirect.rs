//! The plain-HTTP listener beside TLS (`--redirect-bind`): every request is
//! sent on to `https://`, except the files of ACME's http-01 challenge
//! (`--acme-dir`, certbot's webroot: the files are in its
//! `.well-known/acme-challenge/`), which a certificate authority fetches over
//! plain HTTP on port 80 before it issues a certificate.
//!
//! Pure functions: the reactor (`server/request.rs`) reads the file and
//! queues the answer.

/// Where ACME's http-01 challenges live (RFC 8555 §8.3).
pub const ACME_PREFIX: &str = "/.well-known/acme-challenge/";

/// The `Location` of the redirect: the same host and target on
/// `https://`, on `https_port` (left out when it is 443). `None` when the
/// request gives no usable host or target (the answer is then 400).
///
/// The host is the request's `Host` without its port; both it and the
/// target are checked to hold only the characters a URL may, so nothing a
/// client sends can break the header.
pub fn location(host: Option<&[u8]>, target: &str, https_port: u16) -> Option<String> {
    let host = std::str::from_utf8(host?).ok()?;
    let name = host_name(host)?;
    if !target.starts_with('/') || !target.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    Some(match https_port {
        443 => format!("https://{name}{target}"),
        port => format!("https://{name}:{port}{target}"),
    })
}

/// `Host` without its port: a DNS name, an IPv4 address or a bracketed
/// IPv6 address.
fn host_name(host: &str) -> Option<&str> {
    let name = if host.starts_with('[') {
        // [v6]:port or [v6]
        let end = host.find(']')?;
        let name = host.get(..=end)?;
        let rest = host.get(end + 1..)?;
        if !(rest.is_empty() || rest.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        let inner = name.get(1..end)?;
        if !inner.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.') {
            return None;
        }
        name
    } else {
        let name = match host.rsplit_once(':') {
            Some((name, port)) if is_port(port) => name,
            Some(_) => return None,
            None => host,
        };
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') {
            return None;
        }
        name
    };
    (!name.is_empty()).then_some(name)
}

fn is_port(text: &str) -> bool {
    !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit())
}

/// The challenge token a path asks for, when it is one: base64url
/// characters only (RFC 8555 §8.1), so it can name nothing but a file
/// directly inside the webroot's `.well-known/acme-challenge/`.
pub fn acme_token(path: &str) -> Option<&str> {
    let token = path.strip_prefix(ACME_PREFIX)?;
    let ok = !token.is_empty()
        && token.len() <= 256
        && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_keep_host_and_target_and_use_the_tls_port() {
        let cases: &[(&[u8], &str, u16, Option<&str>)] = &[
            (b"example.com", "/", 443, Some("https://example.com/")),
            (b"example.com:80", "/room/x?y=1", 443, Some("https://example.com/room/x?y=1")),
            (b"chat.example.com:8080", "/a", 8443, Some("https://chat.example.com:8443/a")),
            (b"127.0.0.1:8080", "/", 8443, Some("https://127.0.0.1:8443/")),
            (b"[::1]:80", "/x", 443, Some("https://[::1]/x")),
            (b"[::1]", "/x", 8443, Some("https://[::1]:8443/x")),
            (b"", "/", 443, None),
            (b"evil.com/", "/", 443, None),
            (b"a b", "/", 443, None),
            (b"example.com:port", "/", 443, None),
            (b"[::1]x", "/", 443, None),
            (b"example.com", "*", 443, None),
            (b"example.com", "http://other/", 443, None),
            (b"\xff", "/", 443, None),
        ];
        for &(host, target, port, want) in cases {
            assert_eq!(location(Some(host), target, port).as_deref(), want, "{host:?} {target}");
        }
        assert_eq!(location(None, "/", 443), None);
    }

    #[test]
    fn only_base64url_tokens_name_challenge_files() {
        assert_eq!(acme_token("/.well-known/acme-challenge/abc-DEF_123"), Some("abc-DEF_123"));
        for bad in [
            "/.well-known/acme-challenge/",
            "/.well-known/acme-challenge/../etc/passwd",
            "/.well-known/acme-challenge/a.b",
            "/.well-known/acme-challenge/a/b",
            "/.well-known/other/abc",
            "/",
        ] {
            assert_eq!(acme_token(bad), None, "{bad}");
        }
    }
}
