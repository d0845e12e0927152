//! The server's accept loop, as the stream of connections tonic serves:
//! accepted sockets, through a TLS handshake when the server speaks TLS.
//!
//! tonic's own TLS cannot take a custom client-certificate verifier, and
//! webpki's refuses the Agent's certificate presented by a client (a CA used
//! as an end entity), so TLS ends here, with tokio-rustls and the verifiers
//! of `crate::trust`. Handshakes run on their own tasks, each bounded by
//! [`TLS_HANDSHAKE_TIMEOUT`], so a slow peer delays no one; a failed one
//! (wrong client certificate, no TLS) only closes that socket.
//!
//! Accept errors (`EMFILE` at the open-files limit, ...) pause accepting, 5 ms
//! doubling to 1 s, instead of retrying at once: a retry cannot succeed
//! before some connection closes, and retrying in a loop takes a whole core.
//! They are logged at most once per [`LOG_EVERY`], with the count since.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::Stream;
use tonic::transport::server::Connected;

use super::tls::TLS_HANDSHAKE_TIMEOUT;

/// The first pause after an accept error, doubled at each error in a row.
const FIRST_ACCEPT_PAUSE: Duration = Duration::from_millis(5);
const MAX_ACCEPT_PAUSE: Duration = Duration::from_secs(1);
/// At most one log line per kind of failure in this time.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// One served connection: the accepted socket, or TLS over it.
pub(super) enum Connection<IO> {
    Plain(IO),
    Tls(Box<TlsStream<IO>>),
}

/// The connections of `incoming`, never an error (see the module doc).
pub(super) struct Connections<I, IO> {
    incoming: Pin<Box<I>>,
    incoming_ended: bool,
    /// `None` for plaintext.
    tls: Option<(TlsAcceptor, JoinSet<io::Result<TlsStream<IO>>>)>,
    pause: Option<Pin<Box<Sleep>>>,
    next_pause: Duration,
    accept_errors: RateLimitedLog,
    handshake_errors: RateLimitedLog,
}

impl<I, IO> Connections<I, IO> {
    pub fn new(incoming: I, tls: Option<TlsAcceptor>) -> Self {
        Self {
            incoming: Box::pin(incoming),
            incoming_ended: false,
            tls: tls.map(|acceptor| (acceptor, JoinSet::new())),
            pause: None,
            next_pause: FIRST_ACCEPT_PAUSE,
            accept_errors: RateLimitedLog::default(),
            handshake_errors: RateLimitedLog::default(),
        }
    }
}

impl<I, IO, IE> Stream for Connections<I, IO>
where
    I: Stream<Item = Result<IO, IE>>,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Item = Result<Connection<IO>, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(pause) = &mut this.pause
                && pause.as_mut().poll(cx).is_ready()
            {
                this.pause = None;
            }
            if this.pause.is_none() && !this.incoming_ended {
                match this.incoming.as_mut().poll_next(cx) {
                    Poll::Ready(Some(Ok(io))) => {
                        this.next_pause = FIRST_ACCEPT_PAUSE;
                        let Some((acceptor, handshakes)) = &mut this.tls else {
                            return Poll::Ready(Some(Ok(Connection::Plain(io))));
                        };
                        handshakes.spawn(handshake(acceptor.clone(), io));
                        continue;
                    }
                    Poll::Ready(Some(Err(error))) => {
                        let error = error.into();
                        let pause = this.next_pause;
                        this.next_pause = (pause * 2).min(MAX_ACCEPT_PAUSE);
                        if let Some(count) = this.accept_errors.count(Instant::now()) {
                            tracing::warn!(%error, count, ?pause, "cannot accept connections; pausing accepts (at the open-files limit?)");
                        }
                        this.pause = Some(Box::pin(tokio::time::sleep(pause)));
                        continue;
                    }
                    Poll::Ready(None) => this.incoming_ended = true,
                    Poll::Pending => {}
                }
            }
            let Some((_, handshakes)) = &mut this.tls else {
                return match this.incoming_ended {
                    true => Poll::Ready(None),
                    false => Poll::Pending,
                };
            };
            match handshakes.poll_join_next(cx) {
                Poll::Ready(Some(Ok(Ok(stream)))) => {
                    return Poll::Ready(Some(Ok(Connection::Tls(Box::new(stream)))));
                }
                Poll::Ready(Some(Ok(Err(error)))) => {
                    if let Some(count) = this.handshake_errors.count(Instant::now()) {
                        tracing::info!(%error, count, "TLS handshake failed; connection closed");
                    }
                }
                // A handshake task panicked: nothing to serve, nothing to tell.
                Poll::Ready(Some(Err(_))) => {}
                Poll::Ready(None) if this.incoming_ended => return Poll::Ready(None),
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}

