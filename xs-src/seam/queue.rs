//! The event queue from the IO thread to Perl, with its wake fd.
//!
//! Pushing writes the eventfd only when no wake is outstanding, so a burst of
//! events costs one wake. Draining clears the "notified" flag *before* popping:
//! an event pushed after that sets it again and writes the fd, so no wake is lost.

use crate::seam::event::Event;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// A multi-producer queue of [`Event`]s drained by the Perl thread.
pub struct EventQueue {
    events: Mutex<VecDeque<Event>>,
    notified: AtomicBool,
    wake_fd: OwnedFd,
}

impl EventQueue {
    /// Creates the queue and its eventfd (non-blocking, close-on-exec).
    pub fn new() -> io::Result<Self> {
        // SAFETY: eventfd has no memory-safety preconditions; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(EventQueue {
            events: Mutex::new(VecDeque::with_capacity(256)),
            notified: AtomicBool::new(false),
            // SAFETY: fd was just created and is owned by nobody else.
            wake_fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// The fd Perl watches for readability.
    pub fn fd(&self) -> RawFd {
        self.wake_fd.as_raw_fd()
    }

    /// Queues one event and wakes Perl unless a wake is already pending.
    pub fn push(&self, event: Event) {
        self.lock().push_back(event);
        self.wake();
    }

    /// Queues an event that need not wake Perl by itself (a finished
    /// request): it rides along with the next wake. The caller makes sure
    /// one comes soon ([`EventQueue::wake_if_pending`] from a timer).
    pub fn push_lazy(&self, event: Event) {
        self.lock().push_back(event);
    }

    /// Wakes Perl if events wait and no wake is outstanding.
    pub fn wake_if_pending(&self) {
        if !self.lock().is_empty() {
            self.wake();
        }
    }

    /// Moves up to `max` events into `out`; re-arms the fd if more remain.
    pub fn drain_into(&self, max: usize, out: &mut Vec<Event>) {
        self.clear_fd();
        self.notified.store(false, Ordering::SeqCst);
        let mut q = self.lock();
        let n = max.min(q.len());
        out.extend(q.drain(..n));
        let left = !q.is_empty();
        drop(q);
        if left {
            self.wake();
        }
    }

    /// Number of events waiting.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Event>> {
        // A panic while holding the lock cannot leave the deque inconsistent.
        self.events.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake(&self) {
        if !self.notified.swap(true, Ordering::SeqCst) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a valid u64 to our own eventfd.
            unsafe { libc::write(self.fd(), &one as *const u64 as *const libc::c_void, 8) };
        }
    }

    fn clear_fd(&self) {
        let mut buf: u64 = 0;
        // SAFETY: reads 8 bytes into a valid u64; EAGAIN (nothing pending) is fine.
        unsafe { libc::read(self.fd(), &mut buf as *mut u64 as *mut libc::c_void, 8) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd_readable(fd: RawFd) -> bool {
        let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        unsafe { libc::poll(&mut p, 1, 0) == 1 }
    }

    #[test]
    fn one_wake_per_burst_and_rearm_when_left_over() {
        let q = EventQueue::new().unwrap();
        assert!(!fd_readable(q.fd()));
        for _ in 0..5 {
            q.push(Event::Stopped);
        }
        assert!(fd_readable(q.fd()));
        let mut out = Vec::new();
        q.drain_into(3, &mut out);
        assert_eq!(out.len(), 3);
        assert!(fd_readable(q.fd()), "left-over events must re-arm the fd");
        out.clear();
        q.drain_into(10, &mut out);
        assert_eq!(out.len(), 2);
        assert!(!fd_readable(q.fd()));
        q.push(Event::Stopped);
        assert!(fd_readable(q.fd()), "a push after a drain wakes again");
    }
}
