//! HTTP/1.1 end to end over real sockets: methods, keep-alive and
//! pipelining, the limits on request heads and bodies, the headers every
//! answer carries, the static site's routes, `--www DIR`, and path traversal.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use common::*;

/// A keep-alive GET of `path`.
fn get_keep_alive(addr: SocketAddr, path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n")
}

/// Asserts `r` is a whole, correctly typed copy of `www/<rel>`.
fn assert_serves(r: &HttpResponse, rel: &str, content_type: &str) {
    let expected = www_file(rel);
    assert_eq!(r.status, 200, "{rel}: {}", r.text());
    assert_eq!(r.header("content-type"), Some(content_type), "{rel}");
    assert_eq!(r.header("content-length"), Some(expected.len().to_string().as_str()), "{rel}");
    assert!(r.body == expected, "{rel}: body differs from www/{rel}");
}

/// Asserts `r` carries the security headers of an HTML page.
fn assert_page_headers(r: &HttpResponse) {
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    let csp = r.header("content-security-policy").expect("pages carry a Content-Security-Policy");
    let directive = |name: &str| {
        csp.split(';').map(str::trim).find(|d| d.split_whitespace().next() == Some(name)).map(str::to_string)
    };
    assert_eq!(directive("script-src").as_deref(), Some("script-src 'self'"), "CSP: {csp}");
    assert_eq!(directive("style-src").as_deref(), Some("style-src 'self'"), "CSP: {csp}");
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "CSP: {csp}");
}

#[test]
fn get_home_page_carries_date_length_type_etag_cache_and_security_headers() {
    let server = TestServer::start();
    let r = get(server.addr, "/");
    assert_serves(&r, "index.html", "text/html; charset=utf-8");
    let date = httpdate::parse_http_date(r.header("date").expect("a Date header")).expect("an HTTP date");
    let skew = match date.duration_since(SystemTime::now()) {
        Ok(ahead) => ahead,
        Err(behind) => behind.duration(),
    };
    assert!(skew < Duration::from_secs(5), "Date is {skew:?} off");
    let etag = r.header("etag").expect("an ETag");
    assert!(etag.len() > 2 && etag.starts_with('"') && etag.ends_with('"'), "ETag {etag} is not quoted");
    assert_eq!(r.header("cache-control"), Some("no-cache"));
    assert_page_headers(&r);
}

#[test]
fn head_sends_the_length_but_no_body() {
    let server = TestServer::start();
    let mut s = tcp(server.addr);
    let head = format!("HEAD /css/style.css HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr);
    // HEAD then GET on one connection: had HEAD sent a body, the second
    // answer would be read out of step.
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(get_keep_alive(server.addr, "/favicon.svg").as_bytes()).unwrap();
    let mut buf = Vec::new();
    let r = read_response(&mut s, &mut buf, true);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some(www_file("css/style.css").len().to_string().as_str()));
    assert_eq!(r.header("content-type"), Some("text/css; charset=utf-8"));
    let r = read_response(&mut s, &mut buf, false);
    assert_serves(&r, "favicon.svg", "image/svg+xml");
    assert!(buf.is_empty(), "unexpected bytes after the answers: {:?}", String::from_utf8_lossy(&buf));
}

#[test]
fn etag_revalidation_gives_304_without_body() {
    let server = TestServer::start();
    for path in ["/js/room.js", "/"] {
        let r = get(server.addr, path);
        let etag = r.header("etag").unwrap().to_string();
        let revalidate = |tag: &str| {
            request(
                server.addr,
                &format!("GET {path} HTTP/1.1\r\nHost: h\r\nIf-None-Match: {tag}\r\nConnection: close\r\n\r\n"),
            )
        };
        let r = revalidate(&etag);
        assert_eq!(r.status, 304, "{path}");
        assert_eq!(r.header("etag"), Some(etag.as_str()));
        assert!(r.header("content-length").is_none(), "a 304 states no length");
        let r = revalidate(&format!("\"other\", {etag}"));
        assert_eq!(r.status, 304, "{path}: a list containing the tag");
        let r = revalidate("\"not-the-tag\"");
        assert_eq!(r.status, 200, "{path}: a stale tag gets the file");
        assert!(!r.body.is_empty());
    }
}

