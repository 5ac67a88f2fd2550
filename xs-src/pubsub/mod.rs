//! Groups across processes: the Redis bridge.

pub mod redis;
