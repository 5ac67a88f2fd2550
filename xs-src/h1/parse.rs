//! Request-head parsing: httparse finds the fields, this module applies the
//! HTTP/1.1 rules PAGI asks for (framing, Host, keep-alive, Expect, cookies,
//! path decoding) and names the status for a head it refuses.

use crate::config::Config;
use crate::http::request::{percent_decode, split_target};
use crate::seam::event::Headers;
use bytes::Bytes;
use std::ops::Range;

/// How the request body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// A parsed and validated request head.
#[derive(Debug)]
pub struct Head {
    pub method: Bytes,
    pub raw_path: Bytes,
    pub query_string: Bytes,
    pub path: Vec<u8>,
    pub path_is_utf8: bool,
    pub http_version: &'static str,
    pub headers: Headers,
    pub framing: Framing,
    pub keep_alive: bool,
    pub expect_continue: bool,
    /// The client sent `TE: trailers`, so response trailers may be written.
    pub te_trailers: bool,
    pub is_head_method: bool,
    /// `Sec-WebSocket-Key` of a valid WebSocket upgrade request (PAGI-SPEC 2.4).
    pub websocket_key: Option<Bytes>,
    /// `Accept` asks for `text/event-stream`: an sse scope (PAGI-SPEC 2.4).
    pub event_stream: bool,
}

/// A refused head: the status to answer with, then close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal(pub u16);

/// Offsets of a complete head inside the read buffer.
pub struct RawHead {
    pub len: usize,
    method: Range<usize>,
    target: Range<usize>,
    minor: u8,
    headers: Vec<(Vec<u8>, Range<usize>)>,
}

/// Looks for a complete head at the start of `buf`.
/// `Ok(None)`: more bytes are needed; `Err`: answer with that status.
pub fn parse(buf: &[u8], cfg: &Config) -> Result<Option<RawHead>, Refusal> {
    // Leading empty lines before a request line are tolerated (RFC 9112 2.2).
    let mut skip = 0;
    while buf[skip..].starts_with(b"\r\n") {
        skip += 2;
    }
    let buf_all = buf;
    let buf = &buf[skip..];
    let mut slots: Vec<httparse::Header<'_>> = vec![httparse::EMPTY_HEADER; cfg.max_header_count];
    let mut req = httparse::Request::new(&mut slots);
    let status = match req.parse(buf) {
        Ok(s) => s,
        Err(httparse::Error::TooManyHeaders) => return Err(Refusal(431)),
        Err(_) => return Err(line_too_long(buf, cfg).unwrap_or(Refusal(400))),
    };
    let len = match status {
        httparse::Status::Partial => {
            if let Some(r) = line_too_long(buf, cfg) {
                return Err(r);
            }
            if buf.len() > cfg.max_request_line_size + cfg.max_header_size {
                return Err(Refusal(431));
            }
            return Ok(None);
        }
        httparse::Status::Complete(n) => n,
    };
    if let Some(r) = line_too_long(buf, cfg) {
        return Err(r);
    }
    let line_len = buf.iter().position(|&b| b == b'\n').unwrap_or(0) + 1;
    if len - line_len > cfg.max_header_size {
        return Err(Refusal(431));
    }
    let base = buf_all.as_ptr() as usize;
    let off = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        start..start + s.len()
    };
    let method = off(req.method.unwrap_or("").as_bytes());
    let target = off(req.path.unwrap_or("").as_bytes());
    let minor = req.version.unwrap_or(1);
    let headers = req
        .headers
        .iter()
        .map(|h| (h.name.as_bytes().to_ascii_lowercase(), off(h.value)))
        .collect();
    Ok(Some(RawHead { len: len + skip, method, target, minor, headers }))
}

fn line_too_long(buf: &[u8], cfg: &Config) -> Option<Refusal> {
    let line_end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    (line_end > cfg.max_request_line_size).then_some(Refusal(414))
}

impl RawHead {
    /// Builds the [`Head`] from the split-off head bytes and applies the rules.
    pub fn finish(self, bytes: &Bytes, cfg: &Config) -> Result<Head, Refusal> {
        let method = bytes.slice(self.method);
        let target = bytes.slice(self.target);
        let http_version = if self.minor == 0 { "1.0" } else { "1.1" };
        let mut headers: Headers = Vec::with_capacity(self.headers.len());
        let mut cookie_at: Option<usize> = None;
        let mut f = Flags::default();
        for (name, range) in self.headers {
            let value = bytes.slice(range);
            f.note(&name, &value)?;
            if name == b"cookie" {
                if let Some(i) = cookie_at {
                    let mut joined = headers[i].1.to_vec();
                    joined.extend_from_slice(b"; ");
                    joined.extend_from_slice(&value);
                    headers[i].1 = Bytes::from(joined);
                    continue;
                }
                cookie_at = Some(headers.len());
            }
            headers.push((Bytes::from(name), value));
        }
        if self.minor == 1 && f.host_count == 0 || f.host_count > 1 {
            return Err(Refusal(400));
        }
        // RFC 9112 6.1: Transfer-Encoding in HTTP/1.0 means the framing is faulty.
        if self.minor == 0 && f.transfer_encoding.is_some() {
            return Err(Refusal(400));
        }
        let framing = f.framing(cfg)?;
        let websocket_key = f.websocket(self.minor, &method)?;
        let keep_alive = if self.minor == 0 { f.conn_keep_alive && !f.conn_close } else { !f.conn_close };
        let (raw_path, query_string) = split_target(&target);
        let path = percent_decode(&raw_path);
        let path_is_utf8 = std::str::from_utf8(&path).is_ok();
        Ok(Head {
            is_head_method: &method[..] == b"HEAD",
            method,
            raw_path,
            query_string,
            path,
            path_is_utf8,
            http_version,
            headers,
            framing,
            keep_alive,
            expect_continue: self.minor == 1 && f.expect_continue,
            te_trailers: f.te_trailers,
            event_stream: f.event_stream && websocket_key.is_none(),
            websocket_key,
        })
    }
}

