//! `tinyinetd-metrics`' HTTP side, pure: the request head judged as it
//! arrives, and the response written. HTTP/1.0 and 1.1; one request per
//! connection (`Connection: close`); the head is bounded ([`MAX_HEAD`]).

/// The most bytes of a request head (request line and headers) read.
pub const MAX_HEAD: usize = 8 * 1024;

/// What the bytes so far say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// The head is not complete yet.
    Incomplete,
    /// `GET /metrics` (a query string allowed).
    Metrics,
    /// Any other path: 404.
    NotFound,
    /// Another method: 405.
    Method,
    /// Not HTTP/1.x, or over [`MAX_HEAD`]: 400.
    Bad,
}

/// Judges the request head in `buf` (what has been read so far).
pub fn parse(buf: &[u8]) -> Request {
    let end = find(buf, b"\r\n\r\n").or_else(|| find(buf, b"\n\n"));
    if end.is_none() {
        // Still reading; but a first line that is already wrong need not
        // wait for the rest.
        if buf.len() > MAX_HEAD {
            return Request::Bad;
        }
        return match buf.iter().position(|&b| b == b'\n') {
            Some(nl) if line(&buf[..nl]) == Request::Bad => Request::Bad,
            _ => Request::Incomplete,
        };
    }
    let nl = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    line(&buf[..nl])
}

/// The request line: `METHOD TARGET HTTP/1.x`.
fn line(l: &[u8]) -> Request {
    let l = l.strip_suffix(b"\r").unwrap_or(l);
    let Ok(l) = std::str::from_utf8(l) else {
        return Request::Bad;
    };
    let parts: Vec<&str> = l.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return Request::Bad;
    };
    if !matches!(version, "HTTP/1.0" | "HTTP/1.1") || !target.starts_with('/') {
        return Request::Bad;
    }
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Request::Bad;
    }
    let path = target.split('?').next().unwrap_or(target);
    match (method, path) {
        ("GET", "/metrics") => Request::Metrics,
        ("GET", _) => Request::NotFound,
        _ => Request::Method,
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The Prometheus text format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A whole response: status line, headers (`Connection: close`), body.
pub fn response(status: u16, content_type: &str, body: &str) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        _ => "Service Unavailable",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status == 405 {
        out.push_str("Allow: GET\r\n");
    }
    out.push_str("\r\n");
    out.push_str(body);
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_metrics_in_both_versions_and_with_a_query() {
        assert_eq!(
            parse(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Request::Metrics
        );
        assert_eq!(parse(b"GET /metrics HTTP/1.0\r\n\r\n"), Request::Metrics);
        assert_eq!(parse(b"GET /metrics?x=1 HTTP/1.1\n\n"), Request::Metrics);
    }

    #[test]
    fn other_paths_methods_and_garbage() {
        assert_eq!(parse(b"GET /other HTTP/1.1\r\n\r\n"), Request::NotFound);
        assert_eq!(parse(b"POST /metrics HTTP/1.1\r\n\r\n"), Request::Method);
        assert_eq!(parse(b"HEAD /metrics HTTP/1.1\r\n\r\n"), Request::Method);
        assert_eq!(parse(b"GET /metrics HTTP/2\r\n\r\n"), Request::Bad);
        assert_eq!(parse(b"GET metrics HTTP/1.1\r\n\r\n"), Request::Bad);
        assert_eq!(parse(b"hello\r\n\r\n"), Request::Bad);
        assert_eq!(parse(b"\xff\xfe\r\n\r\n"), Request::Bad);
    }

    #[test]
    fn a_head_is_incomplete_until_its_blank_line_and_bounded() {
        assert_eq!(
            parse(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"),
            Request::Incomplete
        );
        assert_eq!(parse(b"GET /met"), Request::Incomplete);
        // A wrong first line is judged without waiting for the rest.
        assert_eq!(parse(b"BLAH\r\nHost"), Request::Bad);
        let mut big = b"GET /metrics HTTP/1.1\r\n".to_vec();
        big.resize(MAX_HEAD + 1, b'a');
        assert_eq!(parse(&big), Request::Bad);
    }

    #[test]
    fn responses_close_and_count_their_body() {
        let r = String::from_utf8(response(200, CONTENT_TYPE, "a 1\n")).expect("utf8");
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(
            r.contains("\r\nContent-Length: 4\r\nConnection: close\r\n\r\na 1\n"),
            "{r}"
        );
        let r = String::from_utf8(response(405, "text/plain", "")).expect("utf8");
        assert!(r.contains("\r\nAllow: GET\r\n"), "{r}");
    }
}
