//! The server's accept loop, as the stream of connections tonic serves:
//! accepted sockets, through a TLS handshake when the server speaks TLS.
//!
//! tonic's own TLS cannot take a custom client-certificate verifier, and
//! webpki's refuses the Agent's certificate presented by a client (a CA used
//! as an end entity), so TLS ends here, with tokio-rustls and the verifiers
//! of `crate::trust`. Handshakes run on their own tasks, so a slow peer
//! delays no one; a failed one (wrong client certificate, no TLS) only
//! closes that socket. At most `max_tls_handshakes` run at once: beyond,
//! accepting pauses and new peers wait in the kernel's backlog, so a flood
//! of silent peers cannot take every file descriptor.
//!
//! Every connection has the first-request timeout from its accept to send
//! an authenticated request ([`Admission`]); its handshake counts. One that
//! has not by then is closed, unless a request that needs no token (a health
//! watch) is still in flight on it: then once the last such one ends. So a
//! peer without the token holds a connection only as long as the limited
//! requests it may make without one.
//!
//! Accept errors (`EMFILE` at the open-files limit, ...) pause accepting, 5 ms
//! doubling to 1 s, instead of retrying at once: a retry cannot succeed
//! before some connection closes, and retrying in a loop takes a whole core.
//! They are logged at most once per [`LOG_EVERY`], with the count since.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::Stream;
use tonic::transport::server::Connected;

/// The first pause after an accept error, doubled at each error in a row.
const FIRST_ACCEPT_PAUSE: Duration = Duration::from_millis(5);
const MAX_ACCEPT_PAUSE: Duration = Duration::from_secs(1);
/// At most one log line per kind of failure in this time.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// How long connections have to authenticate, and how many may be in their
/// TLS handshake at once.
#[derive(Debug, Clone, Copy)]
pub(super) struct ConnectionLimits {
    pub first_request_timeout: Duration,
    pub max_tls_handshakes: usize,
}

/// What the service tells a connection about its requests: whether one
/// passed the token check, and how many that need no token are in flight.
/// Requests find it among their extensions (it is the connection's
/// [`Connected::ConnectInfo`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct Admission(Arc<AdmissionState>);

#[derive(Debug, Default)]
struct AdmissionState {
    authenticated: AtomicBool,
    unauthenticated_in_flight: AtomicUsize,
    changed: Notify,
}

impl Admission {
    /// A request of this connection passed the token check: it stays open.
    pub(crate) fn authenticated(&self) {
        self.0.authenticated.store(true, Ordering::Relaxed);
        self.0.changed.notify_waiters();
    }

    /// A request that needs no token is in flight until the guard drops.
    pub(crate) fn unauthenticated_request(&self) -> UnauthenticatedRequest {
        self.0
            .unauthenticated_in_flight
            .fetch_add(1, Ordering::Relaxed);
        UnauthenticatedRequest(self.clone())
    }

    /// Resolves to `true` once the connection must close (past `deadline`
    /// unauthenticated and with no request in flight), to `false` as soon
    /// as it authenticated.
    async fn expired(self, deadline: Instant) -> bool {
        let state = &*self.0;
        let timeout = tokio::time::sleep_until(deadline);
        tokio::pin!(timeout);
        let mut past_deadline = false;
        loop {
            // Before the checks: a change after them still wakes it.
            let changed = state.changed.notified();
            if state.authenticated.load(Ordering::Relaxed) {
                return false;
            }
            if past_deadline && state.unauthenticated_in_flight.load(Ordering::Relaxed) == 0 {
                return true;
            }
            tokio::select! {
                biased;
                () = changed => {}
                () = &mut timeout, if !past_deadline => past_deadline = true,
            }
        }
    }
}

/// See [`Admission::unauthenticated_request`].
#[derive(Debug)]
pub(crate) struct UnauthenticatedRequest(Admission);

impl Drop for UnauthenticatedRequest {
    fn drop(&mut self) {
        let state = &*(self.0).0;
        state
            .unauthenticated_in_flight
            .fetch_sub(1, Ordering::Relaxed);
        state.changed.notify_waiters();
    }
}

/// The accepted socket, or TLS over it.
enum Transport<IO> {
    Plain(IO),
    Tls(Box<TlsStream<IO>>),
}

/// One served connection: its transport, closed with an error once its
/// [`Admission`] expires.
pub(super) struct Connection<IO> {
    transport: Transport<IO>,
    admission: Admission,
    watch: Watch,
}

enum Watch {
    /// Not authenticated yet: resolves to whether the connection expired.
    Pending(Pin<Box<dyn Future<Output = bool> + Send>>),
    Authenticated,
    Expired,
}

impl<IO> Connection<IO> {
    fn new(transport: Transport<IO>, deadline: Instant) -> Self {
        let admission = Admission::default();
        let watch = Watch::Pending(Box::pin(admission.clone().expired(deadline)));
        Self {
            transport,
            admission,
            watch,
        }
    }

