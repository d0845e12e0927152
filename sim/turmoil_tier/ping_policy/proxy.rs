//! An HTTP/2 proxy on turmoil's network that makes our (plaintext) server
//! enforce grpc-go's PING policy: it forwards every frame unchanged, reads
//! their 9-byte headers (length, type, flags, stream id) on the way, feeds
//! the client's PINGs and the server's DATA/HEADERS to a [`PingPolicy`], and
//! when the policy says "too many pings" does what grpc-go does: ACKs that
//! PING, sends the client GOAWAY `ENHANCE_YOUR_CALM` "too_many_pings" and
//! closes both connections.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::io;
use std::rc::Rc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use turmoil::net::TcpStream;

use super::policy::{PingPolicy, Verdict};

/// What every HTTP/2 client sends first, before any frame.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
/// The flag of PING frames that are ACKs...
const ACK: u8 = 0x1;
/// ...and of DATA/HEADERS frames that end their stream (the same bit).
const END_STREAM: u8 = 0x1;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// An HTTP/2 frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub length: usize,
    pub kind: u8,
    pub flags: u8,
    pub stream_id: u32,
}

impl FrameHeader {
    fn parse(bytes: &[u8; FRAME_HEADER_LEN]) -> Self {
        Self {
            length: usize::from(bytes[0]) << 16
                | usize::from(bytes[1]) << 8
                | usize::from(bytes[2]),
            kind: bytes[3],
            flags: bytes[4],
            // The top bit is reserved.
            stream_id: u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & 0x7fff_ffff,
        }
    }
}

/// Cuts one direction's bytes into whole frames (forwarded only whole, so
/// the proxy can put its own frames between them).
#[derive(Debug, Default)]
pub struct FrameReader {
    buffer: Vec<u8>,
}

impl FrameReader {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next whole frame: its header, and its bytes (header included).
    pub fn next_frame(&mut self) -> Option<(FrameHeader, Vec<u8>)> {
        let header: &[u8; FRAME_HEADER_LEN] =
            self.buffer.get(..FRAME_HEADER_LEN)?.try_into().ok()?;
        let header = FrameHeader::parse(header);
        let end = FRAME_HEADER_LEN + header.length;
        if self.buffer.len() < end {
            return None;
        }
        let rest = self.buffer.split_off(end);
        Some((header, std::mem::replace(&mut self.buffer, rest)))
    }
}

/// The GOAWAY grpc-go sends for too many pings: the last stream it
/// processed, `ENHANCE_YOUR_CALM`, and "too_many_pings" as debug data.
pub fn too_many_pings_goaway(last_stream_id: u32) -> Vec<u8> {
    let debug = b"too_many_pings";
    let length = 8 + debug.len();
    let mut frame = Vec::with_capacity(FRAME_HEADER_LEN + length);
    frame.extend_from_slice(&(length as u32).to_be_bytes()[1..]);
    frame.extend_from_slice(&[GOAWAY, 0, 0, 0, 0, 0]);
    frame.extend_from_slice(&last_stream_id.to_be_bytes());
    frame.extend_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
    frame.extend_from_slice(debug);
    frame
}

/// What the proxy saw, over every connection.
#[derive(Debug, Default)]
pub struct PingLog {
    pub connections: usize,
    /// Client PINGs (not ACKs), with when they came (on the proxy's clock).
    pub pings: Vec<Duration>,
    pub strikes: usize,
    pub too_many_pings: usize,
    /// The shortest time between two PINGs of one connection.
    pub closest_pings: Option<Duration>,
}

/// The streams grpc-go counts as open: from the client's HEADERS until the
/// server ends the stream (trailers, or DATA with END_STREAM) or either side
/// resets it. A client's END_STREAM only half-closes it.
#[derive(Debug, Default)]
struct Streams {
    open: BTreeSet<u32>,
    /// The highest stream id the client opened (GOAWAY's last stream id).
    highest: u32,
}

impl Streams {
    fn client_sent(&mut self, header: &FrameHeader) {
        match header.kind {
            HEADERS if header.stream_id > self.highest => {
                self.highest = header.stream_id;
                self.open.insert(header.stream_id);
            }
            RST_STREAM => {
                self.open.remove(&header.stream_id);
            }
            _ => {}
        }
    }

    fn server_sent(&mut self, header: &FrameHeader) {
        let ends = match header.kind {
            DATA | HEADERS => header.flags & END_STREAM != 0,
            RST_STREAM => true,
            _ => false,
        };
        if ends {
            self.open.remove(&header.stream_id);
        }
    }
}

/// Relays one connection between `client` and `server` until either side
/// closes, or the policy closes both.
pub async fn relay(client: TcpStream, server: TcpStream, log: Rc<RefCell<PingLog>>) {
    log.borrow_mut().connections += 1;
    // An I/O error is one side gone: the relay ends like the connection.
    let _ = Relay {
        client,
        server,
        policy: PingPolicy::default(),
        streams: Streams::default(),
        log,
        started: tokio::time::Instant::now(),
        last_ping: None,
    }
    .run()
    .await;
}

struct Relay {
    client: TcpStream,
    server: TcpStream,
    policy: PingPolicy,
    streams: Streams,
    log: Rc<RefCell<PingLog>>,
    started: tokio::time::Instant,
    last_ping: Option<Duration>,
}

/// Whether the relay goes on after a frame.
enum Next {
    Forward,
    Close,
}

