//! WebSocket sessions. The opening handshake is answered by the HTTP/1.1
//! connection once the app sent `websocket.accept`; from then on this module
//! runs the connection and moves whole messages between it and Perl.
//!
//! tungstenite's sync state machine does the protocol (masking checks,
//! fragmentation, UTF-8, control frames, close codes) over an in-memory
//! [`Pipe`]: the session feeds it the bytes it read off the socket and moves
//! what it wrote into the connection's [`Writer`]. Outgoing data messages are
//! framed here (a server frame is a 2 to 10 byte header before the payload),
//! so the app's bytes reach the writer without a copy. All socket IO, the
//! commands from Perl, the shutdown phase and every timer (keepalive, close
//! handshake, write stall) share one select, so a client that stops reading
//! can never park the session out of reach of `abort`, the write stall timer
//! (`timeout`) or the end of the shutdown grace.
//!
//! Inbound flow control: a message goes to Perl only while fewer than
//! [`WINDOW`] messages, and fewer than [`BYTE_WINDOW`] bytes (one message is
//! always allowed, however large), were delivered and not yet taken by the
//! app; Perl returns one credit per message taken and the engine releases the
//! sizes it delivered in order. Messages beyond the window are held here
//! while the session keeps reading, so pings, pongs and a Close are seen and
//! answered while the app is behind. Reading stops once [`HOLD_BYTES`] or
//! [`HOLD_MESSAGES`] are held, or delivered and held messages together reach
//! `BYTE_WINDOW + HOLD_BYTES` bytes; then the client meets TCP backpressure,
//! and the time reading is stopped does not count against a pong.
//!
//! The bound: one connection holds at most `BYTE_WINDOW + HOLD_BYTES` (1.25
//! MiB) of inbound messages plus the one message that crossed the limit (at
//! most `max_ws_frame_size`) plus about 80 KiB of read buffers: about 17.3
//! MiB with the default 16 MiB `max_ws_frame_size`, and about 1.3 MiB when
//! messages are small.

use crate::seam::event::{Action, ConnCounters, Event, Id};
use crate::server::ctx::{IoCtx, Phase};
use crate::server::transport::Transport;
use crate::server::writer::{poll_io, sleep_opt, Io, Writer};
use bytes::{BufMut, Bytes, BytesMut};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocket, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// Messages delivered to Perl and not yet taken by the app.
pub const WINDOW: u32 = 16;
/// Bytes of messages delivered to Perl and not yet taken by the app (one
/// message is always allowed, so a message larger than this still flows).
pub const BYTE_WINDOW: usize = 1 << 20;
/// Bytes the engine may hold beyond the window while it keeps reading for
/// control frames.
pub const HOLD_BYTES: usize = 256 * 1024;
/// Messages the engine may hold beyond the window (bounds empty messages).
pub const HOLD_MESSAGES: usize = 1024;
/// Bytes read off the socket at a time.
const READ_CHUNK: usize = 64 * 1024;
/// Bytes tungstenite copies out of the pipe per read (see `Session::run`).
const WS_READ_CHUNK: usize = 4 * 1024;
/// How long a closing handshake may take before the connection is dropped.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// How long the Close after a protocol error, or at shutdown, may take.
const SHORT_CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Why a session ended, as PAGI's `websocket.disconnect` reports it.
struct End {
    code: u16,
    reason: String,
}

impl End {
    fn new(code: u16, reason: &str) -> Self {
        End { code, reason: reason.to_string() }
    }
}

/// How the session loop ended: what to tell the app, and how long what is
/// still queued (a Close echo) may take to go out.
struct Exit {
    end: End,
    linger: Duration,
}

impl Exit {
    /// Ends without writing anything more.
    fn now(code: u16, reason: &str) -> Self {
        Exit { end: End::new(code, reason), linger: Duration::ZERO }
    }
}