async fn handshake<IO>(acceptor: TlsAcceptor, io: IO) -> io::Result<TlsStream<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no TLS handshake within {TLS_HANDSHAKE_TIMEOUT:?}"),
        )),
    }
}

/// Counts events and says when one may be logged: the first, then at most
/// one per [`LOG_EVERY`], with the number of events since the last line.
#[derive(Debug, Default)]
struct RateLimitedLog {
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl RateLimitedLog {
    /// `Some(events)` when a line may be logged now for these `events`.
    fn count(&mut self, now: Instant) -> Option<u64> {
        self.unlogged += 1;
        if self
            .last_logged
            .is_some_and(|last| now.duration_since(last) < LOG_EVERY)
        {
            return None;
        }
        self.last_logged = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

impl<IO: Connected> Connected for Connection<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        match self {
            Self::Plain(io) => io.connect_info(),
            Self::Tls(tls) => tls.get_ref().0.connect_info(),
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for Connection<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(io) => Pin::new(io).poll_read(cx, buf),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Connection<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(io) => Pin::new(io).poll_write(cx, buf),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(io) => io.is_write_vectored(),
            Self::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(io) => Pin::new(io).poll_flush(cx),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(io) => Pin::new(io).poll_shutdown(cx),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt as _;

    /// An accept loop at the open-files limit: every accept fails.
    struct AlwaysFailing {
        attempts: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Stream for AlwaysFailing {
        type Item = Result<tokio::io::DuplexStream, io::Error>;

        fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.attempts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Poll::Ready(Some(Err(io::Error::from_raw_os_error(24)))) // EMFILE
        }
    }

    /// Without the pause this loop retries millions of times a second, and
    /// with a fixed 5 ms pause 100 times in 0.5 s. Doubling from 5 ms, the
    /// attempts start at 0, 5, 15, 35, 75, 155 and 315 ms: at most 7 (fewer
    /// if the machine is slow, never more: a sleep never ends early).
    #[tokio::test(flavor = "current_thread")]
    async fn accept_errors_pause_accepting_with_a_doubling_delay() {
        let attempts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let incoming = AlwaysFailing {
            attempts: attempts.clone(),
        };
        let mut connections = Connections::new(incoming, None);
        let waited = tokio::time::timeout(Duration::from_millis(500), connections.next()).await;
        assert!(waited.is_err(), "no connection is ever yielded");
        let made = attempts.load(std::sync::atomic::Ordering::Relaxed);
        assert!((2..=7).contains(&made), "{made} accept attempts in 0.5 s");
    }

    #[test]
    fn log_lines_are_rate_limited_with_the_count_since_the_last() {
        let mut log = RateLimitedLog::default();
        let start = Instant::now();
        assert_eq!(log.count(start), Some(1));
        assert_eq!(log.count(start + Duration::from_secs(1)), None);
        assert_eq!(log.count(start + Duration::from_secs(9)), None);
        assert_eq!(log.count(start + LOG_EVERY), Some(3));
        assert_eq!(log.count(start + LOG_EVERY), None);
    }
}
