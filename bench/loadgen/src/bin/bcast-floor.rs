//! bcast-floor: the least work a server can do for bcast-load's broadcast,
//! so a run can say how close a real server gets to what this machine
//! allows. One thread, one tokio current-thread runtime (the shape of
//! pagi-server's IO thread), no application layer: a publish writes the
//! frame (encoded once) straight to every member's socket with one
//! `try_write` each, and only what a full socket refuses is queued for that
//! member's writer task. So a delivery costs one write syscall and nothing
//! else; a server that also runs an app, timers and flow control cannot be
//! faster with one write per member per message.
//!
//! It speaks just enough HTTP/1.1 for bench/run and bcast-load, on the same
//! routes as bench/apps/broadcast.pl under the prefix `/floor`:
//!   GET  /  and  GET /floor/check     200 text/plain
//!   WebSocket /floor/ws               then the text message "ready"
//!   GET  /floor/sse                   an event stream, first event data "ready"
//!   POST /floor/publish/ws|sse        the body to every member; 200 with the count
//! Requests must carry Content-Length when they have a body; anything else
//! is answered 400 and the connection closed.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use loadgen::{die, Args};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

const USAGE: &str = "\
usage: bcast-floor --port PORT [--host HOST]
  --host   address to listen on (default 127.0.0.1)
  --port   port to listen on (0 picks a free one; the port is printed)
Prints 'listening on HOST:PORT' once it accepts, then serves until killed.
";

/// Bytes a member may have queued past a full socket before it is dropped
/// (bcast-load's clients read everything, so this only bounds a broken one).
const MAX_PENDING: usize = 1 << 20;
const MAX_HEAD: usize = 16 * 1024;

/// One listening connection: its socket's write half, and what the socket
/// did not take yet.
struct Member {
    write: OwnedWriteHalf,
    state: RefCell<Pending>,
    wake: Notify,
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    dead: bool,
}

#[derive(Default)]
struct Groups {
    next: u64,
    ws: HashMap<u64, Rc<Member>>,
    sse: HashMap<u64, Rc<Member>>,
}

type Shared = Rc<RefCell<Groups>>;

fn main() {
    let args = Args::parse("bcast-floor", USAGE, &[], &["host", "port"]);
    let host = args.get("host").unwrap_or("127.0.0.1").to_string();
    let port = args.required("port").to_string();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap_or_else(|e| die("bcast-floor", &e.to_string()));
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = TcpListener::bind(format!("{host}:{port}")).await.unwrap_or_else(|e| die("bcast-floor", &format!("bind: {e}")));
        let addr = listener.local_addr().unwrap_or_else(|e| die("bcast-floor", &e.to_string()));
        println!("listening on {addr}");
        let groups: Shared = Rc::default();
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            let _ = tcp.set_nodelay(true);
            tokio::task::spawn_local(connection(tcp, groups.clone()));
        }
    });
}

/// A request head: method, path, Content-Length, Sec-WebSocket-Key.
struct Request {
    method: String,
    path: String,
    length: usize,
    ws_key: Option<String>,
}

fn parse_head(head: &[u8]) -> Option<Request> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, path) = (first.next()?.to_string(), first.next()?.to_string());
    let mut req = Request { method, path, length: 0, ws_key: None };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            req.length = value.parse().ok()?;
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            req.ws_key = Some(value.to_string());
        }
    }
    Some(req)
}

async fn connection(mut tcp: TcpStream, groups: Shared) {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        let end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            if buf.len() > MAX_HEAD || read_more(&mut tcp, &mut buf).await == 0 {
                return;
            }
        };
        let Some(req) = parse_head(&buf[..end]) else {
            let _ = tcp.write_all(&response(400, "bad request\n")).await;
            return;
        };
        while buf.len() < end + req.length {
            if read_more(&mut tcp, &mut buf).await == 0 {
                return;
            }
        }
        let body: Vec<u8> = buf[end..end + req.length].to_vec();
        buf.drain(..end + req.length);
        let answer = match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/") => response(200, "broadcast\n"),
            ("GET", "/floor/check") => response(200, "floor\n"),
            ("GET", "/floor/ws") if req.ws_key.is_some() => {
                let key = req.ws_key.unwrap_or_default();
                let mut hello = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                    derive_accept_key(key.as_bytes())
                )
                .into_bytes();
                hello.extend_from_slice(&ws_frame(b"ready"));
                return join(tcp, hello, &groups, true).await;
            }
            ("GET", "/floor/sse") => {
                let hello = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\r\ndata: ready\n\n".to_vec();
                return join(tcp, hello, &groups, false).await;
            }
            ("POST", "/floor/publish/ws") => response(200, &format!("{}\n", publish(&groups, true, &ws_frame(&body)))),
            ("POST", "/floor/publish/sse") => response(200, &format!("{}\n", publish(&groups, false, &sse_event(&body)))),
            _ => response(404, "Not Found\n"),
        };
        if tcp.write_all(&answer).await.is_err() {
            return;
        }
    }
}

