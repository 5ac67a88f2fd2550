//! The protocol-neutral request exchange: response status and header rules.

pub mod response;
