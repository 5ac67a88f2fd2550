//! idle-conns: opens many keep-alive HTTP connections, makes one request on
//! each, leaves them idle (the harness measures the server's memory then),
//! and after the hold checks how many still answer a second request.

use std::cell::Cell;
use std::io::Write as _;
use std::rc::Rc;
use std::time::{Duration, Instant};

use loadgen::{die, Args, HttpReader, Json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

const USAGE: &str = "\
usage: idle-conns --addr HOST:PORT [--path /] [--connections N] [--hold S]
  --addr         server address
  --path         request path (default /)
  --connections  connections to open (default 10000)
  --hold         seconds to keep them idle; 0 = until stdin reaches EOF (default 5)
Prints `READY {\"open\":N,\"failed\":F,\"seconds_to_open\":S}` once every
connection has had its first response, then after the hold one JSON line:
tool connections open failed alive_after_hold seconds_to_open.
Exits 1 if any connection failed to open (connect error, timeout, non-2xx,
or a response that closes the connection).
";

const IN_FLIGHT: usize = 256;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_REPORTED_ERRORS: u64 = 5;
// Descriptors beyond the connections: stdio, the runtime's own, slack.
const SPARE_FDS: u64 = 64;

type Conn = HttpReader<TcpStream>;

fn main() {
    let args = Args::parse("idle-conns", USAGE, &[], &["addr", "path", "connections", "hold"]);
    let addr = args.required("addr").to_string();
    let path = args.get("path").unwrap_or("/").to_string();
    if !path.starts_with('/') {
        args.usage_error("--path must start with /");
    }
    let connections = args.size("connections", 10000) as usize;
    let hold = args.seconds("hold", 5.0);
    if connections == 0 {
        args.usage_error("--connections must be positive");
    }
    if let Err(e) = raise_nofile(connections as u64 + SPARE_FDS) {
        die("idle-conns", &e);
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let local = tokio::task::LocalSet::new();
    let code = local.block_on(&rt, run(addr, path, connections, hold));
    std::process::exit(code);
}

/// Raises RLIMIT_NOFILE's soft limit to its hard limit; Err if that is still
/// below `need`.
fn raise_nofile(need: u64) -> Result<(), String> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read or write the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(format!("getrlimit(RLIMIT_NOFILE): {}", std::io::Error::last_os_error()));
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(format!("setrlimit(RLIMIT_NOFILE, {}): {}", lim.rlim_max, std::io::Error::last_os_error()));
        }
        lim = raised;
    }
    if (lim.rlim_cur as u64) < need {
        return Err(format!(
            "open-file limit is {} (hard limit), {need} needed for these connections: raise it (ulimit -Hn, as root) or use fewer --connections",
            lim.rlim_cur
        ));
    }
    Ok(())
}

/// Sends one GET on `conn` and reads the whole response; Err unless it is a
/// 2xx that leaves the connection open.
async fn request(conn: &mut Conn, req: &[u8]) -> Result<(), String> {
    conn.get_mut().write_all(req).await.map_err(|e| format!("send: {e}"))?;
    let head = conn.read_head(false).await?;
    conn.read_body(head.framing, |_| {}).await?;
    conn.release_buffer();
    if !(200..300).contains(&head.status) {
        return Err(format!("status {}", head.status));
    }
    if head.framing == loadgen::Framing::Close
        || head.header("connection").is_some_and(|c| c.eq_ignore_ascii_case("close"))
    {
        return Err("the server closes the connection after the response (no keep-alive)".into());
    }
    Ok(())
}

async fn open_one(addr: &str, req: &[u8]) -> Result<Conn, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
    let mut conn = HttpReader::with_read_size(tcp, 4096);
    request(&mut conn, req).await?;
    Ok(conn)
}

fn report(reported: &Cell<u64>, what: &str, id: usize, e: &str) {
    if reported.get() < MAX_REPORTED_ERRORS {
        eprintln!("idle-conns: {what} connection {id}: {e}");
    }
    reported.set(reported.get() + 1);
}

async fn run(addr: String, path: String, connections: usize, hold: f64) -> i32 {
    let host = addr.clone();
    let req: Rc<[u8]> = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes().into();
    let addr: Rc<str> = addr.into();
    let gate = Rc::new(Semaphore::new(IN_FLIGHT));
    let reported = Rc::new(Cell::new(0u64));

    let t0 = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|id| {
            let (addr, req, gate, reported) = (addr.clone(), req.clone(), gate.clone(), reported.clone());
            tokio::task::spawn_local(async move {
                let _permit = gate.acquire().await.expect("semaphore");
                match tokio::time::timeout(REQUEST_TIMEOUT, open_one(&addr, &req)).await {
                    Ok(Ok(conn)) => Some(conn),
                    Ok(Err(e)) => {
                        report(&reported, "opening", id, &e);
                        None
                    }
                    Err(_) => {
                        report(&reported, "opening", id, "timed out");
                        None
                    }
                }
            })
        })
        .collect();
    let mut conns: Vec<Conn> = Vec::with_capacity(connections);
    for t in tasks {
        if let Ok(Some(c)) = t.await {
            conns.push(c);
        }
    }
    let seconds_to_open = t0.elapsed().as_secs_f64();
    let open = conns.len() as u64;
    let failed = connections as u64 - open;
    if reported.get() > MAX_REPORTED_ERRORS {
        eprintln!("idle-conns: ... and {} more failures opening", reported.get() - MAX_REPORTED_ERRORS);
    }
    {
        let ready = Json::new().int("open", open).int("failed", failed).num("seconds_to_open", seconds_to_open, 3).finish();
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "READY {ready}");
        let _ = out.flush();
    }

    if hold > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(hold)).await;
    } else {
        eprintln!("idle-conns: holding {open} connections until stdin reaches EOF");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            let _ = tx.send(());
        });
        let _ = rx.await;
    }

    // Second request on every connection still held.
    reported.set(0);
    let alive = Rc::new(Cell::new(0u64));
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(id, mut conn)| {
            let (req, gate, reported, alive) = (req.clone(), gate.clone(), reported.clone(), alive.clone());
            tokio::task::spawn_local(async move {
                let _permit = gate.acquire().await.expect("semaphore");
                match tokio::time::timeout(REQUEST_TIMEOUT, request(&mut conn, &req)).await {
                    Ok(Ok(())) => alive.set(alive.get() + 1),
                    // A closed connection may still answer with a 2xx plus
                    // Connection: close; it answered, so it counts as alive.
                    Ok(Err(e)) if e.contains("no keep-alive") => alive.set(alive.get() + 1),
                    Ok(Err(e)) => report(&reported, "re-using", id, &e),
                    Err(_) => report(&reported, "re-using", id, "timed out"),
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    if reported.get() > MAX_REPORTED_ERRORS {
        eprintln!("idle-conns: ... and {} more connections did not answer after the hold", reported.get() - MAX_REPORTED_ERRORS);
    }
    let alive = alive.get();
    Json::new()
        .str("tool", "idle-conns")
        .int("connections", connections as u64)
        .int("open", open)
        .int("failed", failed)
        .int("alive_after_hold", alive)
        .num("seconds_to_open", seconds_to_open, 3)
        .print();
    if failed > 0 {
        eprintln!("idle-conns: {failed} of {connections} connections failed to open");
        return 1;
    }
    if alive < open {
        eprintln!("idle-conns: {} of {open} connections no longer answered after the hold", open - alive);
    }
    0
}
