//! Response encoding: status line, headers the server owns (Date, Server,
//! framing, Connection) and body framing. No I/O: bytes go into a buffer.

use crate::seam::event::Headers;
use bytes::{BufMut, BytesMut};
use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

/// How the body of a response goes on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body bytes at all (HEAD, 1xx, 204, 304).
    Empty,
    /// Exactly this many bytes remain.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Delimited by closing the connection (HTTP/1.0 without Content-Length).
    Close,
}

/// What the encoder needs to know about the request being answered.
#[derive(Clone, Copy, Debug)]
pub struct RequestInfo {
    pub http10: bool,
    pub is_head: bool,
    pub keep_alive: bool,
}

/// The outcome of encoding a head.
#[derive(Clone, Copy, Debug)]
pub struct Encoded {
    pub framing: BodyFraming,
    pub keep_alive: bool,
}

/// Writes the response head. `known_len` is the full body length when the
/// whole body is already known (a coalesced start + final body).
pub fn encode_head(
    out: &mut BytesMut,
    status: u16,
    headers: &Headers,
    req: RequestInfo,
    known_len: Option<usize>,
    server_header: &str,
) -> Encoded {
    let mut app_len: Option<u64> = None;
    let (mut has_date, mut has_server, mut app_close) = (false, false, false);
    let bodiless = req.is_head || status < 200 || status == 204 || status == 304;
    let forbid_length = status < 200 || status == 204;

    out.reserve(128 + headers.len() * 32);
    out.put_slice(b"HTTP/1.1 ");
    put_status(out, status);
    for (name, value) in headers {
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            continue; // the server owns framing
        }
        if name.eq_ignore_ascii_case(b"connection") {
            app_close |= value.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
            continue;
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            if forbid_length {
                continue;
            }
            app_len = std::str::from_utf8(value).ok().and_then(|v| v.trim().parse().ok());
        } else if name.eq_ignore_ascii_case(b"date") {
            has_date = true;
        } else if name.eq_ignore_ascii_case(b"server") {
            has_server = true;
        }
        out.put_slice(name);
        out.put_slice(b": ");
        out.put_slice(value);
        out.put_slice(b"\r\n");
    }
    let framing = if bodiless {
        if app_len.is_none() && req.is_head && !forbid_length {
            if let Some(n) = known_len {
                put_length(out, n as u64);
            }
        }
        BodyFraming::Empty
    } else if let Some(n) = app_len {
        BodyFraming::Length(n)
    } else if let Some(n) = known_len {
        put_length(out, n as u64);
        BodyFraming::Length(n as u64)
    } else if !req.http10 {
        out.put_slice(b"transfer-encoding: chunked\r\n");
        BodyFraming::Chunked
    } else {
        BodyFraming::Close
    };
    let keep_alive = req.keep_alive && !app_close && framing != BodyFraming::Close;
    if !has_date {
        out.put_slice(b"date: ");
        with_http_date(|d| out.put_slice(d));
        out.put_slice(b"\r\n");
    }
    if !has_server && !server_header.is_empty() {
        out.put_slice(b"server: ");
        out.put_slice(server_header.as_bytes());
        out.put_slice(b"\r\n");
    }
    if req.http10 && keep_alive {
        out.put_slice(b"connection: keep-alive\r\n");
    } else if !keep_alive {
        out.put_slice(b"connection: close\r\n");
    }
    out.put_slice(b"\r\n");
    Encoded { framing, keep_alive }
}

/// Writes a complete server-generated error response that closes the connection.
pub fn encode_error(out: &mut BytesMut, status: u16, server_header: &str) {
    let reason = reason_phrase(status);
    let body_len = reason.len() + 1;
    out.put_slice(b"HTTP/1.1 ");
    put_status(out, status);
    out.put_slice(b"content-type: text/plain\r\n");
    if status == 426 {
        out.put_slice(b"sec-websocket-version: 13\r\n");
    }
    put_length(out, body_len as u64);
    out.put_slice(b"connection: close\r\ndate: ");
    with_http_date(|d| out.put_slice(d));
    out.put_slice(b"\r\n");
    if !server_header.is_empty() {
        out.put_slice(b"server: ");
        out.put_slice(server_header.as_bytes());
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"\r\n");
    out.put_slice(reason.as_bytes());
    out.put_slice(b"\n");
}

/// Chunk header for `len` body bytes (the caller writes the data and `\r\n`).
pub fn put_chunk_header(out: &mut BytesMut, len: usize) {
    let mut buf = [0u8; 18];
    let mut i = buf.len();
    let mut n = len;
    buf[i - 2..].copy_from_slice(b"\r\n");
    i -= 2;
    loop {
        i -= 1;
        buf[i] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&buf[i..]);
}

/// The last chunk plus optional trailer fields.
pub fn put_chunked_end(out: &mut BytesMut, trailers: Option<&Headers>) {
    out.put_slice(b"0\r\n");
    if let Some(t) = trailers {
        for (name, value) in t {
            out.put_slice(name);
            out.put_slice(b": ");
            out.put_slice(value);
            out.put_slice(b"\r\n");
        }
    }
    out.put_slice(b"\r\n");
}

