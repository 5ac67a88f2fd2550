//! The server runtime on the IO thread: the thread and its phases, accept
//! loops and admission, command dispatch, the shared context, transports,
//! TLS. Knows connections, not protocols, except where [`accept`] hands a
//! connection to its protocol.

pub mod accept;
pub mod ctx;
pub mod dispatch;
pub mod runtime;
pub mod tls;
pub mod transport;
pub mod writer;
