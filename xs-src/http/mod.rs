//! The protocol-neutral request exchange: the response state machine
//! ([`exchange`]) and the rules on status and headers every protocol shares.

pub mod exchange;
pub mod request;
pub mod response;
