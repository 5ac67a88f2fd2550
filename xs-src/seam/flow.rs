//! Per-connection flow counters shared by the IO thread and the Perl
//! thread: bytes read, response bytes buffered, and the watermark handshake
//! that turns into `writable` events.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// Counters of one connection, shared by the IO thread and the Perl thread.
#[derive(Debug, Default)]
pub struct ConnCounters {
    /// Bytes read from the socket so far.
    pub bytes_read: AtomicU64,
    /// Response body bytes handed over by Perl and not yet written to the socket.
    pub buffered: AtomicUsize,
    /// Perl is waiting for `buffered` to fall below the low watermark.
    pub drain_wanted: AtomicBool,
}

impl ConnCounters {
    /// Adds body bytes queued by Perl; returns the new buffered amount.
    pub fn add_buffered(&self, n: usize) -> usize {
        self.buffered.fetch_add(n, Ordering::AcqRel) + n
    }

    /// Removes bytes written to the socket; true when a waiting sender must be woken.
    pub fn sub_buffered(&self, n: usize, low: usize) -> bool {
        let now = self.buffered.fetch_sub(n, Ordering::AcqRel).saturating_sub(n);
        now < low && self.drain_wanted.swap(false, Ordering::AcqRel)
    }

    /// Called by Perl once `buffered` reached the high watermark. Returns true
    /// when the IO thread has already drained below `low` meanwhile, in which
    /// case no `writable` event will come and the sender must not wait.
    pub fn wait_for_drain(&self, low: usize) -> bool {
        self.drain_wanted.store(true, Ordering::Release);
        self.buffered.load(Ordering::Acquire) < low
            && self.drain_wanted.swap(false, Ordering::AcqRel)
    }
}
