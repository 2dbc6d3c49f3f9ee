//! The two protocol roles the load generator plays: a browser (WebSocket
//! client with the hex token) and the PHP publisher (keep-alive HTTP/1.1).
//! Minimal on purpose: the generator shares two cores with the server.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{anyhow, bail, Context, Result};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

use crate::stamped::Stamped;

/// Signs a token as the PHP library does.
pub fn token(secret: &str, user_id: i64, topic: &str, expires: i64) -> String {
    let claims =
        serde_json::json!({"user_id": user_id, "topic": topic, "expires": expires}).to_string();
    let encoded = hex::encode(claims);
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(encoded.as_bytes());
    format!("{encoded}.{}", hex::encode(mac.finalize().into_bytes()))
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

static NEXT_SOURCE: AtomicU32 = AtomicU32::new(0);

/// Connects from a rotating source address in 127.0.0.2..=127.0.0.250, so
/// that tens of thousands of sockets never exhaust one address's ports.
pub async fn connect(target: SocketAddr) -> Result<TcpStream> {
    let n = NEXT_SOURCE.fetch_add(1, Ordering::Relaxed);
    let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (n % 249) as u8));
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let stream = socket
        .connect(target)
        .await
        .with_context(|| format!("connect {target}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A browser-like WebSocket client.
pub struct Browser {
    stream: BufReader<Stamped>,
}

impl Browser {
    /// A receiver on a plain TCP stream (the floor scenario's sender speaks
    /// no handshake: frames start at once).
    pub fn raw(stream: TcpStream) -> Result<Browser> {
        Ok(Browser {
            stream: BufReader::with_capacity(1024, Stamped::new(stream)?),
        })
    }

    /// When the bytes of the last frame read reached this socket
    /// (CLOCK_MONOTONIC ns, see `stamped`).
    pub fn arrived_ns(&self) -> u64 {
        self.stream.get_ref().arrived_ns()
    }

    /// Connects, upgrades and authenticates; returns once `auth_ok` arrived.
    pub async fn open(target: SocketAddr, topic: &str, token: &str) -> Result<Browser> {
        let mut stream = connect(target).await?;
        let request = format!(
            "GET /ws?topic={} HTTP/1.1\r\nHost: {target}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            percent_encode(topic)
        );
        // One write: the upgrade request and the auth frame together.
        let auth = serde_json::json!({"type": "auth", "token": token}).to_string();
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(&client_frame(0x1, auth.as_bytes()));
        stream.write_all(&bytes).await?;
        let mut browser = Browser::raw(stream)?;
        browser.read_response_head().await?;
        let reply = browser.next_text().await?;
        if reply != r#"{"type":"auth_ok"}"# {
            bail!("expected auth_ok, got {reply}");
        }
        Ok(browser)
    }

    async fn read_response_head(&mut self) -> Result<()> {
        let mut head = Vec::with_capacity(256);
        while !head.ends_with(b"\r\n\r\n") {
            head.push(self.stream.read_u8().await?);
            if head.len() > 4096 {
                bail!("response head too long");
            }
        }
        if !head.starts_with(b"HTTP/1.1 101") {
            bail!(
                "upgrade refused: {}",
                String::from_utf8_lossy(&head).lines().next().unwrap_or("")
            );
        }
        Ok(())
    }

    /// The next text frame's payload (pings are answered on the way).
    pub async fn next_text(&mut self) -> Result<String> {
        loop {
            let b0 = self.stream.read_u8().await?;
            let b1 = self.stream.read_u8().await?;
            let len = match b1 & 0x7F {
                126 => u64::from(self.stream.read_u16().await?),
                127 => self.stream.read_u64().await?,
                n => u64::from(n),
            };
            let mut payload = vec![0u8; usize::try_from(len)?];
            self.stream.read_exact(&mut payload).await?;
            match b0 & 0x0F {
                0x1 => {
                    return String::from_utf8(payload)
                        .map_err(|_| anyhow!("text frame is not UTF-8"))
                }
                0x8 => match payload.get(..2) {
                    Some(code) => bail!(
                        "closed by the server with {}",
                        u16::from_be_bytes([code[0], code[1]])
                    ),
                    None => bail!("closed by the server"),
                },
                0x9 => {
                    self.stream
                        .get_mut()
                        .write_all(&client_frame(0xA, &payload))
                        .await?
                }
                _ => {}
            }
        }
    }

    /// Reads until the server's close frame; returns its code (None on EOF or error).
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            let b0 = self.stream.read_u8().await.ok()?;
            let b1 = self.stream.read_u8().await.ok()?;
            let len = match b1 & 0x7F {
                126 => u64::from(self.stream.read_u16().await.ok()?),
                127 => self.stream.read_u64().await.ok()?,
                n => u64::from(n),
            };
            let mut payload = vec![0u8; usize::try_from(len).ok()?];
            self.stream.read_exact(&mut payload).await.ok()?;
            if b0 & 0x0F == 0x8 {
                return payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
            }
        }
    }

    /// Sends a close frame and drops the connection.
    pub async fn close(mut self) {
        let _ = self
            .stream
            .get_mut()
            .write_all(&client_frame(0x8, &1000u16.to_be_bytes()))
            .await;
    }
}

