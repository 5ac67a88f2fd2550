//! The payload a group message travels in between nodes (the Redis bridge
//! carries it opaquely): the message kind, its SSE fields and the id of the
//! connection the publisher excluded. Pure functions, no I/O.
//!
//! Layout (integers big-endian): `b'G'`, version `1`, a flags byte (bit 0
//! text, 1 event, 2 id, 3 retry, 4 exclude), then for each flagged field in
//! that order: event and id as a u32 length and UTF-8 bytes, retry and
//! exclude as u64; the rest is the data.

use crate::seam::event::{GroupMessage, Id};
use bytes::{BufMut, Bytes, BytesMut};

const MAGIC: u8 = b'G';
const VERSION: u8 = 1;
const TEXT: u8 = 1;
const EVENT: u8 = 2;
const ID: u8 = 4;
const RETRY: u8 = 8;
const EXCLUDE: u8 = 16;

/// A decoded payload.
#[derive(Debug, PartialEq, Eq)]
pub struct WireMessage {
    pub message: GroupMessage,
    /// The connection id the publisher excluded; meaningful only on the
    /// node that published (ids are per process), so other nodes ignore it.
    pub exclude: Option<Id>,
}

/// Encodes `message` (and the excluded connection) for another node.
pub fn encode_wire(message: &GroupMessage, exclude: Option<Id>) -> Bytes {
    let extra = message.event.as_ref().map_or(0, |e| e.len() + 4) + message.id.as_ref().map_or(0, |i| i.len() + 4);
    let mut out = BytesMut::with_capacity(3 + extra + 16 + message.data.len());
    let mut flags = 0;
    if message.text {
        flags |= TEXT;
    }
    if message.event.is_some() {
        flags |= EVENT;
    }
    if message.id.is_some() {
        flags |= ID;
    }
    if message.retry.is_some() {
        flags |= RETRY;
    }
    if exclude.is_some() {
        flags |= EXCLUDE;
    }
    out.put_u8(MAGIC);
    out.put_u8(VERSION);
    out.put_u8(flags);
    for s in [&message.event, &message.id].into_iter().flatten() {
        out.put_u32(s.len() as u32);
        out.put_slice(s.as_bytes());
    }
    if let Some(r) = message.retry {
        out.put_u64(r);
    }
    if let Some(x) = exclude {
        out.put_u64(x);
    }
    out.put_slice(&message.data);
    out.freeze()
}

/// Decodes a payload from [`encode_wire`]; refuses anything malformed,
/// including fields a local publish would have refused (text that is not
/// UTF-8, CR or LF in `event` or `id`).
pub fn decode_wire(payload: &[u8]) -> Result<WireMessage, String> {
    let mut r = Reader(payload);
    if r.u8()? != MAGIC {
        return Err("not a group message payload".into());
    }
    let version = r.u8()?;
    if version != VERSION {
        return Err(format!("group message payload version {version} is not supported"));
    }
    let flags = r.u8()?;
    if flags & !(TEXT | EVENT | ID | RETRY | EXCLUDE) != 0 {
        return Err("group message payload has unknown flags".into());
    }
    let event = if flags & EVENT != 0 { Some(r.string("event")?) } else { None };
    let id = if flags & ID != 0 { Some(r.string("id")?) } else { None };
    let retry = if flags & RETRY != 0 { Some(r.u64()?) } else { None };
    let exclude = if flags & EXCLUDE != 0 { Some(r.u64()?) } else { None };
    let text = flags & TEXT != 0;
    if text && std::str::from_utf8(r.0).is_err() {
        return Err("group message text is not UTF-8".into());
    }
    let message = GroupMessage { text, data: Bytes::copy_from_slice(r.0), event, id, retry };
    check_sse_fields(message.event.as_deref(), message.id.as_deref())?;
    Ok(WireMessage { message, exclude })
}

/// The SSE fields a message may carry: no CR or LF in `event` or `id`, no NUL in `id`.
pub fn check_sse_fields(event: Option<&str>, id: Option<&str>) -> Result<(), String> {
    for (name, value) in [("event", event), ("id", id)] {
        if value.is_some_and(|v| v.contains(['\r', '\n'])) {
            return Err(format!("'{name}' must not contain CR or LF"));
        }
    }
    if id.is_some_and(|v| v.contains('\0')) {
        return Err("'id' must not contain NUL".into());
    }
    Ok(())
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        if self.0.len() < n {
            return Err("group message payload is truncated".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().unwrap_or([0; 8])))
    }

    fn string(&mut self, what: &str) -> Result<String, String> {
        let n = u32::from_be_bytes(self.take(4)?.try_into().unwrap_or([0; 4])) as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| format!("group message '{what}' is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_field() {
        let m = GroupMessage {
            text: true,
            data: Bytes::from_static("h\u{e9}llo\nworld".as_bytes()),
            event: Some("tick".into()),
            id: Some("42".into()),
            retry: Some(1500),
        };
        let w = encode_wire(&m, Some(7));
        assert_eq!(decode_wire(&w).unwrap(), WireMessage { message: m, exclude: Some(7) });
        let bare = GroupMessage { text: false, data: Bytes::from_static(b"\xff\x00"), ..Default::default() };
        let w = encode_wire(&bare, None);
        assert_eq!(w.len(), 5);
        assert_eq!(decode_wire(&w).unwrap(), WireMessage { message: bare, exclude: None });
    }

    #[test]
    fn refuses_malformed_payloads() {
        assert!(decode_wire(b"").unwrap_err().contains("truncated"));
        assert!(decode_wire(b"X\x01\x00").unwrap_err().contains("not a group"));
        assert!(decode_wire(b"G\x02\x00").unwrap_err().contains("version"));
        assert!(decode_wire(b"G\x01\x01\xff").unwrap_err().contains("UTF-8"));
        assert!(decode_wire(b"G\x01\x02\x00\x00\x00\x09ab").unwrap_err().contains("truncated"));
        let bad = GroupMessage { event: Some("a\nb".into()), ..Default::default() };
        assert!(decode_wire(&encode_wire(&bad, None)).unwrap_err().contains("'event'"));
    }
}
