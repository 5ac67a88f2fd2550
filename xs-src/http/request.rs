//! Request-target rules every protocol shares: splitting the target into
//! path and query, and percent-decoding the path.

use bytes::Bytes;

/// Splits a request target into (raw path, query string); absolute-form
/// targets (`http://host/p?q`) lose their scheme and authority.
pub fn split_target(target: &Bytes) -> (Bytes, Bytes) {
    let mut t = target.clone();
    for scheme in [&b"http://"[..], &b"https://"[..]] {
        if t.len() >= scheme.len() && t[..scheme.len()].eq_ignore_ascii_case(scheme) {
            let rest = t.slice(scheme.len()..);
            let path_at = rest.iter().position(|&b| b == b'/' || b == b'?').unwrap_or(rest.len());
            t = rest.slice(path_at..);
            if t.is_empty() || t[0] == b'?' {
                let mut p = b"/".to_vec();
                p.extend_from_slice(&t);
                t = Bytes::from(p);
            }
            break;
        }
    }
    match t.iter().position(|&b| b == b'?') {
        Some(q) => (t.slice(..q), t.slice(q + 1..)),
        None => (t, Bytes::new()),
    }
}

/// Percent-decodes `raw`; malformed escapes stay as they are.
pub fn percent_decode(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' && i + 2 < raw.len() {
            if let (Some(h), Some(l)) = (hex(raw[i + 1]), hex(raw[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(raw[i]);
        i += 1;
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}
