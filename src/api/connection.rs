//! A client connection's socket, with a deadline on writes that make no progress.
//!
//! A client that stops reading is handled by the engine: its sequence pauses, gives up its
//! batch slot and blocks, and is ended after `--stall-timeout-secs`. What is left is the
//! connection itself, with a response that can never be written: without a deadline it
//! would hold one of `--max-connections` forever. [`WriteDeadline`] fails a write that has
//! been blocked for [`WriteDeadline::timeout`], which closes the connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Wraps a socket: reads pass through; a write (or flush) still blocked `timeout` after it
/// first blocked fails with `TimedOut`. Any progress restarts the clock.
pub struct WriteDeadline<T> {
    inner: T,
    timeout: Duration,
    /// Running while a write is blocked.
    blocked: Option<Pin<Box<Sleep>>>,
}

impl<T> WriteDeadline<T> {
    pub fn new(inner: T, timeout: Duration) -> Self {
        WriteDeadline {
            inner,
            timeout,
            blocked: None,
        }
    }

    /// How long a write may stay blocked.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// After the inner write returned `result`: progress clears the clock; `Pending` starts
    /// it, or fails once it has run out.
    fn settle<R>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        if result.is_ready() {
            self.blocked = None;
            return result;
        }
        let timeout = self.timeout;
        let deadline = self
            .blocked
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client has taken no data for {timeout:?}"),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteDeadline<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.settle(cx, result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.settle(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        self.settle(cx, result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_write_blocked_past_the_deadline_fails_and_progress_restarts_the_clock() {
        let (near, mut far) = tokio::io::duplex(64);
        let mut near = WriteDeadline::new(near, Duration::from_secs(10));
        // Fills the pipe; the peer reads some 5 s later, so the clock restarts.
        near.write_all(&[1; 64]).await.unwrap();
        let reader = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let mut buf = [0; 32];
            far.read_exact(&mut buf).await.unwrap();
            far
        });
        near.write_all(&[2; 32]).await.unwrap();
        let _far = reader.await.unwrap();
        // Nobody reads any more: the next write fails after the deadline.
        let started = tokio::time::Instant::now();
        let error = near.write_all(&[3; 64]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }
}
