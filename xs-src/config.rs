//! Engine options. Field names are the option names used by `PAGI::Server`
//! and `pagi-server`, so one name means one thing on both sides of the seam.

use std::time::Duration;

/// Limits and timeouts enforced by the IO thread.
#[derive(Clone, Debug)]
pub struct Config {
    /// Largest accepted request body in bytes (413 above it); 0 = unlimited.
    pub max_body_size: u64,
    /// Largest request head (request line plus headers) in bytes (431 above it).
    pub max_header_size: usize,
    /// Most request headers accepted (431 above it).
    pub max_header_count: usize,
    /// Longest request line in bytes (414 above it).
    pub max_request_line_size: usize,
    /// Keep-alive idle timeout between requests; zero disables it.
    pub timeout: Duration,
    /// Time allowed to receive a complete request head; zero disables it.
    pub header_timeout: Duration,
    /// Time a client may stall while the app waits for request-body bytes; zero disables it.
    pub body_timeout: Duration,
    /// Stall timer during a request, reset by any read or write; zero disables it.
    pub request_timeout: Duration,
    /// Concurrent connections per process; beyond it new ones get 503 (0 means 1000).
    pub max_connections: usize,
    /// Buffered response bytes at which `$send` starts to wait.
    pub write_high_watermark: usize,
    /// Buffered response bytes below which a waiting `$send` resumes.
    pub write_low_watermark: usize,
    /// Largest WebSocket message (and frame) accepted; bigger ones close with 1009.
    pub max_ws_frame_size: usize,
    /// Server-wide WebSocket ping interval; zero disables it.
    pub ws_ping_interval: Duration,
    /// Pong deadline after a server ping; zero waits forever.
    pub ws_ping_timeout: Duration,
    /// PEM certificate chain for TLS listeners.
    pub ssl_cert_file: Option<String>,
    /// PEM private key for TLS listeners.
    pub ssl_key_file: Option<String>,
    /// PEM CA certificates that client certificates must chain to.
    pub ssl_ca_file: Option<String>,
    /// The PEM text itself, as Perl read it before dropping privileges: when
    /// set, the engine never opens the matching `*_file` (which then only
    /// names the item in messages).
    pub ssl_cert_pem: Option<String>,
    pub ssl_key_pem: Option<String>,
    pub ssl_ca_pem: Option<String>,
    /// `none`, `optional` or `require` a client certificate.
    pub ssl_verify_client: String,
    /// `TLSv1_2` (default) or `TLSv1_3`.
    pub ssl_min_version: String,
    /// Colon-separated rustls suite names; empty = the provider's defaults.
    pub ssl_cipher_list: Option<String>,
    /// Value of the `server` response header; empty = do not add one.
    pub server_header: String,
    /// What a group message does to a member with more than
    /// `group_max_buffered` bytes unwritten: drop the member or skip it.
    pub group_overflow: GroupOverflow,
    /// Unwritten bytes above which a member counts as slow for group messages.
    pub group_max_buffered: usize,
    /// `pubsub`: the Redis server that carries group messages between
    /// processes and machines; `None` keeps groups local to this process.
    pub pubsub: Option<crate::pubsub::redis::RedisUrl>,
    /// Starts every Redis key and channel of the groups (`pubsub_prefix`),
    /// so several applications can share one Redis.
    pub pubsub_prefix: String,
    /// This process's node id (`node`): its own messages coming back from
    /// Redis are recognised by it.
    pub node: String,
}

/// The slow-member policy of group fan-out (see `crate::pubsub`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupOverflow {
    /// Close the member's connection (counted as `dropped`).
    Drop,
    /// Leave the message out for that member (counted as `skipped`).
    Skip,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_body_size: 10_000_000,
            max_header_size: 8192,
            max_header_count: 100,
            max_request_line_size: 8192,
            timeout: Duration::from_secs(60),
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(60),
            request_timeout: Duration::ZERO,
            max_connections: 0,
            write_high_watermark: 65536,
            write_low_watermark: 16384,
            max_ws_frame_size: 16 * 1024 * 1024,
            ws_ping_interval: Duration::from_secs(20),
            ws_ping_timeout: Duration::from_secs(20),
            ssl_cert_file: None,
            ssl_key_file: None,
            ssl_ca_file: None,
            ssl_cert_pem: None,
            ssl_key_pem: None,
            ssl_ca_pem: None,
            ssl_verify_client: "none".into(),
            ssl_min_version: "TLSv1_2".into(),
            ssl_cipher_list: None,
            server_header: concat!("PAGI-Server-Native/", env!("CARGO_PKG_VERSION")).to_string(),
            group_overflow: GroupOverflow::Drop,
            group_max_buffered: 1 << 20,
            pubsub: None,
            pubsub_prefix: "pagi:".into(),
            node: String::new(),
        }
    }
}

