//! The socket side only: reads in any split, buffers freed, frames written.
//! The protocol rules are tested beside the codec.

use std::convert::Infallible;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::ws::codec::testing::masked;
use hyper_util::rt::TokioIo;

const MAX: usize = 4096;
const TEXT: u8 = 0x1;
const CONTINUATION: u8 = 0x0;
const PING: u8 = 0x9;
const CLOSE: u8 = 0x8;

/// A connected pair: the server side as the `Connection` the public
/// listener builds (hyper's upgraded stream), the client as a raw socket.
/// `early` goes out with the upgrade request, as a client may send it.
async fn upgraded(early: &[u8]) -> (Connection, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let mut client = TcpStream::connect(listener.local_addr().expect("addr"))
        .await
        .expect("connect");
    let mut request =
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n".to_vec();
    request.extend_from_slice(early);
    client.write_all(&request).await.expect("request");
    let (server, _) = listener.accept().await.expect("accept");
    let (upgrade_tx, upgrade_rx) = tokio::sync::oneshot::channel();
    let upgrade_tx = std::sync::Mutex::new(Some(upgrade_tx));
    let service =
        hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            if let Some(tx) = upgrade_tx.lock().expect("lock").take() {
                let _ = tx.send(hyper::upgrade::on(&mut request));
            }
            let response = hyper::Response::builder()
                .status(101)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .body(http_body_util::Empty::<Bytes>::new());
            async move { Ok::<_, Infallible>(response.expect("response")) }
        });
    tokio::spawn(
        hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(server), service)
            .with_upgrades(),
    );
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(client.read_u8().await.expect("101 head"));
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let upgraded = upgrade_rx.await.expect("request").await.expect("upgrade");
    (Connection::new(Upgrade::new(upgraded), MAX), client)
}

async fn pair() -> (Connection, TcpStream) {
    upgraded(b"").await
}

#[tokio::test]
async fn writes_stay_vectored_through_the_upgrade() {
    let (conn, _client) = pair().await;
    assert!(
        conn.stream.is_write_vectored(),
        "header and shared payload go out in one writev"
    );
}

#[tokio::test]
async fn messages_arrive_in_any_split_and_no_buffer_stays() {
    let (mut conn, mut client) = pair().await;
    client
        .write_all(&masked(true, TEXT, b"hello"))
        .await
        .expect("write");
    assert_eq!(
        conn.recv().await.expect("text"),
        Inbound::Text(b"hello".to_vec())
    );

    let mut bytes = masked(false, TEXT, b"{\"type\":");
    bytes.extend(masked(true, PING, b"mid"));
    bytes.extend(masked(false, CONTINUATION, b"\"auth\""));
    bytes.extend(masked(true, CONTINUATION, b"}"));
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
    assert_eq!(
        conn.decoder.buffered(),
        0,
        "an idle connection holds no read buffer"
    );
}

#[tokio::test]
async fn decode_errors_end_reading() {
    let (mut conn, mut client) = pair().await;
    client
        .write_all(&masked(true, TEXT, &vec![b'a'; MAX + 1]))
        .await
        .expect("write");
    assert!(matches!(
        conn.recv().await,
        Err(ReadError::Invalid(DecodeError::TooBig))
    ));
    let (mut conn, mut client) = pair().await;
    client.write_all(&[0x81, 0x01, b'x']).await.expect("write");
    assert!(matches!(
        conn.recv().await,
        Err(ReadError::Invalid(DecodeError::Protocol(_)))
    ));
}

#[tokio::test]
async fn bytes_read_past_the_upgrade_request_come_first() {
    let (mut conn, mut client) = upgraded(&masked(true, TEXT, b"early")).await;
    client
        .write_all(&masked(true, TEXT, b"later"))
        .await
        .expect("write");
    assert_eq!(
        conn.recv().await.expect("1"),
        Inbound::Text(b"early".to_vec())
    );
    assert_eq!(
        conn.recv().await.expect("2"),
        Inbound::Text(b"later".to_vec())
    );
}

