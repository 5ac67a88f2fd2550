//! The protocol-neutral half of one request/response exchange: which PAGI
//! response commands are legal in which state, holding the head back until
//! the first body shows whether the length is known, declared trailers,
//! the WebSocket accept-or-deny decision, the SSE keepalive schedule and
//! abort. How heads and bodies look on the wire is the protocol's business,
//! behind [`Wire`]; HTTP/1.1 implements it in `h1::encode`, and HTTP/2 will
//! be a second implementation, not a second copy of these rules.

use crate::seam::event::{Action, Headers};
use bytes::Bytes;
use std::time::Duration;
use tokio::time::Instant;

/// Where the response is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resp {
    /// Nothing sent yet.
    Idle,
    /// The head was accepted (it may still be held back); body may follow.
    Started,
    /// The response is complete as far as the app is concerned.
    Done,
}

/// What a protocol does with a response.
pub trait Wire {
    /// Writes the head; `known` is the whole body length when it is known.
    fn head(&mut self, status: u16, headers: &Headers, known: Option<u64>);
    /// Writes body bytes, `counted` of them under flow control; `last` ends the body.
    fn data(&mut self, data: Bytes, counted: usize, last: bool);
    /// Writes `len` bytes of `file` from `offset`; always the end of the body.
    fn file(&mut self, file: std::fs::File, offset: u64, len: u64);
    /// The framing chosen for the head can carry trailers.
    fn carries_trailers(&self) -> bool;
    /// Ends the body, with `trailers` where the framing and the client allow.
    fn end(&mut self, trailers: Option<&Headers>);
    /// The response cannot end normally: the connection must not be reused.
    fn cut(&mut self);
}

/// What the connection must do after a command was applied.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    Nothing,
    /// The app asked for the next request-body chunk.
    WantBody,
}

/// The response state of one exchange.
pub struct Response {
    pub state: Resp,
    pending_head: Option<(u16, Headers)>,
    trailers_declared: bool,
    /// `abort`: close once what is queued is written.
    pub aborted: bool,
    /// A WebSocket handshake waits for the app's answer.
    websocket: bool,
    /// Set by `websocket.accept`: the subprotocol and headers of the 101.
    pub upgrade: Option<(Option<String>, Headers)>,
    /// `sse.keepalive`: the interval, the framed comment and the next tick.
    keepalive: Option<(Duration, Bytes, Instant)>,
}

impl Response {
    pub fn new(websocket: bool) -> Self {
        Response { state: Resp::Idle, pending_head: None, trailers_declared: false, aborted: false, websocket, upgrade: None, keepalive: None }
    }

    /// The head is out and body bytes may follow as they come (a stream
    /// such as SSE that has not ended).
    pub fn is_streaming(&self) -> bool {
        self.state == Resp::Started && self.pending_head.is_none() && !self.aborted
    }

    /// Applies one command from Perl.
    pub fn apply<W: Wire>(&mut self, action: Action, wire: &mut W) -> Applied {
        match action {
            Action::WantBody => return Applied::WantBody,
            Action::Full { status, headers, body } if self.state == Resp::Idle => {
                wire.head(status, &headers, Some(body.len() as u64));
                wire.data(body, 0, true);
                wire.end(None);
                self.state = Resp::Done;
            }
            Action::SseKeepalive { interval, comment } => {
                self.keepalive = (!interval.is_zero()).then(|| (interval, comment, Instant::now() + interval));
            }
            Action::WsAccept { subprotocol, headers } if self.websocket && self.state == Resp::Idle => {
                self.upgrade = Some((subprotocol, headers));
                self.state = Resp::Done;
            }
            Action::WsClose { .. } if self.websocket && self.state == Resp::Idle => {
                // websocket.close before accept refuses the handshake (PAGI-SPEC 3.2.2).
                wire.head(403, &Vec::new(), Some(0));
                wire.end(None);
                self.state = Resp::Done;
            }
            Action::Start { status, headers, trailers } if self.state == Resp::Idle => {
                self.pending_head = Some((status, headers));
                self.trailers_declared = trailers;
                self.state = Resp::Started;
            }
            Action::Body { data, more } if self.state == Resp::Started => {
                let counted = data.len();
                let known = (!more && !self.trailers_declared).then_some(data.len() as u64);
                self.send_head(wire, known);
                wire.data(data, counted, !more);
                if !more {
                    self.end_unless_trailers(wire);
                }
            }
            Action::File { file, offset, length } if self.state == Resp::Started => {
                let size = file.metadata().map(|m| m.len()).unwrap_or(0);
                let available = size.saturating_sub(offset);
                let len = length.map_or(available, |l| l.min(available));
                let known = (!self.trailers_declared).then_some(len);
                self.send_head(wire, known);
                wire.file(file, offset, len);
                self.end_unless_trailers(wire);
            }
            Action::Trailers { headers } if self.state == Resp::Started => {
                // Declared trailers need a framing that carries them, even with no body at all.
                let known = (!self.trailers_declared).then_some(0);
                self.send_head(wire, known);
                wire.end(Some(&headers));
                self.state = Resp::Done;
            }
            Action::Abort => {
                self.send_head(wire, None);
                self.aborted = true;
                wire.cut();
            }
            _ => {} // out of order: Perl already refused it; never corrupt the wire
        }
        Applied::Nothing
    }

