//! Plugging the real client and server into `turmoil::net`: a [`Dialer`]
//! for the client driver, whose connections can be told to stop reading (a
//! stalled client), and the listener as the server's incoming stream.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use remote_tagger::client::{BoxFuture, Dialer, Io};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

/// Whether a client reads from its connections. A stalled client leaves
/// the server's responses (and HTTP/2 PING acks) unread in the network.
#[derive(Default)]
pub struct ReadGate {
    stalled: AtomicBool,
    /// Readers parked while stalled, woken when reading resumes.
    parked: Mutex<Vec<Waker>>,
}

impl ReadGate {
    pub fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
    }

    pub fn resume(&self) {
        self.stalled.store(false, Ordering::SeqCst);
        let parked =
            std::mem::take(&mut *self.parked.lock().unwrap_or_else(PoisonError::into_inner));
        parked.into_iter().for_each(Waker::wake);
    }

    /// `Pending` (and parked) while stalled.
    fn poll_open(&self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.stalled.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        self.parked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(cx.waker().clone());
        Poll::Pending
    }
}

/// How many connections a client holds: the driver opens one stream per
/// connection, so more than one at once means more than one stream.
#[derive(Default)]
pub struct ConnectionCount {
    live: AtomicUsize,
    most: AtomicUsize,
}

impl ConnectionCount {
    /// The most connections held at once so far.
    pub fn most(&self) -> usize {
        self.most.load(Ordering::SeqCst)
    }
}

/// Dials `turmoil::net` and hands out connections behind the client's gate,
/// counted.
pub struct TurmoilDialer {
    pub gate: Arc<ReadGate>,
    pub connections: Arc<ConnectionCount>,
}

impl Dialer for TurmoilDialer {
    fn dial(&self, target: &str) -> BoxFuture<io::Result<Box<dyn Io>>> {
        let target = target.to_owned();
        let gate = self.gate.clone();
        let connections = self.connections.clone();
        Box::pin(async move {
            let stream = turmoil::net::TcpStream::connect(target).await?;
            let live = connections.live.fetch_add(1, Ordering::SeqCst) + 1;
            connections.most.fetch_max(live, Ordering::SeqCst);
            Ok(Box::new(GatedStream {
                stream,
                gate,
                connections,
            }) as Box<dyn Io>)
        })
    }
}

/// A client connection that reads only while its gate is open.
struct GatedStream {
    stream: turmoil::net::TcpStream,
    gate: Arc<ReadGate>,
    connections: Arc<ConnectionCount>,
}

impl Drop for GatedStream {
    fn drop(&mut self) {
        self.connections.live.fetch_sub(1, Ordering::SeqCst);
    }
}

impl AsyncRead for GatedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.gate.poll_open(cx).is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for GatedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// An accepted server connection; tonic wants to know who is connected.
pub struct Accepted(turmoil::net::TcpStream);

impl Connected for Accepted {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for Accepted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Accepted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The connections of `listener` as the stream `serve_incoming` takes: an
/// accept loop feeds a channel (a failed accept ends the stream).
pub fn incoming(listener: turmoil::net::TcpListener) -> ReceiverStream<io::Result<Accepted>> {
    let (sender, receiver) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let accepted = listener.accept().await.map(|(stream, _)| Accepted(stream));
            let failed = accepted.is_err();
            if sender.send(accepted).await.is_err() || failed {
                return;
            }
        }
    });
    ReceiverStream::new(receiver)
}
