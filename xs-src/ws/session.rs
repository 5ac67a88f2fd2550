//! WebSocket sessions. The opening handshake is answered here once the app
//! sent `websocket.accept`; from then on tungstenite frames the connection
//! (masking, fragmentation, UTF-8, control frames, close codes) and this
//! module moves whole messages between it and Perl.
//!
//! Inbound flow control is by credit: the engine reads a message only while
//! Perl holds credit for one. Perl starts with [`WINDOW`] and returns one
//! credit per message the app takes, so a flooding client meets TCP
//! backpressure instead of growing a queue.

use crate::seam::event::{Action, ConnCounters, Event, Id};
use crate::server::ctx::{IoCtx, Phase};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use crate::server::transport::Transport;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

/// Messages the engine may read ahead of the app.
pub const WINDOW: u32 = 16;
/// How long a closing handshake may take before the connection is dropped.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

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

/// Pings the peer on a schedule and notices when pongs stop coming.
struct Keepalive {
    interval: Duration,
    timeout: Duration,
    next_ping: Option<Instant>,
    pong_due: Option<Instant>,
}

impl Keepalive {
    fn new(interval: Duration, timeout: Duration) -> Self {
        let next_ping = (!interval.is_zero()).then(|| Instant::now() + interval);
        Keepalive { interval, timeout, next_ping, pong_due: None }
    }

