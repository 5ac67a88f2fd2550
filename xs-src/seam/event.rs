//! Messages crossing the seam: [`Event`] from the IO thread to Perl and
//! [`Command`] from Perl to the IO thread. Plain data, no I/O, no Perl.

use bytes::Bytes;
use std::sync::Arc;
pub use crate::seam::flow::ConnCounters;

/// A request or connection id: an integer that is never reused.
pub type Id = u64;

/// Header pairs as bytes; request names are lower-cased, response names as the app wrote them.
pub type Headers = Vec<(Bytes, Bytes)>;

/// Which PAGI scope a request opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScopeKind {
    Http = 0,
    WebSocket = 1,
    Sse = 2,
}

/// The decoded request head as the app's scope needs it.
#[derive(Debug)]
pub struct RequestEvent {
    pub id: Id,
    pub kind: ScopeKind,
    pub method: Bytes,
    /// Percent-decoded path bytes; `path_is_utf8` says whether they are valid UTF-8.
    pub path: Vec<u8>,
    pub path_is_utf8: bool,
    pub raw_path: Bytes,
    pub query_string: Bytes,
    pub http_version: &'static str,
    pub scheme: &'static str,
    pub headers: Headers,
    /// `None` on Unix-domain sockets.
    pub client: Option<(String, u16)>,
    /// `(path, None)` on Unix-domain sockets.
    pub server: (String, Option<u16>),
    /// Set on TLS connections, for the `tls` extension.
    pub tls: Option<Arc<crate::server::tls::TlsInfo>>,
    /// The whole body when it came with the head (small Content-Length, or none);
    /// `None` when the app must pull it with `want_body`.
    pub body: Option<Bytes>,
    pub counters: Arc<ConnCounters>,
}

/// Why a request ended abnormally; the names are PAGI's disconnect reasons.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    ClientClosed,
    ClientTimeout,
    WriteError,
    WriteTimeout,
    ReadError,
    ProtocolError,
    ServerShutdown,
    ServerError,
    BodyTooLarge,
    /// A slow member of a group was dropped (see `group_overflow`).
    QueueOverflow,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ClientClosed => "client_closed",
            Reason::ClientTimeout => "client_timeout",
            Reason::WriteError => "write_error",
            Reason::WriteTimeout => "write_timeout",
            Reason::ReadError => "read_error",
            Reason::ProtocolError => "protocol_error",
            Reason::ServerShutdown => "server_shutdown",
            Reason::ServerError => "server_error",
            Reason::BodyTooLarge => "body_too_large",
            Reason::QueueOverflow => "queue_overflow",
        }
    }
}