/// What the head's headers say about framing and connection handling.
#[derive(Default)]
struct Flags {
    host_count: usize,
    content_length: Option<u64>,
    cl_too_big: bool,
    transfer_encoding: Option<Vec<u8>>,
    conn_close: bool,
    conn_keep_alive: bool,
    expect_continue: bool,
    te_trailers: bool,
    upgrade_websocket: bool,
    conn_upgrade: bool,
    ws_key: Option<Bytes>,
    ws_version: Option<Bytes>,
    event_stream: bool,
}

impl Flags {
    fn note(&mut self, name: &[u8], value: &[u8]) -> Result<(), Refusal> {
        match name {
            b"host" => self.host_count += 1,
            b"content-length" => {
                if self.content_length.is_some() || self.cl_too_big {
                    return Err(Refusal(400));
                }
                let v = trim(value);
                if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
                    return Err(Refusal(400));
                }
                let digits = v.iter().skip_while(|&&b| b == b'0').count();
                if digits > 10 {
                    self.cl_too_big = true;
                } else {
                    let n: u64 = std::str::from_utf8(v).unwrap().parse().map_err(|_| Refusal(400))?;
                    self.content_length = Some(n);
                }
            }
            b"transfer-encoding" => {
                let te = self.transfer_encoding.get_or_insert_with(Vec::new);
                if !te.is_empty() {
                    te.push(b',');
                }
                te.extend_from_slice(value);
            }
            b"connection" => {
                for token in value.split(|&b| b == b',') {
                    let t = trim(token);
                    if t.eq_ignore_ascii_case(b"close") {
                        self.conn_close = true;
                    } else if t.eq_ignore_ascii_case(b"keep-alive") {
                        self.conn_keep_alive = true;
                    } else if t.eq_ignore_ascii_case(b"upgrade") {
                        self.conn_upgrade = true;
                    }
                }
            }
            b"upgrade" => {
                self.upgrade_websocket |= value.split(|&b| b == b',').any(|t| trim(t).eq_ignore_ascii_case(b"websocket"))
            }
            b"accept" => {
                self.event_stream |= value.windows(17).any(|w| w.eq_ignore_ascii_case(b"text/event-stream"))
            }
            b"sec-websocket-key" => self.ws_key = Some(Bytes::copy_from_slice(trim(value))),
            b"sec-websocket-version" => self.ws_version = Some(Bytes::copy_from_slice(trim(value))),
            b"expect" => self.expect_continue = trim(value).eq_ignore_ascii_case(b"100-continue"),
            b"te" => {
                self.te_trailers |= value.split(|&b| b == b',').any(|t| {
                    let t = trim(t);
                    let t = t.split(|&b| b == b';').next().unwrap_or(t);
                    trim(t).eq_ignore_ascii_case(b"trailers")
                })
            }
            _ => {}
        }
        Ok(())
    }

    /// Whether this is a WebSocket opening handshake. An upgrade that names
    /// websocket but is malformed is refused: 426 for another protocol
    /// version, 400 for a method other than GET or a bad key. Without both
    /// `Upgrade: websocket` and `Connection: upgrade` it is plain HTTP.
    fn websocket(&self, minor: u8, method: &[u8]) -> Result<Option<Bytes>, Refusal> {
        if !(self.upgrade_websocket && self.conn_upgrade && minor == 1) {
            return Ok(None);
        }
        let Some(key) = &self.ws_key else { return Ok(None) };
        if method != b"GET" {
            return Err(Refusal(400));
        }
        if self.ws_version.as_deref() != Some(&b"13"[..]) {
            return Err(Refusal(426));
        }
        use base64::Engine as _;
        match base64::engine::general_purpose::STANDARD.decode(key) {
            Ok(raw) if raw.len() == 16 => Ok(Some(key.clone())),
            _ => Err(Refusal(400)),
        }
    }

    fn framing(&self, cfg: &Config) -> Result<Framing, Refusal> {
        if let Some(te) = &self.transfer_encoding {
            if self.content_length.is_some() || self.cl_too_big {
                return Err(Refusal(400));
            }
            let codings: Vec<&[u8]> = te.split(|&b| b == b',').map(trim).filter(|c| !c.is_empty()).collect();
            let chunked_at = codings.iter().position(|c| c.eq_ignore_ascii_case(b"chunked"));
            return match chunked_at {
                Some(i) if i + 1 == codings.len() => Ok(Framing::Chunked),
                Some(_) => Err(Refusal(400)),
                None => Err(Refusal(501)),
            };
        }
        if self.cl_too_big {
            return Err(Refusal(413));
        }
        match self.content_length {
            Some(n) if n > 2_147_483_647 => Err(Refusal(413)),
            Some(n) if cfg.max_body_size > 0 && n > cfg.max_body_size => Err(Refusal(413)),
            Some(0) | None => Ok(Framing::None),
            Some(n) => Ok(Framing::Length(n)),
        }
    }
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |e| e + 1);
    &v[start..end]
}


