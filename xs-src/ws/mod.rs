//! WebSocket after the upgrade request: the handshake answer and the
//! message session (tungstenite).

pub mod handshake;
pub mod session;