    /// An error once the connection expired; the caller then gives up on it.
    fn check_admission(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if let Watch::Pending(expired) = &mut self.watch
            && let Poll::Ready(expired) = expired.as_mut().poll(cx)
        {
            self.watch = match expired {
                true => Watch::Expired,
                false => Watch::Authenticated,
            };
        }
        match self.watch {
            Watch::Expired => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no authenticated request in time; connection closed",
            )),
            Watch::Pending(_) | Watch::Authenticated => Ok(()),
        }
    }
}

/// The connections of `incoming`, never an error (see the module doc).
pub(super) struct Connections<I, IO> {
    incoming: Pin<Box<I>>,
    incoming_ended: bool,
    limits: ConnectionLimits,
    /// `None` for plaintext.
    tls: Option<(TlsAcceptor, JoinSet<io::Result<Connection<IO>>>)>,
    pause: Option<Pin<Box<Sleep>>>,
    next_pause: Duration,
    accept_errors: RateLimitedLog,
    handshake_errors: RateLimitedLog,
}

impl<I, IO> Connections<I, IO> {
    pub fn new(incoming: I, tls: Option<TlsAcceptor>, limits: ConnectionLimits) -> Self {
        Self {
            incoming: Box::pin(incoming),
            incoming_ended: false,
            limits,
            tls: tls.map(|acceptor| (acceptor, JoinSet::new())),
            pause: None,
            next_pause: FIRST_ACCEPT_PAUSE,
            accept_errors: RateLimitedLog::default(),
            handshake_errors: RateLimitedLog::default(),
        }
    }

    /// Whether another handshake may start: always in plaintext.
    fn may_accept(&self) -> bool {
        self.tls
            .as_ref()
            .is_none_or(|(_, handshakes)| handshakes.len() < self.limits.max_tls_handshakes.max(1))
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
            if this.pause.is_none() && !this.incoming_ended && this.may_accept() {
                match this.incoming.as_mut().poll_next(cx) {
                    Poll::Ready(Some(Ok(io))) => {
                        this.next_pause = FIRST_ACCEPT_PAUSE;
                        let timeout = this.limits.first_request_timeout;
                        let deadline = Instant::now() + timeout;
                        let Some((acceptor, handshakes)) = &mut this.tls else {
                            let plain = Connection::new(Transport::Plain(io), deadline);
                            return Poll::Ready(Some(Ok(plain)));
                        };
                        handshakes.spawn(handshake(acceptor.clone(), io, deadline, timeout));
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
                Poll::Ready(Some(Ok(Ok(connection)))) => return Poll::Ready(Some(Ok(connection))),
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

/// The TLS handshake of a connection accepted `timeout` before `deadline`.
async fn handshake<IO>(
    acceptor: TlsAcceptor,
    io: IO,
    deadline: Instant,
    timeout: Duration,
) -> io::Result<Connection<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout_at(deadline, acceptor.accept(io)).await {
        Ok(tls) => Ok(Connection::new(Transport::Tls(Box::new(tls?)), deadline)),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no TLS handshake within the first-request timeout ({timeout:?})"),
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

impl<IO> Connected for Connection<IO> {
    type ConnectInfo = Admission;

    fn connect_info(&self) -> Admission {
        self.admission.clone()
    }
}

/// Reads and writes fail once the admission expired; hyper then drops the
/// connection. Both check: HTTP/2 may not poll reads while writes block.
impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for Connection<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check_admission(cx)?;
        Pin::new(&mut this.transport).poll_read(cx, buf)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Connection<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check_admission(cx)?;
        Pin::new(&mut this.transport).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check_admission(cx)?;
        Pin::new(&mut this.transport).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.transport.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().transport).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().transport).poll_shutdown(cx)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for Transport<IO> {
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

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Transport<IO> {
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

    const LIMITS: ConnectionLimits = ConnectionLimits {
        first_request_timeout: Duration::from_secs(5),
        max_tls_handshakes: 4,
    };

    /// Peers that connect and never start their TLS handshake, counted as
    /// they are accepted.
    struct SilentPeers {
        accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
        clients: Vec<tokio::io::DuplexStream>,
    }

    impl Stream for SilentPeers {
        type Item = Result<tokio::io::DuplexStream, io::Error>;

        fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            let (client, server) = tokio::io::duplex(1024);
            self.clients.push(client);
            self.accepted
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Poll::Ready(Some(Ok(server)))
        }
    }

    /// Without the limit, every peer of the flood is accepted at once and
    /// holds a descriptor until its handshake times out.
    #[tokio::test(flavor = "current_thread")]
    async fn accepting_pauses_while_the_handshake_limit_is_reached() {
        let dir = tempfile::tempdir().unwrap();
        let identity =
            super::super::TlsIdentity::load_or_generate(dir.path().join("cert.pem")).unwrap();
        let acceptor = TlsAcceptor::from(identity.rustls_config(false).unwrap());
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let flood = SilentPeers {
            accepted: accepted.clone(),
            clients: Vec::new(),
        };
        let mut connections = Connections::new(flood, Some(acceptor), LIMITS);
        let waited = tokio::time::timeout(Duration::from_millis(200), connections.next()).await;
        assert!(waited.is_err(), "no handshake completes");
        let accepted = accepted.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(accepted, LIMITS.max_tls_handshakes);
    }

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
        let mut connections = Connections::new(incoming, None, LIMITS);
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
