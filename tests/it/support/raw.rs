//! Clients written on raw TCP, for what the WebSocket and HTTP clients
//! cannot do: a socket that authenticates and then never reads, and a
//! publisher that pipelines its requests on one keep-alive connection.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::SECRET;

/// A browser that stops reading after `auth_ok` (a dead network path, a
/// frozen process): the server's frames pile up in the kernel, then in its
/// outbox.
pub struct StuckSocket {
    stream: TcpStream,
}

impl StuckSocket {
    /// Upgrades and authenticates on a public topic, reading exactly the
    /// 101 answer and `auth_ok`, nothing more.
    pub async fn open(addr: SocketAddr, topic: &str) -> StuckSocket {
        Self::open_with(addr, topic, None).await
    }

    /// [`open`](Self::open) with the client's kernel receive buffer set to
    /// `receive_buffer` bytes (so the server's frames back up sooner).
    pub async fn open_with(
        addr: SocketAddr,
        topic: &str,
        receive_buffer: Option<u32>,
    ) -> StuckSocket {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        if let Some(size) = receive_buffer {
            socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
        }
        let mut stream = socket.connect(addr).await.expect("connect");
        let mut bytes = format!(
            "GET /ws?topic={topic} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        )
        .into_bytes();
        bytes.extend(masked_text(br#"{"type":"auth"}"#));
        stream.write_all(&bytes).await.expect("handshake");
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(stream.read_u8().await.expect("101 head"));
        }
        assert!(head.starts_with(b"HTTP/1.1 101"), "upgrade refused");
        let mut socket = StuckSocket { stream };
        let (opcode, payload) = socket.frame().await.expect("auth reply");
        assert_eq!(
            (opcode, payload.as_slice()),
            (1, &br#"{"type":"auth_ok"}"#[..])
        );
        socket
    }

    /// Reads everything the server sent until its close frame: the code,
    /// or `None` when the connection ended without one (or `within` passed).
    pub async fn close_code(&mut self, within: Duration) -> Option<u16> {
        let reading = async {
            loop {
                let (opcode, payload) = self.frame().await?;
                if opcode == 0x8 {
                    return payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                }
            }
        };
        tokio::time::timeout(within, reading).await.ok().flatten()
    }

    /// The next text frame as JSON, once the client reads again; `None` on
    /// a close frame, the end of the connection or after `within`.
    pub async fn next_json(&mut self, within: Duration) -> Option<Value> {
        let reading = async {
            loop {
                match self.frame().await? {
                    (0x1, payload) => {
                        return Some(serde_json::from_slice(&payload).expect("server sends JSON"))
                    }
                    (0x8, _) => return None,
                    _ => {}
                }
            }
        };
        tokio::time::timeout(within, reading).await.ok().flatten()
    }

    /// One server frame (unmasked): opcode and payload.
    async fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        let mut head = [0u8; 2];
        self.stream.read_exact(&mut head).await.ok()?;
        let len = match head[1] & 0x7F {
            126 => u64::from(self.stream.read_u16().await.ok()?),
            127 => self.stream.read_u64().await.ok()?,
            n => u64::from(n),
        };
        let mut payload = vec![0u8; usize::try_from(len).ok()?];
        self.stream.read_exact(&mut payload).await.ok()?;
        Some((head[0] & 0x0F, payload))
    }
}

fn masked_text(payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// What a pipelining publisher read: each answer's status, in order, and
/// how the answers ended.
pub struct Pipelined {
    pub statuses: Vec<u16>,
    /// `Ok` for an end of stream (or every answer read), the error for a
    /// reset: a reset loses answers the client had not read yet.
    pub ended: std::io::Result<()>,
}

impl Pipelined {
    /// The statuses, read to the end of the stream; a reset fails the test
    /// (it may have cost answers the client never read).
    pub fn read_to_the_end(self) -> Vec<u16> {
        if let Err(error) = &self.ended {
            panic!(
                "the answers ended in an error after {} of them: {error}",
                self.statuses.len()
            );
        }
        self.statuses
    }
}

/// Sends every publish on one keep-alive connection without waiting for
/// answers (pipelined), then reads the answers; `answered` is called with
/// the count after each one; once `pause.0` answers were read the reader
/// sleeps `pause.1` before it reads on (a publisher slow to read them).
pub async fn publish_pipelined(
    internal: SocketAddr,
    topic: &str,
    payloads: &[Value],
    pause: Option<(usize, Duration)>,
    mut answered: impl FnMut(usize),
) -> Pipelined {
    let stream = TcpStream::connect(internal).await.expect("connect");
    let (reader, mut writer) = stream.into_split();
    let mut requests = Vec::new();
    for payload in payloads {
        let body = serde_json::json!({"topic": topic, "payload": payload}).to_string();
        requests.extend(
            format!(
                "POST /internal/publish HTTP/1.1\r\nHost: {internal}\r\nX-Worker-Secret: {SECRET}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        );
    }
    let writing = tokio::spawn(async move {
        // The server may stop reading (shutdown): that is not an error here.
        let _ = writer.write_all(&requests).await;
        writer
    });
    let mut reader = BufReader::new(reader);
    let mut statuses = Vec::new();
    let mut ended = Ok(());
    while statuses.len() < payloads.len() {
        if let Some((_, pause)) = pause.filter(|(after, _)| *after == statuses.len()) {
            tokio::time::sleep(pause).await;
        }
        match read_answer(&mut reader).await {
            Ok(Some(status)) => statuses.push(status),
            Ok(None) => break,
            Err(error) => {
                ended = Err(error);
                break;
            }
        }
        answered(statuses.len());
    }
    writing.abort();
    Pipelined { statuses, ended }
}

/// One HTTP answer's status (its body skipped); `None` once the connection
/// ends, an error if it was reset.
async fn read_answer(
    reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
) -> std::io::Result<Option<u16>> {
    let mut line = String::new();
    let mut status = None;
    let mut length = 0usize;
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        let text = line.trim_end();
        if status.is_none() {
            status = text.get(9..12).and_then(|code| code.parse().ok());
        } else if text.is_empty() {
            break;
        } else if let Some((name, value)) = text.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).await?;
    Ok(status)
}
