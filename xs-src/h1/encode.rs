//! HTTP/1.1 response encoding: the status line, the headers the server owns
//! (Date, Server, framing, Connection) and body framing, plus [`H1Wire`],
//! this protocol's side of the protocol-neutral exchange. No I/O: bytes go
//! into the connection's writer.

use crate::http::exchange::Wire;
use crate::http::response::{reason_phrase, with_http_date};
use crate::seam::event::{Event, Headers};
use crate::server::ctx::Shared;
use crate::server::writer::Writer;
use bytes::{BufMut, Bytes, BytesMut};

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

/// One response's HTTP/1.1 framing, as the exchange's [`Wire`].
pub struct H1Wire<'a> {
    pub out: &'a mut Writer,
    pub framing: &'a mut BodyFraming,
    pub keep_alive: &'a mut bool,
    pub info: RequestInfo,
    /// The client sent `TE: trailers`.
    pub te_trailers: bool,
    pub shared: &'a Shared,
}

impl Wire for H1Wire<'_> {
    fn head(&mut self, status: u16, headers: &Headers, known: Option<u64>) {
        let enc = encode_head(self.out.buf(), status, headers, self.info, known.map(|n| n as usize), &self.shared.config.server_header);
        *self.framing = enc.framing;
        *self.keep_alive = enc.keep_alive;
    }

    /// Frames one body chunk; a body longer than its Content-Length is cut
    /// and the connection closed.
    fn data(&mut self, data: Bytes, counted: usize, _last: bool) {
        match *self.framing {
            BodyFraming::Empty => self.out.data(Bytes::new(), counted),
            BodyFraming::Close => self.out.data(data, counted),
            BodyFraming::Chunked => {
                if !data.is_empty() {
                    put_chunk_header(self.out.buf(), data.len());
                    self.out.data(data, counted);
                    self.out.buf().extend_from_slice(b"\r\n");
                } else {
                    self.out.data(data, counted);
                }
            }
            BodyFraming::Length(left) => {
                let n = (data.len() as u64).min(left) as usize;
                if n < data.len() {
                    self.shared.events.push(Event::Log {
                        level: "warn",
                        message: format!("response body longer than its Content-Length ({left} bytes left); connection closed"),
                    });
                    *self.keep_alive = false;
                }
                self.out.data(data.slice(..n), counted);
                *self.framing = BodyFraming::Length(left - n as u64);
            }
        }
    }

    fn file(&mut self, file: std::fs::File, offset: u64, len: u64) {
        match *self.framing {
            BodyFraming::Empty => {}
            BodyFraming::Close => self.out.file(file, offset, len),
            BodyFraming::Chunked => {
                if len > 0 {
                    put_chunk_header(self.out.buf(), len as usize);
                    self.out.file(file, offset, len);
                    self.out.buf().extend_from_slice(b"\r\n");
                }
            }
            BodyFraming::Length(left) => {
                let n = len.min(left);
                self.out.file(file, offset, n);
                *self.framing = BodyFraming::Length(left - n);
                if n < len {
                    *self.keep_alive = false;
                }
            }
        }
    }

    fn carries_trailers(&self) -> bool {
        *self.framing == BodyFraming::Chunked
    }

    fn end(&mut self, trailers: Option<&Headers>) {
        match *self.framing {
            BodyFraming::Chunked => put_chunked_end(self.out.buf(), trailers.filter(|_| self.te_trailers)),
            // Truncated: only closing tells the client.
            BodyFraming::Length(left) if left > 0 => *self.keep_alive = false,
            _ => {}
        }
    }

    fn cut(&mut self) {
        *self.keep_alive = false;
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

}