impl Relay {
    async fn run(mut self) -> io::Result<()> {
        let mut preface = [0; PREFACE.len()];
        self.client.read_exact(&mut preface).await?;
        if &preface != PREFACE {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "not HTTP/2"));
        }
        self.server.write_all(&preface).await?;
        let mut from_client = FrameReader::default();
        let mut from_server = FrameReader::default();
        let mut client_bytes = vec![0; 64 * 1024];
        let mut server_bytes = vec![0; 64 * 1024];
        loop {
            tokio::select! {
                biased;
                read = self.client.read(&mut client_bytes) => {
                    let n = read?;
                    if n == 0 {
                        return Ok(());
                    }
                    from_client.push(&client_bytes[..n]);
                    while let Some((header, frame)) = from_client.next_frame() {
                        if let Next::Close = self.client_frame(&header, &frame).await? {
                            return Ok(());
                        }
                        self.server.write_all(&frame).await?;
                    }
                }
                read = self.server.read(&mut server_bytes) => {
                    let n = read?;
                    if n == 0 {
                        return Ok(());
                    }
                    from_server.push(&server_bytes[..n]);
                    while let Some((header, frame)) = from_server.next_frame() {
                        if matches!(header.kind, DATA | HEADERS) {
                            self.policy.server_sent_data_or_headers();
                        }
                        self.streams.server_sent(&header);
                        self.client.write_all(&frame).await?;
                    }
                }
            }
        }
    }

    async fn client_frame(&mut self, header: &FrameHeader, frame: &[u8]) -> io::Result<Next> {
        self.streams.client_sent(header);
        if header.kind != PING || header.flags & ACK != 0 {
            return Ok(Next::Forward);
        }
        let now = self.started.elapsed();
        let verdict = self.policy.client_ping(now, self.streams.open.len());
        self.record(now, verdict);
        if verdict != Verdict::TooManyPings {
            return Ok(Next::Forward);
        }
        let mut ack = frame.to_vec();
        ack[4] |= ACK;
        self.client.write_all(&ack).await?;
        let goaway = too_many_pings_goaway(self.streams.highest);
        self.client.write_all(&goaway).await?;
        Ok(Next::Close)
    }

    fn record(&mut self, now: Duration, verdict: Verdict) {
        let mut log = self.log.borrow_mut();
        log.pings.push(now);
        if let Some(last) = self.last_ping.replace(now) {
            let spacing = now - last;
            log.closest_pings = Some(log.closest_pings.map_or(spacing, |c| c.min(spacing)));
        }
        match verdict {
            Verdict::Allowed => {}
            Verdict::Strike(_) => log.strikes += 1,
            Verdict::TooManyPings => {
                log.strikes += 1;
                log.too_many_pings += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_come_out_whole_however_the_bytes_are_cut() {
        let ping = [0, 0, 8, PING, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
        let data = [0, 0, 2, DATA, END_STREAM, 0x80, 0, 0, 3, 0xaa, 0xbb];
        let wire: Vec<u8> = ping.iter().chain(&data).copied().collect();
        for cut in 0..=wire.len() {
            let mut reader = FrameReader::default();
            let mut frames = Vec::new();
            for part in [&wire[..cut], &wire[cut..]] {
                reader.push(part);
                while let Some(frame) = reader.next_frame() {
                    frames.push(frame);
                }
            }
            assert_eq!(frames.len(), 2, "cut at {cut}");
            assert_eq!(frames[0].1, ping);
            assert_eq!(frames[1].1, data);
            let header = frames[1].0;
            assert_eq!(
                (header.length, header.kind, header.flags, header.stream_id),
                // The reserved bit is not part of the id.
                (2, DATA, END_STREAM, 3)
            );
        }
    }

    #[test]
    fn the_goaway_is_grpc_gos() {
        let frame = too_many_pings_goaway(5);
        let mut reader = FrameReader::default();
        reader.push(&frame);
        let (header, bytes) = reader.next_frame().unwrap();
        assert_eq!(
            (header.kind, header.flags, header.stream_id),
            (GOAWAY, 0, 0)
        );
        assert_eq!(header.length, 22);
        assert_eq!(&bytes[9..13], &5u32.to_be_bytes());
        assert_eq!(&bytes[13..17], &ENHANCE_YOUR_CALM.to_be_bytes());
        assert_eq!(&bytes[17..], b"too_many_pings");
    }

    #[test]
    fn a_stream_is_open_from_the_clients_headers_until_the_server_ends_it() {
        let header = |kind, flags, stream_id| FrameHeader {
            length: 0,
            kind,
            flags,
            stream_id,
        };
        let mut streams = Streams::default();
        streams.client_sent(&header(HEADERS, 0x4, 1));
        // The client half-closing its side leaves it open.
        streams.client_sent(&header(DATA, END_STREAM, 1));
        streams.server_sent(&header(HEADERS, 0x4, 1));
        streams.server_sent(&header(DATA, 0, 1));
        assert_eq!(streams.open.len(), 1);
        streams.client_sent(&header(HEADERS, 0x4, 3));
        assert_eq!(streams.open.len(), 2);
        // Trailers end stream 1; a reset ends stream 3.
        streams.server_sent(&header(HEADERS, END_STREAM | 0x4, 1));
        streams.client_sent(&header(RST_STREAM, 0, 3));
        assert!(streams.open.is_empty());
        assert_eq!(streams.highest, 3);
    }
}
