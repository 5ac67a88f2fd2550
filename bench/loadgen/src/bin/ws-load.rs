//! ws-load: WebSocket echo load. Each connection keeps `--depth` messages in
//! flight, checks every echo's content and order, and times it; only echoes
//! that arrive inside the measured window (after the warmup) count.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use loadgen::{parse_url, run_threads, Args, Histogram, Json, StartLine};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

const USAGE: &str = "\
usage: ws-load --url ws://HOST:PORT/PATH [--connections N] [--duration S] [--warmup S]
               [--size BYTES] [--depth N] [--binary] [--threads N]
  --url          WebSocket echo endpoint (ws:// only)
  --connections  concurrent connections (default 50)
  --duration     measured seconds (default 5)
  --warmup       seconds of unmeasured load first (default 1)
  --size         bytes per message (default 32)
  --depth        messages in flight per connection (default 1: ping-pong)
  --binary       send binary messages instead of text
  --threads      client threads, one single-threaded runtime each (default 1)
Prints one JSON line: tool connections depth size seconds messages rate
p50_us p99_us max_us errors mismatches. Exits 1 on any error or mismatch.
";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const START_TIMEOUT: Duration = Duration::from_secs(60);
// Time after the window closes for the last echoes to come back.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECTS_IN_FLIGHT: usize = 256;
const MAX_REPORTED_ERRORS: u64 = 5;
static MISMATCHES_SHOWN: AtomicU64 = AtomicU64::new(0);

struct Config {
    url: String,
    authority: String,
    connections: usize,
    warmup: Duration,
    duration: Duration,
    size: usize,
    depth: usize,
    binary: bool,
}

#[derive(Default)]
struct Tally {
    hist: Histogram,
    messages: u64,
    errors: u64,
    mismatches: u64,
}

impl Tally {
    fn add(&mut self, o: &Tally) {
        self.hist.merge(&o.hist);
        self.messages += o.messages;
        self.errors += o.errors;
        self.mismatches += o.mismatches;
    }
}

fn main() {
    let args = Args::parse(
        "ws-load",
        USAGE,
        &["binary"],
        &["url", "connections", "duration", "warmup", "size", "depth", "threads"],
    );
    let url = args.required("url").to_string();
    let authority = parse_url(&url, "ws").unwrap_or_else(|e| args.usage_error(&e)).authority;
    let cfg = Config {
        url,
        authority,
        connections: args.size("connections", 50) as usize,
        warmup: Duration::from_secs_f64(args.seconds("warmup", 1.0)),
        duration: Duration::from_secs_f64(args.seconds("duration", 5.0)),
        size: args.size("size", 32) as usize,
        depth: args.size("depth", 1) as usize,
        binary: args.flag("binary"),
    };
    let threads = args.size("threads", 1) as usize;
    if cfg.connections == 0 || cfg.size == 0 || cfg.depth == 0 || threads == 0 || cfg.duration.is_zero() {
        args.usage_error("--connections, --size, --depth, --threads and --duration must be positive");
    }
    let cfg = Arc::new(cfg);
    let line = StartLine::new(cfg.connections);

    let c = cfg.clone();
    let results = run_threads(threads, cfg.connections, move |_, ids| thread_main(c.clone(), line.clone(), ids));
    let mut total = Tally::default();
    for r in &results {
        total.add(r);
    }

    let secs = cfg.duration.as_secs_f64();
    Json::new()
        .str("tool", "ws-load")
        .int("connections", cfg.connections as u64)
        .int("depth", cfg.depth as u64)
        .int("size", cfg.size as u64)
        .num("seconds", secs, 3)
        .int("messages", total.messages)
        .num("rate", total.messages as f64 / secs, 1)
        .int("p50_us", total.hist.quantile(0.50))
        .int("p99_us", total.hist.quantile(0.99))
        .int("max_us", total.hist.max())
        .int("errors", total.errors)
        .int("mismatches", total.mismatches)
        .print();
    if total.errors > 0 || total.mismatches > 0 {
        eprintln!("ws-load: {} errors, {} mismatched echoes", total.errors, total.mismatches);
        std::process::exit(1);
    }
    if total.messages == 0 {
        eprintln!("ws-load: no echo arrived inside the measured window");
        std::process::exit(1);
    }
}

async fn thread_main(cfg: Arc<Config>, line: Arc<StartLine>, ids: std::ops::Range<usize>) -> Tally {
    let connects = Rc::new(Semaphore::new(CONNECTS_IN_FLIGHT));
    let reported = Rc::new(Cell::new(0u64));
    let tasks: Vec<_> = ids
        .map(|id| {
            let (cfg, line, connects, reported) = (cfg.clone(), line.clone(), connects.clone(), reported.clone());
            tokio::task::spawn_local(async move {
                let mut tally = Tally::default();
                if let Err(e) = connection(id, &cfg, &line, &connects, &mut tally).await {
                    tally.errors += 1;
                    if reported.get() < MAX_REPORTED_ERRORS {
                        eprintln!("ws-load: connection {id}: {e}");
                    }
                    reported.set(reported.get() + 1);
                }
                tally
            })
        })
        .collect();
    let mut total = Tally::default();
    for t in tasks {
        match t.await {
            Ok(tally) => total.add(&tally),
            Err(e) => {
                eprintln!("ws-load: connection task failed: {e}");
                total.errors += 1;
            }
        }
    }
    if reported.get() > MAX_REPORTED_ERRORS {
        eprintln!("ws-load: ... and {} more connection errors", reported.get() - MAX_REPORTED_ERRORS);
    }
    total
}

/// The message with sequence number `seq` on connection `conn`: the low hex
/// digits of `seq` first, then the connection number, then a letter pattern,
/// exactly `size` bytes (ASCII, so it is valid text too).
fn message_bytes(conn: usize, seq: u64, size: usize) -> Vec<u8> {
    let head = format!("{seq:016x} {conn:08x} ");
    let mut v = Vec::with_capacity(size);
    if size < 16 {
        v.extend_from_slice(&head.as_bytes()[16 - size..16]);
    } else {
        v.extend_from_slice(&head.as_bytes()[..head.len().min(size)]);
        v.extend((v.len()..size).map(|i| b'a' + (i % 26) as u8));
    }
    v
}

fn make_message(cfg: &Config, conn: usize, seq: u64) -> Message {
    let bytes = message_bytes(conn, seq, cfg.size);
    if cfg.binary {
        Message::binary(bytes)
    } else {
        Message::text(String::from_utf8(bytes).expect("ASCII message"))
    }
}

async fn connection(
    id: usize,
    cfg: &Config,
    line: &StartLine,
    connects: &Semaphore,
    tally: &mut Tally,
) -> Result<(), String> {
    let connected = {
        let _permit = connects.acquire().await.expect("connect semaphore");
        tokio::time::timeout(CONNECT_TIMEOUT, async {
            let host = cfg.authority.as_str();
            let tcp = TcpStream::connect(host).await.map_err(|e| format!("connect {host}: {e}"))?;
            tcp.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
            // No extensions are offered: tungstenite does not negotiate
            // permessage-deflate, so frames go uncompressed.
            let (ws, _) = tokio_tungstenite::client_async(cfg.url.as_str(), tcp)
                .await
                .map_err(|e| format!("WebSocket handshake: {e}"))?;
            Ok::<_, String>(ws)
        })
        .await
        .unwrap_or_else(|_| Err("connect/handshake timed out".into()))
    };
    // Arrive even on failure so the other connections are not held up.
    line.arrive();
    let ws = connected?;
    let start = line.wait(START_TIMEOUT).await.map_err(|e| format!("waiting for the start: {e}"))?;
    let window_start = start + cfg.warmup;
    let end = window_start + cfg.duration;

    let (mut sink, mut stream) = ws.split();
    let inflight: RefCell<VecDeque<(u64, Instant)>> = RefCell::new(VecDeque::with_capacity(cfg.depth));
    let credits = Semaphore::new(cfg.depth);

    // Sends whenever the reader hands back a credit, until the window closes.
    let writer = async {
        let mut seq = 0u64;
        while let Ok(permit) = credits.acquire().await {
            permit.forget();
            let now = Instant::now();
            if now >= end {
                break;
            }
            // Recorded before the send so the reader always finds it.
            inflight.borrow_mut().push_back((seq, now));
            sink.send(make_message(cfg, id, seq)).await.map_err(|e| format!("send: {e}"))?;
            seq += 1;
        }
        Ok::<_, String>(())
    };

    let mut counts = Tally::default();
    let reader = async {
        let result = async {
            loop {
                if inflight.borrow().is_empty() && Instant::now() >= end {
                    return Ok(());
                }
                // With nothing in flight, wake at the window's end: the writer
                // may have stopped without sending, and nothing will arrive.
                let idle = inflight.borrow().is_empty();
                let deadline = if idle { end } else { end + DRAIN_TIMEOUT };
                let Ok(next) = tokio::time::timeout_at(deadline.into(), stream.next()).await else {
                    if idle {
                        continue;
                    }
                    return Err(format!("{} echoes still missing after the run", inflight.borrow().len()));
                };
                let msg = match next {
                    None => return Err("connection closed by the server".to_string()),
                    Some(Err(e)) => return Err(format!("receive: {e}")),
                    Some(Ok(m)) => m,
                };
                let now = Instant::now();
                let (payload, is_binary): (&[u8], bool) = match &msg {
                    Message::Text(t) => (t.as_bytes(), false),
                    Message::Binary(b) => (b, true),
                    Message::Close(f) => return Err(format!("server closed the connection: {f:?}")),
                    _ => continue, // ping/pong: tungstenite answers pings itself
                };
                let Some((seq, sent)) = inflight.borrow_mut().pop_front() else {
                    return Err("message received with none in flight".into());
                };
                if is_binary != cfg.binary || payload != message_bytes(id, seq, cfg.size).as_slice() {
                    counts.mismatches += 1;
                    // One line per connection at most, and a few in all.
                    if counts.mismatches == 1 && MISMATCHES_SHOWN.fetch_add(1, Ordering::Relaxed) < MAX_REPORTED_ERRORS {
                        let shown = String::from_utf8_lossy(&payload[..payload.len().min(40)]).into_owned();
                        eprintln!("ws-load: connection {id}: echo of message {seq} does not match (got {} bytes, {}: {shown:?})",
                            payload.len(), if is_binary { "binary" } else { "text" });
                    }
                }
                if now >= window_start && now < end {
                    counts.messages += 1;
                    counts.hist.record(now.duration_since(sent).as_micros() as u64);
                }
                credits.add_permits(1);
            }
        }
        .await;
        // Wakes the writer if it waits for a credit, so it ends too.
        credits.close();
        result
    };

    let (w, r) = futures_util::future::join(writer, reader).await;
    tally.add(&counts);
    w?;
    r?;

    // Clean close: send ours and wait for the server's.
    let mut ws = sink.reunite(stream).map_err(|_| "reunite failed".to_string())?;
    tokio::time::timeout(CLOSE_TIMEOUT, async {
        ws.close(None).await.map_err(|e| format!("close: {e}"))?;
        while let Some(m) = ws.next().await {
            if let Err(e) = m {
                return Err(format!("closing: {e}"));
            }
        }
        Ok(())
    })
    .await
    .unwrap_or_else(|_| Err("server did not answer the close".into()))
}

#[cfg(test)]
mod tests {
    use super::message_bytes;

    #[test]
    fn messages_have_the_size_and_sequence() {
        assert_eq!(message_bytes(3, 0x1f, 32), b"000000000000001f 00000003 abcdef".to_vec());
        assert_eq!(message_bytes(3, 0x1f, 4), b"001f".to_vec());
        assert_eq!(message_bytes(3, 5, 100).len(), 100);
    }
}