    fn next_deadline(&self) -> Option<Instant> {
        match (self.next_ping, self.pong_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// One accepted WebSocket connection.
pub struct Session<'a> {
    pub ctx: &'a Rc<IoCtx>,
    pub id: Id,
    pub counters: &'a Arc<ConnCounters>,
    pub rx: &'a mut mpsc::UnboundedReceiver<(Id, Action)>,
    pub phase: &'a mut watch::Receiver<Phase>,
}

impl Session<'_> {
    /// Runs the session to its end and reports it to Perl exactly once.
    pub async fn run<S: Transport>(self, stream: &mut S, leftover: Vec<u8>) {
        let cfg = &self.ctx.shared.config;
        let config = WebSocketConfig::default()
            .max_message_size(Some(cfg.max_ws_frame_size))
            .max_frame_size(Some(cfg.max_ws_frame_size))
            .read_buffer_size(16 * 1024)
            .write_buffer_size(0);
        let keepalive = Keepalive::new(cfg.ws_ping_interval, cfg.ws_ping_timeout);
        let counted = Counted { inner: &mut *stream, counters: self.counters.clone() };
        let mut ws = WebSocketStream::from_partially_read(counted, leftover, Role::Server, Some(config)).await;
        let (id, ctx) = (self.id, self.ctx);
        let end = self.serve(&mut ws, keepalive).await;
        if let Some(end) = end {
            ctx.shared.events.push(Event::WsDisconnect { id, code: end.code, reason: end.reason });
        }
        let _ = stream.shutdown().await;
    }

    /// The message loop; `None` when the app was already told the session ended.
    async fn serve<S: Transport>(self, ws: &mut WebSocketStream<Counted<'_, S>>, mut keepalive: Keepalive) -> Option<End> {
        let Session { ctx, id, counters, rx, phase } = self;
        let low = ctx.shared.config.write_low_watermark;
        let mut credit = WINDOW;
        let mut closing: Option<(Instant, u16)> = None;
        let mut told_app = false;
        let far = Instant::now() + Duration::from_secs(86400 * 365);
        loop {
            let deadline = [keepalive.next_deadline(), closing.map(|c| c.0)].into_iter().flatten().min();
            let reading = credit > 0 || closing.is_some();
            tokio::select! {
                biased;
                cmd = rx.recv() => {
                    let mut next = cmd;
                    let mut written = 0usize;
                    while let Some((cid, action)) = next.take() {
                        if cid == id {
                            match action {
                                Action::WsSend { data, text } => {
                                    written += data.len();
                                    if closing.is_none() {
                                        let msg = if text {
                                            Message::Text(Utf8Bytes::try_from(data).unwrap_or_else(|_| Utf8Bytes::from("")))
                                        } else {
                                            Message::Binary(data)
                                        };
                                        if ws.feed(msg).await.is_err() {
                                            return finish(told_app, End::new(1006, "write_error"));
                                        }
                                    }
                                }
                                Action::WsClose { code, reason } => {
                                    if closing.is_none() {
                                        let frame = CloseFrame { code: CloseCode::from(code), reason: reason.into() };
                                        let _ = ws.feed(Message::Close(Some(frame))).await;
                                        closing = Some((Instant::now() + CLOSE_WAIT, code));
                                    }
                                }
                                Action::WsCredit(n) => credit = credit.saturating_add(n),
                                Action::WsKeepalive { interval, timeout } => {
                                    keepalive = Keepalive::new(interval, timeout.unwrap_or(Duration::ZERO));
                                }
                                Action::Abort => return finish(told_app, End::new(1006, "server_error")),
                                _ => {}
                            }
                        }
                        next = rx.try_recv().ok();
                    }
                    if ws.flush().await.is_err() {
                        return finish(told_app, End::new(1006, "write_error"));
                    }
                    if written > 0 && counters.sub_buffered(written, low) {
                        ctx.shared.events.push(Event::Writable { id });
                    }
                }
                msg = ws.next(), if reading => {
                    match msg {
                        Some(Ok(Message::Text(t))) => {
                            credit = credit.saturating_sub(1);
                            if closing.is_none() {
                                ctx.shared.events.push(Event::WsMessage { id, data: Bytes::from(t), text: true });
                            }
                        }
                        Some(Ok(Message::Binary(b))) => {
                            credit = credit.saturating_sub(1);
                            if closing.is_none() {
                                ctx.shared.events.push(Event::WsMessage { id, data: b, text: false });
                            }
                        }
                        Some(Ok(Message::Ping(_))) => {
                            // tungstenite queued the pong; send it now even if no read follows.
                            if ws.flush().await.is_err() {
                                return finish(told_app, End::new(1006, "write_error"));
                            }
                        }
                        Some(Ok(Message::Pong(_))) => keepalive.pong_due = None,
                        Some(Ok(Message::Close(frame))) => {
                            let end = match frame {
                                // tungstenite puts this in place of a Close with an invalid
                                // code and answers 1002: the peer broke the protocol.
                                Some(f) if u16::from(f.code) == 1002 && f.reason.as_str() == "Protocol violation" => {
                                    End::new(1002, "protocol_error")
                                }
                                Some(f) => End { code: u16::from(f.code), reason: f.reason.to_string() },
                                None => End::new(1005, ""),
                            };
                            // Sends the echo tungstenite queued (an empty payload when the peer's had none).
                            let _ = tokio::time::timeout(CLOSE_WAIT, ws.flush()).await;
                            return finish(told_app, end);
                        }
                        Some(Ok(Message::Frame(_))) => {}
                        Some(Err(e)) => {
                            let (code, reason) = match &e {
                                // A peer that vanished without a Close is a drop, not a violation.
                                WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
                                    return finish(told_app, End::new(1006, "client_closed"));
                                }
                                WsError::Protocol(_) => (1002, "protocol_error"),
                                WsError::Utf8(_) => (1007, "protocol_error"),
                                WsError::Capacity(_) => (1009, "protocol_error"),
                                WsError::ConnectionClosed | WsError::AlreadyClosed => {
                                    let code = closing.map_or(1006, |c| c.1);
                                    return finish(told_app, End::new(code, if closing.is_some() { "" } else { "client_closed" }));
                                }
                                _ => return finish(told_app, End::new(1006, "client_closed")),
                            };
                            let frame = CloseFrame { code: CloseCode::from(code), reason: "".into() };
                            let _ = tokio::time::timeout(Duration::from_secs(1), ws.send(Message::Close(Some(frame)))).await;
                            return finish(told_app, End::new(code, reason));
                        }
                        None => {
                            let end = match closing {
                                Some((_, code)) => End::new(code, ""),
                                None => End::new(1006, "client_closed"),
                            };
                            return finish(told_app, end);
                        }
                    }
                }
                _ = sleep_until(deadline.unwrap_or(far)), if deadline.is_some() => {
                    let now = Instant::now();
                    if closing.is_some_and(|c| c.0 <= now) {
                        return finish(told_app, End::new(1006, "client_closed"));
                    }
                    if keepalive.pong_due.is_some_and(|d| d <= now) {
                        return finish(told_app, End::new(1006, "keepalive_timeout"));
                    }
                    if keepalive.next_ping.is_some_and(|d| d <= now) {
                        keepalive.next_ping = Some(now + keepalive.interval);
                        if keepalive.pong_due.is_none() && !keepalive.timeout.is_zero() {
                            keepalive.pong_due = Some(now + keepalive.timeout);
                        }
                        if ws.send(Message::Ping(Bytes::new())).await.is_err() {
                            return finish(told_app, End::new(1006, "write_error"));
                        }
                    }
                }
                p = phase.wait_for(|p| *p != Phase::Running), if !told_app => {
                    let _ = p;
                    // Tell the app first, then close with 1001 (going away).
                    told_app = true;
                    ctx.shared.events.push(Event::WsDisconnect { id, code: 1001, reason: "server_shutdown".into() });
                    if closing.is_none() {
                        let frame = CloseFrame { code: CloseCode::Away, reason: "".into() };
                        let _ = ws.send(Message::Close(Some(frame))).await;
                        closing = Some((Instant::now() + Duration::from_secs(1), 1001));
                    }
                }
            }
        }
    }
}

/// The socket as tungstenite sees it, counting bytes read for `stats`.
pub struct Counted<'a, S> {
    inner: &'a mut S,
    counters: Arc<ConnCounters>,
}

impl<S: Transport> tokio::io::AsyncRead for Counted<'_, S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = std::pin::Pin::new(&mut *this.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        this.counters.bytes_read.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        polled
    }
}

impl<S: Transport> tokio::io::AsyncWrite for Counted<'_, S> {
    fn poll_write(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>, data: &[u8]) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut *self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

fn finish(told_app: bool, end: End) -> Option<End> {
    (!told_app).then_some(end)
}