/// Checks response header bytes; the error names the header and the problem.
pub fn check_headers(headers: &Headers) -> Result<(), String> {
    let mut content_length_seen = false;
    for (name, value) in headers {
        let shown = String::from_utf8_lossy(name);
        if name.is_empty() {
            return Err("Invalid header name: empty".into());
        }
        if name.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(format!("Invalid header name: contains CR, LF, or null byte ({shown:?})"));
        }
        if !name.iter().all(|&b| is_token_byte(b)) {
            return Err(format!("Invalid header name: contains control characters or separators ({shown:?})"));
        }
        if value.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(format!("Invalid header value: contains CR, LF, or null byte (header '{shown}')"));
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            let v = value.trim_ascii();
            if v.is_empty() || !v.iter().all(u8::is_ascii_digit) || std::str::from_utf8(v).ok().and_then(|t| t.parse::<u64>().ok()).is_none() {
                return Err(format!("Invalid header value: content-length must be digits (header '{shown}')"));
            }
            // Two values on the wire would let a client and a proxy disagree on the framing.
            if content_length_seen {
                return Err("Invalid header: more than one content-length header".into());
            }
            content_length_seen = true;
        }
    }
    Ok(())
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn put_status(out: &mut BytesMut, status: u16) {
    let digits = [b'0' + (status / 100 % 10) as u8, b'0' + (status / 10 % 10) as u8, b'0' + (status % 10) as u8];
    out.put_slice(&digits);
    out.put_u8(b' ');
    out.put_slice(reason_phrase(status).as_bytes());
    out.put_slice(b"\r\n");
}

fn put_length(out: &mut BytesMut, n: u64) {
    out.put_slice(b"content-length: ");
    let mut buf = itoa_buf(n);
    out.put_slice(buf.as_mut_slice());
    out.put_slice(b"\r\n");
}

fn itoa_buf(mut n: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(20);
    loop {
        v.push(b'0' + (n % 10) as u8);
        n /= 10;
        if n == 0 {
            break;
        }
    }
    v.reverse();
    v
}

thread_local! {
    /// The Date header value, refreshed once a second.
    static DATE: RefCell<(u64, Vec<u8>)> = const { RefCell::new((u64::MAX, Vec::new())) };
}

fn with_http_date(f: impl FnOnce(&[u8])) {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            *d = (secs, httpdate::fmt_http_date(now).into_bytes());
        }
        f(&d.1);
    });
}

/// The standard reason phrase, or a generic one for unknown codes.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        426 => "Upgrade Required",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => match status / 100 {
            1 => "Informational",
            2 => "Success",
            3 => "Redirection",
            4 => "Client Error",
            _ => "Server Error",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn h(pairs: &[(&str, &str)]) -> Headers {
        pairs.iter().map(|(n, v)| (Bytes::copy_from_slice(n.as_bytes()), Bytes::copy_from_slice(v.as_bytes()))).collect()
    }
    const H11: RequestInfo = RequestInfo { http10: false, is_head: false, keep_alive: true };

    fn text(out: &BytesMut) -> String {
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn known_length_gets_content_length_and_date() {
        let mut out = BytesMut::new();
        let e = encode_head(&mut out, 200, &h(&[("content-type", "text/plain")]), H11, Some(5), "S");
        let t = text(&out);
        assert!(t.starts_with("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\ndate: "));
        assert!(t.contains("\r\nserver: S\r\n") && t.ends_with("\r\n\r\n"));
        assert_eq!(e.framing, BodyFraming::Length(5));
        assert!(e.keep_alive);
    }

    #[test]
    fn streaming_is_chunked_and_app_framing_is_ignored() {
        let mut out = BytesMut::new();
        let e = encode_head(&mut out, 200, &h(&[("Transfer-Encoding", "gzip"), ("Date", "x")]), H11, None, "");
        let t = text(&out);
        assert!(!t.contains("gzip") && t.contains("transfer-encoding: chunked") && t.matches("ate: ").count() == 1);
        assert_eq!(e.framing, BodyFraming::Chunked);
    }

    #[test]
    fn bodiless_statuses_and_head() {
        let mut out = BytesMut::new();
        let e = encode_head(&mut out, 204, &h(&[("content-length", "3")]), H11, Some(3), "");
        assert_eq!(e.framing, BodyFraming::Empty);
        assert!(!text(&out).contains("content-length") && !text(&out).contains("chunked"));
        let mut out = BytesMut::new();
        let head = RequestInfo { is_head: true, ..H11 };
        let e = encode_head(&mut out, 200, &h(&[]), head, Some(11), "");
        assert_eq!(e.framing, BodyFraming::Empty);
        assert!(text(&out).contains("content-length: 11"));
    }

    #[test]
    fn http10_without_length_closes() {
        let mut out = BytesMut::new();
        let req = RequestInfo { http10: true, is_head: false, keep_alive: true };
        let e = encode_head(&mut out, 200, &h(&[]), req, None, "");
        assert_eq!(e.framing, BodyFraming::Close);
        assert!(!e.keep_alive);
        assert!(text(&out).contains("connection: close"));
        let mut out = BytesMut::new();
        let e = encode_head(&mut out, 200, &h(&[]), req, Some(2), "");
        assert!(e.keep_alive && text(&out).contains("connection: keep-alive"));
    }

    #[test]
    fn chunk_headers_are_hex() {
        let mut out = BytesMut::new();
        put_chunk_header(&mut out, 255);
        put_chunk_header(&mut out, 0x10000);
        assert_eq!(&out[..], b"ff\r\n10000\r\n");
    }

    #[test]
    fn header_checks_name_the_header() {
        assert!(check_headers(&h(&[("x-ok", "fine")])).is_ok());
        assert!(check_headers(&h(&[("x-bad", "a\r\nb")])).unwrap_err().contains("x-bad"));
        assert!(check_headers(&h(&[("x bad", "a")])).unwrap_err().contains("name"));
        assert!(check_headers(&h(&[("x\0", "a")])).unwrap_err().contains("null"));
    }
}
