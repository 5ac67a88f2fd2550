//! Server-Sent Events framing (the WHATWG event-stream format). Pure
//! functions, no I/O: the engine turns `sse.send` and `sse.comment` into
//! body chunks with them.

use bytes::{BufMut, Bytes, BytesMut};

/// Frames one event: `event:`, one `data:` line per line of `data` (split on
/// CRLF, LF or CR; empty data still gives one `data:` line so browsers
/// dispatch it), `id:`, `retry:`, then a blank line.
pub fn frame_event(event: Option<&str>, data: &str, id: Option<&str>, retry: Option<u64>) -> Result<Bytes, String> {
    for (name, value) in [("event", event), ("id", id)] {
        if let Some(v) = value {
            if v.contains(['\r', '\n']) {
                return Err(format!("'{name}' must not contain CR or LF"));
            }
        }
    }
    if id.is_some_and(|v| v.contains('\0')) {
        return Err("'id' must not contain NUL".into());
    }
    let mut out = BytesMut::with_capacity(data.len() + 32);
    if let Some(e) = event.filter(|e| !e.is_empty()) {
        out.put_slice(b"event: ");
        out.put_slice(e.as_bytes());
        out.put_u8(b'\n');
    }
    for line in lines(data) {
        out.put_slice(b"data: ");
        out.put_slice(line.as_bytes());
        out.put_u8(b'\n');
    }
    if let Some(i) = id.filter(|i| !i.is_empty()) {
        out.put_slice(b"id: ");
        out.put_slice(i.as_bytes());
        out.put_u8(b'\n');
    }
    if let Some(r) = retry {
        out.put_slice(format!("retry: {r}\n").as_bytes());
    }
    out.put_u8(b'\n');
    Ok(out.freeze())
}

/// Frames a comment: every line starts with `:` (added unless present), then a blank line.
pub fn frame_comment(comment: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(comment.len() + 4);
    for line in lines(comment) {
        if !line.starts_with(':') {
            out.put_u8(b':');
        }
        out.put_slice(line.as_bytes());
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
    out.freeze()
}

/// Splits on CRLF, LF or CR; an empty string is one empty line.
fn lines(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s;
    loop {
        match rest.find(['\r', '\n']) {
            Some(i) => {
                out.push(&rest[..i]);
                let skip = if rest[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = &rest[i + skip..];
            }
            None => {
                out.push(rest);
                return out;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_fields_in_order() {
        let b = frame_event(Some("tick"), "a\r\nb\nc\rd", Some("7"), Some(1500)).unwrap();
        assert_eq!(&b[..], b"event: tick\ndata: a\ndata: b\ndata: c\ndata: d\nid: 7\nretry: 1500\n\n");
    }

    #[test]
    fn empty_data_still_has_a_data_line() {
        assert_eq!(&frame_event(None, "", None, None).unwrap()[..], b"data: \n\n");
    }

    #[test]
    fn newlines_in_event_or_id_are_refused() {
        assert!(frame_event(Some("a\nb"), "x", None, None).unwrap_err().contains("event"));
        assert!(frame_event(None, "x", Some("1\r"), None).unwrap_err().contains("id"));
    }

    #[test]
    fn comments_get_colons() {
        assert_eq!(&frame_comment("hi\n:there")[..], b":hi\n:there\n\n");
        assert_eq!(&frame_comment("")[..], b":\n\n");
    }
}