/// The byte stream tungstenite works on: reads come from what the session
/// read off the socket (`WouldBlock` when that is used up), writes collect
/// in `out` for the session to move into the connection's writer.
#[derive(Default)]
struct Pipe {
    inbound: BytesMut,
    eof: bool,
    out: BytesMut,
}

impl io::Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.inbound.is_empty() {
            return if self.eof { Ok(0) } else { Err(io::ErrorKind::WouldBlock.into()) };
        }
        let n = buf.len().min(self.inbound.len());
        buf[..n].copy_from_slice(&self.inbound[..n]);
        let _ = self.inbound.split_to(n);
        Ok(n)
    }
}

impl io::Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Inbound messages between the socket and the app: those delivered to Perl
/// and not yet taken (their sizes, oldest first) and those held back.
#[derive(Default)]
struct Inbound {
    delivered: VecDeque<usize>,
    delivered_bytes: usize,
    held: VecDeque<(Bytes, bool)>,
    held_bytes: usize,
}

impl Inbound {
    fn hold(&mut self, data: Bytes, text: bool) {
        self.held_bytes += data.len();
        self.held.push_back((data, text));
    }

    /// The app took `n` messages: the oldest `n` delivered sizes are released.
    fn credit(&mut self, n: u32) {
        for _ in 0..n {
            match self.delivered.pop_front() {
                Some(len) => self.delivered_bytes -= len,
                None => break,
            }
        }
    }

    /// The next held message, if the window has room for it now.
    fn next_deliverable(&mut self) -> Option<(Bytes, bool)> {
        let len = self.held.front()?.0.len();
        let fits = self.delivered.len() < WINDOW as usize
            && (self.delivered.is_empty() || self.delivered_bytes + len <= BYTE_WINDOW);
        if !fits {
            return None;
        }
        let message = self.held.pop_front()?;
        self.held_bytes -= len;
        self.delivered.push_back(len);
        self.delivered_bytes += len;
        Some(message)
    }

    /// More may be read off the socket (see the module docs for the bound).
    fn wants_more(&self) -> bool {
        self.held.len() < HOLD_MESSAGES
            && self.held_bytes < HOLD_BYTES
            && self.delivered_bytes + self.held_bytes < BYTE_WINDOW + HOLD_BYTES
    }
}

/// Pings the peer on a schedule and notices when pongs stop coming.
struct Keepalive {
    interval: Duration,
    timeout: Duration,
    next_ping: Option<Instant>,
    pong_due: Option<Instant>,
    /// The ping that started `pong_due` is still queued behind other output.
    ping_queued: bool,
}

impl Keepalive {
    fn new(interval: Duration, timeout: Duration) -> Self {
        let next_ping = (!interval.is_zero()).then(|| Instant::now() + interval);
        Keepalive { interval, timeout, next_ping, pong_due: None, ping_queued: false }
    }

    /// When a missing pong ends the session. While the ping waits behind
    /// queued output, a client that keeps reading it is not late.
    fn pong_deadline(&self, last_write: Instant) -> Option<Instant> {
        self.pong_due.map(|d| if self.ping_queued { d.max(last_write + self.timeout) } else { d })
    }

    /// All output, the ping included, reached the socket at `now`.
    fn ping_written(&mut self, now: Instant) {
        if std::mem::take(&mut self.ping_queued) {
            self.pong_due = self.pong_due.map(|d| d.max(now + self.timeout));
        }
    }

    /// The session did not read for `paused` (backpressure): a pong may be waiting unread.
    fn resumed(&mut self, paused: Duration) {
        self.pong_due = self.pong_due.map(|d| d + paused);
    }
}

/// What woke the session loop.
enum Woke {
    Command(Action),
    Io(Io),
    Draining,
    Closing,
    Ping,
    WriteStalled,
    CloseTimedOut,
    PongMissed,
}

/// One accepted WebSocket connection.
pub struct Session<'a> {
    pub ctx: &'a Rc<IoCtx>,
    pub id: Id,
    pub counters: &'a Arc<ConnCounters>,
    pub inbox: &'a crate::server::ctx::Inbox,
    pub phase: &'a mut watch::Receiver<Phase>,
    /// The connection's writer: every byte of the session goes through it.
    pub out: &'a mut Writer,
}

