//! Memory for the body bytes Perl hands over.
//!
//! Perl's bytes are copied once, on the Perl thread, into memory Rust owns;
//! the IO thread drops that memory once the bytes are written. For a big
//! body, that allocation and the free on the other thread sit at the top of
//! glibc's heap, so the heap is trimmed and grown again for every response:
//! about ten page faults per 64 KiB response on the Perl thread, and its
//! system time doubles. Big buffers are therefore kept in a small pool: a
//! written buffer goes back to it from the IO thread, and the Perl thread's
//! next big copy reuses it.

use bytes::Bytes;
use std::sync::{Arc, Mutex};

/// Smaller copies are plain allocations (the writer coalesces them anyway).
const POOLED_MIN: usize = 16 * 1024;
/// Bigger buffers are never kept.
const POOLED_MAX: usize = 1 << 20;
/// At most this much capacity waits in the pool.
const POOL_BYTES: usize = 4 << 20;

/// See the module docs. Shared by the Perl thread (which takes buffers) and
/// the IO thread (which gives them back); both only lock for a push or pop.
#[derive(Default)]
pub struct BodyPool {
    free: Mutex<Free>,
}

#[derive(Default)]
struct Free {
    buffers: Vec<Vec<u8>>,
    capacity: usize,
}

impl BodyPool {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// `data` copied into Rust memory: pooled when it is big.
    pub fn copy(self: &Arc<Self>, data: &[u8]) -> Bytes {
        if data.len() < POOLED_MIN || data.len() > POOLED_MAX {
            return Bytes::copy_from_slice(data);
        }
        // Capacities are powers of two, so bodies of similar sizes share buffers.
        let mut buf = self.take(data.len()).unwrap_or_else(|| Vec::with_capacity(data.len().next_power_of_two()));
        buf.extend_from_slice(data);
        Bytes::from_owner(Pooled { buf, pool: self.clone() })
    }

    fn take(&self, len: usize) -> Option<Vec<u8>> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let at = free.buffers.iter().position(|b| b.capacity() >= len)?;
        let buf = free.buffers.swap_remove(at);
        free.capacity -= buf.capacity();
        Some(buf)
    }

    fn give(&self, mut buf: Vec<u8>) {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if buf.capacity() <= POOLED_MAX && free.capacity + buf.capacity() <= POOL_BYTES {
            buf.clear();
            free.capacity += buf.capacity();
            free.buffers.push(buf);
        }
    }

    /// Capacity waiting in the pool (for tests).
    pub fn idle_capacity(&self) -> usize {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).capacity
    }
}

/// A pooled buffer inside a `Bytes`: back to the pool when the last clone goes.
struct Pooled {
    buf: Vec<u8>,
    pool: Arc<BodyPool>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_bodies_reuse_buffers_small_ones_do_not_enter_the_pool() {
        let pool = BodyPool::new();
        let small = pool.copy(b"hello");
        assert_eq!(&small[..], b"hello");
        drop(small);
        assert_eq!(pool.idle_capacity(), 0);

        let big = vec![7u8; 64 * 1024];
        let a = pool.copy(&big);
        assert_eq!(&a[..], &big[..]);
        let ptr = a.as_ptr();
        let tail = a.slice(1000..);
        drop(a);
        assert_eq!(pool.idle_capacity(), 0, "a slice still holds it");
        drop(tail);
        assert_eq!(pool.idle_capacity(), 64 * 1024, "back once the last clone is gone");
        let b = pool.copy(&vec![9u8; 40 * 1024]);
        assert_eq!(b.as_ptr(), ptr, "the buffer is reused");
        assert!(b.iter().all(|&x| x == 9) && b.len() == 40 * 1024, "with the new bytes only");
        drop(b);
    }

    #[test]
    fn the_pool_keeps_a_bounded_amount() {
        let pool = BodyPool::new();
        let held: Vec<Bytes> = (0..100).map(|_| pool.copy(&vec![1u8; 300 * 1024])).collect();
        drop(held);
        assert!(pool.idle_capacity() <= POOL_BYTES, "{} kept", pool.idle_capacity());
        let huge = pool.copy(&vec![1u8; 2 << 20]);
        drop(huge);
        assert!(pool.idle_capacity() <= POOL_BYTES);
    }
}
