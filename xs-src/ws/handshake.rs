//! The WebSocket opening handshake's answer (RFC 6455 4.2.2): the accept
//! key and the 101 response. Detection of a handshake request lives with
//! the request parser; this module only answers one.

use crate::seam::event::Headers;
use bytes::{BufMut, Bytes, BytesMut};

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for a client key (RFC 6455 4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    use base64::Engine as _;
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key);
    sha.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes())
}

/// The 101 response. Headers the handshake owns are not taken from the app,
/// and no extension is ever agreed (permessage-deflate is declined).
pub fn switching_protocols(key: &[u8], subprotocol: Option<&str>, headers: &Headers) -> Bytes {
    let mut out = BytesMut::with_capacity(256);
    out.put_slice(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: ");
    out.put_slice(accept_key(key).as_bytes());
    out.put_slice(b"\r\n");
    if let Some(p) = subprotocol {
        out.put_slice(b"sec-websocket-protocol: ");
        out.put_slice(p.as_bytes());
        out.put_slice(b"\r\n");
    }
    for (name, value) in headers {
        let owned = [&b"upgrade"[..], b"connection", b"sec-websocket-accept", b"sec-websocket-protocol", b"sec-websocket-extensions", b"content-length", b"transfer-encoding"];
        if owned.iter().any(|o| name.eq_ignore_ascii_case(o)) {
            continue;
        }
        out.put_slice(name);
        out.put_slice(b": ");
        out.put_slice(value);
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"\r\n");
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn handshake_response_keeps_its_own_headers() {
        let h: Headers = vec![(Bytes::from_static(b"x-a"), Bytes::from_static(b"1")), (Bytes::from_static(b"Upgrade"), Bytes::from_static(b"nope"))];
        let r = switching_protocols(b"dGhlIHNhbXBsZSBub25jZQ==", Some("chat"), &h);
        let t = std::str::from_utf8(&r).unwrap();
        assert!(t.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(t.contains("sec-websocket-protocol: chat\r\n") && t.contains("x-a: 1\r\n") && !t.contains("nope"));
    }
}