impl Session<'_> {
    /// Runs the session to its end and reports it to Perl exactly once.
    /// The caller closes the transport afterwards.
    pub async fn run<S: Transport>(self, stream: &mut S, leftover: Vec<u8>) {
        let Session { ctx, id, counters, inbox, phase, out } = self;
        let cfg = &ctx.shared.config;
        let config = WebSocketConfig::default()
            .max_message_size(Some(cfg.max_ws_frame_size))
            .max_frame_size(Some(cfg.max_ws_frame_size))
            // tungstenite zero-fills this much of its buffer before every
            // read from the pipe, including the last one of each pump that
            // finds it empty: small keeps that cheap (big frames reserve
            // their whole length and are copied in pieces of this size).
            .read_buffer_size(WS_READ_CHUNK)
            .write_buffer_size(0);
        let mut pipe = Pipe::default();
        pipe.inbound.extend_from_slice(&leftover);
        out.set_id(id);
        let mut live = Live {
            ctx,
            id,
            counters,
            out,
            ws: WebSocket::from_raw_socket(pipe, Role::Server, Some(config)),
            inbound: Inbound::default(),
            keepalive: Keepalive::new(cfg.ws_ping_interval, cfg.ws_ping_timeout),
            closing: None,
            told_app: false,
            last_write: Instant::now(),
        };
        let exit = live.serve(stream, inbox, phase).await;
        live.move_output();
        if !live.told_app {
            // Messages that arrived before the end reach the app before its disconnect.
            for (data, text) in live.inbound.held.drain(..) {
                ctx.shared.events.push(Event::WsMessage { id, data, text });
            }
            ctx.shared.events.push(Event::WsDisconnect { id, code: exit.end.code, reason: exit.end.reason });
        }
        if !exit.linger.is_zero() && !live.out.is_idle() {
            // Bounded: the write stall timer and the end of the grace apply too.
            let _ = tokio::time::timeout(exit.linger, live.out.finish(stream, ctx, cfg.timeout)).await;
        }
    }
}

/// The state of a running session.
struct Live<'a> {
    ctx: &'a Rc<IoCtx>,
    id: Id,
    counters: &'a Arc<ConnCounters>,
    out: &'a mut Writer,
    ws: WebSocket<Pipe>,
    inbound: Inbound,
    keepalive: Keepalive,
    /// Set once a Close was sent: when to give up waiting for the echo, and its code.
    closing: Option<(Instant, u16)>,
    /// The app was already sent its `websocket.disconnect` (at shutdown).
    told_app: bool,
    last_write: Instant,
}

