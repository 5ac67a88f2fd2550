//! bcast-load: broadcast fan-out. N WebSocket or SSE clients listen on one
//! URL; a publisher POSTs numbered messages to another URL, which asks the
//! server to broadcast each one to every client. At most `--inflight`
//! broadcasts are outstanding: a broadcast is complete when every client has
//! received it. Counts deliveries (one message to one client) per second and
//! checks that every client got every message exactly once and in order.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use loadgen::{die, parse_url, run_threads, Args, Histogram, HttpReader, Json, StartLine, Url};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify, Semaphore};
use tokio_tungstenite::tungstenite::Message;

const USAGE: &str = "\
usage: bcast-load (--ws | --sse) --url URL --publish http://HOST:PORT/PATH
                  [--clients N] [--duration S] [--warmup S] [--size BYTES]
                  [--inflight N] [--threads N]
  --ws | --sse  what the clients are: WebSocket (--url ws://...) or
                Server-Sent Events (--url http://...)
  --url         the endpoint every client connects to; the server first sends
                each client the message 'ready' once it will get broadcasts
  --publish     HTTP endpoint: each POST body is one message the server
                broadcasts to every client; answered 2xx once queued
  --clients     listening clients (default 1000)
  --duration    measured seconds (default 5)
  --warmup      seconds of unmeasured broadcasts first (default 1)
  --size        bytes per message, at least 17 (default 64)
  --inflight    broadcasts outstanding at once (default 4)
  --threads     client threads, one single-threaded runtime each (default 1)
Prints one JSON line: tool mode clients size inflight seconds broadcasts
deliveries rate broadcasts_per_s p50_us p99_us max_us published missing
gaps dups bad errors. Exits 1 on any error, gap, dup, bad or missing message.
";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const READY_TIMEOUT: Duration = Duration::from_secs(60);
// How long the last broadcasts may take to reach every client after the window.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
// A broadcast that has not reached every client by then means one was lost.
const STALL_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECTS_IN_FLIGHT: usize = 256;
const MAX_REPORTED_ERRORS: usize = 5;
// Receipt counters are indexed by seq % RING; RING > inflight keeps slots apart.
const RING: usize = 1024;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Ws,
    Sse,
}

struct Config {
    mode: Mode,
    url: String,
    target: Url,
    clients: usize,
    size: usize,
    warmup: Duration,
    duration: Duration,
}

/// What the client threads and the publisher share.
struct Shared {
    /// Clients that received seq s, at s % RING.
    received: Vec<AtomicU32>,
    /// Woken when a broadcast reaches its last client.
    completed: Notify,
    /// The measured window, set once every client is ready.
    window: OnceLock<(Instant, Instant)>,
    /// Highest seq published so far (clients check their count against it at the end).
    published: AtomicU64,
}

/// One client's counts.
#[derive(Default, Clone)]
struct ClientResult {
    received: u64,
    in_window: u64,
    last: u64,
    gaps: u64,
    dups: u64,
    bad: u64,
    error: Option<String>,
}

/// The message with sequence number `seq`: 16 hex digits, a space, then
/// `b` up to `size` bytes (ASCII, so valid text too).
fn message_bytes(seq: u64, size: usize) -> Vec<u8> {
    let mut v = format!("{seq:016x} ").into_bytes();
    v.resize(size.max(17), b'b');
    v
}

/// The sequence number of a broadcast message, if it is well formed and
/// `size` bytes long.
fn parse_message(data: &[u8], size: usize) -> Option<u64> {
    if data.len() != size || data[16] != b' ' || !data[17..].iter().all(|&b| b == b'b') {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(&data[..16]).ok()?, 16).ok()
}

fn main() {
    let args = Args::parse(
        "bcast-load",
        USAGE,
        &["ws", "sse"],
        &["url", "publish", "clients", "duration", "warmup", "size", "inflight", "threads"],
    );
    let mode = match (args.flag("ws"), args.flag("sse")) {
        (true, false) => Mode::Ws,
        (false, true) => Mode::Sse,
        _ => args.usage_error("give exactly one of --ws and --sse"),
    };
    let url = args.required("url").to_string();
    let target = parse_url(&url, if mode == Mode::Ws { "ws" } else { "http" }).unwrap_or_else(|e| args.usage_error(&e));
    let publish = parse_url(args.required("publish"), "http").unwrap_or_else(|e| args.usage_error(&e));
    let cfg = Config {
        mode,
        url,
        target,
        clients: args.size("clients", 1000) as usize,
        size: args.size("size", 64) as usize,
        warmup: Duration::from_secs_f64(args.seconds("warmup", 1.0)),
        duration: Duration::from_secs_f64(args.seconds("duration", 5.0)),
    };
    let inflight = args.size("inflight", 4) as usize;
    let threads = args.size("threads", 1) as usize;
    if cfg.clients == 0 || threads == 0 || inflight == 0 || cfg.duration.is_zero() {
        args.usage_error("--clients, --threads, --inflight and --duration must be positive");
    }
    if cfg.clients > u32::MAX as usize {
        args.usage_error("--clients is too large");
    }
    if inflight >= RING {
        args.usage_error(&format!("--inflight must be below {RING}"));
    }
    if cfg.size < 17 {
        args.usage_error("--size must be at least 17 (16 hex digits of sequence number and a space)");
    }
    let cfg = Arc::new(cfg);
    let shared = Arc::new(Shared {
        received: (0..RING).map(|_| AtomicU32::new(0)).collect(),
        completed: Notify::new(),
        window: OnceLock::new(),
        published: AtomicU64::new(0),
    });
    let line = StartLine::new(cfg.clients);
    let (stop_tx, stop_rx) = watch::channel(false);

    let clients = {
        let (cfg, shared, line) = (cfg.clone(), shared.clone(), line.clone());
        std::thread::spawn(move || {
            run_threads(threads, cfg.clients, move |_, ids| {
                thread_main(cfg.clone(), shared.clone(), line.clone(), stop_rx.clone(), ids)
            })
        })
    };

    // The publisher runs on this thread, on a runtime of its own.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let publisher = rt.block_on(publisher(&cfg, &shared, &line, &publish, inflight));
    let _ = stop_tx.send(true);
    let results: Vec<ClientResult> = clients.join().expect("client threads panicked").into_iter().flatten().collect();

    let pubr = match publisher {
        Ok(p) => p,
        Err(e) => {
            eprintln!("bcast-load: publisher: {e}");
            PubResult { error: true, ..Default::default() }
        }
    };
    let errors: Vec<&String> = results.iter().filter_map(|r| r.error.as_ref()).collect();
    for e in errors.iter().take(MAX_REPORTED_ERRORS) {
        eprintln!("bcast-load: {e}");
    }
    if errors.len() > MAX_REPORTED_ERRORS {
        eprintln!("bcast-load: ... and {} more client errors", errors.len() - MAX_REPORTED_ERRORS);
    }
    let published = shared.published.load(Ordering::SeqCst);
    // A client that failed is counted under errors, not as missing messages.
    let missing: u64 = results.iter().filter(|r| r.error.is_none()).map(|r| published.saturating_sub(r.last)).sum();
    let deliveries: u64 = results.iter().map(|r| r.in_window).sum();
    let (gaps, dups, bad) = results.iter().fold((0, 0, 0), |a, r| (a.0 + r.gaps, a.1 + r.dups, a.2 + r.bad));
    let secs = cfg.duration.as_secs_f64();
    let error_count = errors.len() as u64 + pubr.error as u64;
    Json::new()
        .str("tool", "bcast-load")
        .str("mode", if cfg.mode == Mode::Ws { "ws" } else { "sse" })
        .int("clients", cfg.clients as u64)
        .int("size", cfg.size as u64)
        .int("inflight", inflight as u64)
        .num("seconds", secs, 3)
        .int("broadcasts", pubr.completed_in_window)
        .int("deliveries", deliveries)
        .num("rate", deliveries as f64 / secs, 1)
        .num("broadcasts_per_s", pubr.completed_in_window as f64 / secs, 1)
        .int("p50_us", pubr.hist.quantile(0.50))
        .int("p99_us", pubr.hist.quantile(0.99))
        .int("max_us", pubr.hist.max())
        .int("published", published)
        .int("missing", missing)
        .int("gaps", gaps)
        .int("dups", dups)
        .int("bad", bad)
        .int("errors", error_count)
        .print();
    if error_count > 0 || missing > 0 || gaps > 0 || dups > 0 || bad > 0 {
        eprintln!("bcast-load: {error_count} errors, {missing} missing, {gaps} gaps, {dups} dups, {bad} malformed messages");
        std::process::exit(1);
    }
    if deliveries == 0 {
        die("bcast-load", "no message was delivered inside the measured window");
    }
}

#[derive(Default)]
struct PubResult {
    /// Broadcasts that reached every client inside the window.
    completed_in_window: u64,
    /// Publish-to-last-receipt times of broadcasts published inside the window.
    hist: Histogram,
    error: bool,
}

/// Publishes until the window ends, keeping at most `inflight` broadcasts
/// incomplete, then waits for the last ones to reach every client.
async fn publisher(cfg: &Config, shared: &Shared, line: &StartLine, url: &Url, inflight: usize) -> Result<PubResult, String> {
    let start = line.wait(READY_TIMEOUT).await.map_err(|e| format!("waiting for every client's 'ready': {e}"))?;
    let window_start = start + cfg.warmup;
    let end = window_start + cfg.duration;
    let _ = shared.window.set((window_start, end));
    let mut res = PubResult::default();

    let tcp = TcpStream::connect(&url.authority).await.map_err(|e| format!("connect {}: {e}", url.authority))?;
    tcp.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
    let mut http = HttpReader::with_read_size(tcp, 4096);
    let clients = cfg.clients as u32;
    let mut published = 0u64; // highest seq published
    let mut done = 0u64; // every seq up to this one reached every client
    let mut sent_at: VecDeque<Instant> = VecDeque::new(); // publish instants of done+1..=published
    let mut progress_at = Instant::now();

    loop {
        // Clients receive in order, so seq n complete means every earlier one is too.
        while done < published && shared.received[((done + 1) as usize) % RING].load(Ordering::Acquire) >= clients {
            done += 1;
            let now = Instant::now();
            progress_at = now;
            let at = sent_at.pop_front().expect("publish instant");
            if at >= window_start && at < end {
                res.hist.record(now.duration_since(at).as_micros() as u64);
            }
            if now >= window_start && now < end {
                res.completed_in_window += 1;
            }
        }
        let now = Instant::now();
        if now >= end && done == published {
            return Ok(res);
        }
        if now < end && published - done < inflight as u64 {
            let seq = published + 1;
            // The slot's last user, seq - RING, is complete: RING > inflight.
            shared.received[(seq as usize) % RING].store(0, Ordering::Release);
            shared.published.store(seq, Ordering::SeqCst);
            sent_at.push_back(Instant::now());
            published = seq;
            post(&mut http, url, &message_bytes(seq, cfg.size)).await?;
            continue;
        }
        let limit = if now >= end { DRAIN_TIMEOUT } else { STALL_TIMEOUT };
        if now.duration_since(progress_at) > limit {
            let have = shared.received[((done + 1) as usize) % RING].load(Ordering::Acquire);
            return Err(format!(
                "broadcast {} reached only {have} of {clients} clients in {:.0} s ({published} published)",
                done + 1,
                limit.as_secs_f64()
            ));
        }
        // Woken by the client completing a broadcast; the timeout rechecks the clock.
        let _ = tokio::time::timeout(Duration::from_millis(20), shared.completed.notified()).await;
    }
}

/// One POST of `body` on the publisher's keep-alive connection; needs a 2xx.
async fn post(http: &mut HttpReader<TcpStream>, url: &Url, body: &[u8]) -> Result<(), String> {
    let mut req = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
        url.path,
        url.host,
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    http.get_mut().write_all(&req).await.map_err(|e| format!("send POST: {e}"))?;
    let head = http.read_head(false).await?;
    let mut answer = Vec::new();
    http.read_body(head.framing, |b| {
        if answer.len() < 200 {
            answer.extend_from_slice(b)
        }
    })
    .await?;
    if !(200..300).contains(&head.status) {
        return Err(format!("POST {} answered {}: {}", url.path, head.status, String::from_utf8_lossy(&answer)));
    }
    if head.header("connection").is_some_and(|c| c.eq_ignore_ascii_case("close")) {
        return Err(format!("POST {} closed the keep-alive connection", url.path));
    }
    Ok(())
}

async fn thread_main(
    cfg: Arc<Config>,
    shared: Arc<Shared>,
    line: Arc<StartLine>,
    stop: watch::Receiver<bool>,
    ids: std::ops::Range<usize>,
) -> Vec<ClientResult> {
    let connects = Rc::new(Semaphore::new(CONNECTS_IN_FLIGHT));
    let tasks: Vec<_> = ids
        .map(|id| {
            let (cfg, shared, line, connects, mut stop) =
                (cfg.clone(), shared.clone(), line.clone(), connects.clone(), stop.clone());
            tokio::task::spawn_local(async move {
                let res = RefCell::new(ClientResult::default());
                let arrived = Cell::new(false);
                let run = client(&cfg, &shared, &line, &connects, &arrived, &res);
                let outcome = tokio::select! {
                    r = run => r.and_then(|()| Err("the server ended the stream".to_string())),
                    _ = stop.wait_for(|s| *s) => Ok(()),
                };
                if !arrived.get() {
                    line.arrive(); // failed before 'ready': do not hold the others up
                }
                let mut res = res.into_inner();
                if let Err(e) = outcome {
                    res.error = Some(format!("client {id}: {e}"));
                }
                res
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap_or_else(|e| ClientResult { error: Some(format!("client task failed: {e}")), ..Default::default() }));
    }
    out
}

/// Counts one received message for a client.
fn receipt(cfg: &Config, shared: &Shared, res: &RefCell<ClientResult>, data: &[u8]) {
    let mut r = res.borrow_mut();
    let Some(seq) = parse_message(data, cfg.size) else {
        r.bad += 1;
        return;
    };
    if seq <= r.last {
        r.dups += 1;
        return;
    }
    if seq != r.last + 1 {
        r.gaps += seq - r.last - 1;
    }
    r.last = seq;
    r.received += 1;
    if let Some((from, to)) = shared.window.get() {
        let now = Instant::now();
        if now >= *from && now < *to {
            r.in_window += 1;
        }
    }
    if shared.received[(seq as usize) % RING].fetch_add(1, Ordering::AcqRel) + 1 == cfg.clients as u32 {
        shared.completed.notify_one();
    }
}

async fn client(
    cfg: &Config,
    shared: &Shared,
    line: &StartLine,
    connects: &Semaphore,
    arrived: &Cell<bool>,
    res: &RefCell<ClientResult>,
) -> Result<(), String> {
    let ready = || {
        if !arrived.get() {
            arrived.set(true);
            line.arrive();
        }
    };
    match cfg.mode {
        Mode::Ws => {
            let mut ws = {
                let _permit = connects.acquire().await.expect("connect semaphore");
                tokio::time::timeout(CONNECT_TIMEOUT, async {
                    let host = cfg.target.authority.as_str();
                    let tcp = TcpStream::connect(host).await.map_err(|e| format!("connect {host}: {e}"))?;
                    tcp.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
                    let (ws, _) = tokio_tungstenite::client_async(cfg.url.as_str(), tcp)
                        .await
                        .map_err(|e| format!("WebSocket handshake: {e}"))?;
                    Ok::<_, String>(ws)
                })
                .await
                .unwrap_or_else(|_| Err("connect/handshake timed out".into()))?
            };
            while let Some(msg) = ws.next().await {
                let msg = msg.map_err(|e| format!("receive: {e}"))?;
                let data: &[u8] = match &msg {
                    Message::Text(t) => t.as_bytes(),
                    Message::Binary(b) => b,
                    Message::Close(f) => return Err(format!("server closed the connection: {f:?}")),
                    _ => continue, // ping/pong: tungstenite answers pings itself
                };
                before_or_receipt(cfg, shared, res, arrived, &ready, data);
            }
            Err("connection closed by the server".into())
        }
        Mode::Sse => {
            let mut tcp = {
                let _permit = connects.acquire().await.expect("connect semaphore");
                let host = cfg.target.authority.as_str();
                tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(host))
                    .await
                    .map_err(|_| "connect timed out".to_string())?
                    .map_err(|e| format!("connect {host}: {e}"))?
            };
            tcp.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
            let request = format!(
                "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n",
                cfg.target.path, cfg.target.host
            );
            tcp.write_all(request.as_bytes()).await.map_err(|e| format!("send request: {e}"))?;
            let mut reader = HttpReader::with_read_size(tcp, 16384);
            let head = reader.read_head(false).await?;
            if head.status != 200 {
                return Err(format!("status {} (expected 200)", head.status));
            }
            let mut parser = SseData::new(cfg.size + 64);
            reader
                .read_body(head.framing, |bytes| parser.feed(bytes, |data| before_or_receipt(cfg, shared, res, arrived, &ready, data)))
                .await?;
            Err("the server ended the stream".into())
        }
    }
}

/// Until 'ready' only 'ready' may come (anything else counts as malformed);
/// after it, every message is a broadcast.
fn before_or_receipt(cfg: &Config, shared: &Shared, res: &RefCell<ClientResult>, arrived: &Cell<bool>, ready: &dyn Fn(), data: &[u8]) {
    if arrived.get() {
        receipt(cfg, shared, res, data);
    } else if data == b"ready" {
        ready();
    } else {
        res.borrow_mut().bad += 1;
    }
}

/// Splits an event stream into events and hands each one's data (data
/// lines joined with LF) to a callback. Comments and other fields are
/// skipped; data beyond `max` bytes is cut (and so fails the size check).
struct SseData {
    line: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
    after_cr: bool,
    max: usize,
}

impl SseData {
    fn new(max: usize) -> SseData {
        SseData { line: Vec::new(), data: Vec::new(), has_data: false, after_cr: false, max }
    }

    fn feed<F: FnMut(&[u8])>(&mut self, bytes: &[u8], mut on_event: F) {
        for &b in bytes {
            match b {
                b'\n' if self.after_cr => self.after_cr = false, // the LF of a CRLF
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    self.end_line(&mut on_event);
                }
                _ => {
                    self.after_cr = false;
                    if self.line.len() < self.max {
                        self.line.push(b);
                    }
                }
            }
        }
    }

    fn end_line<F: FnMut(&[u8])>(&mut self, on_event: &mut F) {
        if self.line.is_empty() {
            if self.has_data {
                on_event(&self.data);
            }
            self.data.clear();
            self.has_data = false;
            return;
        }
        if let Some(value) = self.line.strip_prefix(b"data") {
            let value = match value.first() {
                None => Some(&value[..0]),
                Some(b':') => Some(value[1..].strip_prefix(b" ").unwrap_or(&value[1..])),
                _ => None, // a field named data-something
            };
            if let Some(v) = value {
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(v);
                self.has_data = true;
            }
        }
        self.line.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let m = message_bytes(0x2a, 20);
        assert_eq!(m, b"000000000000002a bbb".to_vec());
        assert_eq!(parse_message(&m, 20), Some(42));
        assert_eq!(parse_message(&m, 21), None);
        assert_eq!(parse_message(b"000000000000002a bxb", 20), None);
        assert_eq!(parse_message(b"00000000000000zz bbb", 20), None);
    }

    #[test]
    fn sse_data_of_events() {
        let mut p = SseData::new(100);
        let mut got = Vec::new();
        p.feed(b": hi\n\nevent: x\ndata: ready\nid: 1\n\ndata:a\r\ndata: b\r\n\r", |d| got.push(d.to_vec()));
        p.feed(b"\nretry: 5\n\n", |d| got.push(d.to_vec()));
        assert_eq!(got, vec![b"ready".to_vec(), b"a\nb".to_vec()]);
    }
}
