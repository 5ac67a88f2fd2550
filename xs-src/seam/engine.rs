//! The Perl-thread half of the engine: options, listeners, starting the IO
//! thread, queuing commands (one wake per flushed batch), draining events and
//! reading statistics. Everything here runs on the thread that owns Perl.

use crate::config::Config;
use crate::seam::event::{Action, Command, ConnCounters, Event, GroupCommand, GroupMessage, Headers, Id, Query};
use crate::server::accept::StdListener;
use crate::server::ctx::{Shared, Stats};
use crate::seam::queue::EventQueue;
use crate::http::response;
use bytes::Bytes;
use std::collections::HashMap;
use std::os::fd::{FromRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Engine errors are messages for Perl's `croak`.
pub type Result<T> = std::result::Result<T, String>;

/// The result of a command aimed at one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    /// Queued; for body chunks, the bytes now buffered for the connection.
    Queued(usize),
    /// The request already ended: the command was dropped (PAGI: a no-op).
    Gone,
}

/// Where a file body comes from.
pub enum FileSource<'a> {
    Path(&'a str),
    Fd(RawFd),
}

/// Commands queued on the Perl thread are handed to the IO thread at the
/// latest when this many wait, whether or not Perl has flushed yet.
pub const AUTO_FLUSH_COMMANDS: usize = 512;

/// Engine-wide counters plus the event backlog.
#[derive(Debug, Default, Clone, Copy)]

pub struct Snapshot {
    pub connections_active: u64,
    pub connections_total: u64,
    pub requests_total: u64,
    pub requests_active: u64,
    pub events_pending: u64,
}

/// See the module docs.
pub struct Engine {
    config: Config,
    listeners: Vec<StdListener>,
    shared: Option<Arc<Shared>>,
    thread: Option<JoinHandle<()>>,
    start_pid: Option<u32>,
    pending: Vec<Command>,
    live: HashMap<Id, Arc<ConnCounters>>,
    /// Perl's mirror of group memberships, so `group_count` needs no round
    /// trip: stream -> its groups, group -> its member count. A stream's
    /// entries go when its final event is drained.
    memberships: HashMap<Id, Vec<String>>,
    group_members: HashMap<String, usize>,
    /// Tokens of publishes and queries, answered by `Event::Reply`.
    next_token: u64,
    /// The events of the last drain; they stay alive until the next one.
    pub batch: Vec<Event>,
    stopped: bool,
    test_panic: Option<String>,
}

impl Engine {
    /// A configured but idle engine: no thread, no fd.
    pub fn new() -> Self {
        Engine {
            config: Config::default(),
            listeners: Vec::new(),
            shared: None,
            thread: None,
            start_pid: None,
            pending: Vec::with_capacity(256),
            live: HashMap::new(),
            memberships: HashMap::new(),
            group_members: HashMap::new(),
            next_token: 0,
            batch: Vec::new(),
            stopped: false,
            test_panic: std::env::var("PAGI_NATIVE_TEST_PANIC").ok().filter(|v| !v.is_empty()),
        }
    }

    /// The test-only panic switch, if set.
    pub fn test_panic(&self) -> Option<&str> {
        self.test_panic.as_deref()
    }

    /// Calls from a process other than the one that started the engine are refused.
    pub fn check_pid(&self) -> Result<()> {
        match self.start_pid {
            Some(pid) if pid != current_pid() => {
                Err(format!("engine was started in process {pid}; it cannot be used after fork"))
            }
            _ => Ok(()),
        }
    }

    /// True when this process may free the engine (not a forked copy of a started one).
    pub fn owned_by_this_process(&self) -> bool {
        self.start_pid.map_or(true, |pid| pid == current_pid())
    }

    pub fn set_option(&mut self, name: &str, value: &str) -> Result<()> {
        if self.shared.is_some() {
            return Err("options cannot change after start".into());
        }
        self.config.set(name, value)
    }

