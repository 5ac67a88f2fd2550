//! Rust core of `PAGI::Server::Native`.
//!
//! Perl binds the listening sockets and runs the PAGI application; this crate
//! accepts connections on the fds it is handed, speaks HTTP/1.1 on one IO
//! thread (a tokio `current_thread` runtime), and exchanges events and commands
//! with Perl through a queue and an eventfd. Rust never calls into Perl.
//!
//! # Layout
//! - [`ffi`]: the only `extern "C"` functions (`pagi_native_*`), each behind a
//!   panic guard; the C side is `xs-src/pagi_native.h` and `xs-src/Native.xs`.
//! - [`engine`]: the Perl-thread half of the engine: configuration, listeners,
//!   command batching, draining events, statistics.
//! - [`io`]: the IO thread: runtime, accept loops, command dispatch, shutdown.
//! - [`conn`]: one HTTP/1.1 connection: request/response state machine.
//! - [`head`]: request-head parsing and validation (httparse).
//! - [`body`]: request-body framing (Content-Length and chunked decoding).
//! - [`response`]: response-head encoding and body framing.
//! - [`event`]: the messages that cross the seam in both directions.
//! - [`queue`]: the event queue with its coalesced eventfd wake.
//! - [`tls`]: rustls server configuration and the `tls` scope extension.
//! - [`transport`]: the streams connections run over (TCP, Unix, TLS).
//! - [`sse`]: Server-Sent Events framing.
//! - [`ws`]: WebSocket sessions after the handshake (tungstenite).
//! - [`config`]: engine options, one name per option shared with Perl and the CLI.

pub mod body;
pub mod config;
pub mod conn;
pub mod engine;
pub mod event;
pub mod ffi;
pub mod head;
pub mod io;
pub mod queue;
pub mod response;
pub mod sse;
pub mod tls;
pub mod transport;
pub mod ws;