    /// The next SSE keepalive tick, if any.
    pub fn keepalive_due(&self) -> Option<Instant> {
        self.keepalive.as_ref().map(|k| k.2)
    }

    /// Writes the keepalive comment (once the stream's head is out) and
    /// schedules the next tick.
    pub fn keepalive_tick<W: Wire>(&mut self, wire: &mut W) {
        if let Some((interval, comment, next)) = self.keepalive.as_mut() {
            *next = Instant::now() + *interval;
            if self.state == Resp::Started && self.pending_head.is_none() {
                wire.data(comment.clone(), 0, false);
            }
        }
    }

    fn send_head<W: Wire>(&mut self, wire: &mut W, known: Option<u64>) {
        if let Some((status, headers)) = self.pending_head.take() {
            wire.head(status, &headers, known);
        }
    }

    /// After the last body bytes: done, unless declared trailers can still follow.
    fn end_unless_trailers<W: Wire>(&mut self, wire: &mut W) {
        if !(self.trailers_declared && wire.carries_trailers()) {
            wire.end(None);
            self.state = Resp::Done;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what the rules asked of the wire.
    #[derive(Default)]
    struct Log(Vec<String>, bool);

    impl Wire for Log {
        fn head(&mut self, status: u16, _: &Headers, known: Option<u64>) {
            self.0.push(format!("head {status} {known:?}"));
        }
        fn data(&mut self, data: Bytes, _: usize, last: bool) {
            self.0.push(format!("data {} {last}", data.len()));
        }
        fn file(&mut self, _: std::fs::File, _: u64, len: u64) {
            self.0.push(format!("file {len}"));
        }
        fn carries_trailers(&self) -> bool {
            self.1
        }
        fn end(&mut self, t: Option<&Headers>) {
            self.0.push(format!("end {}", t.map_or(0, |t| t.len())));
        }
        fn cut(&mut self) {
            self.0.push("cut".into());
        }
    }

    #[test]
    fn head_waits_for_the_first_body_and_learns_the_length() {
        let mut r = Response::new(false);
        let mut w = Log::default();
        r.apply(Action::Start { status: 200, headers: vec![], trailers: false }, &mut w);
        assert!(w.0.is_empty());
        r.apply(Action::Body { data: Bytes::from_static(b"hello"), more: false }, &mut w);
        assert_eq!(w.0, ["head 200 Some(5)", "data 5 true", "end 0"]);
        assert_eq!(r.state, Resp::Done);
        r.apply(Action::Body { data: Bytes::from_static(b"late"), more: false }, &mut w);
        assert_eq!(w.0.len(), 3, "nothing after the end");
    }

    #[test]
    fn declared_trailers_keep_the_response_open_and_go_out_without_a_body() {
        let mut r = Response::new(false);
        let mut w = Log(vec![], true);
        r.apply(Action::Start { status: 200, headers: vec![], trailers: true }, &mut w);
        r.apply(Action::Trailers { headers: vec![(Bytes::from_static(b"x"), Bytes::from_static(b"1"))] }, &mut w);
        assert_eq!(w.0, ["head 200 None", "end 1"]);
        assert_eq!(r.state, Resp::Done);
    }

    #[test]
    fn websocket_close_before_accept_is_a_403() {
        let mut r = Response::new(true);
        let mut w = Log::default();
        r.apply(Action::WsClose { code: 1000, reason: String::new() }, &mut w);
        assert_eq!(w.0, ["head 403 Some(0)", "end 0"]);
        let mut plain = Response::new(false);
        plain.apply(Action::WsAccept { subprotocol: None, headers: vec![] }, &mut w);
        assert!(plain.upgrade.is_none(), "no upgrade without a handshake");
    }
}
