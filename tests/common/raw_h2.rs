//! A raw HTTP/2 client, frame by frame, for the clients no library lets us
//! be: one that sends a request and then never reads a byte, one that sends
//! only the connection preface, one that opens more streams than the server
//! allows. Headers are HPACK literals without Huffman coding, which every
//! decoder accepts; responses are read as bare frames.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// What an HTTP/2 client sends first.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const GOAWAY: u8 = 0x7;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
/// The RST_STREAM code of a stream refused before any processing.
pub const REFUSED_STREAM: u32 = 0x7;

pub const TAGGER_STREAM: &str = "/datadog.api.v1.AgentSecure/TaggerStreamEntities";
pub const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

/// One frame as read from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The (identifier, value) pairs of a SETTINGS frame.
    pub fn settings(&self) -> Vec<(u16, u32)> {
        self.payload
            .chunks_exact(6)
            .map(|entry| {
                let id = u16::from_be_bytes([entry[0], entry[1]]);
                let value = u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]);
                (id, value)
            })
            .collect()
    }

    /// The error code of a RST_STREAM frame.
    pub fn reset_code(&self) -> Option<u32> {
        (self.kind == RST_STREAM && self.payload.len() == 4)
            .then(|| u32::from_be_bytes(self.payload[..4].try_into().unwrap()))
    }
}

/// A client connection: `io` after the preface.
pub struct RawH2<S> {
    io: S,
    next_stream: u32,
}

impl<S: AsyncRead + AsyncWrite + Unpin> RawH2<S> {
    /// Sends the preface and an empty SETTINGS frame (every default: a
    /// 65,535-byte window the client never extends).
    pub async fn start(mut io: S) -> io::Result<Self> {
        io.write_all(PREFACE).await?;
        io.write_all(&frame(SETTINGS, 0, 0, &[])).await?;
        io.flush().await?;
        Ok(Self { io, next_stream: 1 })
    }

    /// Reads up to the server's first SETTINGS frame and acknowledges it:
    /// from then on its limits are in force.
    pub async fn server_settings(&mut self) -> io::Result<Frame> {
        loop {
            let frame = self.read_frame().await?.ok_or_else(|| {
                io::Error::new(io::ErrorKind::UnexpectedEof, "closed before SETTINGS")
            })?;
            if frame.kind == SETTINGS && frame.flags & ACK == 0 {
                self.io
                    .write_all(&self::frame(SETTINGS, ACK, 0, &[]))
                    .await?;
                self.io.flush().await?;
                return Ok(frame);
            }
        }
    }

    /// Opens a gRPC call of `path` sending `message` (an encoded protobuf)
    /// and half-closes it; returns its stream id.
    pub async fn call(
        &mut self,
        path: &str,
        token: Option<&str>,
        message: &[u8],
    ) -> io::Result<u32> {
        let stream = self.next_stream;
        self.next_stream += 2;
        let mut block = Vec::new();
        let bearer = token.map(|token| format!("Bearer {token}"));
        let mut headers = vec![
            (":method", "POST"),
            (":scheme", "https"),
            (":path", path),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ];
        if let Some(bearer) = &bearer {
            headers.push(("authorization", bearer));
        }
        for (name, value) in headers {
            literal(&mut block, name, value);
        }
        let mut body = vec![0];
        body.extend_from_slice(&(message.len() as u32).to_be_bytes());
        body.extend_from_slice(message);
        self.io
            .write_all(&frame(HEADERS, END_HEADERS, stream, &block))
            .await?;
        self.io
            .write_all(&frame(DATA, END_STREAM, stream, &body))
            .await?;
        self.io.flush().await?;
        Ok(stream)
    }

    /// The next frame, `None` at a clean end of the connection.
    pub async fn read_frame(&mut self) -> io::Result<Option<Frame>> {
        let mut header = [0; 9];
        match self.io.read_exact(&mut header).await {
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(error) => return Err(error),
        }
        let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let mut payload = vec![0; length];
        self.io.read_exact(&mut payload).await?;
        Ok(Some(Frame {
            kind: header[3],
            flags: header[4],
            stream: u32::from_be_bytes(header[5..9].try_into().unwrap()) & 0x7fff_ffff,
            payload,
        }))
    }

    /// Reads until the server closes the connection (EOF or an error).
    pub async fn read_to_close(&mut self) {
        while let Ok(Some(_)) = self.read_frame().await {}
    }

    pub fn into_inner(self) -> S {
        self.io
    }
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut frame = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    frame.extend_from_slice(&[kind, flags]);
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// An HPACK "literal header field without indexing, new name", no Huffman.
fn literal(block: &mut Vec<u8>, name: &str, value: &str) {
    block.push(0);
    for text in [name, value] {
        integer(block, text.len(), 7);
        block.extend_from_slice(text.as_bytes());
    }
}

/// An HPACK integer with an `prefix`-bit prefix (RFC 7541, 5.1), the
/// prefix's other bits zero.
fn integer(block: &mut Vec<u8>, mut value: usize, prefix: u32) {
    let max = (1 << prefix) - 1;
    if value < max {
        block.push(value as u8);
        return;
    }
    block.push(max as u8);
    value -= max;
    while value >= 128 {
        block.push((value % 128 + 128) as u8);
        value /= 128;
    }
    block.push(value as u8);
}