/// A masked client frame.
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x5a, 0x17, 0xc3, 0x08];
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.push(0x80 | opcode);
    if payload.len() < 126 {
        out.push(0x80 | payload.len() as u8);
    } else {
        out.push(0x80 | 126);
        out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A keep-alive HTTP/1.1 client for the internal API.
pub struct Publisher {
    target: SocketAddr,
    secret: String,
    stream: Option<BufReader<Stamped>>,
}

impl Publisher {
    pub fn new(target: SocketAddr, secret: &str) -> Publisher {
        Publisher {
            target,
            secret: secret.to_string(),
            stream: None,
        }
    }

    /// When the last answer reached this client's socket (CLOCK_MONOTONIC
    /// ns): the answer's time without this thread's own wait for a CPU.
    pub fn answered_ns(&self) -> u64 {
        self.stream
            .as_ref()
            .map_or(0, |stream| stream.get_ref().arrived_ns())
    }

    /// One request; returns the status code and body.
    pub async fn request(&mut self, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
        for attempt in 0..2 {
            if self.stream.is_none() {
                self.stream = Some(BufReader::new(Stamped::new(connect(self.target).await?)?));
            }
            let result = self.exchange(method, path, body).await;
            match result {
                Ok(answer) => return Ok(answer),
                Err(error) if attempt == 0 => {
                    self.stream = None;
                    let _ = error;
                }
                Err(error) => return Err(error),
            }
        }
        bail!("unreachable")
    }

    async fn exchange(&mut self, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
        let stream = self
            .stream
            .as_mut()
            .ok_or_else(|| anyhow!("no connection"))?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nX-Worker-Secret: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            self.target,
            self.secret,
            body.len()
        );
        stream
            .get_mut()
            .write_all(format!("{head}{body}").as_bytes())
            .await?;
        let mut line = Vec::new();
        let mut content_length = 0usize;
        let mut status = 0u16;
        let mut first = true;
        loop {
            line.clear();
            loop {
                let byte = stream.read_u8().await?;
                line.push(byte);
                if line.ends_with(b"\r\n") {
                    break;
                }
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end();
            if first {
                status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
                first = false;
            } else if text.is_empty() {
                break;
            } else if let Some((name, value)) = text.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    content_length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; content_length];
        stream.read_exact(&mut body).await?;
        Ok((status, String::from_utf8_lossy(&body).to_string()))
    }

    pub async fn register(&mut self, topic: &str) -> Result<()> {
        let body = serde_json::json!({"topic": topic, "meta": {"require_token": true}}).to_string();
        let (status, text) = self.request("POST", "/internal/register", &body).await?;
        if status != 200 {
            bail!("register {topic}: HTTP {status} {text}");
        }
        Ok(())
    }

    pub async fn status(&mut self) -> Result<serde_json::Value> {
        let (status, text) = self.request("GET", "/internal/status", "").await?;
        if status != 200 {
            bail!("status: HTTP {status} {text}");
        }
        Ok(serde_json::from_str(&text)?)
    }
}
