//! HTTP/1.1 only: the connection loop, head parsing, body decoding.

pub mod conn;
pub mod decode;
pub mod encode;
pub mod parse;
