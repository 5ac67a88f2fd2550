//! One HTTP/1.1 connection: read a head, hand the request to Perl, apply the
//! commands Perl sends back, write the response, then keep alive or close.
//!
//! Reading is pull-based: body bytes are read from the socket only while Perl
//! waits for them (`want_body`). Otherwise at most [`PEEK_LIMIT`] bytes are
//! read ahead, enough to notice a client that went away.

use crate::h1::decode::{BodyReader, Step};
use crate::seam::event::{Action, ConnCounters, Event, Headers, Id, Reason, RequestEvent, ScopeKind};
use crate::h1::parse::{self, Framing, Head};
use crate::server::ctx::{ActionSender, IoCtx, Phase};
use crate::h1::encode::{self as response, BodyFraming, H1Wire, RequestInfo};
use crate::http::exchange::{Applied, Resp, Response};
use bytes::{Bytes, BytesMut};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use std::future::poll_fn;
use crate::server::writer::{poll_io, poll_read_capped, sleep_opt, Io, Writer, HEAD_CHUNK, READ_CHUNK};
use crate::server::transport::Transport;
use tokio::sync::watch;
use tokio::time::Instant;

/// Read-ahead allowed while the app is not asking for the body.
pub const PEEK_LIMIT: usize = 64 * 1024;
/// Largest body chunk handed to Perl in one `body` event.
const BODY_CHUNK: usize = 256 * 1024;
/// Content-Length bodies up to this size come with the request event.
const PREREAD_MAX: u64 = 64 * 1024;
/// Unread request body the server will skip to keep a connection alive.
const DISCARD_MAX: u64 = 256 * 1024;
/// Empty lines tolerated before a request line (RFC 9112 2.2 asks for at least one).
const MAX_LEADING_EMPTY_LINES: usize = 8;


enum HeadResult {
    /// Boxed, so the connection task does not keep room for a head while idle.
    Head(Box<Head>),
    Refused(u16),
    Closed,
}

/// What woke the request loop.
enum Woke {
    Command((Id, Action)),
    Read(std::io::Result<usize>),
    Wrote,
    WriteFailed,
    WriteStalled,
    Draining,
    Closing,
    Stalled,
    Keepalive,
}

/// How one request ended.
enum Outcome {
    Finished { keep_alive: bool },
    Failed(Reason),
}


/// The state of the request being served.
struct Exchange {
    id: Id,
    info: RequestInfo,
    te_trailers: bool,
    body: BodyReader,
    body_total: u64,
    want_body: bool,
    continue_pending: bool,
    /// The protocol-neutral response state (see `http::exchange`).
    response: Response,
    framing: BodyFraming,
    keep_alive: bool,
}

/// This exchange's HTTP/1.1 side of the response rules (a macro, so the
/// borrows of the exchange's fields stay disjoint from `response`).
macro_rules! h1_wire {
    ($out:expr, $ex:expr, $shared:expr) => {
        H1Wire { out: $out, framing: &mut $ex.framing, keep_alive: &mut $ex.keep_alive, info: $ex.info, te_trailers: $ex.te_trailers, shared: $shared }
    };
}

/// A served connection.
pub struct Conn<S: Transport> {
    ctx: Rc<IoCtx>,
    stream: S,
    /// Commands from Perl; the registry holds the other reference.
    inbox: ActionSender,
    phase: watch::Receiver<Phase>,
    rbuf: BytesMut,
    out: Writer,
    eof: bool,
    counters: Arc<ConnCounters>,
    /// `None` on Unix-domain sockets (the scope then has no `client`).
    client: Option<(String, u16)>,
    /// `(path, None)` on Unix-domain sockets.
    server: (String, Option<u16>),
    /// Set on TLS connections.
    tls: Option<Arc<crate::server::tls::TlsInfo>>,
    /// The request in progress, for the panic guard in `io`.
    pub current: Rc<std::cell::Cell<Id>>,
}

