//! The one write path every protocol uses.
//!
//! A [`Writer`] holds a connection's queued output (bytes, and file ranges
//! sent with sendfile(2) where the transport allows it) and writes it only
//! when polled by the connection's own select, next to commands, reads and
//! phase changes. So a client that stops reading can never park a
//! connection out of reach: `abort`, the stall timer and the end of the
//! shutdown grace all still run. Polling is cancel-safe: state moves only
//! when the socket reports progress.
//!
//! After the queue empties the writer flushes the transport (TLS buffers
//! plaintext inside rustls when the socket would block; without a flush the
//! tail of a response would wait for the connection to close).

use crate::seam::event::{ConnCounters, Event, Id};
use crate::server::ctx::{IoCtx, Phase, Shared};
use crate::server::transport::Transport;
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::ReadBuf;
use tokio::time::Instant;

/// Writes smaller than this are copied into one buffer (one syscall).
const COALESCE_MAX: usize = 16 * 1024;
/// Byte pieces one vectored write takes at most.
const MAX_GATHER: usize = 16;
/// Bytes written per poll before yielding to the rest of the select.
const POLL_BUDGET: usize = 1 << 20;
/// File bytes read per step when the transport cannot sendfile (TLS).
const FILE_CHUNK: usize = 64 * 1024;

/// One piece of queued output, with the response-body bytes it accounts for
/// in the connection's flow counters.
enum Piece {
    Bytes { data: Bytes, counted: usize },
    File { file: std::fs::File, offset: u64, len: u64 },
}

/// What a poll of the connection's socket produced.
pub enum Io {
    /// Bytes were read into the read buffer (0 = end of stream).
    Read(io::Result<usize>),
    /// Output was written or flushed; the writer may be idle now.
    Wrote,
    /// Writing failed; the connection is unusable.
    WriteFailed(io::Error),
}

/// See the module docs.
pub struct Writer {
    small: BytesMut,
    small_counted: usize,
    queue: VecDeque<Piece>,
    unflushed: bool,
    shared: Arc<Shared>,
    counters: Arc<ConnCounters>,
    /// The request whose sender waits on `writable` events.
    id: Id,
    /// When output last moved (or began waiting), for the stall timer.
    last_progress: Instant,
}

impl Writer {
    pub fn new(shared: Arc<Shared>, counters: Arc<ConnCounters>) -> Self {
        Writer {
            small: BytesMut::new(),
            small_counted: 0,
            queue: VecDeque::new(),
            unflushed: false,
            shared,
            counters,
            id: 0,
            last_progress: Instant::now(),
        }
    }

    /// The request that `writable` events are for.
    pub fn set_id(&mut self, id: Id) {
        self.id = id;
    }

    /// The small-write buffer, for encoders that frame in place (heads,
    /// chunk sizes). Its bytes count for no response body.
    pub fn buf(&mut self) -> &mut BytesMut {
        self.touch();
        &mut self.small
    }

    /// Queues bytes; `counted` of them are response body Perl is told about.
    pub fn data(&mut self, data: Bytes, counted: usize) {
        self.touch();
        if data.len() < COALESCE_MAX {
            self.small.extend_from_slice(&data);
            self.small_counted += counted;
        } else {
            self.seal_small();
            self.queue.push_back(Piece::Bytes { data, counted });
        }
    }

    /// A command for a stream that already ended on this connection: a
    /// group frame's bytes were counted as buffered when it was queued, so
    /// they are released here (waking a waiting sender as writes do).
    pub fn release_stale(&mut self, action: crate::seam::event::Action) {
        use crate::seam::event::Action;
        if let Action::Group { frame } | Action::GroupTail { bytes: frame } = action {
            self.data(Bytes::new(), frame.len());
        }
    }

    /// Queues a byte range of a file.
    pub fn file(&mut self, file: std::fs::File, offset: u64, len: u64) {
        self.touch();
        self.seal_small();
        if len > 0 {
            self.queue.push_back(Piece::File { file, offset, len });
        }
    }

    /// Gives the buffers' memory back while nothing waits to be written:
    /// an idle keep-alive connection should cost little more than its socket.
    pub fn release_idle(&mut self) {
        if self.is_idle() {
            self.small = BytesMut::new();
            self.queue = VecDeque::new();
        }
    }