#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> Result<Head, Refusal> {
        let cfg = Config::default();
        let raw_head = parse(raw.as_bytes(), &cfg)?.expect("complete head");
        let bytes = Bytes::copy_from_slice(&raw.as_bytes()[..raw_head.len]);
        raw_head.finish(&bytes, &cfg)
    }

    #[test]
    fn headers_keep_wire_order_and_duplicates_and_merge_cookies() {
        let h = head("GET /a HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nCookie: a=1\r\nX-B: 2\r\nx-a: 3\r\nCookie: b=2\r\n\r\n").unwrap();
        let names: Vec<&[u8]> = h.headers.iter().map(|(n, _)| &n[..]).collect();
        assert_eq!(names, vec![&b"host"[..], b"x-a", b"cookie", b"x-b", b"x-a"]);
        assert_eq!(&h.headers[2].1[..], b"a=1; b=2");
        assert_eq!(&h.headers[4].1[..], b"3");
    }

    #[test]
    fn path_is_decoded_and_query_kept_raw() {
        let h = head("GET /caf%C3%A9/%ff%zz?x=%20 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(&h.raw_path[..], b"/caf%C3%A9/%ff%zz");
        assert_eq!(h.path, b"/caf\xc3\xa9/\xff%zz");
        assert!(!h.path_is_utf8);
        assert_eq!(&h.query_string[..], b"x=%20");
        let h = head("GET /caf%C3%A9 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert!(h.path_is_utf8);
    }

    #[test]
    fn absolute_form_target() {
        let h = head("GET http://example.com/p/q?z=1 HTTP/1.1\r\nHost: example.com\r\n\r\n").unwrap();
        assert_eq!(&h.raw_path[..], b"/p/q");
        assert_eq!(&h.query_string[..], b"z=1");
    }

    #[test]
    fn framing_rules() {
        assert_eq!(head("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n").unwrap().framing, Framing::Length(5));
        assert_eq!(head("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").unwrap().framing, Framing::Chunked);
        assert_eq!(head("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap_err(), Refusal(400));
        assert_eq!(head("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n").unwrap_err(), Refusal(400));
        assert_eq!(head("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n").unwrap_err(), Refusal(400));
        assert_eq!(head("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n").unwrap_err(), Refusal(400));
        assert_eq!(head("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n").unwrap_err(), Refusal(501));
        assert_eq!(head("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n").unwrap_err(), Refusal(413));
        assert_eq!(head("GET / HTTP/1.1\r\n\r\n").unwrap_err(), Refusal(400));
        assert!(head("GET / HTTP/1.0\r\n\r\n").is_ok());
    }

    #[test]
    fn keep_alive_and_expect() {
        assert!(head("GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap().keep_alive);
        assert!(!head("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap().keep_alive);
        assert!(!head("GET / HTTP/1.0\r\n\r\n").unwrap().keep_alive);
        assert!(head("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").unwrap().keep_alive);
        let h = head("POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nTE: trailers\r\nContent-Length: 1\r\n\r\n").unwrap();
        assert!(h.expect_continue && h.te_trailers);
    }

    #[test]
    fn websocket_upgrades() {
        let ok = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        assert!(head(ok).unwrap().websocket_key.is_some());
        assert_eq!(head(&ok.replace("Version: 13", "Version: 8")).unwrap_err(), Refusal(426));
        assert_eq!(head(&ok.replace("GET", "POST")).unwrap_err(), Refusal(400));
        assert_eq!(head(&ok.replace("dGhlIHNhbXBsZSBub25jZQ==", "short")).unwrap_err(), Refusal(400));
        assert!(head(&ok.replace("Upgrade: websocket\r\n", "")).unwrap().websocket_key.is_none());
    }

    #[test]
    fn partial_and_oversized_heads() {
        let cfg = Config::default();
        assert!(parse(b"GET / HTTP/1.1\r\nHost: x\r\n", &cfg).unwrap().is_none());
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(9000));
        assert_eq!(parse(long.as_bytes(), &cfg).err(), Some(Refusal(414)));
        let big = format!("GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n", "a".repeat(9000));
        assert_eq!(parse(big.as_bytes(), &cfg).err(), Some(Refusal(431)));
        assert_eq!(parse(b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n", &cfg).err(), Some(Refusal(400)));
    }
}