impl<S: Transport> Conn<S> {
    pub fn new(ctx: Rc<IoCtx>, stream: S, client: Option<(String, u16)>, server: (String, Option<u16>), tls: Option<Arc<crate::server::tls::TlsInfo>>) -> Self {
        let phase = ctx.phase.clone();
        let counters = Arc::new(ConnCounters::default());
        let shared = ctx.shared.clone();
        Conn {
            ctx,
            stream,
            inbox: crate::server::ctx::Inbox::new(),
            phase,
            rbuf: BytesMut::new(),
            out: Writer::new(shared, counters.clone()),
            eof: false,
            counters,
            client,
            server,
            tls,
            current: Rc::new(std::cell::Cell::new(0)),
        }
    }

    /// Serves requests until the connection closes.
    pub async fn serve(&mut self) {
        let mut first = true;
        loop {
            // Everything but read_head runs boxed: a connection waiting
            // between requests then holds only read_head's small state.
            let step = match self.read_head(first).await {
                HeadResult::Head(head) => self.request_step(*head),
                HeadResult::Closed => break,
                HeadResult::Refused(status) => {
                    let server = self.ctx.shared.config.server_header.clone();
                    response::encode_error(self.out.buf(), status, &server);
                    self.refusal_step()
                }
            };
            first = false;
            if !step.await || *self.phase.borrow() != Phase::Running {
                break;
            }
        }
        self.close_step().await;
    }

