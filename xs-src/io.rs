//! The IO thread: a tokio `current_thread` runtime that accepts on the
//! listeners Perl handed over, serves connections, routes Perl's command
//! batches to them and carries out shutdown.

use crate::config::Config;
use crate::conn::{ActionSender, Conn};
use crate::event::{Command, Event, Id, Reason};
use crate::queue::EventQueue;
use crate::transport::Transport;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// Counters readable from Perl at any time.
#[derive(Default, Debug)]
pub struct Stats {
    pub connections_active: AtomicU64,
    pub connections_total: AtomicU64,
    pub requests_total: AtomicU64,
}

/// State shared by the Perl thread and the IO thread.
pub struct Shared {
    pub config: Config,
    pub events: EventQueue,
    /// Commands flushed by Perl, taken by the dispatcher in one go.
    pub commands: Mutex<Vec<Command>>,
    /// Wakes the dispatcher once per flushed batch.
    pub command_wake: Notify,
    pub next_id: AtomicU64,
    pub stats: Stats,
    /// Test-only switch (`PAGI_NATIVE_TEST_PANIC`), read once at `new`.
    pub test_panic: Option<String>,
    /// TLS configuration, built at `start` when a listener asked for TLS.
    pub tls: Option<crate::tls::Tls>,
}

/// Where the engine is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Running,
    /// Not accepting; idle connections close, requests in flight finish.
    Draining,
    /// Grace is over: every connection closes now.
    Closing,
}

/// IO-thread-only context handed to every task.
pub struct IoCtx {
    pub shared: Arc<Shared>,
    /// Request id → the connection serving it.
    pub registry: RefCell<HashMap<Id, ActionSender>>,
    pub phase: watch::Receiver<Phase>,
    live: Cell<usize>,
    /// Accept loops still running; the drain waits for them to hand over
    /// the connections queued before shutdown.
    accepting: Cell<usize>,
    all_closed: Notify,
}

/// Runs the IO thread until shutdown completes; a panic becomes a `fatal` event.
pub fn run_thread(shared: Arc<Shared>, listeners: Vec<StdListener>) {
    let result = catch_unwind(AssertUnwindSafe(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, io_main(shared.clone(), listeners));
    }));
    match result {
        Ok(()) => shared.events.push(Event::Stopped),
        Err(panic) => shared.events.push(Event::Fatal { message: format!("IO thread panicked: {}", panic_message(&*panic)) }),
    }
}

/// Text of a panic payload.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