impl Config {
    /// Sets one option from its textual value, as handed over by Perl.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), String> {
        match name {
            "max_body_size" => self.max_body_size = parse_int(name, value)?,
            "max_header_size" => self.max_header_size = parse_size(name, value, 256)?,
            "max_header_count" => self.max_header_count = parse_size(name, value, 1)?,
            "max_request_line_size" => self.max_request_line_size = parse_size(name, value, 64)?,
            "timeout" => self.timeout = parse_seconds(name, value)?,
            "header_timeout" => self.header_timeout = parse_seconds(name, value)?,
            "body_timeout" => self.body_timeout = parse_seconds(name, value)?,
            "request_timeout" => self.request_timeout = parse_seconds(name, value)?,
            "max_connections" => self.max_connections = parse_size(name, value, 0)?,
            "write_high_watermark" => self.write_high_watermark = parse_size(name, value, 1)?,
            "write_low_watermark" => self.write_low_watermark = parse_size(name, value, 0)?,
            "max_ws_frame_size" => self.max_ws_frame_size = parse_size(name, value, 16)?,
            "ws_ping_interval" => self.ws_ping_interval = parse_seconds(name, value)?,
            "ws_ping_timeout" => self.ws_ping_timeout = parse_seconds(name, value)?,
            "ssl_cert_file" => self.ssl_cert_file = Some(value.to_string()),
            "ssl_key_file" => self.ssl_key_file = Some(value.to_string()),
            "ssl_ca_file" => self.ssl_ca_file = Some(value.to_string()),
            "ssl_cert_pem" => self.ssl_cert_pem = Some(value.to_string()),
            "ssl_key_pem" => self.ssl_key_pem = Some(value.to_string()),
            "ssl_ca_pem" => self.ssl_ca_pem = Some(value.to_string()),
            "ssl_verify_client" => self.ssl_verify_client = value.to_string(),
            "ssl_min_version" => self.ssl_min_version = value.to_string(),
            "ssl_cipher_list" => self.ssl_cipher_list = Some(value.to_string()),
            "server_header" => {
                if value.bytes().any(|b| b < 0x20 || b == 0x7f) {
                    return Err("server_header: contains control characters".into());
                }
                self.server_header = value.to_string();
            }
            "group_overflow" => {
                self.group_overflow = match value {
                    "drop" => GroupOverflow::Drop,
                    "skip" => GroupOverflow::Skip,
                    _ => return Err(format!("group_overflow: '{value}' must be drop or skip")),
                }
            }
            "group_max_buffered" => self.group_max_buffered = parse_size(name, value, 1)?,
            "pubsub" => {
                self.pubsub = if value.is_empty() { None } else { Some(crate::pubsub::redis::parse_url(value)?) }
            }
            "pubsub_prefix" => {
                if value.is_empty() || value.len() > 64 || value.contains(['\0', ' ', '\r', '\n']) {
                    return Err(format!("pubsub_prefix: '{value}' must be 1 to 64 bytes without spaces or line breaks"));
                }
                self.pubsub_prefix = value.to_string();
            }
            "node" => {
                if value.is_empty() || value.len() > 200 {
                    return Err("node: must be 1 to 200 bytes".into());
                }
                self.node = value.to_string();
            }
            _ => return Err(format!("unknown engine option '{name}'")),
        }
        Ok(())
    }

    /// The connection cap in force (`max_connections`, 0 meaning 1000).
    pub fn effective_max_connections(&self) -> usize {
        if self.max_connections == 0 { 1000 } else { self.max_connections }
    }

    /// Checks relations between options once all of them are set.
    pub fn validate(&self) -> Result<(), String> {
        if self.write_low_watermark > self.write_high_watermark {
            return Err(format!(
                "write_low_watermark ({}) must not exceed write_high_watermark ({})",
                self.write_low_watermark, self.write_high_watermark
            ));
        }
        Ok(())
    }
}

fn parse_int(name: &str, value: &str) -> Result<u64, String> {
    value
        .trim()
        .parse::<u64>()
        .map_err(|_| format!("{name}: '{value}' is not a non-negative integer"))
}

fn parse_size(name: &str, value: &str, min: usize) -> Result<usize, String> {
    let v = parse_int(name, value)? as usize;
    if v < min {
        return Err(format!("{name}: {v} is below the minimum of {min}"));
    }
    Ok(v)
}

fn parse_seconds(name: &str, value: &str) -> Result<Duration, String> {
    let secs: f64 = value
        .trim()
        .parse()
        .map_err(|_| format!("{name}: '{value}' is not a number of seconds"))?;
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{name}: '{value}' must be a non-negative number of seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_known_options_and_rejects_unknown() {
        let mut c = Config::default();
        c.set("max_body_size", "0").unwrap();
        assert_eq!(c.max_body_size, 0);
        c.set("timeout", "1.5").unwrap();
        assert_eq!(c.timeout, Duration::from_millis(1500));
        assert!(c.set("timeout", "-1").unwrap_err().contains("timeout"));
        assert!(c.set("bogus", "1").unwrap_err().contains("bogus"));
        assert!(c.set("max_header_count", "x").is_err());
        c.set("group_overflow", "skip").unwrap();
        assert_eq!(c.group_overflow, GroupOverflow::Skip);
        assert!(c.set("group_overflow", "block").unwrap_err().contains("drop or skip"));
    }

    #[test]
    fn low_watermark_must_not_exceed_high() {
        let mut c = Config::default();
        c.set("write_low_watermark", "100000").unwrap();
        assert!(c.validate().is_err());
    }
}
