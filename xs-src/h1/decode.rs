//! Request-body framing: turns the bytes after a head into body chunks,
//! de-chunking `Transfer-Encoding: chunked`. No I/O: the caller reads.

use crate::h1::parse::{Framing, Refusal};
use bytes::{Buf, Bytes, BytesMut};

/// Longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;
/// A chunk size with more hex digits than this is refused with 413 (PAGI-SPEC 5.1).
const MAX_CHUNK_HEX_DIGITS: usize = 7;
/// Largest single chunk accepted (PAGI-SPEC 5.1: 413 above 10 MiB).
const MAX_CHUNK_SIZE: u64 = 10 * 1024 * 1024;

/// The result of one decoding step.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Body bytes (possibly empty when only the end was found); `more` is false at the end.
    Data(Bytes, bool),
    /// Nothing can be decoded until more bytes are read.
    NeedMore,
}

/// Where the reader is in a request body.
#[derive(Debug)]
pub enum BodyReader {
    /// The body is complete (or there was none).
    Done,
    /// This many Content-Length bytes remain.
    Length(u64),
    /// A chunked body in progress.
    Chunked(Chunked),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

/// State of a chunked decoder.
#[derive(Debug)]
pub struct Chunked {
    state: ChunkState,
    trailer_bytes: usize,
}

impl BodyReader {
    pub fn new(framing: Framing) -> Self {
        match framing {
            Framing::None => BodyReader::Done,
            Framing::Length(n) => BodyReader::Length(n),
            Framing::Chunked => BodyReader::Chunked(Chunked { state: ChunkState::Size, trailer_bytes: 0 }),
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self, BodyReader::Done)
    }

    /// Decodes up to `max` body bytes from the front of `buf`.
    pub fn step(&mut self, buf: &mut BytesMut, max: usize) -> Result<Step, Refusal> {
        match self {
            BodyReader::Done => Ok(Step::Data(Bytes::new(), false)),
            BodyReader::Length(left) => {
                if buf.is_empty() {
                    return Ok(Step::NeedMore);
                }
                let n = (*left).min(buf.len() as u64).min(max as u64) as usize;
                let data = buf.split_to(n).freeze();
                *left -= n as u64;
                let more = *left > 0;
                if !more {
                    *self = BodyReader::Done;
                }
                Ok(Step::Data(data, more))
            }
            BodyReader::Chunked(c) => {
                let step = c.step(buf, max)?;
                if let Step::Data(_, false) = step {
                    *self = BodyReader::Done;
                }
                Ok(step)
            }
        }
    }
}

impl Chunked {
    fn step(&mut self, buf: &mut BytesMut, max: usize) -> Result<Step, Refusal> {
        loop {
            match self.state {
                ChunkState::Size => {
                    let Some(line) = take_line(buf, MAX_CHUNK_LINE)? else { return Ok(Step::NeedMore) };
                    let size = parse_chunk_size(&line)?;
                    self.state = if size == 0 { ChunkState::Trailers } else { ChunkState::Data(size) };
                }
                ChunkState::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let n = left.min(buf.len() as u64).min(max as u64) as usize;
                    let data = buf.split_to(n).freeze();
                    let left = left - n as u64;
                    self.state = if left == 0 { ChunkState::DataEnd } else { ChunkState::Data(left) };
                    return Ok(Step::Data(data, true));
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Step::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(Refusal(400));
                    }
                    buf.advance(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    // Request trailers have no PAGI event; they are read and dropped.
                    let Some(line) = take_line(buf, MAX_CHUNK_LINE)? else { return Ok(Step::NeedMore) };
                    self.trailer_bytes += line.len() + 2;
                    if self.trailer_bytes > 65536 {
                        return Err(Refusal(431));
                    }
                    if line.is_empty() {
                        return Ok(Step::Data(Bytes::new(), false));
                    }
                    if !line.contains(&b':') {
                        return Err(Refusal(400));
                    }
                }
            }
        }
    }
}

/// Takes one CRLF-terminated line (without the CRLF) off the front of `buf`.
fn take_line(buf: &mut BytesMut, max: usize) -> Result<Option<BytesMut>, Refusal> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(i) => {
            if i == 0 || buf[i - 1] != b'\r' {
                return Err(Refusal(400));
            }
            let mut line = buf.split_to(i + 1);
            line.truncate(i - 1);
            Ok(Some(line))
        }
        None if buf.len() > max => Err(Refusal(400)),
        None => Ok(None),
    }
}

