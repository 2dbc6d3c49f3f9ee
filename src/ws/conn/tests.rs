use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

const MAX: usize = 4096;

/// A connected pair: the server side as a `Connection`, the client as a raw socket.
async fn pair() -> (Connection, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let client = TcpStream::connect(addr).await.expect("connect");
    let (server, _) = listener.accept().await.expect("accept");
    (Connection::new(server, Bytes::new(), MAX), client)
}

/// A masked client frame.
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

#[tokio::test]
async fn single_and_fragmented_messages_with_a_ping_between() {
    let (mut conn, mut client) = pair().await;
    client
        .write_all(&frame(true, OP_TEXT, b"hello"))
        .await
        .expect("write");
    assert_eq!(
        conn.recv().await.expect("text"),
        Inbound::Text(b"hello".to_vec())
    );

    let mut bytes = frame(false, OP_TEXT, b"{\"type\":");
    bytes.extend(frame(true, OP_PING, b"mid"));
    bytes.extend(frame(false, OP_CONTINUATION, b"\"auth\""));
    bytes.extend(frame(true, OP_CONTINUATION, b"}"));
    // byte by byte, to exercise partial frames
    for b in bytes {
        client.write_all(&[b]).await.expect("write");
    }
    assert_eq!(
        conn.recv().await.expect("ping"),
        Inbound::Ping(b"mid".to_vec())
    );
    assert_eq!(
        conn.recv().await.expect("text"),
        Inbound::Text(b"{\"type\":\"auth\"}".to_vec())
    );
    assert!(
        conn.inbound.capacity() == 0,
        "an idle connection holds no read buffer"
    );
}

#[tokio::test]
async fn size_limit_is_per_message_with_fragments_summed() {
    let (mut conn, mut client) = pair().await;
    client
        .write_all(&frame(true, OP_BINARY, &vec![7u8; MAX]))
        .await
        .expect("write");
    assert_eq!(
        conn.recv().await.expect("exactly the limit"),
        Inbound::Binary(vec![7u8; MAX])
    );
    client
        .write_all(&frame(true, OP_TEXT, &vec![b'a'; MAX + 1]))
        .await
        .expect("write");
    assert!(matches!(conn.recv().await, Err(ReadError::TooBig)));

    let (mut conn, mut client) = pair().await;
    client
        .write_all(&frame(false, OP_TEXT, &vec![b'a'; 3000]))
        .await
        .expect("write");
    client
        .write_all(&frame(true, OP_CONTINUATION, &vec![b'a'; 1200]))
        .await
        .expect("write");
    assert!(matches!(conn.recv().await, Err(ReadError::TooBig)));
}

#[tokio::test]
async fn protocol_violations() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unmasked", vec![0x81, 0x01, b'x']),
        ("reserved opcode", frame(true, 0x3, b"x")),
        ("rsv1", {
            let mut f = frame(true, OP_TEXT, b"x");
            f[0] |= 0x40;
            f
        }),
        ("fragmented ping", frame(false, OP_PING, b"x")),
        ("continuation first", frame(true, OP_CONTINUATION, b"x")),
        ("new message mid-fragment", {
            let mut f = frame(false, OP_TEXT, b"a");
            f.extend(frame(true, OP_TEXT, b"b"));
            f
        }),
        ("one-byte close", frame(true, OP_CLOSE, b"x")),
    ];
    for (label, bytes) in cases {
        let (mut conn, mut client) = pair().await;
        client.write_all(&bytes).await.expect("write");
        assert!(
            matches!(conn.recv().await, Err(ReadError::Protocol(_))),
            "{label}"
        );
    }
    let (mut conn, mut client) = pair().await;
    client
        .write_all(&frame(true, OP_TEXT, &[0xff, 0xfe]))
        .await
        .expect("write");
    assert!(matches!(conn.recv().await, Err(ReadError::InvalidUtf8)));
}

#[tokio::test]
async fn close_and_eof() {
    let (mut conn, mut client) = pair().await;
    client
        .write_all(&frame(true, OP_CLOSE, &1000u16.to_be_bytes()))
        .await
        .expect("write");
    assert_eq!(
        conn.recv().await.expect("close"),
        Inbound::Close(Some(1000))
    );
    drop(client);
    assert!(matches!(conn.recv().await, Err(ReadError::Gone)));
}

#[tokio::test]
async fn server_frames_are_unmasked_with_exact_lengths() {
    for len in [0usize, 125, 126, 65_535, 65_536, 300_000] {
        let (mut conn, mut client) = pair().await;
        let payload = Bytes::from(vec![b'x'; len]);
        let writer = tokio::spawn(async move {
            conn.send_text(&payload).await.expect("send");
            conn
        });
        let mut head = [0u8; 2];
        client.read_exact(&mut head).await.expect("head");
        assert_eq!(head[0], 0x81);
        assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
        let got_len = match head[1] {
            126 => {
                let mut b = [0u8; 2];
                client.read_exact(&mut b).await.expect("len16");
                usize::from(u16::from_be_bytes(b))
            }
            127 => {
                let mut b = [0u8; 8];
                client.read_exact(&mut b).await.expect("len64");
                u64::from_be_bytes(b) as usize
            }
            n => usize::from(n),
        };
        assert_eq!(got_len, len);
        let mut body = vec![0u8; len];
        client.read_exact(&mut body).await.expect("body");
        assert!(body.iter().all(|b| *b == b'x'));
        writer.await.expect("writer");
    }
}

#[tokio::test]
async fn close_sends_code_and_reason() {
    let (mut conn, mut client) = pair().await;
    let closer = tokio::spawn(async move {
        tokio::time::timeout(std::time::Duration::from_secs(2), conn.close(1001, "bye")).await
    });
    let mut got = Vec::new();
    client.read_to_end(&mut got).await.expect("read until FIN");
    assert_eq!(got, vec![0x88, 5, 0x03, 0xE9, b'b', b'y', b'e']);
    drop(client);
    assert!(
        closer.await.expect("join").is_ok(),
        "close returns once the peer is gone"
    );
}

#[tokio::test]
async fn session_future_stays_small() {
    // The task state of an idle socket dominates memory per connection;
    // rarely taken paths are boxed to keep it small. A regression guard.
    let (conn, _client) = pair().await;
    let config =
        crate::config::Config::from_yaml("worker_secret: \"0123456789abcdef0123456789abcdef\"\n")
            .expect("config")
            .config;
    let node = crate::node::Node::new(config).expect("node");
    let future = crate::ws::session_future_for_size(conn, node);
    let size = std::mem::size_of_val(&future);
    eprintln!("session future: {size} bytes");
    assert!(size <= 1536, "session future grew to {size} bytes");
}
