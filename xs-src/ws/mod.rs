//! WebSocket after the upgrade request: the handshake answer and the
//! message session (tungstenite over the connection's writer).

pub mod handshake;
pub mod session;
