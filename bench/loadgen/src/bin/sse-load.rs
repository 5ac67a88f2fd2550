//! sse-load: N Server-Sent Events clients on one URL. Counts the complete
//! events each client receives inside the measured window and checks that
//! numeric `id:` values advance by exactly one per client.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use loadgen::{parse_url, run_threads, Args, HttpReader, Json, StartLine, Url};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

const USAGE: &str = "\
usage: sse-load --url http://HOST:PORT/PATH [--clients N] [--duration S] [--warmup S] [--threads N]
  --url       SSE endpoint (http:// only)
  --clients   concurrent clients (default 50)
  --duration  measured seconds (default 5)
  --warmup    seconds after every client's first event before measuring (default 0.5)
  --threads   client threads, one single-threaded runtime each (default 1)
Prints one JSON line: tool clients seconds events rate per_client_min
per_client_max gaps dups errors. Exits 1 on any error (a client that got no
first event within 10 s, a refused or dropped connection, a non-200 answer).
";

const FIRST_EVENT_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_REPORTED_ERRORS: usize = 5;
// Field lines are cut here: only the field name and a short id value matter.
const MAX_KEPT_LINE: usize = 256;

struct Config {
    url: Url,
    clients: usize,
    warmup: Duration,
    duration: Duration,
}

/// One client's counts.
#[derive(Default, Clone)]
struct ClientResult {
    events: u64,
    gaps: u64,
    dups: u64,
    error: Option<String>,
}

/// Splits an event stream into events (blank-line separated), tracking ids.
#[derive(Default)]
struct SseParser {
    line: Vec<u8>,
    line_len: usize,
    after_cr: bool,
    has_fields: bool,
    id: Option<u64>,
    last_id: Option<u64>,
    gaps: u64,
    dups: u64,
}

impl SseParser {
    /// Feeds bytes; returns how many events they completed.
    fn feed(&mut self, data: &[u8]) -> u64 {
        let mut done = 0;
        for &b in data {
            match b {
                b'\n' if self.after_cr => self.after_cr = false, // the LF of a CRLF
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    done += self.end_line() as u64;
                }
                _ => {
                    self.after_cr = false;
                    self.line_len += 1;
                    if self.line.len() < MAX_KEPT_LINE {
                        self.line.push(b);
                    }
                }
            }
        }
        done
    }

    // Returns true if the line ended an event.
    fn end_line(&mut self) -> bool {
        let empty = self.line_len == 0;
        self.line_len = 0;
        if empty {
            let dispatch = self.has_fields;
            if dispatch {
                self.check_id();
            }
            self.has_fields = false;
            self.id = None;
            return dispatch;
        }
        if self.line[0] != b':' {
            self.has_fields = true;
            let (name, value) = match self.line.iter().position(|&c| c == b':') {
                Some(i) => (&self.line[..i], &self.line[i + 1..]),
                None => (&self.line[..], &b""[..]),
            };
            if name == b"id" {
                let value = value.strip_prefix(b" ").unwrap_or(value);
                self.id = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok());
            }
        }
        self.line.clear();
        false
    }

    fn check_id(&mut self) {
        let Some(id) = self.id else { return };
        if let Some(last) = self.last_id {
            if id <= last {
                self.dups += 1;
            } else if id != last + 1 {
                self.gaps += 1;
            }
        }
        self.last_id = Some(id);
    }
}

fn main() {
    let args = Args::parse("sse-load", USAGE, &[], &["url", "clients", "duration", "warmup", "threads"]);
    let url = parse_url(args.required("url"), "http").unwrap_or_else(|e| args.usage_error(&e));
    let cfg = Config {
        url,
        clients: args.size("clients", 50) as usize,
        warmup: Duration::from_secs_f64(args.seconds("warmup", 0.5)),
        duration: Duration::from_secs_f64(args.seconds("duration", 5.0)),
    };
    let threads = args.size("threads", 1) as usize;
    if cfg.clients == 0 || threads == 0 || cfg.duration.is_zero() {
        args.usage_error("--clients, --threads and --duration must be positive");
    }
    let cfg = Arc::new(cfg);
    let line = StartLine::new(cfg.clients);

    let c = cfg.clone();
    let results: Vec<ClientResult> = run_threads(threads, cfg.clients, move |_, ids| thread_main(c.clone(), line.clone(), ids))
        .into_iter()
        .flatten()
        .collect();

    let errors: Vec<&String> = results.iter().filter_map(|r| r.error.as_ref()).collect();
    for e in errors.iter().take(MAX_REPORTED_ERRORS) {
        eprintln!("sse-load: {e}");
    }
    if errors.len() > MAX_REPORTED_ERRORS {
        eprintln!("sse-load: ... and {} more client errors", errors.len() - MAX_REPORTED_ERRORS);
    }
    let events: u64 = results.iter().map(|r| r.events).sum();
    let secs = cfg.duration.as_secs_f64();
    Json::new()
        .str("tool", "sse-load")
        .int("clients", cfg.clients as u64)
        .num("seconds", secs, 3)
        .int("events", events)
        .num("rate", events as f64 / secs, 1)
        .int("per_client_min", results.iter().map(|r| r.events).min().unwrap_or(0))
        .int("per_client_max", results.iter().map(|r| r.events).max().unwrap_or(0))
        .int("gaps", results.iter().map(|r| r.gaps).sum())
        .int("dups", results.iter().map(|r| r.dups).sum())
        .int("errors", errors.len() as u64)
        .print();
    if !errors.is_empty() {
        std::process::exit(1);
    }
    if events == 0 {
        eprintln!("sse-load: no event arrived inside the measured window");
        std::process::exit(1);
    }
}

