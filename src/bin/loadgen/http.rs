//! A blocking HTTP/1.1 GET to the server, for the soak mode's side requests (`/metrics`,
//! scroll-back pages). Blocking is fine there: they run a few times a second, on loopback,
//! with timeouts, and never on the thread that drives the WebSockets' latency.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Bound on connecting, writing and each read: a server that takes longer than this to
/// answer a local GET is stuck, and the soak run should say so rather than hang.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest answer read: a scroll-back page of 200 messages of 4,096 characters is ~1 MiB.
const MAX_ANSWER_BYTES: u64 = 4 << 20;

/// `GET path` with `Connection: close`; the status code and the body. The server answers
/// with `Content-Length` and closes after it, so the body is everything after the head.
pub fn get(addr: SocketAddr, host: &str, path: &str) -> Result<(u16, String), String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, HTTP_TIMEOUT).map_err(|e| format!("GET {path}: connect: {e}"))?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT)).map_err(|e| format!("GET {path}: {e}"))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT)).map_err(|e| format!("GET {path}: {e}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(|e| format!("GET {path}: write: {e}"))?;
    let mut answer = Vec::new();
    stream.take(MAX_ANSWER_BYTES).read_to_end(&mut answer).map_err(|e| format!("GET {path}: read: {e}"))?;
    let text = String::from_utf8(answer).map_err(|_| format!("GET {path}: the answer is not UTF-8"))?;
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("GET {path}: no complete head"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("GET {path}: no status code in {:?}", head.lines().next().unwrap_or_default()))?;
    Ok((status, body.to_string()))
}

/// The value of an unlabelled metric in Prometheus text (`name value` on a line of its own).
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == name).then(|| value.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_unlabelled_metrics_only() {
        let text = "# HELP a_total x\n# TYPE a_total counter\na_total 12\nb{reason=\"x\"} 3\nab_total 7\n";
        assert_eq!(metric(text, "a_total"), Some(12.0));
        assert_eq!(metric(text, "ab_total"), Some(7.0));
        assert_eq!(metric(text, "b"), None);
    }
}