    /// Adopts a listening socket: the engine keeps its own close-on-exec dup.
    pub fn listen_fd(&mut self, fd: RawFd, tls: bool) -> Result<()> {
        if self.shared.is_some() {
            return Err("listen_fd must be called before start".into());
        }
        let mut accepting: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `accepting`.
        let rc = unsafe {
            libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN, &mut accepting as *mut _ as *mut libc::c_void, &mut len)
        };
        if rc != 0 || accepting == 0 {
            return Err(format!("fd {fd} is not a listening socket"));
        }
        // SAFETY: fcntl on a caller-supplied fd; the result is checked.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Err(format!("cannot dup fd {fd}: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: an all-zero sockaddr_storage is valid; getsockname fills at most `len` bytes.
        let family = unsafe {
            let mut addr: libc::sockaddr_storage = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            libc::getsockname(dup, &mut addr as *mut _ as *mut libc::sockaddr, &mut len);
            addr.ss_family as libc::c_int
        };
        if tls && family == libc::AF_UNIX {
            return Err(format!("fd {fd}: TLS is for TCP listeners, not Unix-domain sockets"));
        }
        let listener = if family == libc::AF_UNIX {
            // SAFETY: `dup` is a fresh fd owned by nobody else.
            let l = unsafe { std::os::unix::net::UnixListener::from_raw_fd(dup) };
            l.set_nonblocking(true).map_err(|e| format!("cannot make fd {fd} non-blocking: {e}"))?;
            StdListener::Unix(l)
        } else {
            // SAFETY: `dup` is a fresh fd owned by nobody else.
            let l = unsafe { std::net::TcpListener::from_raw_fd(dup) };
            l.set_nonblocking(true).map_err(|e| format!("cannot make fd {fd} non-blocking: {e}"))?;
            StdListener::Tcp(l, tls)
        };
        self.listeners.push(listener);
        Ok(())
    }

    /// Creates the eventfd and the IO thread. Call after any fork.
    pub fn start(&mut self) -> Result<()> {
        if self.shared.is_some() {
            return Err("engine already started".into());
        }
        self.config.validate()?;
        let wants_tls = self.listeners.iter().any(|l| matches!(l, StdListener::Tcp(_, true)));
        let tls = if wants_tls { Some(crate::server::tls::build(&self.config)?) } else { None };
        let shared = Arc::new(Shared {
            config: self.config.clone(),
            events: EventQueue::new().map_err(|e| format!("eventfd: {e}"))?,
            commands: Mutex::new(Vec::new()),
            command_wake: tokio::sync::Notify::new(),
            next_id: AtomicU64::new(1),
            stats: Stats::default(),
            test_panic: self.test_panic.clone(),
            tls,
        });
        let listeners = std::mem::take(&mut self.listeners);
        let thread_shared = shared.clone();
        let thread = with_signals_blocked(|| {
            std::thread::Builder::new()
                .name("pagi-native-io".into())
                .spawn(move || crate::server::runtime::run_thread(thread_shared, listeners))
        })
        .map_err(|e| format!("cannot spawn the IO thread: {e}"))?;
        self.shared = Some(shared);
        self.thread = Some(thread);
        self.start_pid = Some(std::process::id());
        Ok(())
    }

    fn shared(&self) -> Result<&Arc<Shared>> {
        self.shared.as_ref().ok_or_else(|| "engine not started".to_string())
    }

    /// The notifier fd: readable when events wait.
    pub fn fd(&self) -> Result<RawFd> {
        Ok(self.shared()?.events.fd())
    }

    /// Replaces `batch` with up to `max` new events.
    pub fn drain(&mut self, max: usize) -> Result<()> {
        let shared = self.shared.clone().ok_or_else(|| "engine not started".to_string())?;
        self.batch.clear();
        shared.events.drain_into(max.max(1), &mut self.batch);
        for ev in &self.batch {
            match ev {
                Event::Request(r) => {
                    self.live.insert(r.id, r.counters.clone());
                }
                Event::Done { id, .. } | Event::Disconnect { id, .. } | Event::WsDisconnect { id, .. } => {
                    self.live.remove(id);
                    if !self.memberships.is_empty() {
                        if let Some(groups) = self.memberships.remove(id) {
                            for g in groups {
                                uncount(&mut self.group_members, &g);
                            }
                        }
                    }
                }
                Event::Stopped | Event::Fatal { .. } => self.stopped = true,
                _ => {}
            }
        }
        Ok(())
    }

    /// Hands queued commands to the IO thread with one wake.
    pub fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let shared = self.shared()?.clone();
        shared.commands.lock().unwrap_or_else(|p| p.into_inner()).append(&mut self.pending);
        shared.command_wake.notify_one();
        Ok(())
    }

    /// Begins shutdown: stop accepting, finish requests within `grace`, then a `stopped` event.
    pub fn shutdown(&mut self, grace: f64) -> Result<()> {
        if !grace.is_finite() || grace < 0.0 {
            return Err(format!("grace must be a non-negative number of seconds, got {grace}"));
        }
        self.shared()?;
        self.pending.push(Command::Shutdown { grace: Duration::from_secs_f64(grace) });
        self.flush()
    }

    pub fn respond_full(&mut self, id: Id, status: i64, headers: Headers, body: Bytes) -> Result<Sent> {
        let status = check_final_status(status)?;
        response::check_headers(&headers)?;
        self.queue(id, Action::Full { status, headers, body }, 0)
    }

    pub fn http_start(&mut self, id: Id, status: i64, headers: Headers, trailers: bool) -> Result<Sent> {
        let status = check_final_status(status)?;
        response::check_headers(&headers)?;
        self.queue(id, Action::Start { status, headers, trailers }, 0)
    }

    /// Queues a body chunk; `Sent::Queued(n)` reports the bytes now buffered.
    pub fn http_body(&mut self, id: Id, data: Bytes, more: bool) -> Result<Sent> {
        let n = data.len();
        self.queue(id, Action::Body { data, more }, n)
    }

    pub fn http_trailers(&mut self, id: Id, headers: Headers) -> Result<Sent> {
        response::check_headers(&headers)?;
        self.queue(id, Action::Trailers { headers }, 0)
    }

    /// Queues a file body: `source` is a path to open or a file descriptor to
    /// duplicate; `length` None means to the end. Opening happens here, so a
    /// missing file fails the caller at once.
    pub fn http_file(&mut self, id: Id, source: FileSource, offset: u64, length: Option<u64>) -> Result<Sent> {
        if !self.live.contains_key(&id) {
            return Ok(Sent::Gone);
        }
        let what = match &source {
            FileSource::Path(path) => format!("file '{path}'"),
            FileSource::Fd(fd) => format!("fh (fd {fd})"),
        };
        let file = match source {
            FileSource::Path(path) => std::fs::File::open(path).map_err(|e| format!("cannot open '{path}': {e}"))?,
            FileSource::Fd(fd) => {
                // SAFETY: fcntl on a caller-supplied fd; the result is checked.
                let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
                if dup < 0 {
                    return Err(format!("fh (fd {fd}) is not open: {}", std::io::Error::last_os_error()));
                }
                // SAFETY: `dup` is a fresh fd owned by nobody else.
                unsafe { std::fs::File::from_raw_fd(dup) }
            }
        };
        let meta = file.metadata().map_err(|e| format!("cannot stat {what}: {e}"))?;
        if !meta.is_file() {
            return Err(format!("{what} is not a regular file"));
        }
        self.queue(id, Action::File { file, offset, length }, 0)
    }

    /// Completes a WebSocket handshake; `subprotocol` must be a token.
    pub fn ws_accept(&mut self, id: Id, subprotocol: Option<&str>, headers: Headers) -> Result<Sent> {
        if let Some(p) = subprotocol {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)) {
                return Err(format!("subprotocol must be a token, got '{p}'"));
            }
        }
        response::check_headers(&headers)?;
        self.queue(id, Action::WsAccept { subprotocol: subprotocol.map(str::to_string), headers }, 0)
    }

    /// Queues one WebSocket message; reports the bytes now buffered.
    pub fn ws_send(&mut self, id: Id, data: Bytes, text: bool) -> Result<Sent> {
        if text && std::str::from_utf8(&data).is_err() {
            return Err("text is not valid UTF-8".into());
        }
        let n = data.len();
        self.queue(id, Action::WsSend { data, text }, n)
    }

    /// Closes a WebSocket with a code a server may send (RFC 6455 7.4).
    pub fn ws_close(&mut self, id: Id, code: i64, reason: &str) -> Result<Sent> {
        let sendable = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
        if !sendable {
            return Err(format!("code {code} is not a close code a server may send (1000-1003, 1007-1014, 3000-4999)"));
        }
        if reason.len() > 123 {
            return Err(format!("reason is {} bytes; a close reason holds at most 123", reason.len()));
        }
        self.queue(id, Action::WsClose { code: code as u16, reason: reason.to_string() }, 0)
    }

    /// Lets the engine read `n` more messages of a WebSocket.
    pub fn ws_credit(&mut self, id: Id, n: u32) -> Result<Sent> {
        self.queue(id, Action::WsCredit(n), 0)
    }

    /// Pings every `interval` seconds (0 stops); `timeout` > 0 closes a silent peer.
    pub fn ws_keepalive(&mut self, id: Id, interval: f64, timeout: f64) -> Result<Sent> {
        if !interval.is_finite() || interval < 0.0 {
            return Err(format!("interval must be a non-negative number of seconds, got {interval}"));
        }
        if !timeout.is_finite() || timeout < 0.0 {
            return Err(format!("timeout must be a non-negative number of seconds, got {timeout}"));
        }
        let interval = Duration::from_secs_f64(interval);
        let timeout = (timeout > 0.0).then(|| Duration::from_secs_f64(timeout));
        self.queue(id, Action::WsKeepalive { interval, timeout }, 0)
    }

    /// Starts an event stream: `content-type: text/event-stream` and
    /// `cache-control: no-cache` unless the app set them; the head is written
    /// at once so the client's EventSource opens.
    pub fn sse_start(&mut self, id: Id, status: i64, mut headers: Headers) -> Result<Sent> {
        let status = check_status(status)?;
        response::check_headers(&headers)?;
        let has = |h: &Headers, n: &[u8]| h.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
        if !has(&headers, b"content-type") {
            headers.push((Bytes::from_static(b"content-type"), Bytes::from_static(b"text/event-stream")));
        }
        if !has(&headers, b"cache-control") {
            headers.push((Bytes::from_static(b"cache-control"), Bytes::from_static(b"no-cache")));
        }
        headers.retain(|(k, _)| !k.eq_ignore_ascii_case(b"content-length"));
        let sent = self.queue(id, Action::Start { status, headers, trailers: false }, 0)?;
        if sent == Sent::Gone {
            return Ok(sent);
        }
        self.queue(id, Action::Body { data: Bytes::new(), more: true }, 0)
    }

    /// Frames and queues one event; reports the bytes now buffered.
    pub fn sse_send(&mut self, id: Id, event: Option<&str>, data: &str, event_id: Option<&str>, retry: Option<u64>) -> Result<Sent> {
        let framed = crate::sse::frame_event(event, data, event_id, retry)?;
        self.http_body(id, framed, true)
    }

    /// Frames and queues a comment.
    pub fn sse_comment(&mut self, id: Id, comment: &str) -> Result<Sent> {
        self.http_body(id, crate::sse::frame_comment(comment), true)
    }

    /// Has the engine write `comment` every `interval` seconds (0 stops).
    pub fn sse_keepalive(&mut self, id: Id, interval: f64, comment: &str) -> Result<Sent> {
        if !interval.is_finite() || interval < 0.0 {
            return Err(format!("interval must be a non-negative number of seconds, got {interval}"));
        }
        let comment = crate::sse::frame_comment(comment);
        self.queue(id, Action::SseKeepalive { interval: Duration::from_secs_f64(interval), comment }, 0)
    }

    pub fn want_body(&mut self, id: Id) -> Result<Sent> {
        self.queue(id, Action::WantBody, 0)
    }

    pub fn abort(&mut self, id: Id) -> Result<Sent> {
        self.queue(id, Action::Abort, 0)
    }

    /// After `http_body` reported at least the high watermark: registers for a
    /// `writable` event. False means the buffer already drained, so do not wait.
    pub fn wait_writable(&mut self, id: Id) -> bool {
        let low = self.config.write_low_watermark;
        match self.live.get(&id) {
            Some(c) => !c.wait_for_drain(low),
            None => false,
        }
    }

    /// Stream `id` joins `group` (idempotent); `sse` tells the engine how to
    /// encode for it. The caller checks that the WebSocket was accepted or
    /// the SSE stream started.
    pub fn group_join(&mut self, id: Id, group: &str, sse: bool) -> Result<Sent> {
        check_group(group)?;
        self.shared()?;
        let Some(counters) = self.live.get(&id).cloned() else { return Ok(Sent::Gone) };
        let list = self.memberships.entry(id).or_default();
        if list.iter().any(|g| g == group) {
            return Ok(Sent::Queued(0));
        }
        list.push(group.to_string());
        *self.group_members.entry(group.to_string()).or_default() += 1;
        self.command(Command::Group(GroupCommand::Join { id, group: group.to_string(), counters, sse }))?;
        Ok(Sent::Queued(0))
    }

    /// Stream `id` leaves `group` (a no-op when it is no member).
    pub fn group_leave(&mut self, id: Id, group: &str) -> Result<Sent> {
        check_group(group)?;
        self.shared()?;
        if !self.live.contains_key(&id) {
            return Ok(Sent::Gone);
        }
        let Some(list) = self.memberships.get_mut(&id) else { return Ok(Sent::Queued(0)) };
        let Some(at) = list.iter().position(|g| g == group) else { return Ok(Sent::Queued(0)) };
        list.swap_remove(at);
        if list.is_empty() {
            self.memberships.remove(&id);
        }
        uncount(&mut self.group_members, group);
        self.command(Command::Group(GroupCommand::Leave { id, group: group.to_string() }))?;
        Ok(Sent::Queued(0))
    }

    /// Publishes `message` to `group` (but the stream `exclude`); returns
    /// the token its `Event::Reply` (the local member count) will carry.
    pub fn group_publish(&mut self, group: &str, message: GroupMessage, exclude: Option<Id>) -> Result<u64> {
        check_group(group)?;
        crate::pubsub::wire::check_sse_fields(message.event.as_deref(), message.id.as_deref())?;
        if message.text && std::str::from_utf8(&message.data).is_err() {
            return Err("'text' is not valid UTF-8".into());
        }
        self.shared()?;
        let token = self.token();
        self.command(Command::Group(GroupCommand::Publish { token, group: group.to_string(), message, exclude }))?;
        Ok(token)
    }

    /// Perl's subscribers begin (or stop) wanting the messages of `group`.
    pub fn group_subscribe(&mut self, group: &str, on: bool) -> Result<()> {
        check_group(group)?;
        self.shared()?;
        let group = group.to_string();
        self.command(Command::Group(if on { GroupCommand::Subscribe { group } } else { GroupCommand::Unsubscribe { group } }))
    }

    /// Local stream members of `group`, from Perl's mirror.
    pub fn group_count(&self, group: &str) -> usize {
        self.group_members.get(group).copied().unwrap_or(0)
    }

    /// Asks the IO thread a question; returns the token of its `Event::Reply`.
    pub fn query(&mut self, query: Query) -> Result<u64> {
        if let Query::ClusterCount { group } = &query {
            check_group(group)?;
        }
        self.shared()?;
        let token = self.token();
        self.command(Command::Query { token, query })?;
        Ok(token)
    }

    /// The group counters: published, delivered, delivered_direct, skipped,
    /// dropped, redis_publish_failed, redis_reconnects, redis_connected.
    pub fn group_stats(&self) -> [u64; 8] {
        let Some(sh) = &self.shared else { return [0; 8] };
        let g = &sh.stats.groups;
        [&g.published, &g.delivered, &g.delivered_direct, &g.skipped, &g.dropped, &g.redis_publish_failed, &g.redis_reconnects, &g.redis_connected]
            .map(|c| c.load(Ordering::Relaxed))
    }

    fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    /// Queues an engine-wide command (flushed like request commands).
    fn command(&mut self, cmd: Command) -> Result<()> {
        self.pending.push(cmd);
        if self.pending.len() >= AUTO_FLUSH_COMMANDS {
            self.flush()?;
        }
        Ok(())
    }

    fn queue(&mut self, id: Id, action: Action, body_bytes: usize) -> Result<Sent> {
        self.shared()?;
        let Some(counters) = self.live.get(&id) else { return Ok(Sent::Gone) };
        let buffered = if body_bytes > 0 {
            counters.add_buffered(body_bytes)
        } else {
            counters.buffered.load(Ordering::Acquire)
        };
        self.pending.push(Command::Request { id, action });
        // Perl flushes once per wake, but an app that keeps the loop busy
        // (a burst to many connections, work queued with `later`) could
        // otherwise hold every command back: hand them over in batches.
        if self.pending.len() >= AUTO_FLUSH_COMMANDS {
            self.flush()?;
        }
        Ok(Sent::Queued(buffered))
    }

    /// True when commands wait for `flush`.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot { requests_active: self.live.len() as u64, ..Snapshot::default() };
        if let Some(sh) = &self.shared {
            s.connections_active = sh.stats.connections_active.load(Ordering::Relaxed);
            s.connections_total = sh.stats.connections_total.load(Ordering::Relaxed);
            s.requests_total = sh.stats.requests_total.load(Ordering::Relaxed);
            s.events_pending = sh.events.len() as u64;
        }
        s
    }

    /// `(bytes read on its connection, response bytes buffered)` for a live request.
    pub fn request_stats(&self, id: Id) -> Option<(u64, u64)> {
        self.live.get(&id).map(|c| {
            (c.bytes_read.load(Ordering::Relaxed), c.buffered.load(Ordering::Relaxed) as u64)
        })
    }

    /// True once a `stopped` or `fatal` event was drained.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }
}