/// Parses `1a;ext=val` into the chunk size; extensions are checked for shape only.
fn parse_chunk_size(line: &[u8]) -> Result<u64, Refusal> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(Refusal(400));
    }
    let rest = &line[digits..];
    let rest_trimmed: &[u8] = {
        let s = rest.iter().position(|&b| b != b' ' && b != b'\t').unwrap_or(rest.len());
        &rest[s..]
    };
    if !valid_extensions(rest_trimmed) {
        return Err(Refusal(400));
    }
    let significant = &line[..digits];
    let significant = &significant[significant.iter().position(|&b| b != b'0').unwrap_or(digits)..];
    if significant.len() > MAX_CHUNK_HEX_DIGITS {
        return Err(Refusal(413));
    }
    let size = u64::from_str_radix(std::str::from_utf8(&line[..digits]).unwrap(), 16).map_err(|_| Refusal(400))?;
    if size > MAX_CHUNK_SIZE {
        return Err(Refusal(413));
    }
    Ok(size)
}

/// `*( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] )` (RFC 9112 7.1.1).
fn valid_extensions(mut ext: &[u8]) -> bool {
    fn skip_ws(s: &[u8]) -> &[u8] {
        let n = s.iter().take_while(|&&b| b == b' ' || b == b'\t').count();
        &s[n..]
    }
    fn token_len(s: &[u8]) -> usize {
        s.iter().take_while(|&&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)).count()
    }
    fn quoted_len(s: &[u8]) -> Option<usize> {
        let mut i = 1;
        while i < s.len() {
            match s[i] {
                b'"' => return Some(i + 1),
                b'\\' if i + 1 < s.len() => i += 2,
                b if (b < 0x20 && b != b'\t') || b == 0x7f => return None,
                _ => i += 1,
            }
        }
        None
    }
    loop {
        ext = skip_ws(ext);
        if ext.is_empty() {
            return true;
        }
        if ext[0] != b';' {
            return false;
        }
        ext = skip_ws(&ext[1..]);
        let name = token_len(ext);
        if name == 0 {
            return false;
        }
        ext = skip_ws(&ext[name..]);
        if ext.first() == Some(&b'=') {
            ext = skip_ws(&ext[1..]);
            let value = if ext.first() == Some(&b'"') { quoted_len(ext) } else { Some(token_len(ext)).filter(|&n| n > 0) };
            match value {
                Some(n) => ext = &ext[n..],
                None => return false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> Result<(Vec<u8>, bool), Refusal> {
        let mut r = BodyReader::new(Framing::Chunked);
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        loop {
            match r.step(&mut buf, 3)? {
                Step::Data(d, more) => {
                    out.extend_from_slice(&d);
                    if !more {
                        return Ok((out, true));
                    }
                }
                Step::NeedMore => return Ok((out, false)),
            }
        }
    }

    #[test]
    fn dechunks_with_extensions_and_trailers() {
        let (body, done) = decode_all(b"5;name=v\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT").unwrap();
        assert_eq!(body, b"hello world");
        assert!(done);
    }

    #[test]
    fn partial_input_needs_more() {
        let (body, done) = decode_all(b"5\r\nhel").unwrap();
        assert_eq!(body, b"hel");
        assert!(!done);
    }

    #[test]
    fn bad_chunks_are_refused() {
        assert_eq!(decode_all(b"zz\r\n").unwrap_err(), Refusal(400));
        assert_eq!(decode_all(b"5\r\nhelloXX").unwrap_err(), Refusal(400));
        assert_eq!(decode_all(b"5 junk\r\n").unwrap_err(), Refusal(400));
        assert_eq!(decode_all(b"5;=v\r\n").unwrap_err(), Refusal(400));
        assert_eq!(decode_all(b"5;a=\"open\r\n").unwrap_err(), Refusal(400));
        assert_eq!(decode_all(b"5;a=\r\n").unwrap_err(), Refusal(400));
        assert!(decode_all(b"5 ; a = \"q\\\"x\" ;b;c=d\r\nhello\r\n0\r\n\r\n").is_ok());
        assert_eq!(decode_all(b"5\nhello").unwrap_err(), Refusal(400));
        assert_eq!(decode_all(b"12345678\r\n").unwrap_err(), Refusal(413));
        assert_eq!(decode_all(b"A00001\r\n").unwrap_err(), Refusal(413));
        assert_eq!(decode_all(b"00000003\r\nabc\r\n0\r\n\r\n").unwrap().0, b"abc");
    }

    #[test]
    fn content_length_reader_stops_at_the_end() {
        let mut r = BodyReader::new(Framing::Length(4));
        let mut buf = BytesMut::from(&b"abcdefg"[..]);
        assert_eq!(r.step(&mut buf, 100).unwrap(), Step::Data(Bytes::from_static(b"abcd"), false));
        assert_eq!(&buf[..], b"efg");
        assert!(r.is_done());
    }
}