async fn thread_main(cfg: Arc<Config>, line: Arc<StartLine>, ids: std::ops::Range<usize>) -> Vec<ClientResult> {
    // The measured window, known once every client has its first event.
    let window: Rc<Cell<Option<(Instant, Instant)>>> = Rc::new(Cell::new(None));
    let (stop_tx, stop_rx) = watch::channel(false);
    let tasks: Vec<_> = ids
        .map(|id| {
            let (cfg, line, window, mut stop) = (cfg.clone(), line.clone(), window.clone(), stop_rx.clone());
            tokio::task::spawn_local(async move {
                let mut res = ClientResult::default();
                let arrived = Cell::new(false);
                let run = client(&cfg, &line, &window, &arrived, &mut res);
                let outcome = tokio::select! {
                    r = run => r.and_then(|()| Err("the server ended the stream".to_string())),
                    _ = stop.wait_for(|s| *s) => Ok(()),
                };
                if !arrived.get() {
                    line.arrive(); // failed before its first event: do not hold the others up
                }
                if let Err(e) = outcome {
                    res.error = Some(format!("client {id}: {e}"));
                }
                res
            })
        })
        .collect();

    match line.wait(FIRST_EVENT_TIMEOUT).await {
        Ok(start) => {
            let window_start = start + cfg.warmup;
            let end = window_start + cfg.duration;
            window.set(Some((window_start, end)));
            tokio::time::sleep_until(end.into()).await;
        }
        Err(e) => eprintln!("sse-load: waiting for every client's first event: {e}"),
    }
    let _ = stop_tx.send(true);

    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap_or_else(|e| ClientResult { error: Some(format!("client task failed: {e}")), ..Default::default() }));
    }
    // Clients stopped while still waiting for their first event count as errors.
    if line.arrived() < cfg.clients || window.get().is_none() {
        for r in out.iter_mut().filter(|r| r.error.is_none() && r.events == 0) {
            r.error = Some("no event within the measured window".into());
        }
    }
    out
}

async fn client(
    cfg: &Config,
    line: &StartLine,
    window: &Cell<Option<(Instant, Instant)>>,
    arrived: &Cell<bool>,
    res: &mut ClientResult,
) -> Result<(), String> {
    let mut tcp = TcpStream::connect(&cfg.url.authority).await.map_err(|e| format!("connect {}: {e}", cfg.url.authority))?;
    tcp.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n",
        cfg.url.path, cfg.url.host
    );
    tcp.write_all(request.as_bytes()).await.map_err(|e| format!("send request: {e}"))?;
    let mut reader = HttpReader::new(tcp);
    let head = reader.read_head(false).await?;
    if head.status != 200 {
        return Err(format!("status {} (expected 200)", head.status));
    }
    let mut parser = SseParser::default();
    // Counts go straight into `res`: at the stop this future is dropped mid-read.
    reader
        .read_body(head.framing, |data| {
            let done = parser.feed(data);
            res.gaps = parser.gaps;
            res.dups = parser.dups;
            if done == 0 {
                return;
            }
            if !arrived.get() {
                arrived.set(true);
                line.arrive();
            }
            if let Some((from, to)) = window.get() {
                let now = Instant::now();
                if now >= from && now < to {
                    res.events += done;
                }
            }
        })
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::SseParser;

    #[test]
    fn events_ids_and_line_endings() {
        let mut p = SseParser::default();
        assert_eq!(p.feed(b": comment\n\nevent: tick\nid: 1\ndata: x\n\n"), 1);
        // A CRLF split across reads: the CR ends the line, the LF is skipped.
        assert_eq!(p.feed(b"id: 2\r\ndata: y\r\n\r"), 1);
        assert_eq!(p.feed(b"\n"), 0);
        assert_eq!(p.feed(b"id: 4\rdata: z\r\rid: 4\ndata:\n\n"), 2);
        assert_eq!((p.gaps, p.dups), (1, 1));
    }
}
