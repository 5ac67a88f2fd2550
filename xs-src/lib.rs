//! Rust core of `PAGI::Server::Native`.
//!
//! Perl binds the listening sockets and runs the PAGI application; this crate
//! accepts connections on the fds it is handed, speaks HTTP/1.1 on one IO
//! thread (a tokio `current_thread` runtime), and exchanges events and commands
//! with Perl through a queue and an eventfd. Rust never calls into Perl.
//!
//! # Layout (top uses bottom; no module imports one above it)
//! - [`seam`]: the Perl-thread half. `seam::ffi` holds the only `extern "C"`
//!   functions (`pagi_native_*`, each behind a panic guard; the C side is
//!   `xs-src/pagi_native.h` and `xs-src/Native.xs`); `seam::engine` the
//!   lifecycle, command batching and drain. `seam::event`, `seam::queue`
//!   (the coalesced eventfd wake) and `seam::flow` (per-connection counters)
//!   are the plain data both threads share.
//! - [`server`]: the IO thread. `runtime` (thread, phases), `accept`
//!   (listeners, capacity, TLS handshakes, protocol hand-off), `dispatch`
//!   (commands to streams), `ctx` (shared context and the id registry; knows
//!   no protocol), `transport`, `tls`, and `writer`, the one write path every
//!   protocol uses (queued output polled in each connection's select, stall
//!   timer, TLS flush).
//! - [`http`]: the protocol-neutral request exchange: `exchange` (response
//!   states and rules behind a `Wire`), `request` (target split, decoding),
//!   `response` (header checks, reason phrases, Date).
//! - [`h1`]: HTTP/1.1 only: `conn` (the connection loop), `parse` (heads),
//!   `decode` (request bodies), `encode` (heads, chunking, the h1 `Wire`).
//! - [`ws`]: the WebSocket handshake answer and session (tungstenite).
//! - [`sse`]: Server-Sent Events framing.
//! - [`pubsub`]: groups of WebSocket/SSE streams and the fan-out of one
//!   encoded frame to N writers (it sits above the protocols and uses their
//!   framing; `server::ctx` holds its registry and calls it when a stream ends).
//! - [`config`]: engine options, one name per option shared with Perl and the CLI.
//!
//! A protocol module never imports another, except for the upgrade
//! hand-off (h1 starts a ws session on its socket); only `server::accept`
//! knows which protocol serves a connection. HTTP/2 will sit beside `h1`,
//! implementing `http::exchange::Wire` per stream.

pub mod config;
pub mod h1;
pub mod http;
pub mod pubsub;
pub mod seam;
pub mod server;
pub mod sse;
pub mod ws;