#[test]
fn keep_alive_serves_sequential_requests_on_one_connection() {
    let server = TestServer::start();
    let mut s = tcp(server.addr);
    let mut buf = Vec::new();
    for path in ["/", "/css/style.css", "/room/", "/js/room.js", "/favicon.svg"] {
        s.write_all(get_keep_alive(server.addr, path).as_bytes()).unwrap();
        let r = read_response(&mut s, &mut buf, false);
        assert_eq!(r.status, 200, "{path}");
        assert!(r.header("connection").is_none(), "{path}: the connection should stay open");
    }
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", server.addr).as_bytes()).unwrap();
    let r = read_response(&mut s, &mut buf, false);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(rest_until_close(&mut s, &mut buf).is_empty());
}

#[test]
fn http_1_0_closes_after_the_answer() {
    let server = TestServer::start();
    let mut s = tcp(server.addr);
    s.write_all(b"GET /favicon.svg HTTP/1.0\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let r = read_response(&mut s, &mut buf, false);
    assert_serves(&r, "favicon.svg", "image/svg+xml");
    assert!(rest_until_close(&mut s, &mut buf).is_empty());
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let server = TestServer::start();
    let a = server.addr;
    let mut s = tcp(a);
    let mut all = String::new();
    all += &get_keep_alive(a, "/css/style.css");
    all += &format!("HEAD /js/room.js HTTP/1.1\r\nHost: {a}\r\n\r\n");
    all += &get_keep_alive(a, "/no-such-file");
    all += &format!("DELETE / HTTP/1.1\r\nHost: {a}\r\n\r\n");
    all += &get_keep_alive(a, "/room/echo");
    all += &format!("GET /favicon.svg HTTP/1.1\r\nHost: {a}\r\nConnection: close\r\n\r\n");
    // A request after `Connection: close` is never answered.
    all += &get_keep_alive(a, "/");
    s.write_all(all.as_bytes()).unwrap();

    let mut buf = Vec::new();
    assert_serves(&read_response(&mut s, &mut buf, false), "css/style.css", "text/css; charset=utf-8");
    let r = read_response(&mut s, &mut buf, true);
    assert_eq!((r.status, r.header("content-type")), (200, Some("text/javascript; charset=utf-8")));
    assert_eq!(r.header("content-length"), Some(www_file("js/room.js").len().to_string().as_str()));
    assert_eq!(read_response(&mut s, &mut buf, false).status, 404);
    assert_eq!(read_response(&mut s, &mut buf, false).status, 405);
    assert_serves(&read_response(&mut s, &mut buf, false), "echo.html", "text/html; charset=utf-8");
    let r = read_response(&mut s, &mut buf, false);
    assert_serves(&r, "favicon.svg", "image/svg+xml");
    assert_eq!(r.header("connection"), Some("close"));
    let rest = rest_until_close(&mut s, &mut buf);
    assert!(rest.is_empty(), "answered past Connection: close: {:?}", String::from_utf8_lossy(&rest));
}

#[test]
fn oversize_request_head_gets_431_and_close() {
    let server = TestServer::start();
    // Whole head in one write, and a head that never ends.
    for complete in [true, false] {
        let mut s = tcp(server.addr);
        let mut raw = format!("GET / HTTP/1.1\r\nHost: h\r\nX-Pad: {}\r\n", "a".repeat(9 * 1024));
        if complete {
            raw += "\r\n";
        }
        s.write_all(raw.as_bytes()).unwrap();
        let mut buf = Vec::new();
        let r = read_response(&mut s, &mut buf, false);
        assert_eq!(r.status, 431, "complete head: {complete}");
        assert_eq!(r.header("connection"), Some("close"));
        assert!(rest_until_close(&mut s, &mut buf).is_empty());
    }
    // Just under the cap is fine.
    let pad = "a".repeat(7 * 1024);
    let r = request(server.addr, &format!("GET /favicon.svg HTTP/1.1\r\nX-Pad: {pad}\r\nConnection: close\r\n\r\n"));
    assert_eq!(r.status, 200);
}

#[test]
fn too_many_headers_get_431() {
    let server = TestServer::start();
    let headers: String = (0..100).map(|i| format!("X-H{i}: v\r\n")).collect();
    let r = request(server.addr, &format!("GET / HTTP/1.1\r\n{headers}\r\n"));
    assert_eq!(r.status, 431);
}

#[test]
fn malformed_requests_get_400_and_close() {
    let server = TestServer::start();
    for raw in [
        "GET / HTTP/1.1\r\nBad Header Line\r\n\r\n",
        "GET / HTTP/9.9\r\n\r\n",
        "\x01\x02\x03 / HTTP/1.1\r\n\r\n",
        "GET /a b HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\n: empty-name\r\n\r\n",
    ] {
        let mut s = tcp(server.addr);
        s.write_all(raw.as_bytes()).unwrap();
        let mut buf = Vec::new();
        let r = read_response(&mut s, &mut buf, false);
        assert_eq!(r.status, 400, "{raw:?}");
        assert_eq!(r.header("connection"), Some("close"), "{raw:?}");
        assert!(rest_until_close(&mut s, &mut buf).is_empty(), "{raw:?}");
    }
}

#[test]
fn other_methods_get_405_with_allow_get_head() {
    let server = TestServer::start();
    for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "BREW"] {
        for path in ["/", "/css/style.css", "/no-such-file"] {
            let r = request(server.addr, &format!("{method} {path} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"));
            assert_eq!(r.status, 405, "{method} {path}");
            assert_eq!(r.header("allow"), Some("GET, HEAD"), "{method} {path}");
        }
    }
    // A POST body is skipped like any other: the next request is served.
    let mut s = tcp(server.addr);
    s.write_all(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello=worldGET /favicon.svg HTTP/1.1\r\nHost: h\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    assert_eq!(read_response(&mut s, &mut buf, false).status, 405);
    assert_serves(&read_response(&mut s, &mut buf, false), "favicon.svg", "image/svg+xml");
}

#[test]
fn unknown_path_gets_the_html_404_page() {
    let server = TestServer::start();
    for path in ["/no-such-page", "/css/nope.css", "/room/a/b", "/js/"] {
        let r = get(server.addr, path);
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"), "{path}");
        assert!(r.body == www_file("404.html"), "{path}: not the 404 page");
        assert_eq!(r.header("content-length"), Some(r.body.len().to_string().as_str()));
        assert_page_headers(&r);
    }
    // HEAD of a missing page: the status and length, no body.
    let r = request(server.addr, "HEAD /no-such-page HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 404);
    assert_eq!(r.header("content-length"), Some(www_file("404.html").len().to_string().as_str()));
}

#[test]
fn get_body_with_content_length_is_skipped_exactly() {
    let server = TestServer::start();
    let a = server.addr;
    let mut s = tcp(a);
    // The 5-byte body looks like the start of a request; it must be skipped,
    // not parsed, and the request after it answered.
    let raw = format!(
        "GET / HTTP/1.1\r\nHost: {a}\r\nContent-Length: 5\r\n\r\nGET /GET /css/style.css HTTP/1.1\r\nHost: {a}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(raw.as_bytes()).unwrap();
    let mut buf = Vec::new();
    assert_serves(&read_response(&mut s, &mut buf, false), "index.html", "text/html; charset=utf-8");
    assert_serves(&read_response(&mut s, &mut buf, false), "css/style.css", "text/css; charset=utf-8");
    let rest = rest_until_close(&mut s, &mut buf);
    assert!(rest.is_empty(), "more than two answers: {:?}", String::from_utf8_lossy(&rest));
}

#[test]
fn get_body_split_across_writes_is_still_skipped() {
    let server = TestServer::start();
    let a = server.addr;
    let mut s = tcp(a);
    s.write_all(format!("GET /favicon.svg HTTP/1.1\r\nHost: {a}\r\nContent-Length: 10\r\n\r\nGET ").as_bytes())
        .unwrap();
    let mut buf = Vec::new();
    assert_serves(&read_response(&mut s, &mut buf, false), "favicon.svg", "image/svg+xml");
    // The last 6 bytes of the body arrive after the first answer.
    s.write_all(format!("/ HTTPGET /js/room.js HTTP/1.1\r\nHost: {a}\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    assert_serves(&read_response(&mut s, &mut buf, false), "js/room.js", "text/javascript; charset=utf-8");
    assert!(rest_until_close(&mut s, &mut buf).is_empty());
}

#[test]
fn expect_100_continue_gets_continue_then_the_answer() {
    let server = TestServer::start();
    let a = server.addr;
    let mut s = tcp(a);
    // curl sends this for larger bodies and waits (about a second) for the 100.
    s.write_all(
        format!("GET /favicon.svg HTTP/1.1\r\nHost: {a}\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let mut interim = [0u8; 25];
    s.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"hello").unwrap();
    let mut buf = Vec::new();
    assert_serves(&read_response(&mut s, &mut buf, false), "favicon.svg", "image/svg+xml");
}

#[test]
fn chunked_body_gets_411_and_close_never_a_second_request() {
    let server = TestServer::start();
    let a = server.addr;
    for te in ["chunked", "gzip, chunked", "Chunked"] {
        let mut s = tcp(a);
        let raw = format!(
            "GET / HTTP/1.1\r\nHost: {a}\r\nTransfer-Encoding: {te}\r\n\r\n\
             1c\r\nGET /favicon.svg HTTP/1.1\r\n\r\n\r\n0\r\n\r\nGET /css/style.css HTTP/1.1\r\nHost: {a}\r\n\r\n"
        );
        s.write_all(raw.as_bytes()).unwrap();
        let mut buf = Vec::new();
        let r = read_response(&mut s, &mut buf, false);
        // RFC 9110 §15.5.12: 411 Length Required; we read bodies by Content-Length only.
        assert_eq!(r.status, 411, "{te}");
        assert_eq!(r.header("connection"), Some("close"));
        let rest = rest_until_close(&mut s, &mut buf);
        assert!(rest.is_empty(), "{te}: the body was answered as a request: {:?}", String::from_utf8_lossy(&rest));
    }
}

#[test]
fn conflicting_or_bad_content_length_gets_400() {
    let server = TestServer::start();
    for cl in ["Content-Length: 5\r\nContent-Length: 6", "Content-Length: abc", "Content-Length: -1"] {
        let r = request(server.addr, &format!("GET / HTTP/1.1\r\nHost: h\r\n{cl}\r\n\r\nhello!GET / HTTP/1.1\r\n\r\n"));
        assert_eq!(r.status, 400, "{cl}");
        assert_eq!(r.header("connection"), Some("close"));
    }
}

#[test]
fn site_routes_serve_their_files_with_the_right_types() {
    let server = TestServer::start();
    let html = "text/html; charset=utf-8";
    for (path, rel, ty) in [
        ("/", "index.html", html),
        ("/room/", "rooms.html", html),
        ("/room", "rooms.html", html),
        ("/room/welcome", "room.html", html),
        ("/room/Some_room-2/", "room.html", html),
        ("/room/echo", "echo.html", html),
        ("/css/style.css", "css/style.css", "text/css; charset=utf-8"),
        ("/js/room.js", "js/room.js", "text/javascript; charset=utf-8"),
        ("/js/common.js", "js/common.js", "text/javascript; charset=utf-8"),
        ("/favicon.svg", "favicon.svg", "image/svg+xml"),
    ] {
        let r = get(server.addr, path);
        assert_serves(&r, rel, ty);
        assert!(r.header("etag").is_some(), "{path}: no ETag");
        assert_eq!(r.header("cache-control"), Some("no-cache"), "{path}");
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"), "{path}");
        if ty == html {
            assert_page_headers(&r);
        }
    }
    // A query string does not change the file.
    assert_serves(&get(server.addr, "/css/style.css?v=3"), "css/style.css", "text/css; charset=utf-8");
}

/// The outcome of `GET <target>` sent verbatim: status and body.
fn raw_get(addr: SocketAddr, target: &str) -> HttpResponse {
    request(addr, &format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"))
}

/// Request targets that try to leave the site's root; `{f}` is the name of a
/// file that lies one level above it.
const TRAVERSALS: &[&str] = &[
    "/../{f}",
    "/../../../../../../{f}",
    "/css/../../{f}",
    "/%2e%2e/{f}",
    "/%2E%2E/{f}",
    "/.%2e/{f}",
    "/%2e%2e%2f{f}",
    "/..%2f{f}",
    "/css%2f..%2f..%2f{f}",
    "/..%5c{f}",
    "/css%5c..%5c..%5c{f}",
    "/..\\{f}",
    "/css\\..\\..\\{f}",
    "/%252e%252e/{f}",
    "/{f}%00.html",
    "/index.html%00/../../{f}",
    "//{f}",
    "/room/../../{f}",
    "/room/..%2f..%2f{f}",
    "http://127.0.0.1/../{f}",
    "http://127.0.0.1/../../../../etc/passwd",
    "http://localhost/index.html",
    "*",
];

#[test]
fn embedded_site_refuses_every_traversal_attempt() {
    let server = TestServer::start();
    for t in TRAVERSALS {
        for f in ["etc/passwd", "Cargo.toml", "src/main.rs"] {
            let target = t.replace("{f}", f);
            let r = raw_get(server.addr, &target);
            assert!(matches!(r.status, 400 | 404), "{target}: {}", r.status);
            assert!(!r.text().contains("root:"), "{target} leaked /etc/passwd");
            assert!(!r.text().contains("[package]"), "{target} leaked Cargo.toml");
        }
    }
    // A raw NUL byte in the target is refused by the parser.
    let r = request(server.addr, "GET /index.html\0../../etc/passwd HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(r.status, 400);
}

#[test]
fn www_dir_serves_the_folder() {
    let root = temp_dir("www");
    let _cleanup = RemoveOnDrop(root.clone());
    std::fs::write(root.join("index.html"), "<!doctype html><title>custom home</title>").unwrap();
    std::fs::create_dir(root.join("css")).unwrap();
    std::fs::write(root.join("css/style.css"), "body { color: red }").unwrap();
    let mut cfg = config();
    cfg.www = Some(root.clone());
    let server = TestServer::with(cfg);

    let r = get(server.addr, "/");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "<!doctype html><title>custom home</title>");
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert_page_headers(&r);
    let r = get(server.addr, "/css/style.css");
    assert_eq!((r.status, r.text().as_str()), (200, "body { color: red }"));
    assert_eq!(r.header("content-length"), Some("19"));
    // Edits are served live, and revalidation notices them.
    let etag = r.header("etag").unwrap().to_string();
    let cond = format!("GET /css/style.css HTTP/1.1\r\nIf-None-Match: {etag}\r\nConnection: close\r\n\r\n");
    assert_eq!(request(server.addr, &cond).status, 304);
    std::fs::write(root.join("css/style.css"), "body { color: blue; }").unwrap();
    let r = request(server.addr, &cond);
    assert_eq!((r.status, r.text().as_str()), (200, "body { color: blue; }"));
    // The embedded files are not served from a --www site.
    assert_eq!(get(server.addr, "/js/room.js").status, 404);
}

#[test]
fn www_dir_refuses_symlinks_and_traversal_outside_the_root() {
    use std::os::unix::fs::symlink;
    let outer = temp_dir("www-outer");
    let _cleanup = RemoveOnDrop(outer.clone());
    let root = outer.join("site");
    std::fs::create_dir(&root).unwrap();
    const SECRET: &str = "TOP-SECRET-MARKER-5f1c";
    std::fs::write(outer.join("secret.txt"), SECRET).unwrap();
    std::fs::create_dir(outer.join("private")).unwrap();
    std::fs::write(outer.join("private/notes.txt"), SECRET).unwrap();
    std::fs::write(root.join("index.html"), "<p>home</p>").unwrap();
    symlink(outer.join("secret.txt"), root.join("leak.txt")).unwrap();
    symlink("/etc/passwd", root.join("passwd.txt")).unwrap();
    symlink(outer.join("private"), root.join("private")).unwrap();
    symlink("../secret.txt", root.join("relative.txt")).unwrap();
    // A link that stays inside the root is fine.
    symlink(root.join("index.html"), root.join("alias.html")).unwrap();
    let mut cfg = config();
    cfg.www = Some(root.clone());
    let server = TestServer::with(cfg);

    assert_eq!(get(server.addr, "/").text(), "<p>home</p>");
    assert_eq!(get(server.addr, "/alias.html").text(), "<p>home</p>");
    for link in ["/leak.txt", "/passwd.txt", "/private/notes.txt", "/relative.txt"] {
        let r = get(server.addr, link);
        assert_eq!(r.status, 404, "{link}");
        assert!(!r.text().contains(SECRET) && !r.text().contains("root:"), "{link} leaked");
    }
    for t in TRAVERSALS {
        for f in ["secret.txt", "private/notes.txt"] {
            let target = t.replace("{f}", f);
            let r = raw_get(server.addr, &target);
            assert!(matches!(r.status, 400 | 404), "{target}: {}", r.status);
            assert!(!r.text().contains(SECRET), "{target} leaked a file outside the root");
        }
    }
    let r = request(server.addr, "GET /secret.txt\0/../../secret.txt HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(r.status, 400);
}

#[test]
fn an_answer_that_waits_for_storage_after_the_client_s_fin_is_still_sent() {
    let mut cfg = config();
    cfg.max_pending = 16 * 1024;
    let server = TestServer::with(cfg);
    let a = server.addr;
    let mut s = tcp(a);
    // Pages whose answers pass --max-pending (so the rest waits unread
    // while they leave), then a scroll-back (answered by the storage
    // thread, later), then the client's FIN.
    let mut all = String::new();
    for _ in 0..4 {
        all += &get_keep_alive(a, "/js/learn.js");
    }
    all += &get_keep_alive(a, "/api/rooms/welcome/messages");
    s.write_all(all.as_bytes()).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut buf = Vec::new();
    for _ in 0..4 {
        assert_serves(&read_response(&mut s, &mut buf, false), "js/learn.js", "text/javascript; charset=utf-8");
    }
    let r = read_response(&mut s, &mut buf, false);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["room"], "welcome");
}