/// IO thread → Perl.
#[derive(Debug)]
pub enum Event {
    /// A new request; exactly one of `Done` or `Disconnect` follows for its id.
    Request(Box<RequestEvent>),
    /// The next request-body chunk, sent after Perl asked with `want_body`.
    Body { id: Id, data: Bytes, more: bool },
    /// The response buffer of `id` fell below the low watermark.
    Writable { id: Id },
    /// The response of `id` was completely written; the request is over.
    /// `at`: when the response was complete, seconds since the epoch (the
    /// event itself may reach Perl a little later, see `IoCtx::push_lazy`).
    Done { id: Id, at: f64 },
    /// The request `id` ended abnormally.
    Disconnect { id: Id, reason: Reason },
    /// A complete WebSocket message (text is valid UTF-8).
    WsMessage { id: Id, data: Bytes, text: bool },
    /// The WebSocket `id` ended: the peer's close code (1005 without one) or
    /// the code the server closed with, and the peer's reason or a PAGI token.
    WsDisconnect { id: Id, code: u16, reason: String },
    /// Graceful shutdown began while `id` was in flight: the app may say goodbye.
    ShutdownNotice { id: Id },
    /// The engine finished shutting down; the IO thread is gone.
    Stopped,
    /// A message published to a group Perl subscribed to.
    GroupMessage(Box<GroupDelivery>),
    /// The answer to a [`Command::Query`] (or a publish) with this token.
    Reply { token: u64, result: Box<Result<Value, String>> },
    /// A message for Perl's log.
    Log { level: &'static str, message: String },
    /// The IO thread died; the engine is unusable.
    Fatal { message: String },
}

/// What Perl asks of one request.
#[derive(Debug)]
pub enum Action {
    /// Start and finish the response in one go (Content-Length framing).
    Full { status: u16, headers: Headers, body: Bytes },
    /// Start a streamed response; written with the first body chunk.
    Start { status: u16, headers: Headers, trailers: bool },
    /// A body chunk; `more == false` ends the body.
    Body { data: Bytes, more: bool },
    /// Trailer fields; end the response.
    Trailers { headers: Headers },
    /// Send `length` bytes of `file` from `offset` (None: to its end); completes the body.
    File { file: std::fs::File, offset: u64, length: Option<u64> },
    /// Complete the WebSocket handshake (101).
    WsAccept { subprotocol: Option<String>, headers: Headers },
    /// One WebSocket message.
    WsSend { data: Bytes, text: bool },
    /// Close the WebSocket (before accept: refuse the handshake with 403).
    WsClose { code: u16, reason: String },
    /// The app took messages off its queue: read this many more.
    WsCredit(u32),
    /// Ping every `interval` (zero stops); no pong within `timeout` closes.
    WsKeepalive { interval: std::time::Duration, timeout: Option<std::time::Duration> },
    /// Write an SSE comment every `interval` (zero stops) without waking Perl.
    SseKeepalive { interval: std::time::Duration, comment: Bytes },
    /// Read the next request-body chunk.
    WantBody,
    /// Close the connection once what is queued is written.
    Abort,
    /// A group message already encoded for this stream's protocol (a whole
    /// WebSocket frame or an SSE event); its length was added to the
    /// connection's buffered count when it was queued.
    Group { frame: Bytes },
    /// The rest of a group frame whose start was written straight to the
    /// socket, already framed for the wire (an SSE event inside its chunk):
    /// written as it is, before anything else. Counted like `Group`.
    GroupTail { bytes: Bytes },
    /// This member is too slow for its groups: end the stream now.
    GroupDrop,
}

/// One message published to a group: plain data, encoded per protocol by
/// `crate::pubsub` on the IO thread.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupMessage {
    /// `text` (characters, valid UTF-8) rather than `bytes`.
    pub text: bool,
    pub data: Bytes,
    /// SSE fields; WebSocket members ignore them.
    pub event: Option<String>,
    pub id: Option<String>,
    pub retry: Option<u64>,
}

/// A group message for Perl's subscribers.
#[derive(Debug)]
pub struct GroupDelivery {
    pub group: String,
    pub message: GroupMessage,
    /// The node that published it; `None` for this one.
    pub node: Option<String>,
}

/// A reply value (the shape of a Redis reply; local queries answer `Int`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Nil,
    Int(i64),
    Data(Bytes),
    Status(String),
    Array(Vec<Value>),
}

/// Group membership and publishing, for `crate::pubsub` on the IO thread.
#[derive(Debug)]
pub enum GroupCommand {
    /// Stream `id` (a WebSocket after accept, or an SSE stream after start) joins `group`.
    Join { id: Id, group: String, counters: Arc<ConnCounters>, sse: bool },
    Leave { id: Id, group: String },
    /// Fan `message` out to the members of `group` (but `exclude`); the
    /// local member count comes back as `Event::Reply` with `token`.
    Publish { token: u64, group: String, message: GroupMessage, exclude: Option<Id> },
    /// Perl's subscribers want (or no longer want) the messages of `group`.
    Subscribe { group: String },
    Unsubscribe { group: String },
}

/// A question Perl asks the IO thread; answered by `Event::Reply`.
#[derive(Debug)]
pub enum Query {
    /// Members of `group` across the cluster (locally: this process's).
    ClusterCount { group: String },
    /// A Redis command, for the redis backend.
    Redis { args: Vec<Vec<u8>> },
}

/// Perl → IO thread.
#[derive(Debug)]
pub enum Command {
    Request { id: Id, action: Action },
    Group(GroupCommand),
    Query { token: u64, query: Query },
    /// Stop accepting, finish in-flight requests within `grace`, then stop.
    Shutdown { grace: std::time::Duration },
}
