//! Listeners and admission: accept loops, the kernel backlog at shutdown,
//! the connection cap (503), TLS handshakes, and handing each connection
//! to its protocol.

use crate::h1::conn::Conn;
use crate::seam::event::{Event, Reason};
use crate::server::ctx::{IoCtx, Phase};
use crate::server::runtime::{panic_message, CatchUnwind};
use crate::server::transport::Transport;
use crate::server::writer::sleep_opt;
use tokio::time::Instant;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// A listening socket handed over by Perl, before the runtime exists.
pub enum StdListener {
    /// A TCP listener; `true` when its connections speak TLS.
    Tcp(std::net::TcpListener, bool),
    Unix(std::os::unix::net::UnixListener),
}

/// The same, registered with the runtime.
pub enum Listener {
    Tcp(tokio::net::TcpListener, bool),
    Unix(tokio::net::UnixListener, String),
}

impl StdListener {
    pub fn into_tokio(self) -> std::io::Result<Listener> {
        Ok(match self {
            StdListener::Tcp(l, tls) => Listener::Tcp(tokio::net::TcpListener::from_std(l)?, tls),
            StdListener::Unix(l) => {
                let path = l.local_addr().ok().and_then(|a| a.as_pathname().map(|p| p.display().to_string())).unwrap_or_default();
                Listener::Unix(tokio::net::UnixListener::from_std(l)?, path)
            }
        })
    }
}

impl Listener {
    /// Accepts one connection and hands it to [`admit`].
    async fn accept_one(&self, ctx: &Rc<IoCtx>) -> std::io::Result<()> {
        match self {
            Listener::Tcp(l, tls) => {
                let (stream, _) = l.accept().await?;
                admit_tcp(ctx, stream, *tls);
            }
            Listener::Unix(l, path) => {
                let (stream, _) = l.accept().await?;
                admit(ctx, stream, None, (path.clone(), None), None);
            }
        }
        Ok(())
    }
}

impl Listener {
    /// Serves the connections already in the kernel's queue, and no others:
    /// raw non-blocking accept4(2) until EAGAIN, since the reactor may not
    /// have reported that backlog yet.
    fn drain_backlog(&self, ctx: &Rc<IoCtx>) {
        use std::os::fd::{AsRawFd, FromRawFd};
        let fd = match self {
            Listener::Tcp(l, _) => l.as_raw_fd(),
            Listener::Unix(l, _) => l.as_raw_fd(),
        };
        loop {
            // SAFETY: accept4 on our listening fd with null address pointers.
            let conn = unsafe { libc::accept4(fd, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) };
            if conn < 0 {
                return;
            }
            match self {
                Listener::Tcp(_, tls) => {
                    // SAFETY: `conn` is a fresh socket owned by nobody else.
                    let std_stream = unsafe { std::net::TcpStream::from_raw_fd(conn) };
                    if let Ok(stream) = tokio::net::TcpStream::from_std(std_stream) {
                        admit_tcp(ctx, stream, *tls);
                    }
                }
                Listener::Unix(_, path) => {
                    // SAFETY: `conn` is a fresh socket owned by nobody else.
                    let std_stream = unsafe { std::os::unix::net::UnixStream::from_raw_fd(conn) };
                    if let Ok(stream) = tokio::net::UnixStream::from_std(std_stream) {
                        admit(ctx, stream, None, (path.clone(), None), None);
                    }
                }
            }
        }
    }
}