    /// Nothing left to write or flush.
    pub fn is_idle(&self) -> bool {
        self.small.is_empty() && self.small_counted == 0 && self.queue.is_empty() && !self.unflushed
    }

    /// Output waits and nothing moved since this instant.
    pub fn stalled_since(&self) -> Option<Instant> {
        (!self.is_idle()).then_some(self.last_progress)
    }

    /// When the write stall timer of `limit` fires; `None` when idle or unlimited.
    pub fn stall_deadline(&self, limit: Duration) -> Option<Instant> {
        if limit.is_zero() {
            return None;
        }
        self.stalled_since().map(|t| t + limit)
    }

    /// Starts the stall clock when output is queued on an idle writer.
    fn touch(&mut self) {
        if self.is_idle() {
            self.last_progress = Instant::now();
        }
    }

    fn seal_small(&mut self) {
        if !self.small.is_empty() || self.small_counted > 0 {
            let data = self.small.split().freeze();
            let counted = std::mem::take(&mut self.small_counted);
            self.queue.push_back(Piece::Bytes { data, counted });
        }
    }

    fn account(&mut self, counted: usize) {
        let low = self.shared.config.write_low_watermark;
        if counted > 0 && self.counters.sub_buffered(counted, low) {
            self.shared.events.push(Event::Writable { id: self.id });
        }
    }