async fn io_main(shared: Arc<Shared>, listeners: Vec<StdListener>) {
    if shared.test_panic.as_deref() == Some("io_thread") {
        panic!("test panic in the IO thread (PAGI_NATIVE_TEST_PANIC=io_thread)");
    }
    let (phase_tx, phase_rx) = watch::channel(Phase::Running);
    let ctx = Rc::new(IoCtx {
        shared: shared.clone(),
        registry: RefCell::new(HashMap::new()),
        phase: phase_rx,
        live: Cell::new(0),
        accepting: Cell::new(0),
        all_closed: Notify::new(),
    });
    for l in listeners {
        match l.into_tokio() {
            Ok(l) => {
                ctx.accepting.set(ctx.accepting.get() + 1);
                tokio::task::spawn_local(accept_loop(ctx.clone(), l));
            }
            Err(e) => shared.events.push(Event::Log { level: "error", message: format!("cannot watch listener: {e}") }),
        }
    }
    // The dispatcher keeps routing during the drain: in-flight requests still
    // need their responses. It publishes the shutdown deadline; a later
    // shutdown with a shorter grace (DESTROY uses 0) brings it forward.
    let (deadline_tx, mut deadline_rx) = watch::channel(None::<tokio::time::Instant>);
    tokio::task::spawn_local(dispatch(ctx.clone(), deadline_tx));
    let _ = deadline_rx.wait_for(|d| d.is_some()).await;
    let _ = phase_tx.send(Phase::Draining);
    loop {
        if ctx.live.get() == 0 && ctx.accepting.get() == 0 {
            return;
        }
        let deadline = deadline_rx.borrow().expect("set before draining");
        tokio::select! {
            _ = ctx.all_closed.notified() => {}
            _ = deadline_rx.changed() => {}
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    let _ = phase_tx.send(Phase::Closing);
    while ctx.live.get() > 0 || ctx.accepting.get() > 0 {
        ctx.all_closed.notified().await;
    }
}

/// Routes command batches to connections for the engine's whole life and
/// turns shutdown commands into the drain deadline.
async fn dispatch(ctx: Rc<IoCtx>, deadline: watch::Sender<Option<tokio::time::Instant>>) {
    loop {
        ctx.shared.command_wake.notified().await;
        let batch = std::mem::take(&mut *ctx.shared.commands.lock().unwrap_or_else(|p| p.into_inner()));
        let registry = ctx.registry.borrow();
        for cmd in batch {
            match cmd {
                Command::Request { id, action } => {
                    if let Some(conn) = registry.get(&id) {
                        let _ = conn.send((id, action));
                    }
                }
                Command::Shutdown { grace } => {
                    let at = tokio::time::Instant::now() + grace;
                    deadline.send_if_modified(|d| match d {
                        Some(old) if *old <= at => false,
                        _ => {
                            *d = Some(at);
                            true
                        }
                    });
                }
            }
        }
    }
}

/// A listening socket handed over by Perl, before the runtime exists.
pub enum StdListener {
    /// A TCP listener; `true` when its connections speak TLS.
    Tcp(std::net::TcpListener, bool),
    Unix(std::os::unix::net::UnixListener),
}

/// The same, registered with the runtime.
enum Listener {
    Tcp(tokio::net::TcpListener, bool),
    Unix(tokio::net::UnixListener, String),
}

impl StdListener {
    fn into_tokio(self) -> std::io::Result<Listener> {
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

async fn accept_loop(ctx: Rc<IoCtx>, listener: Listener) {
    let mut phase = ctx.phase.clone();
    loop {
        let accepted = tokio::select! {
            a = listener.accept_one(&ctx) => a,
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
/// `header_timeout` (a client that never finishes it is dropped).
fn admit_tcp(ctx: &Rc<IoCtx>, stream: tokio::net::TcpStream, tls: bool) {
    let _ = stream.set_nodelay(true);
    let client = stream.peer_addr().ok().map(|a| addr_pair(Some(a)));
    let local = addr_pair(stream.local_addr().ok());
    let server = (local.0, Some(local.1));
    let Some(settings) = ctx.shared.tls.as_ref().filter(|_| tls) else {
        admit(ctx, stream, client, server, None);
        return;
    };
    if ctx.live.get() >= ctx.shared.config.effective_max_connections() {
        return; // a plain-text 503 would be garbage inside TLS: just close
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(settings.config.clone());
    let server_cert = settings.server_cert_pem.clone();
    let ctx = ctx.clone();
    let limit = ctx.shared.config.header_timeout;
    tokio::task::spawn_local(async move {
        let handshake = acceptor.accept(stream);
        let done = if limit.is_zero() { Ok(handshake.await) } else { tokio::time::timeout(limit, handshake).await };
        if let Ok(Ok(tls_stream)) = done {
            let info = crate::tls::info(tls_stream.get_ref().1, &server_cert);
            admit(&ctx, tls_stream, client, server, Some(Arc::new(info)));
        }
    });
}

/// Serves a new connection, or answers 503 when the process is at capacity.
fn admit<S: Transport>(
    ctx: &Rc<IoCtx>,
    stream: S,
    client: Option<(String, u16)>,
    server: (String, Option<u16>),
    tls: Option<Arc<crate::tls::TlsInfo>>,
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

fn spawn_conn<S: Transport>(ctx: Rc<IoCtx>, conn: Conn<S>) {
    ctx.live.set(ctx.live.get() + 1);
    ctx.shared.stats.connections_active.fetch_add(1, Ordering::Relaxed);
    ctx.shared.stats.connections_total.fetch_add(1, Ordering::Relaxed);
    let current = conn.current.clone();
    tokio::task::spawn_local(async move {
        if let Err(panic) = (CatchUnwind(Box::pin(conn.serve()))).await {
            let id = current.get();
            ctx.shared.events.push(Event::Log {
                level: "error",
                message: format!("connection task panicked: {}", panic_message(&*panic)),
            });
            if id != 0 {
                ctx.registry.borrow_mut().remove(&id);
                ctx.shared.events.push(Event::Disconnect { id, reason: Reason::ServerError });
            }
        }
        ctx.shared.stats.connections_active.fetch_sub(1, Ordering::Relaxed);
        ctx.live.set(ctx.live.get() - 1);
        if ctx.live.get() == 0 {
            ctx.all_closed.notify_waiters();
        }
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

/// Polls a future, turning a panic into `Err` so one connection cannot take the thread down.
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future<Output = ()>> Future for CatchUnwind<F> {
    type Output = Result<(), Box<dyn std::any::Any + Send>>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let fut = self.0.as_mut();
        match catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(())) => Poll::Ready(Ok(())),
            Err(p) => Poll::Ready(Err(p)),
        }
    }
}