pub async fn accept_loop(ctx: Rc<IoCtx>, listener: Listener) {
    let mut phase = ctx.phase.clone();
    loop {
        let accepted = tokio::select! {
            a = listener.accept_one(&ctx) => {
                if ctx.shared.test_panic.as_deref() == Some("accept") {
                    panic!("test panic in an accept loop (PAGI_NATIVE_TEST_PANIC=accept)");
                }
                a
            }
            _ = phase.wait_for(|p| *p != Phase::Running) => break,
        };
        if let Err(e) = accepted {
            // EMFILE and friends: back off instead of spinning on the error.
            ctx.shared.events.push(Event::Log { level: "warn", message: format!("accept failed: {e}") });
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Connections the kernel already completed are served, not reset: a
    // request sent before shutdown began is not lost.
    listener.drain_backlog(&ctx);
    ctx.accepting.set(ctx.accepting.get() - 1);
    ctx.all_closed.notify_waiters();
}

/// A TCP connection: served as is, or after a TLS handshake bounded by
/// `header_timeout` (a client that never finishes it is dropped). A
/// handshake in progress holds a connection slot; one that arrives over the
/// cap is still completed, so the client can read its 503.
fn admit_tcp(ctx: &Rc<IoCtx>, stream: tokio::net::TcpStream, tls: bool) {
    let _ = stream.set_nodelay(true);
    let client = stream.peer_addr().ok().map(|a| addr_pair(Some(a)));
    let local = addr_pair(stream.local_addr().ok());
    let server = (local.0, Some(local.1));
    let Some(settings) = ctx.shared.tls.as_ref().filter(|_| tls) else {
        admit(ctx, stream, client, server, None);
        return;
    };
    let over_cap = ctx.live.get() >= ctx.shared.config.effective_max_connections();
    if !over_cap {
        ctx.live.set(ctx.live.get() + 1);
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(settings.config.clone());
    let server_cert = settings.server_cert_pem.clone();
    let ctx = ctx.clone();
    let limit = ctx.shared.config.header_timeout;
    tokio::task::spawn_local(async move {
        let mut phase = ctx.phase.clone();
        let deadline = (!limit.is_zero()).then(|| Instant::now() + limit);
        let done = tokio::select! {
            r = acceptor.accept(stream) => r.ok(),
            _ = sleep_opt(deadline) => None,
            _ = phase.wait_for(|p| *p == Phase::Closing) => None,
        };
        if !over_cap {
            release_slot(&ctx);
        }
        match done {
            Some(tls_stream) if over_cap => refuse_at_capacity(tls_stream).await,
            Some(tls_stream) => {
                let info = crate::server::tls::info(tls_stream.get_ref().1, &server_cert);
                admit(&ctx, tls_stream, client, server, Some(Arc::new(info)));
            }
            None => {}
        }
    });
}

/// Gives back a connection slot; the drain waits for the last one.
fn release_slot(ctx: &IoCtx) {
    ctx.live.set(ctx.live.get() - 1);
    if ctx.live.get() == 0 {
        ctx.all_closed.notify_waiters();
    }
}

/// Serves a new connection, or answers 503 when the process is at capacity.
fn admit<S: Transport>(
    ctx: &Rc<IoCtx>,
    stream: S,
    client: Option<(String, u16)>,
    server: (String, Option<u16>),
    tls: Option<Arc<crate::server::tls::TlsInfo>>,
) {
    if ctx.live.get() >= ctx.shared.config.effective_max_connections() {
        tokio::task::spawn_local(refuse_at_capacity(stream));
        return;
    }
    let conn = Conn::new(ctx.clone(), stream, client, server, tls);
    spawn_conn(ctx.clone(), conn);
}

/// The 503 of PAGI-SPEC 5.1; the request is read and dropped briefly first so
/// closing does not turn into a reset that would hide the answer.
async fn refuse_at_capacity<S: Transport>(mut stream: S) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const BODY: &str = "503 Service Unavailable - Server at capacity\n";
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\nretry-after: 5\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<(), std::io::Error>(())
    })
    .await;
}

fn spawn_conn<S: Transport>(ctx: Rc<IoCtx>, mut conn: Conn<S>) {
    ctx.live.set(ctx.live.get() + 1);
    ctx.shared.stats.connections_active.fetch_add(1, Ordering::Relaxed);
    ctx.shared.stats.connections_total.fetch_add(1, Ordering::Relaxed);
    let current = conn.current.clone();
    // Boxed before the task is made: a task holds its future's largest
    // state for its whole life, and the one before the first poll would
    // otherwise be the whole `Conn`. `serve` borrows the `Conn` this block
    // owns: an async fn taking it by value would store it twice (the
    // argument, and the local it is moved into).
    let serve = Box::pin(async move { conn.serve().await });
    tokio::task::spawn_local(async move {
        if let Err(panic) = CatchUnwind(serve).await {
            let id = current.get();
            ctx.shared.events.push(Event::Log {
                level: "error",
                message: format!("connection task panicked: {}", panic_message(&*panic)),
            });
            if id != 0 {
                crate::server::ctx::unregister(&ctx, id);
                ctx.shared.events.push(Event::Disconnect { id, reason: Reason::ServerError });
            }
        }
        ctx.shared.stats.connections_active.fetch_sub(1, Ordering::Relaxed);
        release_slot(&ctx);
    });
}

/// `(ip, port)` with IPv4-mapped IPv6 addresses shown as plain IPv4.
fn addr_pair(addr: Option<SocketAddr>) -> (String, u16) {
    match addr {
        Some(SocketAddr::V6(a)) => match a.ip().to_ipv4_mapped() {
            Some(v4) => (v4.to_string(), a.port()),
            None => (a.ip().to_string(), a.port()),
        },
        Some(SocketAddr::V4(a)) => (a.ip().to_string(), a.port()),
        None => (String::new(), 0),
    }
}