impl Live<'_> {
    /// The session loop: one select over commands, socket IO, the phase and timers.
    async fn serve<S: Transport>(&mut self, stream: &mut S, inbox: &crate::server::ctx::Inbox, phase: &mut watch::Receiver<Phase>) -> Exit {
        let write_stall = self.ctx.shared.config.timeout;
        let mut draining = false;
        let mut paused_at: Option<Instant> = None;
        // Frames that came with the handshake.
        if let Err(exit) = self.pump() {
            return exit;
        }
        let socket = stream.plain_socket().map(|fd| crate::server::ctx::DirectSocket { fd, chunked: false });
        let _withdrawn = crate::server::ctx::WithdrawDirect(inbox);
        loop {
            self.move_output();
            // Parked with nothing of its own to write, the session lets group
            // fan-outs write their frames straight to the socket (one send,
            // no wake of this task); anything it queues itself withdraws that
            // at the top of the next pass, before the writer runs.
            let idle = self.closing.is_none() && self.ws.can_write() && self.out.is_idle();
            inbox.set_direct(if idle { socket } else { None });
            let backpressure = self.closing.is_none() && !self.inbound.wants_more();
            match (backpressure, paused_at) {
                (true, None) => paused_at = Some(Instant::now()),
                (false, Some(since)) => {
                    paused_at = None;
                    self.keepalive.resumed(since.elapsed());
                }
                _ => {}
            }
            let pipe = self.ws.get_mut();
            let read_limit = if backpressure || pipe.eof { 0 } else { READ_CHUNK.saturating_sub(pipe.inbound.len()) };
            let ping_at = if self.closing.is_none() { self.keepalive.next_ping } else { None };
            let pong_at = if backpressure { None } else { self.keepalive.pong_deadline(self.last_write) };
            let close_at = self.closing.map(|c| c.0);
            let stall_at = self.out.stall_deadline(write_stall);
            let out = &mut *self.out;
            let woke = tokio::select! {
                biased;
                (cid, action) = inbox.recv() => {
                    if cid != self.id {
                        self.out.release_stale(action);
                        continue; // a command for a request that already ended
                    }
                    Woke::Command(action)
                }
                io = poll_fn(|cx| poll_io(cx, stream, out, &mut pipe.inbound, read_limit, crate::server::writer::READ_CHUNK)) => Woke::Io(io),
                p = phase.wait_for(|p| if draining { *p == Phase::Closing } else { *p != Phase::Running }) => {
                    match p.map(|p| *p) {
                        Ok(Phase::Closing) | Err(_) => Woke::Closing,
                        Ok(_) => Woke::Draining,
                    }
                }
                _ = sleep_opt(stall_at) => Woke::WriteStalled,
                _ = sleep_opt(close_at) => Woke::CloseTimedOut,
                _ = sleep_opt(pong_at) => Woke::PongMissed,
                _ = sleep_opt(ping_at) => Woke::Ping,
            };
            let step = match woke {
                Woke::Command(action) => {
                    let mut r = self.apply(action);
                    while r.is_ok() {
                        match inbox.try_recv() {
                            Some((cid, action)) if cid == self.id => r = self.apply(action),
                            Some((_, action)) => self.out.release_stale(action),
                            None => break,
                        }
                    }
                    r
                }
                Woke::Io(Io::Read(Ok(0))) => {
                    self.ws.get_mut().eof = true;
                    self.pump()
                }
                Woke::Io(Io::Read(Ok(n))) => {
                    self.counters.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
                    self.pump()
                }
                Woke::Io(Io::Read(Err(_))) => Err(Exit::now(1006, "client_closed")),
                Woke::Io(Io::Wrote) => {
                    self.last_write = Instant::now();
                    if self.out.is_idle() {
                        self.keepalive.ping_written(self.last_write);
                    }
                    Ok(())
                }
                Woke::Io(Io::WriteFailed(_)) => Err(Exit::now(1006, "write_error")),
                Woke::Draining => {
                    // Tell the app first, then close with 1001 (going away).
                    draining = true;
                    self.told_app = true;
                    self.ctx.shared.events.push(Event::WsDisconnect { id: self.id, code: 1001, reason: "server_shutdown".into() });
                    if self.closing.is_none() {
                        self.close(1001, "");
                        self.closing = Some((Instant::now() + SHORT_CLOSE_WAIT, 1001));
                    }
                    Ok(())
                }
                // The grace is over: close now, blocked in a write or not.
                Woke::Closing => Err(Exit::now(1006, "server_shutdown")),
                Woke::WriteStalled => Err(Exit::now(1006, "write_timeout")),
                Woke::CloseTimedOut => Err(Exit::now(1006, "client_closed")),
                Woke::PongMissed => Err(Exit::now(1006, "keepalive_timeout")),
                Woke::Ping => {
                    let now = Instant::now();
                    let k = &mut self.keepalive;
                    k.next_ping = Some(now + k.interval);
                    if k.pong_due.is_none() && !k.timeout.is_zero() {
                        // This ping starts the pong clock, from when it reaches the socket.
                        k.pong_due = Some(now + k.timeout);
                        k.ping_queued = true;
                    }
                    let _ = self.ws.write(Message::Ping(Bytes::new()));
                    let _ = self.ws.flush();
                    Ok(())
                }
            };
            if let Err(exit) = step {
                return exit;
            }
        }
    }

    /// Applies one command of this session.
    fn apply(&mut self, action: Action) -> Result<(), Exit> {
        match action {
            Action::WsSend { data, text } => {
                let counted = data.len();
                if self.closing.is_some() || !self.ws.can_write() {
                    // Not sent after a Close; still counted, so Perl's buffered total drains.
                    self.out.data(Bytes::new(), counted);
                } else {
                    self.move_output();
                    put_data_frame_header(self.out.buf(), text, data.len());
                    self.out.data(data, counted);
                }
            }
            Action::WsClose { code, reason } => {
                if self.closing.is_none() {
                    self.close(code, &reason);
                    self.closing = Some((Instant::now() + CLOSE_WAIT, code));
                }
            }
            Action::WsCredit(n) => {
                self.inbound.credit(n);
                self.deliver();
            }
            Action::WsKeepalive { interval, timeout } => {
                self.keepalive = Keepalive::new(interval, timeout.unwrap_or(Duration::ZERO));
            }
            Action::Abort => return Err(Exit::now(1006, "server_error")),
            Action::Group { frame } | Action::GroupTail { bytes: frame } => {
                let counted = frame.len();
                if self.closing.is_some() || !self.ws.can_write() {
                    self.out.data(Bytes::new(), counted);
                } else {
                    self.move_output();
                    self.out.data(frame, counted);
                }
            }
            // The client reads too slowly for its groups; it is not reading
            // a Close either, so the connection just ends.
            Action::GroupDrop => return Err(Exit::now(1008, "too slow for group messages")),
            _ => {}
        }
        Ok(())
    }

    /// Runs tungstenite over every byte read so far: messages are held and
    /// delivered as the window allows, control frames answered.
    fn pump(&mut self) -> Result<(), Exit> {
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => self.received(Bytes::from(t), true),
                Ok(Message::Binary(b)) => self.received(b, false),
                // tungstenite queued the pong; it goes out with the rest of the output.
                Ok(Message::Ping(_)) | Ok(Message::Frame(_)) => {}
                Ok(Message::Pong(_)) => {
                    self.keepalive.pong_due = None;
                    self.keepalive.ping_queued = false;
                }
                Ok(Message::Close(frame)) => {
                    let end = match frame {
                        // tungstenite puts this in place of a Close with an invalid
                        // code and answers 1002: the peer broke the protocol.
                        Some(f) if u16::from(f.code) == 1002 && f.reason.as_str() == "Protocol violation" => End::new(1002, "protocol_error"),
                        Some(f) => End { code: u16::from(f.code), reason: f.reason.to_string() },
                        None => End::new(1005, ""),
                    };
                    // Queues the echo tungstenite prepared (an empty payload when the peer's had none).
                    let _ = self.ws.flush();
                    return Err(Exit { end, linger: CLOSE_WAIT });
                }
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.deliver();
                    return Ok(());
                }
                Err(e) => return Err(self.failed(e)),
            }
        }
    }

    /// Maps a tungstenite read error to how the session ends.
    fn failed(&mut self, e: WsError) -> Exit {
        let (code, reason) = match &e {
            // A peer that vanished without a Close is a drop, not a violation.
            WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => return Exit::now(1006, "client_closed"),
            WsError::ConnectionClosed | WsError::AlreadyClosed => {
                return match self.closing {
                    Some((_, code)) => Exit::now(code, ""),
                    None => Exit::now(1006, "client_closed"),
                };
            }
            WsError::Protocol(_) => (1002, "protocol_error"),
            WsError::Utf8(_) => (1007, "protocol_error"),
            WsError::Capacity(_) => (1009, "protocol_error"),
            _ => return Exit::now(1006, "client_closed"),
        };
        self.close(code, "");
        Exit { end: End::new(code, reason), linger: SHORT_CLOSE_WAIT }
    }

    /// A complete data message arrived.
    fn received(&mut self, data: Bytes, text: bool) {
        // After a Close was sent the app is done with the session: drop it.
        if self.closing.is_none() {
            self.inbound.hold(data, text);
        }
    }

    /// Hands Perl the held messages the window has room for.
    fn deliver(&mut self) {
        while let Some((data, text)) = self.inbound.next_deliverable() {
            self.ctx.shared.events.push(Event::WsMessage { id: self.id, data, text });
        }
    }

    /// Queues a Close frame (tungstenite records that the handshake began).
    fn close(&mut self, code: u16, reason: &str) {
        let frame = CloseFrame { code: CloseCode::from(code), reason: reason.into() };
        let _ = self.ws.close(Some(frame));
    }

    /// Moves what tungstenite wrote into the connection's writer.
    fn move_output(&mut self) {
        let pipe = self.ws.get_mut();
        if !pipe.out.is_empty() {
            let bytes = pipe.out.split().freeze();
            self.out.data(bytes, 0);
        }
    }
}