async fn read_more(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> usize {
    let mut chunk = [0u8; 4096];
    match tcp.read(&mut chunk).await {
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            n
        }
        Err(_) => 0,
    }
}

fn response(status: u16, body: &str) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        _ => "Not Found",
    };
    format!("HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
}

/// One unmasked text frame.
fn ws_frame(data: &[u8]) -> Vec<u8> {
    let mut f = vec![0x81];
    match data.len() {
        n if n < 126 => f.push(n as u8),
        n if n < 65536 => {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(data);
    f
}

/// One SSE event whose data is `data` (bcast-load's messages are one line).
fn sse_event(data: &[u8]) -> Vec<u8> {
    let mut e = b"data: ".to_vec();
    e.extend_from_slice(data);
    e.extend_from_slice(b"\n\n");
    e
}

/// Writes `frame` to every member of one group: straight to the socket, or
/// after what is already pending. Returns how many members it went to.
fn publish(groups: &Shared, ws: bool, frame: &[u8]) -> usize {
    let mut g = groups.borrow_mut();
    let members = if ws { &mut g.ws } else { &mut g.sse };
    let mut n = 0;
    members.retain(|_, m| {
        let mut st = m.state.borrow_mut();
        if st.dead {
            return false;
        }
        n += 1;
        if !st.bytes.is_empty() {
            st.bytes.extend_from_slice(frame);
        } else {
            match m.write.try_write(frame) {
                Ok(w) if w == frame.len() => return true,
                Ok(w) => st.bytes.extend_from_slice(&frame[w..]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => st.bytes.extend_from_slice(frame),
                Err(_) => {
                    st.dead = true;
                    m.wake.notify_one();
                    return false;
                }
            }
            m.wake.notify_one();
        }
        if st.bytes.len() > MAX_PENDING {
            st.dead = true;
            m.wake.notify_one();
            return false;
        }
        true
    });
    n
}

/// Sends `hello`, registers the connection as a member, then writes what
/// publishes leave pending and reads (and ignores) the client until it goes.
async fn join(tcp: TcpStream, hello: Vec<u8>, groups: &Shared, ws: bool) {
    let (read, mut write) = tcp.into_split();
    if write.write_all(&hello).await.is_err() {
        return;
    }
    let member = Rc::new(Member { write, state: RefCell::default(), wake: Notify::new() });
    let id = {
        let mut g = groups.borrow_mut();
        g.next += 1;
        let id = g.next;
        if ws { g.ws.insert(id, member.clone()) } else { g.sse.insert(id, member.clone()) };
        id
    };
    tokio::select! {
        _ = drain_reads(read) => {}
        _ = writer(&member) => {}
    }
    member.state.borrow_mut().dead = true;
    let mut g = groups.borrow_mut();
    if ws { g.ws.remove(&id) } else { g.sse.remove(&id) };
}

async fn drain_reads(mut read: OwnedReadHalf) {
    let mut sink = [0u8; 4096];
    while matches!(read.read(&mut sink).await, Ok(n) if n > 0) {}
}

/// Flushes a member's pending bytes whenever a publish leaves some; ends
/// when the member is dead.
async fn writer(member: &Member) {
    loop {
        member.wake.notified().await;
        loop {
            if member.state.borrow().dead {
                return;
            }
            if member.write.writable().await.is_err() {
                return;
            }
            let mut st = member.state.borrow_mut();
            match member.write.try_write(&st.bytes) {
                Ok(w) => {
                    st.bytes.drain(..w);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
            if st.bytes.is_empty() {
                break;
            }
        }
    }
}
