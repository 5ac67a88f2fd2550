//! The byte streams a connection can run over: TCP and Unix-domain sockets
//! (and, wrapped in TLS, either). Everything above this module is generic
//! over [`Transport`].

use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

/// A boxed send-file operation.
pub type SendFile<'a> = Pin<Box<dyn Future<Output = io::Result<()>> + 'a>>;

/// A connection's stream.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + 'static {
    /// Sends `len` bytes of `file` from `offset` without copying through
    /// user space, when the stream is a plain socket; `None` otherwise (TLS
    /// must encrypt the bytes, so the caller copies them).
    fn send_file<'a>(&'a self, file: &'a std::fs::File, offset: u64, len: u64) -> Option<SendFile<'a>>;
}

impl Transport for TcpStream {
    fn send_file<'a>(&'a self, file: &'a std::fs::File, offset: u64, len: u64) -> Option<SendFile<'a>> {
        Some(Box::pin(sendfile_loop(file, offset, len, self.as_raw_fd(), move || self.writable(), move |f| self.try_io(tokio::io::Interest::WRITABLE, f))))
    }
}

impl Transport for UnixStream {
    fn send_file<'a>(&'a self, file: &'a std::fs::File, offset: u64, len: u64) -> Option<SendFile<'a>> {
        Some(Box::pin(sendfile_loop(file, offset, len, self.as_raw_fd(), move || self.writable(), move |f| self.try_io(tokio::io::Interest::WRITABLE, f))))
    }
}

/// sendfile(2) in a loop, waiting for writability in between.
async fn sendfile_loop<W, WF, T>(file: &std::fs::File, offset: u64, len: u64, socket: i32, writable: W, try_io: T) -> io::Result<()>
where
    W: Fn() -> WF,
    WF: Future<Output = io::Result<()>>,
    T: Fn(&mut dyn FnMut() -> io::Result<usize>) -> io::Result<usize>,
{
    let mut off = offset as libc::off_t;
    let end = offset + len;
    while (off as u64) < end {
        writable().await?;
        let want = ((end - off as u64) as usize).min(1 << 20);
        let mut call = || {
            // SAFETY: both fds are open for the duration of the call; `off` is a valid pointer.
            let n = unsafe { libc::sendfile(socket, file.as_raw_fd(), &mut off, want) };
            if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
        };
        match try_io(&mut call) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file ended before its length")),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Copies a file range through a buffer, for transports without sendfile.
pub async fn copy_file<S: AsyncWrite + Unpin>(stream: &mut S, file: &std::fs::File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    use tokio::io::AsyncWriteExt;
    let mut buf = vec![0u8; 64 * 1024];
    let mut done = 0u64;
    while done < len {
        let want = ((len - done) as usize).min(buf.len());
        // Page-cache reads of 64 KiB are short; a slow disk would want the blocking pool.
        let n = file.read_at(&mut buf[..want], offset + done)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file ended before its length"));
        }
        stream.write_all(&buf[..n]).await?;
        done += n as u64;
    }
    Ok(())
}