    /// Writes as much as the socket takes, up to a budget. Ready(Ok(true))
    /// when something moved, Ready(Ok(false)) when idle, Pending when the
    /// socket is full. Cancel-safe.
    pub fn poll_write<S: Transport>(&mut self, cx: &mut Context<'_>, stream: &mut S) -> Poll<io::Result<bool>> {
        self.seal_small();
        let mut moved = 0usize;
        let mut progressed = false;
        loop {
            if moved >= POLL_BUDGET {
                break;
            }
            // A head and a big body (or several big sends) go out in one
            // writev: one syscall, and no small segment of their own.
            // TLS streams encrypt piece by piece anyway: they take the plain path.
            let gather = matches!(self.queue.front(), Some(Piece::Bytes { data, .. }) if !data.is_empty())
                && matches!(self.queue.get(1), Some(Piece::Bytes { .. }))
                && stream.plain_socket().is_some();
            if gather {
                match self.poll_write_gathered(cx, stream) {
                    None => {}
                    Some(Poll::Pending) => break,
                    Some(Poll::Ready(Err(e))) => return Poll::Ready(Err(e)),
                    Some(Poll::Ready(Ok(n))) => {
                        moved += n;
                        progressed = true;
                        self.unflushed = true;
                        continue;
                    }
                }
            }
            let Some(front) = self.queue.front_mut() else {
                if !self.unflushed {
                    break;
                }
                match Pin::new(&mut *stream).poll_flush(cx) {
                    Poll::Ready(Ok(())) => {
                        self.unflushed = false;
                        progressed = true;
                        break;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => break,
                }
            };
            let step = match front {
                Piece::Bytes { data, .. } if data.is_empty() => Poll::Ready(Ok(0)),
                Piece::Bytes { data, .. } => Pin::new(&mut *stream).poll_write(cx, data),
                Piece::File { file, offset, len } => match stream.poll_send_file(cx, file, *offset, *len) {
                    Some(p) => p,
                    None => {
                        // No zero-copy path (TLS): the next part of the file becomes bytes.
                        let mut chunk = vec![0u8; (*len as usize).min(FILE_CHUNK)];
                        let n = match std::os::unix::fs::FileExt::read_at(&*file, &mut chunk, *offset) {
                            Ok(0) => return Poll::Ready(Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file ended before its length"))),
                            Ok(n) => n,
                            Err(e) => return Poll::Ready(Err(e)),
                        };
                        chunk.truncate(n);
                        *offset += n as u64;
                        *len -= n as u64;
                        if *len == 0 {
                            self.queue.pop_front();
                        }
                        self.queue.push_front(Piece::Bytes { data: Bytes::from(chunk), counted: 0 });
                        continue;
                    }
                },
            };
            match step {
                Poll::Pending => break,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(n)) => {
                    let finished = match front {
                        Piece::Bytes { data, .. } => {
                            if n == 0 && !data.is_empty() {
                                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                            }
                            let _ = bytes::Buf::advance(data, n);
                            data.is_empty()
                        }
                        Piece::File { offset, len, .. } => {
                            if n == 0 {
                                return Poll::Ready(Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file ended before its length")));
                            }
                            *offset += n as u64;
                            *len -= n as u64;
                            *len == 0
                        }
                    };
                    moved += n;
                    if n > 0 {
                        progressed = true;
                        self.unflushed = true;
                    }
                    if finished {
                        if let Some(Piece::Bytes { counted, .. }) = self.queue.pop_front() {
                            self.account(counted);
                        }
                    }
                }
            }
        }
        if progressed {
            self.last_progress = Instant::now();
            Poll::Ready(Ok(true))
        } else if self.is_idle() {
            Poll::Ready(Ok(false))
        } else {
            Poll::Pending
        }
    }

    /// One vectored write of the byte pieces at the front of the queue (up
    /// to [`MAX_GATHER`] of them, stopping at a file); the pieces it
    /// completes are popped and accounted, a partial one advanced.
    /// `None` when the transport has no gathered send (TLS).
    fn poll_write_gathered<S: Transport>(&mut self, cx: &mut Context<'_>, stream: &mut S) -> Option<Poll<io::Result<usize>>> {
        let mut slices = [io::IoSlice::new(&[]); MAX_GATHER];
        let mut count = 0;
        let mut total = 0;
        for piece in self.queue.iter().take(MAX_GATHER) {
            let Piece::Bytes { data, .. } = piece else { break };
            slices[count] = io::IoSlice::new(data);
            count += 1;
            total += data.len();
        }
        let n = match stream.poll_send_vectored(cx, &slices[..count])? {
            Poll::Ready(Ok(n)) => n,
            other => return Some(other),
        };
        if n == 0 && total > 0 {
            return Some(Poll::Ready(Err(io::ErrorKind::WriteZero.into())));
        }
        let mut left = n;
        while let Some(Piece::Bytes { data, .. }) = self.queue.front_mut() {
            if data.len() > left {
                bytes::Buf::advance(data, left);
                break;
            }
            left -= data.len();
            if let Some(Piece::Bytes { counted, .. }) = self.queue.pop_front() {
                self.account(counted);
            }
            if left == 0 {
                break;
            }
        }
        Some(Poll::Ready(Ok(n)))
    }

    /// Writes everything queued, unless the grace ends (`Closing`) or nothing
    /// moves for `stall` (zero: no stall limit). For short answers written
    /// outside a connection's main select (refusals, the 503, the 101).
    pub async fn finish<S: Transport>(&mut self, stream: &mut S, ctx: &IoCtx, stall: Duration) -> io::Result<()> {
        let mut phase = ctx.phase.clone();
        loop {
            let deadline = self.stall_deadline(stall);
            tokio::select! {
                r = poll_fn(|cx| self.poll_write(cx, stream)) => {
                    if !r? {
                        return Ok(());
                    }
                }
                _ = sleep_opt(deadline) => return Err(io::ErrorKind::TimedOut.into()),
                _ = phase.wait_for(|p| *p == Phase::Closing) => return Err(io::ErrorKind::ConnectionAborted.into()),
            }
        }
    }
}

/// Sleeps until `at`, or forever when there is no deadline.
pub async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// How far a body or pipelined read grows the read buffer at a time.
pub const READ_CHUNK: usize = 64 * 1024;

/// How far a request-head read grows it: most heads are a few hundred bytes.
pub const HEAD_CHUNK: usize = 4096;

/// Reads at most `limit` bytes into `buf` (the cap is what bounds
/// read-ahead), growing `buf` by at most `chunk` first. Ready(Ok(0)) is end
/// of stream.
pub fn poll_read_capped<S: Transport>(cx: &mut Context<'_>, stream: &mut S, buf: &mut BytesMut, limit: usize, chunk: usize) -> Poll<io::Result<usize>> {
    if limit == 0 {
        return Poll::Pending;
    }
    if buf.capacity() == 0 {
        // A released buffer (idle keep-alive): allocate only once bytes are there.
        match stream.poll_read_ready(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
    }
    buf.reserve(limit.min(chunk));
    let spare = buf.spare_capacity_mut();
    let take = spare.len().min(limit);
    let mut rb = ReadBuf::uninit(&mut spare[..take]);
    match Pin::new(stream).poll_read(cx, &mut rb) {
        Poll::Ready(Ok(())) => {
            let n = rb.filled().len();
            // SAFETY: poll_read initialised the first `n` bytes of the spare capacity.
            unsafe { buf.set_len(buf.len() + n) };
            Poll::Ready(Ok(n))
        }
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => Poll::Pending,
    }
}

/// One poll of a connection's socket in both directions: output first,
/// then (if `read_limit` > 0) input. Resolves on the first thing that
/// happened; cancel-safe, so it can sit in a select with commands.
/// `read_chunk` is how far the read buffer may grow for this read.
pub fn poll_io<S: Transport>(cx: &mut Context<'_>, stream: &mut S, writer: &mut Writer, rbuf: &mut BytesMut, read_limit: usize, read_chunk: usize) -> Poll<Io> {
    match writer.poll_write(cx, stream) {
        Poll::Ready(Ok(true)) => return Poll::Ready(Io::Wrote),
        Poll::Ready(Err(e)) => return Poll::Ready(Io::WriteFailed(e)),
        Poll::Ready(Ok(false)) | Poll::Pending => {}
    }
    if read_limit > 0 {
        if let Poll::Ready(r) = poll_read_capped(cx, stream, rbuf, read_limit, read_chunk) {
            return Poll::Ready(Io::Read(r));
        }
    }
    Poll::Pending
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::sync::atomic::AtomicU64;
    use std::sync::Mutex;

    fn writer() -> Writer {
        let shared = Arc::new(Shared {
            config: crate::config::Config::default(),
            events: crate::seam::queue::EventQueue::new().unwrap(),
            commands: Mutex::new(Vec::new()),
            command_wake: tokio::sync::Notify::new(),
            next_id: AtomicU64::new(1),
            stats: Default::default(),
            test_panic: None,
            tls: None,
        });
        Writer::new(shared, Arc::new(ConnCounters::default()))
    }

    /// A head, two big bodies and a small tail, through a socket whose
    /// buffers hold far less than that: gathered sends, partial ones
    /// included, deliver every byte once and in order, and each piece's
    /// body bytes are released from the flow counters once written.
    #[test]
    fn gathered_writes_keep_order_across_partial_sends() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (ours, mut peer) = std::os::unix::net::UnixStream::pair().unwrap();
            let size: libc::c_int = 4096;
            // SAFETY: setsockopt with a valid int option value on our socket.
            unsafe {
                libc::setsockopt(ours.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF, &size as *const _ as *const libc::c_void, 4);
            }
            ours.set_nonblocking(true).unwrap();
            let mut stream = tokio::net::UnixStream::from_std(ours).unwrap();
            let mut w = writer();
            let big_a: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
            let big_b: Vec<u8> = (0..70_000u32).map(|i| (i % 239) as u8).collect();
            w.buf().extend_from_slice(b"HEAD\r\n\r\n");
            w.data(Bytes::from(big_a.clone()), big_a.len());
            w.data(Bytes::from(big_b.clone()), big_b.len());
            w.data(Bytes::from_static(b"tail"), 4);
            w.counters.add_buffered(big_a.len() + big_b.len() + 4);
            let mut expected = b"HEAD\r\n\r\n".to_vec();
            expected.extend_from_slice(&big_a);
            expected.extend_from_slice(&big_b);
            expected.extend_from_slice(b"tail");
            let reader = std::thread::spawn(move || {
                let mut got = Vec::new();
                let mut buf = [0u8; 1000];
                while got.len() < expected.len() {
                    let n = peer.read(&mut buf).unwrap();
                    assert!(n > 0, "socket closed early");
                    got.extend_from_slice(&buf[..n]);
                    std::thread::sleep(std::time::Duration::from_micros(50));
                }
                assert!(got == expected, "bytes arrive once and in order");
            });
            while !w.is_idle() {
                // Pending (the socket is full) waits for writability.
                poll_fn(|cx| w.poll_write(cx, &mut stream)).await.unwrap();
            }
            reader.join().unwrap();
            assert_eq!(w.counters.buffered.load(std::sync::atomic::Ordering::Relaxed), 0, "every piece accounted");
        });
    }
}
