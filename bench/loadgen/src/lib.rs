//! Shared pieces of the load tools in `src/bin/`: command-line parsing, a
//! latency histogram, one-line JSON output, URL splitting, a small HTTP/1.1
//! response reader, and the start/stop clock that runs several client threads
//! in step.
//!
//! The tools are benchmark clients, not libraries: errors are strings meant
//! for a human, and every tool ends by printing one JSON object on stdout.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};

// --- Command line -------------------------------------------------------------

/// Parsed `--name value` / `--name=value` / `--flag` arguments.
pub struct Args {
    prog: &'static str,
    usage: &'static str,
    values: HashMap<String, String>,
    flags: Vec<String>,
}

impl Args {
    /// Parses the process arguments. `flags` names the options that take no
    /// value; every other option takes one. `--help` prints `usage` and exits 0;
    /// anything malformed prints it and exits 2.
    pub fn parse(prog: &'static str, usage: &'static str, flags: &[&str], known: &[&str]) -> Args {
        let mut args = Args { prog, usage, values: HashMap::new(), flags: Vec::new() };
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            let Some(body) = arg.strip_prefix("--") else {
                args.usage_error(&format!("unexpected argument '{arg}'"));
            };
            if body == "help" {
                print!("{usage}");
                std::process::exit(0);
            }
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (body.to_string(), None),
            };
            if flags.contains(&name.as_str()) {
                if inline.is_some() {
                    args.usage_error(&format!("--{name} takes no value"));
                }
                args.flags.push(name);
                continue;
            }
            if !known.contains(&name.as_str()) {
                args.usage_error(&format!("unknown option --{name}"));
            }
            let value = match inline {
                Some(v) => v,
                None => it.next().unwrap_or_else(|| args.usage_error(&format!("--{name} needs a value"))),
            };
            args.values.insert(name, value);
        }
        args
    }

    /// Prints `msg` and the usage text to stderr and exits 2.
    pub fn usage_error(&self, msg: &str) -> ! {
        eprintln!("{}: {msg}\n{}", self.prog, self.usage);
        std::process::exit(2);
    }

    /// True if the value-less option `--name` was given.
    pub fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|f| f == name)
    }

    /// The raw value of `--name`, if given.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// The value of `--name`, which must be given.
    pub fn required(&self, name: &str) -> &str {
        self.get(name).unwrap_or_else(|| self.usage_error(&format!("--{name} is required")))
    }

    /// `--name` as a byte count or count (`parse_size` syntax), or `default`.
    pub fn size(&self, name: &str, default: u64) -> u64 {
        match self.get(name) {
            None => default,
            Some(v) => parse_size(v).unwrap_or_else(|| self.usage_error(&format!("--{name}: bad number '{v}'"))),
        }
    }

    /// `--name` as seconds (fractions allowed), or `default`.
    pub fn seconds(&self, name: &str, default: f64) -> f64 {
        match self.get(name) {
            None => default,
            Some(v) => match v.parse::<f64>() {
                Ok(s) if s >= 0.0 && s.is_finite() => s,
                _ => self.usage_error(&format!("--{name}: bad seconds '{v}'")),
            },
        }
    }
}

/// Parses a plain integer, optionally with a binary suffix: `64K`, `16M`,
/// `1G` (also `KiB`/`MiB`/`GiB`, any case). Returns None if malformed.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, suffix) = s.split_at(digits);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match suffix.to_ascii_lowercase().as_str() {
        "" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

// --- Output -------------------------------------------------------------------

/// Builds one flat JSON object, keys in insertion order.
#[derive(Default)]
pub struct Json {
    out: String,
}

impl Json {
    /// An empty object.
    pub fn new() -> Json {
        Json::default()
    }

    fn key(&mut self, k: &str) {
        self.out.push(if self.out.is_empty() { '{' } else { ',' });
        push_json_string(&mut self.out, k);
        self.out.push(':');
    }

    /// Adds a string value.
    pub fn str(mut self, k: &str, v: &str) -> Json {
        self.key(k);
        push_json_string(&mut self.out, v);
        self
    }

    /// Adds an integer value.
    pub fn int(mut self, k: &str, v: u64) -> Json {
        self.key(k);
        let _ = write!(self.out, "{v}");
        self
    }

    /// Adds a number, rounded to `decimals` places (NaN/infinite become 0).
    pub fn num(mut self, k: &str, v: f64, decimals: usize) -> Json {
        self.key(k);
        let v = if v.is_finite() { v } else { 0.0 };
        let _ = write!(self.out, "{v:.decimals$}");
        self
    }

    /// The finished object text.
    pub fn finish(mut self) -> String {
        if self.out.is_empty() {
            self.out.push('{');
        }
        self.out.push('}');
        self.out
    }

