//! Response rules every protocol shares: the checks on app-supplied
//! headers, reason phrases and the Date header value.

use crate::seam::event::Headers;
use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

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

thread_local! {
    /// The Date header value, refreshed once a second.
    static DATE: RefCell<(u64, Vec<u8>)> = const { RefCell::new((u64::MAX, Vec::new())) };
}

/// Calls `f` with the current Date header value (cached per second).
pub fn with_http_date(f: impl FnOnce(&[u8])) {
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

    #[test]
    fn header_checks_name_the_header() {
        assert!(check_headers(&h(&[("x-ok", "fine")])).is_ok());
        assert!(check_headers(&h(&[("x-bad", "a\r\nb")])).unwrap_err().contains("x-bad"));
        assert!(check_headers(&h(&[("x bad", "a")])).unwrap_err().contains("name"));
        assert!(check_headers(&h(&[("x\0", "a")])).unwrap_err().contains("null"));
    }
}