impl Default for Engine {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if !self.owned_by_this_process() {
            return;
        }
        if let Some(shared) = &self.shared {
            shared.commands.lock().unwrap_or_else(|p| p.into_inner()).push(Command::Shutdown { grace: Duration::ZERO });
            shared.command_wake.notify_one();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// This process's pid without a getpid(2) per call: cached, and refreshed
/// in the child by a pthread_atfork handler (Perl's fork calls fork(3)).
pub fn current_pid() -> u32 {
    use std::sync::atomic::AtomicU32;
    static PID: AtomicU32 = AtomicU32::new(0);
    static HOOK: std::sync::Once = std::sync::Once::new();
    extern "C" fn in_child() {
        PID.store(0, Ordering::Relaxed);
    }
    HOOK.call_once(|| {
        // SAFETY: registers a handler that only stores to an atomic.
        unsafe { libc::pthread_atfork(None, None, Some(in_child)) };
    });
    match PID.load(Ordering::Relaxed) {
        0 => {
            let pid = std::process::id();
            PID.store(pid, Ordering::Relaxed);
            pid
        }
        pid => pid,
    }
}

/// A group name: 1 to 256 bytes, no NUL.
fn check_group(group: &str) -> Result<()> {
    if group.is_empty() || group.len() > 256 {
        return Err(format!("'group' must be 1 to 256 bytes, got {}", group.len()));
    }
    if group.contains('\0') {
        return Err("'group' must not contain NUL".into());
    }
    Ok(())
}

fn uncount(counts: &mut HashMap<String, usize>, group: &str) {
    if let Some(n) = counts.get_mut(group) {
        *n -= 1;
        if *n == 0 {
            counts.remove(group);
        }
    }
}

/// A status that ends the head: 1xx answers (100 Continue, 101 Switching
/// Protocols) are the server's to send, never an app's final response.
fn check_final_status(status: i64) -> Result<u16> {
    let status = check_status(status)?;
    if status < 200 {
        return Err(format!("'status' must be a final status from 200 to 999, got {status} (1xx responses are sent by the server)"));
    }
    Ok(status)
}

fn check_status(status: i64) -> Result<u16> {
    if (100..=999).contains(&status) {
        Ok(status as u16)
    } else {
        Err(format!("status must be an integer from 100 to 999, got {status}"))
    }
}

/// Runs `f` with every signal blocked, so a thread it spawns never receives
/// process signals (they belong to Perl's thread); the mask is restored after.
fn with_signals_blocked<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: sigset_t is plain data; the pthread_sigmask calls get valid pointers.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        let r = f();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        r
    }
}