    /// Prints the object as one line on stdout and flushes.
    pub fn print(self) {
        let line = self.finish();
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

// --- Latency histogram --------------------------------------------------------

const SUB_BITS: u32 = 7;
const SUB: u64 = 1 << SUB_BITS;

/// Log-linear histogram of microsecond values: exact below 128 µs, then 128
/// buckets per power of two (under 1% error), so memory stays fixed however
/// long the run. The maximum is kept exactly.
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new()
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Histogram {
        // 64-bit values: SUB exact buckets plus SUB per octave above them.
        Histogram { counts: vec![0; (SUB * (64 - SUB_BITS as u64 + 1)) as usize], total: 0, max: 0 }
    }

    fn index(v: u64) -> usize {
        if v < SUB {
            return v as usize;
        }
        let msb = 63 - v.leading_zeros(); // >= SUB_BITS
        let shift = msb - SUB_BITS;
        let sub = (v >> shift) - SUB; // 0..SUB
        (SUB + shift as u64 * SUB + sub) as usize
    }

    // The highest value that falls into bucket `i`.
    fn upper(i: usize) -> u64 {
        let i = i as u64;
        if i < SUB {
            return i;
        }
        let shift = (i - SUB) / SUB;
        let sub = (i - SUB) % SUB;
        ((SUB + sub + 1) << shift) - 1
    }

    /// Records one value.
    pub fn record(&mut self, v: u64) {
        self.counts[Self::index(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    /// Adds another histogram's values to this one.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The largest value recorded (0 if none).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value at quantile `q` (0..=1): the upper edge of the bucket holding
    /// it, capped at the maximum. 0 if nothing was recorded.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::upper(i).min(self.max);
            }
        }
        self.max
    }
}

// --- URLs ---------------------------------------------------------------------

/// The parts of an `http://` or `ws://` URL this tooling needs.
pub struct Url {
    /// `host:port`, as given (port defaulted to 80).
    pub authority: String,
    /// Host part, for the Host header.
    pub host: String,
    /// Path and query, starting with `/`.
    pub path: String,
}

/// Splits `scheme://host[:port][/path]`; `scheme` is the one expected
/// (`http` or `ws`). Errors name the problem.
pub fn parse_url(url: &str, scheme: &str) -> Result<Url, String> {
    let rest = url
        .strip_prefix(scheme)
        .and_then(|r| r.strip_prefix("://"))
        .ok_or_else(|| format!("URL '{url}' must start with {scheme}:// (TLS is not supported)"))?;
    let (auth, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if auth.is_empty() {
        return Err(format!("URL '{url}' has no host"));
    }
    let has_port = match auth.rfind(':') {
        Some(i) => !auth[i..].contains(']'), // an IPv6 literal's colons are inside []
        None => false,
    };
    let authority = if has_port { auth.to_string() } else { format!("{auth}:80") };
    Ok(Url { authority, host: auth.to_string(), path: path.to_string() })
}

// --- HTTP/1.1 responses -------------------------------------------------------

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Framing {
    /// No body (1xx, 204, 304).
    Empty,
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Ends when the server closes the connection.
    Close,
}

/// A parsed response head.
pub struct Head {
    /// Status code.
    pub status: u16,
    /// Header (lower-cased name, value) pairs.
    pub headers: Vec<(String, String)>,
    /// How the body that follows is delimited.
    pub framing: Framing,
}

impl Head {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Reads HTTP/1.1 responses from a stream, keeping bytes read past one
/// response for the next (keep-alive connections).
pub struct HttpReader<R> {
    io: R,
    buf: Vec<u8>,
    start: usize, // unconsumed data is buf[start..]
    read_size: usize,
}

const MAX_HEAD: usize = 64 * 1024;

impl<R: AsyncRead + Unpin> HttpReader<R> {
    /// Wraps a stream; reads take up to 64 KiB at a time.
    pub fn new(io: R) -> HttpReader<R> {
        Self::with_read_size(io, 65536)
    }

    /// Wraps a stream; reads take up to `read_size` bytes at a time (small for
    /// many mostly idle connections, large for bulk bodies).
    pub fn with_read_size(io: R, read_size: usize) -> HttpReader<R> {
        HttpReader { io, buf: Vec::new(), start: 0, read_size: read_size.max(512) }
    }

    /// Frees the buffer if nothing unread is left in it, so an idle
    /// connection holds no buffer memory.
    pub fn release_buffer(&mut self) {
        if self.start == self.buf.len() {
            self.buf = Vec::new();
            self.start = 0;
        }
    }

    /// The wrapped stream, for writing requests.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.io
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    // Reads more bytes; Ok(0) at end of stream.
    async fn fill(&mut self) -> Result<usize, String> {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > self.read_size {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        // read_buf fills spare capacity, so nothing is zeroed first.
        self.buf.reserve(self.read_size);
        self.io.read_buf(&mut self.buf).await.map_err(|e| format!("read: {e}"))
    }

    // One line (without CRLF) from the buffer, reading as needed.
    async fn line(&mut self) -> Result<String, String> {
        loop {
            if let Some(i) = self.pending().iter().position(|&b| b == b'\n') {
                let raw = &self.buf[self.start..self.start + i];
                let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
                let line = String::from_utf8_lossy(raw).into_owned();
                self.start += i + 1;
                return Ok(line);
            }
            if self.pending().len() > MAX_HEAD {
                return Err("response line too long".into());
            }
            if self.fill().await? == 0 {
                return Err("connection closed before the response was complete".into());
            }
        }
    }

    /// Reads a response head (skipping any 1xx interim responses). `head_request`
    /// says the request was HEAD, so no body follows.
    pub async fn read_head(&mut self, head_request: bool) -> Result<Head, String> {
        loop {
            let status_line = self.line().await?;
            let mut parts = status_line.splitn(3, ' ');
            let version = parts.next().unwrap_or("");
            let status: u16 = parts
                .next()
                .and_then(|s| s.parse().ok())
                .filter(|_| version.starts_with("HTTP/1."))
                .ok_or_else(|| format!("bad status line '{status_line}'"))?;
            let mut headers = Vec::new();
            let mut size = status_line.len();
            loop {
                let line = self.line().await?;
                if line.is_empty() {
                    break;
                }
                size += line.len();
                if size > MAX_HEAD {
                    return Err("response head too large".into());
                }
                let (name, value) =
                    line.split_once(':').ok_or_else(|| format!("bad header line '{line}'"))?;
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
            }
            if (100..200).contains(&status) && status != 101 {
                continue;
            }
            let mut head = Head { status, headers, framing: Framing::Close };
            head.framing = if head_request || status == 204 || status == 304 || status == 101 {
                Framing::Empty
            } else if head
                .header("transfer-encoding")
                .is_some_and(|te| te.to_ascii_lowercase().split(',').any(|t| t.trim() == "chunked"))
            {
                Framing::Chunked
            } else if let Some(cl) = head.header("content-length") {
                Framing::Length(cl.parse().map_err(|_| format!("bad Content-Length '{cl}'"))?)
            } else {
                Framing::Close
            };
            return Ok(head);
        }
    }

    /// Reads the body that `framing` describes, handing each piece of decoded
    /// data to `sink` as it arrives; returns the body's length.
    pub async fn read_body<F: FnMut(&[u8])>(&mut self, framing: Framing, mut sink: F) -> Result<u64, String> {
        match framing {
            Framing::Empty => Ok(0),
            Framing::Length(n) => self.read_exact_into(n, &mut sink).await.map(|()| n),
            Framing::Close => {
                let mut total = 0u64;
                loop {
                    if !self.pending().is_empty() {
                        total += self.pending().len() as u64;
                        sink(self.pending());
                        self.start = self.buf.len();
                    }
                    if self.fill().await? == 0 {
                        return Ok(total);
                    }
                }
            }
            Framing::Chunked => {
                let mut total = 0u64;
                loop {
                    let line = self.line().await?;
                    let hex = line.split(';').next().unwrap_or("").trim();
                    let size = u64::from_str_radix(hex, 16).map_err(|_| format!("bad chunk size line '{line}'"))?;
                    if size == 0 {
                        // Trailers, up to the blank line.
                        while !self.line().await?.is_empty() {}
                        return Ok(total);
                    }
                    self.read_exact_into(size, &mut sink).await?;
                    total += size;
                    if !self.line().await?.is_empty() {
                        return Err("chunk not followed by CRLF".into());
                    }
                }
            }
        }
    }

    async fn read_exact_into<F: FnMut(&[u8])>(&mut self, mut n: u64, sink: &mut F) -> Result<(), String> {
        while n > 0 {
            if self.pending().is_empty() && self.fill().await? == 0 {
                return Err("connection closed before the body was complete".into());
            }
            let take = (self.pending().len() as u64).min(n) as usize;
            sink(&self.buf[self.start..self.start + take]);
            self.start += take;
            n -= take as u64;
        }
        Ok(())
    }
}

// --- Running client threads in step --------------------------------------------

/// Shared clock for client threads: each thread reports its clients ready;
/// when all are, the first thread to notice fixes the start instant, and every
/// thread then measures from that same instant.
pub struct StartLine {
    expected: usize,
    ready: AtomicUsize,
    start: OnceLock<Instant>,
    abort: AtomicBool,
}

impl StartLine {
    /// A start line waiting for `expected` clients.
    pub fn new(expected: usize) -> Arc<StartLine> {
        Arc::new(StartLine { expected, ready: AtomicUsize::new(0), start: OnceLock::new(), abort: AtomicBool::new(false) })
    }

    /// One more client is ready (or has given up: it still counts, so the
    /// others are not kept waiting).
    pub fn arrive(&self) {
        self.ready.fetch_add(1, Ordering::SeqCst);
    }

    /// Makes every waiter fail.
    pub fn abort(&self) {
        self.abort.store(true, Ordering::SeqCst);
    }

    /// Clients that have arrived so far.
    pub fn arrived(&self) -> usize {
        self.ready.load(Ordering::SeqCst)
    }

    /// Waits until all clients have arrived and returns the common start
    /// instant; Err if aborted or `timeout` passed first.
    pub async fn wait(&self, timeout: Duration) -> Result<Instant, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.abort.load(Ordering::SeqCst) {
                return Err("aborted".into());
            }
            if self.ready.load(Ordering::SeqCst) >= self.expected {
                return Ok(*self.start.get_or_init(Instant::now));
            }
            if Instant::now() >= deadline {
                self.abort();
                return Err(format!(
                    "only {} of {} clients were ready after {:.0} s",
                    self.arrived(),
                    self.expected,
                    timeout.as_secs_f64()
                ));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// Runs `f(thread_index, clients_in_this_thread)` on `threads` OS threads, each
/// with its own single-threaded tokio runtime, splitting `clients` between
/// them as evenly as possible; returns the results in thread order. One thread
/// (the default) means the client uses at most one core.
pub fn run_threads<T, F, Fut>(threads: usize, clients: usize, f: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize, std::ops::Range<usize>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = T>,
{
    let threads = threads.clamp(1, clients.max(1));
    let f = Arc::new(f);
    let mut handles = Vec::new();
    for t in 0..threads {
        let lo = clients * t / threads;
        let hi = clients * (t + 1) / threads;
        let f = f.clone();
        handles.push(std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, f(t, lo..hi))
        }));
    }
    handles.into_iter().map(|h| h.join().expect("client thread panicked")).collect()
}

/// Exits with status 1 after printing `msg` to stderr.
pub fn die(prog: &str, msg: &str) -> ! {
    eprintln!("{prog}: {msg}");
    std::process::exit(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1073741824"), Some(1 << 30));
        assert_eq!(parse_size("64K"), Some(65536));
        assert_eq!(parse_size("1g"), Some(1 << 30));
        assert_eq!(parse_size("2MiB"), Some(2 << 20));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("5q"), None);
    }

    #[test]
    fn histogram_quantiles() {
        let mut h = Histogram::new();
        for v in 1..=10_000u64 {
            h.record(v);
        }
        let p50 = h.quantile(0.5);
        assert!((4950..=5050).contains(&p50), "p50 {p50}");
        let p99 = h.quantile(0.99);
        assert!((9850..=10000).contains(&p99), "p99 {p99}");
        assert_eq!(h.max(), 10_000);
        assert_eq!(h.quantile(1.0), 10_000);
        for v in [0u64, 1, 127, 128, 129, 255, 256, 1000, 1 << 40] {
            assert!(Histogram::upper(Histogram::index(v)) >= v);
        }
    }

    #[test]
    fn json_escapes() {
        let j = Json::new().str("a", "x\"\n\u{1}").int("n", 3).num("f", 1.23456, 2).finish();
        assert_eq!(j, r#"{"a":"x\"\n\u0001","n":3,"f":1.23}"#);
    }

    #[test]
    fn urls() {
        let u = parse_url("ws://127.0.0.1:5000/echo?x=1", "ws").unwrap();
        assert_eq!((u.authority.as_str(), u.path.as_str()), ("127.0.0.1:5000", "/echo?x=1"));
        let u = parse_url("http://localhost", "http").unwrap();
        assert_eq!((u.authority.as_str(), u.path.as_str()), ("localhost:80", "/"));
        assert!(parse_url("https://x/", "http").is_err());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn chunked_then_keepalive() {
        let data: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3;x=y\r\nabc\r\n0\r\n\r\nHTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let mut r = HttpReader::new(data);
        let h = r.read_head(false).await.unwrap();
        assert_eq!(h.framing, Framing::Chunked);
        let mut body = Vec::new();
        assert_eq!(r.read_body(h.framing, |b| body.extend_from_slice(b)).await.unwrap(), 8);
        assert_eq!(body, b"helloabc");
        let h = r.read_head(false).await.unwrap();
        assert_eq!((h.status, h.framing), (204, Framing::Empty));
        let h = r.read_head(false).await.unwrap();
        assert_eq!(h.framing, Framing::Length(2));
        assert_eq!(r.read_body(h.framing, |_| {}).await.unwrap(), 2);
    }
}
