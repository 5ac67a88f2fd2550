//! The seam between Perl and the IO thread. [`ffi`] and [`engine`] run on
//! the Perl thread only; [`event`] and [`queue`] are the plain data and the
//! wake both threads share.

pub mod bodies;
pub mod engine;
pub mod event;
pub mod ffi;
pub mod flow;
pub mod queue;
