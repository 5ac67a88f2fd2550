//! The byte streams a connection can run over: TCP and Unix-domain sockets
//! (and, wrapped in TLS, either). Everything above this module is generic
//! over [`Transport`].

use std::io;
use std::os::fd::AsRawFd;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, Interest};
use tokio::net::{TcpStream, UnixStream};

/// A connection's stream.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + 'static {
    /// One sendfile(2) step: sends up to `len` bytes of `file` from `offset`
    /// without copying through user space, when the stream is a plain
    /// socket; `None` otherwise (TLS must encrypt the bytes, so the writer
    /// copies them). Ready(Ok(n)) with n > 0 bytes sent; Ok(0) when the
    /// file is shorter than promised.
    fn poll_send_file(&mut self, cx: &mut Context<'_>, file: &std::fs::File, offset: u64, len: u64) -> Option<Poll<io::Result<usize>>>;

    /// Ready once a read would find bytes (or an error), so a connection
    /// waiting for its next request can hold no read buffer until then.
    /// Streams with buffers of their own (TLS) are always ready.
    fn poll_read_ready(&self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// One gathered send of `slices` (sendmsg(2) with MSG_NOSIGNAL: this
    /// library cannot count on SIGPIPE being ignored in the Perl process,
    /// which writev would raise on a reset connection), when the stream is
    /// a plain socket; `None` otherwise.
    fn poll_send_vectored(&mut self, _cx: &mut Context<'_>, _slices: &[io::IoSlice<'_>]) -> Option<Poll<io::Result<usize>>> {
        None
    }

    /// The socket itself when bytes written to it reach the peer as they
    /// are (a plain socket), for writes made outside the stream's own task;
    /// `None` when the stream transforms them (TLS).
    fn plain_socket(&self) -> Option<std::os::fd::RawFd> {
        None
    }
}

impl Transport for TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }

    fn poll_send_vectored(&mut self, cx: &mut Context<'_>, slices: &[io::IoSlice<'_>]) -> Option<Poll<io::Result<usize>>> {
        Some(sendmsg_step(cx, slices, self.as_raw_fd(), |cx| self.poll_write_ready(cx), |f| self.try_io(Interest::WRITABLE, f)))
    }

    fn plain_socket(&self) -> Option<std::os::fd::RawFd> {
        Some(self.as_raw_fd())
    }

    fn poll_send_file(&mut self, cx: &mut Context<'_>, file: &std::fs::File, offset: u64, len: u64) -> Option<Poll<io::Result<usize>>> {
        Some(sendfile_step(cx, file, offset, len, self.as_raw_fd(), |cx| self.poll_write_ready(cx), |f| self.try_io(Interest::WRITABLE, f)))
    }
}

impl Transport for UnixStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        UnixStream::poll_read_ready(self, cx)
    }

    fn poll_send_vectored(&mut self, cx: &mut Context<'_>, slices: &[io::IoSlice<'_>]) -> Option<Poll<io::Result<usize>>> {
        Some(sendmsg_step(cx, slices, self.as_raw_fd(), |cx| self.poll_write_ready(cx), |f| self.try_io(Interest::WRITABLE, f)))
    }

    fn plain_socket(&self) -> Option<std::os::fd::RawFd> {
        Some(self.as_raw_fd())
    }

    fn poll_send_file(&mut self, cx: &mut Context<'_>, file: &std::fs::File, offset: u64, len: u64) -> Option<Poll<io::Result<usize>>> {
        Some(sendfile_step(cx, file, offset, len, self.as_raw_fd(), |cx| self.poll_write_ready(cx), |f| self.try_io(Interest::WRITABLE, f)))
    }
}

/// Waits for writability, then one sendmsg(2) of `slices`.
fn sendmsg_step<R, T>(cx: &mut Context<'_>, slices: &[io::IoSlice<'_>], socket: i32, poll_ready: R, try_io: T) -> Poll<io::Result<usize>>
where
    R: Fn(&mut Context<'_>) -> Poll<io::Result<()>>,
    T: Fn(&mut dyn FnMut() -> io::Result<usize>) -> io::Result<usize>,
{
    write_when_ready(cx, poll_ready, try_io, &mut || {
        // SAFETY: an all-zero msghdr is valid; it points at `slices`
        // (IoSlice is ABI-compatible with iovec), alive for the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = slices.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = slices.len() as _;
        // SAFETY: the socket is open; msg is valid as set up above.
        let n = unsafe { libc::sendmsg(socket, &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
    })
}

/// Waits for writability, then one sendfile(2) call of at most 1 MiB.
fn sendfile_step<R, T>(cx: &mut Context<'_>, file: &std::fs::File, offset: u64, len: u64, socket: i32, poll_ready: R, try_io: T) -> Poll<io::Result<usize>>
where
    R: Fn(&mut Context<'_>) -> Poll<io::Result<()>>,
    T: Fn(&mut dyn FnMut() -> io::Result<usize>) -> io::Result<usize>,
{
    let want = (len as usize).min(1 << 20);
    write_when_ready(cx, poll_ready, try_io, &mut || {
        // A failed call moves no offset, so each try starts from `offset`.
        let mut off = offset as libc::off_t;
        // SAFETY: both fds are open for the duration of the call; `off` is a valid pointer.
        let n = unsafe { libc::sendfile(socket, file.as_raw_fd(), &mut off, want) };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
    })
}

/// Runs one non-blocking write `call` once the socket is writable: a
/// WouldBlock clears the readiness and waits again.
fn write_when_ready<R, T>(cx: &mut Context<'_>, poll_ready: R, try_io: T, call: &mut dyn FnMut() -> io::Result<usize>) -> Poll<io::Result<usize>>
where
    R: Fn(&mut Context<'_>) -> Poll<io::Result<()>>,
    T: Fn(&mut dyn FnMut() -> io::Result<usize>) -> io::Result<usize>,
{
    loop {
        match poll_ready(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
        match try_io(call) {
            // try_io cleared the readiness: the next poll_ready registers the waker.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return Poll::Ready(r),
        }
    }
}
