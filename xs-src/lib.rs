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
//!   lifecycle, command batching and drain; `seam::event` and `seam::queue`
//!   the plain data and the coalesced eventfd wake shared with the IO thread.
//! - [`server`]: the IO thread. `runtime` (thread, phases), `accept`
//!   (listeners, capacity, TLS handshakes, protocol hand-off), `dispatch`
//!   (commands to streams), `ctx` (shared context and the id registry; knows
//!   no protocol), `transport`, `tls`, `writer` (the one write path).
//! - [`h1`]: HTTP/1.1 only: connection loop, head parsing, body decoding.
//! - [`ws`]: the WebSocket handshake answer and session (tungstenite).
//! - [`http`]: protocol-neutral response rules.
//! - [`sse`]: Server-Sent Events framing.
//! - [`config`]: engine options, one name per option shared with Perl and the CLI.
//!
//! A protocol module ([`h1`], [`ws`]) never imports another protocol module
//! except for the upgrade hand-off (h1 starts a ws session on its socket).

pub mod config;
pub mod h1;
pub mod http;
pub mod seam;
pub mod server;
pub mod sse;
pub mod ws;