    fn request_step(&mut self, head: Head) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + '_>> {
        Box::pin(self.handle_request(head))
    }

    /// Writes the refusal already encoded; the connection then closes.
    fn refusal_step(&mut self) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + '_>> {
        Box::pin(async move {
            self.finish_writes().await;
            false
        })
    }

    fn close_step(&mut self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>> {
        // A TLS close_notify is a write too: bounded, so a client that stopped
        // reading cannot hold the task.
        Box::pin(async move {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), self.stream.shutdown()).await;
        })
    }

    /// Writes what is queued, bounded by the write stall timer and the end of the grace.
    async fn finish_writes(&mut self) -> bool {
        let stall = self.ctx.shared.config.timeout;
        self.out.finish(&mut self.stream, &self.ctx, stall).await.is_ok()
    }

    /// Reads one request head under a deadline: `header_timeout` from its
    /// first byte (the keep-alive `timeout` while idle between requests).
    /// Leading empty lines are consumed as they come and bounded; the buffer
    /// is searched for the end of the head only past what was searched
    /// before, and parsed once the line and once the head is complete.
    async fn read_head(&mut self, first: bool) -> HeadResult {
        let cfg = &self.ctx.shared.config;
        let header_deadline = || (!cfg.header_timeout.is_zero()).then(|| Instant::now() + cfg.header_timeout);
        let mut deadline = if first {
            header_deadline()
        } else {
            (!cfg.timeout.is_zero()).then(|| Instant::now() + cfg.timeout)
        };
        if first && *self.phase.borrow() != Phase::Running {
            // Accepted from the backlog during shutdown: serve what was already sent, briefly.
            deadline = Some(Instant::now() + std::time::Duration::from_secs(1));
        }
        if !first && self.rbuf.is_empty() {
            // Between requests: hold no buffer memory until the next one comes.
            self.rbuf = BytesMut::new();
            self.out.release_idle();
            self.inbox.release_idle();
        }
        let mut head_started = first;
        let mut empty_lines = 0usize;
        let mut scanned = 0usize;
        let mut line_done = false;
        let limit = cfg.max_request_line_size + cfg.max_header_size;
        loop {
            if !self.rbuf.is_empty() && !head_started {
                head_started = true;
                deadline = header_deadline();
            }
            while scanned == 0 && !self.rbuf.is_empty() {
                let n = match &self.rbuf[..] {
                    [b'\r', b'\n', ..] => 2,
                    [b'\n', ..] => 1,
                    [b'\r'] => break, // the LF may be on its way
                    _ => break,
                };
                empty_lines += 1;
                if empty_lines > MAX_LEADING_EMPTY_LINES {
                    return HeadResult::Refused(400);
                }
                let _ = self.rbuf.split_to(n);
            }
            let prelude = empty_lines * 2;
            // A lone CR may be the start of one more empty line: wait for its LF.
            if !self.rbuf.is_empty() && !(scanned == 0 && &self.rbuf[..] == b"\r") {
                let from = scanned;
                scanned = self.rbuf.len();
                let end = find_head_end(&self.rbuf, from);
                let line_was_done = line_done;
                line_done = line_done || self.rbuf[from..].contains(&b'\n');
                if end.is_some() || (line_done && !line_was_done) {
                    match parse::parse(&self.rbuf, cfg) {
                        Ok(Some(raw)) => {
                            let bytes = self.rbuf.split_to(raw.len).freeze();
                            if self.rbuf.is_empty() {
                                // The head keeps the allocation; a read while the
                                // request runs would need a new one at once, and
                                // then waits for bytes before it allocates.
                                self.rbuf = BytesMut::new();
                            }
                            return match raw.finish(&bytes, cfg) {
                                Ok(h) => HeadResult::Head(Box::new(h)),
                                Err(r) => HeadResult::Refused(r.0),
                            };
                        }
                        Ok(None) => {}
                        Err(r) => return HeadResult::Refused(r.0),
                    }
                }
                if !line_done && self.rbuf.len() > cfg.max_request_line_size {
                    return HeadResult::Refused(414);
                }
                if self.rbuf.len() + prelude > limit {
                    return HeadResult::Refused(431);
                }
            }
            if self.eof {
                return if self.rbuf.is_empty() { HeadResult::Closed } else { HeadResult::Refused(400) };
            }
            let idle = self.rbuf.is_empty() && empty_lines == 0;
            let room = (limit + 1).saturating_sub(self.rbuf.len()).max(1);
            let first_conn = first;
            tokio::select! {
                r = poll_fn(|cx| poll_read_capped(cx, &mut self.stream, &mut self.rbuf, room, HEAD_CHUNK)) => match r {
                    Ok(0) | Err(_) => self.eof = true,
                    Ok(n) => { self.counters.bytes_read.fetch_add(n as u64, Ordering::Relaxed); }
                },
                _ = sleep_opt(deadline) => return HeadResult::Closed,
                _ = self.phase.wait_for(|p| if idle && !first_conn { *p != Phase::Running } else { *p == Phase::Closing }) => return HeadResult::Closed,
            }
        }
    }

    async fn handle_request(&mut self, head: Head) -> bool {
        let shared = self.ctx.shared.clone();
        if shared.test_panic.as_deref() == Some("request") {
            panic!("test panic in a connection task (PAGI_NATIVE_TEST_PANIC=request)");
        }
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        shared.stats.requests_total.fetch_add(1, Ordering::Relaxed);
        self.current.set(id);
        let mut body = BodyReader::new(head.framing);
        let mut pre = None;
        match head.framing {
            Framing::None => pre = Some(Bytes::new()),
            Framing::Length(n) if n <= PREREAD_MAX && !head.expect_continue => {
                // One deadline for the whole pre-read: a client dripping a byte
                // at a time cannot hold the slot before the app sees the request.
                let deadline = self.pre_read_deadline();
                if !self.fill_to(n as usize, deadline).await {
                    return false;
                }
                pre = Some(self.rbuf.split_to(n as usize).freeze());
                body = BodyReader::Done;
            }
            Framing::Chunked if !head.expect_continue && !self.rbuf.is_empty() && self.rbuf.len() <= PREREAD_MAX as usize => {
                // A small chunked body that already arrived whole is decoded
                // now, so a malformed one is refused before the app runs.
                match prefetch_chunked(&mut self.rbuf, self.ctx.shared.config.max_body_size) {
                    Ok(Some(whole)) => {
                        pre = Some(whole);
                        body = BodyReader::Done;
                    }
                    Ok(None) => {}
                    Err(status) => {
                        let server = self.ctx.shared.config.server_header.clone();
                        response::encode_error(self.out.buf(), status, &server);
                        self.finish_writes().await;
                        return false;
                    }
                }
            }
            _ => {}
        }
        let draining = *self.phase.borrow() != Phase::Running;
        let ws_key = head.websocket_key.clone();
        let info = RequestInfo {
            http10: head.http_version == "1.0",
            is_head: head.is_head_method,
            // A refused WebSocket handshake or an event stream ends the connection.
            keep_alive: head.keep_alive && !draining && ws_key.is_none() && !head.event_stream,
        };
        let mut ex = Exchange {
            id,
            info,
            te_trailers: head.te_trailers,
            body,
            body_total: pre.as_ref().map_or(0, |b| b.len() as u64),
            want_body: false,
            continue_pending: head.expect_continue,
            response: Response::new(ws_key.is_some()),
            framing: BodyFraming::Empty,
            keep_alive: false,
        };
        self.ctx.registry.borrow_mut().insert(id, self.inbox.clone());
        shared.events.push(Event::Request(Box::new(RequestEvent {
            id,
            kind: match (&ws_key, head.event_stream) {
                (Some(_), _) => ScopeKind::WebSocket,
                (None, true) => ScopeKind::Sse,
                (None, false) => ScopeKind::Http,
            },
            method: head.method,
            path: head.path,
            path_is_utf8: head.path_is_utf8,
            raw_path: head.raw_path,
            query_string: head.query_string,
            http_version: head.http_version,
            scheme: if self.tls.is_some() { "https" } else { "http" },
            tls: self.tls.clone(),
            headers: head.headers,
            client: self.client.clone(),
            server: self.server.clone(),
            body: pre,
            counters: self.counters.clone(),
        })));
        let outcome = self.exchange(&mut ex).await;
        if let (Outcome::Finished { .. }, Some((subprotocol, headers)), Some(key)) = (&outcome, ex.response.upgrade.take(), &ws_key) {
            self.websocket(id, key, subprotocol, headers).await;
            crate::server::ctx::unregister(&self.ctx, id);
            self.current.set(0);
            return false;
        }
        crate::server::ctx::unregister(&self.ctx, id);
        self.current.set(0);
        match outcome {
            Outcome::Finished { keep_alive } => {
                let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
                self.ctx.push_lazy(Event::Done { id, at });
                keep_alive && self.skip_unread_body(&mut ex).await
            }
            Outcome::Failed(reason) => {
                shared.events.push(Event::Disconnect { id, reason });
                false
            }
        }
    }

    /// Answers the handshake with 101 and runs the WebSocket session.
    async fn websocket(&mut self, id: Id, key: &Bytes, subprotocol: Option<String>, headers: Headers) {
        let response = crate::ws::handshake::switching_protocols(key, subprotocol.as_deref(), &headers);
        self.out.data(response, 0);
        if !self.finish_writes().await {
            self.ctx.shared.events.push(Event::WsDisconnect { id, code: 1006, reason: "write_error".into() });
            return;
        }
        let leftover = self.rbuf.split().to_vec();
        let session = crate::ws::session::Session {
            ctx: &self.ctx,
            id,
            counters: &self.counters,
            inbox: &self.inbox,
            phase: &mut self.phase,
            out: &mut self.out,
        };
        session.run(&mut self.stream, leftover).await;
    }

    /// The deadline for bytes read on the server's behalf before or after
    /// the app's part (the small-body pre-read, skipping an unread body).
    fn pre_read_deadline(&self) -> Option<Instant> {
        let cfg = &self.ctx.shared.config;
        let t = if cfg.header_timeout.is_zero() { cfg.timeout } else { cfg.header_timeout };
        (!t.is_zero()).then(|| Instant::now() + t)
    }

    /// Reads until `rbuf` holds `n` bytes by `deadline`; false if the client
    /// went away, missed the deadline, or the grace ended.
    async fn fill_to(&mut self, n: usize, deadline: Option<Instant>) -> bool {
        while self.rbuf.len() < n {
            if self.eof {
                return false;
            }
            let want = (n - self.rbuf.len()).max(4096);
            tokio::select! {
                r = poll_fn(|cx| poll_read_capped(cx, &mut self.stream, &mut self.rbuf, want, READ_CHUNK)) => match r {
                    Ok(m) if m > 0 => {
                        self.counters.bytes_read.fetch_add(m as u64, Ordering::Relaxed);
                    }
                    _ => {
                        self.eof = true;
                        return false;
                    }
                },
                _ = sleep_opt(deadline) => return false,
                _ = self.phase.wait_for(|p| *p == Phase::Closing) => return false,
            }
        }
        true
    }

    /// Serves one request from the request event to the last byte of its
    /// response. Commands, socket reads and writes, phase changes and every
    /// timer share one select, so nothing can block the others.
    async fn exchange(&mut self, ex: &mut Exchange) -> Outcome {
        let cfg = &self.ctx.shared.config;
        let (body_timeout, request_timeout, write_stall) = (cfg.body_timeout, cfg.request_timeout, cfg.timeout);
        let mut last_read = Instant::now();
        let mut last_activity = last_read;
        let mut noticed = *self.phase.borrow() != Phase::Running;
        self.out.set_id(ex.id);
        let inbox = self.inbox.clone();
        let _withdrawn = crate::server::ctx::WithdrawDirect(&inbox);
        let socket = self.stream.plain_socket();
        loop {
            // A streaming body (SSE) with nothing of its own unwritten lets
            // group fan-outs write events straight to the socket; anything
            // queued here withdraws that at the top of the next pass.
            let chunked = match ex.framing {
                BodyFraming::Chunked => Some(true),
                BodyFraming::Close => Some(false),
                _ => None,
            };
            let idle = ex.response.is_streaming() && ex.response.upgrade.is_none() && self.out.is_idle();
            inbox.set_direct(socket.zip(chunked).filter(|_| idle).map(|(fd, chunked)| crate::server::ctx::DirectSocket { fd, chunked }));
            let need_body = ex.want_body && !ex.body.is_done();
            let can_read = !self.eof && (need_body || self.rbuf.len() < PEEK_LIMIT);
            // Without a body request, read only up to PEEK_LIMIT bytes ahead in total.
            let read_limit = if !can_read { 0 } else if need_body { BODY_CHUNK } else { PEEK_LIMIT.saturating_sub(self.rbuf.len()) };
            // Reading ahead for the next request (no body wanted) grows the
            // buffer by a head's worth, not a body chunk's.
            let read_chunk = if need_body { READ_CHUNK } else { HEAD_CHUNK };
            let body_deadline = (need_body && !body_timeout.is_zero()).then(|| last_read + body_timeout);
            let stall_deadline = (!request_timeout.is_zero()).then(|| last_activity + request_timeout);
            let deadline = match (body_deadline, stall_deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let write_deadline = self.out.stall_deadline(write_stall);
            let tick = ex.response.keepalive_due();
            let woke = tokio::select! {
                biased;
                cmd = self.inbox.recv() => Woke::Command(cmd),
                io = poll_fn(|cx| poll_io(cx, &mut self.stream, &mut self.out, &mut self.rbuf, read_limit, read_chunk)) => match io {
                    Io::Read(r) => Woke::Read(r),
                    Io::Wrote => Woke::Wrote,
                    Io::WriteFailed(_) => Woke::WriteFailed,
                },
                p = self.phase.wait_for(|p| if noticed { *p == Phase::Closing } else { *p != Phase::Running }) => {
                    match p.map(|p| *p) {
                        Ok(Phase::Closing) | Err(_) => Woke::Closing,
                        Ok(_) => Woke::Draining,
                    }
                }
                _ = sleep_opt(deadline) => Woke::Stalled,
                _ = sleep_opt(write_deadline) => Woke::WriteStalled,
                _ = sleep_opt(tick) => Woke::Keepalive,
            };
            let step = match woke {
                Woke::Command((cid, action)) => {
                    let mut r = self.apply(ex, cid, action);
                    // After websocket.accept the rest stays queued for the session.
                    while r.is_ok() && ex.response.upgrade.is_none() {
                        match self.inbox.try_recv() {
                            Some((cid, action)) => r = self.apply(ex, cid, action),
                            None => break,
                        }
                    }
                    r
                }
                Woke::Wrote => {
                    last_activity = Instant::now();
                    Ok(())
                }
                Woke::WriteFailed => Err(Reason::WriteError),
                Woke::WriteStalled => Err(Reason::WriteTimeout),
                Woke::Read(Ok(n)) if n > 0 => {
                    last_read = Instant::now();
                    last_activity = last_read;
                    self.counters.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
                    if ex.want_body { self.deliver_body(ex) } else { Ok(()) }
                }
                Woke::Read(Ok(_)) => {
                    self.eof = true;
                    Err(Reason::ClientClosed)
                }
                Woke::Read(Err(_)) => {
                    self.eof = true;
                    Err(Reason::ReadError)
                }
                Woke::Draining => {
                    noticed = true;
                    ex.info.keep_alive = false;
                    if ex.response.state != Resp::Done {
                        self.ctx.shared.events.push(Event::ShutdownNotice { id: ex.id });
                    }
                    Ok(())
                }
                Woke::Closing => Err(Reason::ServerShutdown),
                // Group events written directly are progress the loop did not
                // see (the body deadline, the client's own pace, is another matter).
                Woke::Stalled if body_deadline.map_or(true, |b| b > Instant::now()) && inbox.take_wrote_directly() => {
                    last_activity = Instant::now();
                    Ok(())
                }
                Woke::Stalled => Err(self.refuse_mid_request(ex, 408, Reason::ClientTimeout)),
                Woke::Keepalive => {
                    let shared = self.ctx.shared.clone();
                    ex.response.keepalive_tick(&mut h1_wire!(&mut self.out, ex, &shared));
                    Ok(())
                }
            };
            match step {
                // A refusal (408, 413, 400) was queued: it goes out, briefly, before the close.
                Err(reason @ (Reason::ClientTimeout | Reason::BodyTooLarge | Reason::ProtocolError | Reason::ClientClosed)) => {
                    self.finish_writes().await;
                    return Outcome::Failed(reason);
                }
                Err(reason) => return Outcome::Failed(reason),
                Ok(()) => {}
            }
            if !self.out.is_idle() {
                continue; // the response is over only once its last byte is out
            }
            if ex.response.aborted {
                return Outcome::Failed(Reason::ServerError);
            }
            if ex.response.state == Resp::Done {
                return Outcome::Finished { keep_alive: ex.keep_alive };
            }
        }
    }

    fn apply(&mut self, ex: &mut Exchange, id: Id, action: Action) -> Result<(), Reason> {
        if id != ex.id {
            self.out.release_stale(action);
            return Ok(()); // a command for a request that already ended
        }
        let action = match action {
            // A group event for an SSE stream: a body chunk while the stream
            // is open; after its end only its count is released.
            Action::Group { frame } | Action::GroupTail { bytes: frame } if ex.response.state != Resp::Started || ex.response.aborted => {
                self.out.data(Bytes::new(), frame.len());
                return Ok(());
            }
            Action::Group { frame } => Action::Body { data: frame, more: true },
            // Framed already: its head went straight to the socket.
            Action::GroupTail { bytes } => {
                let counted = bytes.len();
                self.out.data(bytes, counted);
                return Ok(());
            }
            Action::GroupDrop if ex.response.state == Resp::Started => return Err(Reason::QueueOverflow),
            Action::GroupDrop => return Ok(()),
            other => other,
        };
        let shared = self.ctx.shared.clone();
        // The response rules are protocol-neutral; the wire frames for HTTP/1.1.
        let applied = ex.response.apply(action, &mut h1_wire!(&mut self.out, ex, &shared));
        if applied == Applied::WantBody {
            ex.want_body = true;
            self.deliver_body(ex)?;
        }
        Ok(())
    }

    fn deliver_body(&mut self, ex: &mut Exchange) -> Result<(), Reason> {
        if ex.continue_pending && !ex.body.is_done() && self.rbuf.is_empty() && ex.response.state == Resp::Idle {
            self.out.buf().extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        ex.continue_pending = false;
        // Many small wire chunks make one event of up to BODY_CHUNK bytes: one
        // want_body round trip per chunk would cost the app a wake each.
        let mut collected = BytesMut::new();
        loop {
            let before = self.rbuf.len();
            let step = ex.body.step(&mut self.rbuf, BODY_CHUNK - collected.len());
            match step {
                Ok(Step::Data(data, more)) => {
                    ex.body_total += data.len() as u64;
                    let max = self.ctx.shared.config.max_body_size;
                    if max > 0 && ex.body_total > max {
                        return Err(self.refuse_mid_request(ex, 413, Reason::BodyTooLarge));
                    }
                    let stuck = data.is_empty() && self.rbuf.len() == before;
                    let data = if collected.is_empty() { data } else {
                        collected.extend_from_slice(&data);
                        collected.split().freeze()
                    };
                    if !more || stuck || data.len() >= BODY_CHUNK {
                        ex.want_body = false;
                        self.ctx.shared.events.push(Event::Body { id: ex.id, data, more });
                        return Ok(());
                    }
                    collected.extend_from_slice(&data);
                }
                Ok(Step::NeedMore) => {
                    if !collected.is_empty() {
                        ex.want_body = false;
                        self.ctx.shared.events.push(Event::Body { id: ex.id, data: collected.freeze(), more: true });
                    }
                    return Ok(());
                }
                Err(r) => return Err(self.refuse_mid_request(ex, r.0, Reason::ProtocolError)),
            }
        }
    }

    /// Answers `status` if no response began, and ends the request with `reason`.
    fn refuse_mid_request(&mut self, ex: &mut Exchange, status: u16, reason: Reason) -> Reason {
        if ex.response.state == Resp::Idle {
            let server = self.ctx.shared.config.server_header.clone();
            response::encode_error(self.out.buf(), status, &server);
        }
        reason
    }

    /// After a finished response: skips what the app left unread of the body,
    /// if that is cheap; otherwise the connection must close.
    async fn skip_unread_body(&mut self, ex: &mut Exchange) -> bool {
        if ex.body.is_done() {
            return true;
        }
        if ex.continue_pending {
            return false; // the client still waits for 100 Continue; its body may never come
        }
        let mut skipped = 0u64;
        let deadline = self.pre_read_deadline();
        loop {
            match ex.body.step(&mut self.rbuf, usize::MAX) {
                Ok(Step::Data(d, more)) => {
                    skipped += d.len() as u64;
                    if !more {
                        return true;
                    }
                }
                Ok(Step::NeedMore) => {
                    if skipped > DISCARD_MAX || self.eof {
                        return false;
                    }
                    let want = self.rbuf.len() + 1;
                    if !self.fill_to(want, deadline).await {
                        return false;
                    }
                }
                Err(_) => return false,
            }
        }
    }

}

/// Where the blank line ending a head is, searching only from `from`
/// (minus the three bytes a terminator split across reads may start in).
fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from.saturating_sub(3);
    while let Some(p) = buf[i..].iter().position(|&b| b == b'\n') {
        let at = i + p;
        let rest = &buf[at + 1..];
        if rest.starts_with(b"\n") {
            return Some(at + 2);
        }
        if rest.starts_with(b"\r\n") {
            return Some(at + 3);
        }
        i = at + 1;
    }
    None
}

/// Decodes a chunked body that is complete in `buf`, consuming it; `None`
/// (and `buf` untouched) when more bytes are needed. Errors are statuses.
fn prefetch_chunked(buf: &mut BytesMut, max_body_size: u64) -> Result<Option<Bytes>, u16> {
    let mut probe = buf.clone();
    let mut reader = BodyReader::new(Framing::Chunked);
    let mut whole = BytesMut::new();
    loop {
        match reader.step(&mut probe, usize::MAX) {
            Ok(Step::Data(data, more)) => {
                whole.extend_from_slice(&data);
                if max_body_size > 0 && whole.len() as u64 > max_body_size {
                    return Err(413);
                }
                if !more {
                    *buf = probe;
                    return Ok(Some(whole.freeze()));
                }
            }
            Ok(Step::NeedMore) => return Ok(None),
            Err(r) => return Err(r.0),
        }
    }
}