/// The header of an unfragmented, unmasked data frame (RFC 6455 5.2).
pub fn put_data_frame_header(buf: &mut BytesMut, text: bool, len: usize) {
    buf.put_u8(0x80 | if text { 0x1 } else { 0x2 });
    if len < 126 {
        buf.put_u8(len as u8);
    } else if len <= 0xffff {
        buf.put_u8(126);
        buf.put_u16(len as u16);
    } else {
        buf.put_u8(127);
        buf.put_u64(len as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(text: bool, len: usize) -> Vec<u8> {
        let mut b = BytesMut::new();
        put_data_frame_header(&mut b, text, len);
        b.to_vec()
    }

    #[test]
    fn data_frame_headers_use_the_shortest_length_encoding() {
        assert_eq!(header(true, 0), [0x81, 0]);
        assert_eq!(header(false, 125), [0x82, 125]);
        assert_eq!(header(false, 126), [0x82, 126, 0, 126]);
        assert_eq!(header(true, 65535), [0x81, 126, 0xff, 0xff]);
        assert_eq!(header(false, 65536), [0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
    }

    #[test]
    fn window_counts_messages_and_bytes_but_always_admits_one() {
        let mut i = Inbound::default();
        for _ in 0..3 {
            i.hold(Bytes::from(vec![0u8; BYTE_WINDOW]), false);
        }
        assert!(i.next_deliverable().is_some(), "one message larger than the byte window still goes");
        assert!(i.next_deliverable().is_none(), "a second would pass the byte window");
        assert!(!i.wants_more(), "delivered and held reached the read-ahead bound");
        i.credit(1);
        assert!(i.next_deliverable().is_some());
        assert_eq!(i.delivered_bytes, BYTE_WINDOW);

        let mut i = Inbound::default();
        for _ in 0..WINDOW + 4 {
            i.hold(Bytes::from_static(b"x"), true);
        }
        let mut n = 0;
        while i.next_deliverable().is_some() {
            n += 1;
        }
        assert_eq!(n, WINDOW, "at most WINDOW messages outstanding");
        assert!(i.wants_more(), "small held messages leave room to read control frames");
        i.credit(2);
        assert!(i.next_deliverable().is_some() && i.next_deliverable().is_some() && i.next_deliverable().is_none());
    }

    #[test]
    fn pipe_reads_would_block_until_eof() {
        use std::io::Read;
        let mut p = Pipe::default();
        let mut buf = [0u8; 4];
        assert_eq!(p.read(&mut buf).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        p.inbound.extend_from_slice(b"abcdef");
        assert_eq!(p.read(&mut buf).unwrap(), 4);
        assert_eq!(p.read(&mut buf).unwrap(), 2);
        p.eof = true;
        assert_eq!(p.read(&mut buf).unwrap(), 0);
    }
}