#[tokio::test]
async fn close_and_eof() {
    let (mut conn, mut client) = pair().await;
    client
        .write_all(&masked(true, CLOSE, &1000u16.to_be_bytes()))
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
async fn a_long_close_reason_is_cut_at_a_char_boundary() {
    let (mut conn, mut client) = pair().await;
    let reason = "é".repeat(100); // 200 bytes; 61 characters fit in 123
    let closer = tokio::spawn(async move {
        tokio::time::timeout(std::time::Duration::from_secs(2), conn.close(1000, &reason)).await
    });
    let mut got = Vec::new();
    client.read_to_end(&mut got).await.expect("read until FIN");
    assert_eq!(&got[..2], &[0x88, 2 + 122]);
    assert_eq!(&got[2..4], &[0x03, 0xE8]);
    assert_eq!(std::str::from_utf8(&got[4..]), Ok("é".repeat(61).as_str()));
    drop(client);
    assert!(closer.await.expect("join").is_ok());
}

#[tokio::test]
async fn session_future_stays_small() {
    // The task state of an idle socket dominates memory per connection;
    // rarely taken paths are boxed to keep it small. A regression guard.
    let config =
        crate::config::Config::from_yaml("worker_secret: \"0123456789abcdef0123456789abcdef\"\n")
            .expect("config")
            .config;
    let node = crate::node::Node::new(config).expect("node");
    let future = crate::ws::session_future_for_size(node);
    let size = std::mem::size_of_val(&future);
    eprintln!("session future: {size} bytes");
    // 656 keeps tokio's task cell (128-byte aligned, 112 bytes of its own
    // with the tracker's 8) at 768 bytes; it was 896 at 752.
    assert!(size <= 656, "session future grew to {size} bytes");
}

#[tokio::test]
async fn a_write_cut_short_is_finished_before_the_next_frame() {
    let (mut conn, mut client) = pair().await;
    // More than the kernel takes at once from a socket whose peer reads nothing.
    let len = 8 * 1024 * 1024;
    let big = Bytes::from(vec![b'a'; len]);
    let small = Bytes::from_static(b"small");
    assert!(
        !conn.start_texts(&[big, small]).expect("start"),
        "the socket cannot take 8 MiB at once"
    );
    assert!(
        conn.start_texts(&[Bytes::from_static(b"x")]).is_err(),
        "no second frame while one is unsent"
    );
    // A wait given up on (as the session's timers do) loses nothing ...
    let taken = conn.taken();
    assert!(taken > 0 && taken < len as u64);
    let waited = tokio::time::timeout(std::time::Duration::from_millis(50), conn.flush()).await;
    assert!(waited.is_err(), "still unsent while the peer reads nothing");
    // ... and the next frame goes out only after the rest of this one.
    let writer = tokio::spawn(async move {
        conn.send_text(&Bytes::from_static(b"next"))
            .await
            .expect("send");
        conn
    });
    let mut head = [0u8; 10];
    client.read_exact(&mut head).await.expect("head");
    assert_eq!(head[..2], [0x81, 127]);
    assert_eq!(
        u64::from_be_bytes(head[2..].try_into().expect("8")),
        len as u64
    );
    let mut body = vec![0u8; len];
    client.read_exact(&mut body).await.expect("body");
    assert!(
        body.iter().all(|b| *b == b'a'),
        "the cut frame arrives whole"
    );
    let mut rest = [0u8; 13];
    client.read_exact(&mut rest).await.expect("the rest");
    assert_eq!(
        &rest, b"\x81\x05small\x81\x04next",
        "then the rest of the batch, then the next frame"
    );
    let conn = writer.await.expect("writer");
    assert_eq!(conn.taken(), (10 + len + 13) as u64);
}

#[tokio::test]
async fn a_batch_goes_out_in_order() {
    let (mut conn, mut client) = pair().await;
    let payloads: Vec<Bytes> = (0..BATCH + 3)
        .map(|i| Bytes::from(format!("{i:02}")))
        .collect();
    assert!(
        conn.start_texts(&payloads).expect("start"),
        "a small batch goes out at once"
    );
    let mut got = vec![0u8; payloads.len() * 4];
    client.read_exact(&mut got).await.expect("frames");
    for (i, frame) in got.chunks(4).enumerate() {
        assert_eq!(
            frame,
            [&[0x81, 2][..], format!("{i:02}").as_bytes()].concat()
        );
    }
}
