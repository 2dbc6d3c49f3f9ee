use super::super::testing::{decode, decode_chunked, frame, masked};
use super::*;

const MAX: usize = 4096;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CONTINUATION: u8 = 0x0;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

fn concat(frames: &[Vec<u8>]) -> Vec<u8> {
    frames.concat()
}

fn protocol_error(error: Option<DecodeError>) -> bool {
    matches!(error, Some(DecodeError::Protocol(_)))
}

#[test]
fn single_frames_and_control_frames() {
    let bytes = concat(&[
        masked(true, TEXT, b"hello"),
        masked(true, BINARY, &[0, 0xFF]),
        masked(true, PING, b"hi"),
        masked(true, PONG, b"ignored"),
        masked(true, TEXT, b""),
        masked(true, CLOSE, &[0x03, 0xE8, b'o', b'k']),
    ]);
    let (items, error) = decode(MAX, &bytes);
    assert_eq!(error, None);
    assert_eq!(
        items,
        vec![
            Inbound::Text(b"hello".to_vec()),
            Inbound::Binary(vec![0, 0xFF]),
            Inbound::Ping(b"hi".to_vec()),
            Inbound::Pong,
            Inbound::Text(Vec::new()),
            Inbound::Close(Some(1000)),
        ]
    );
}

#[test]
fn control_frames_may_come_between_fragments() {
    let bytes = concat(&[
        masked(false, TEXT, b"{\"type\":"),
        masked(true, PING, b"mid"),
        masked(false, CONTINUATION, b""),
        masked(true, PONG, b""),
        masked(false, CONTINUATION, b"\"auth\""),
        masked(true, CONTINUATION, b"}"),
        masked(false, BINARY, b"a"),
        masked(true, CONTINUATION, b"b"),
    ]);
    let (items, error) = decode(MAX, &bytes);
    assert_eq!(error, None);
    assert_eq!(
        items,
        vec![
            Inbound::Ping(b"mid".to_vec()),
            Inbound::Pong,
            Inbound::Text(b"{\"type\":\"auth\"}".to_vec()),
            Inbound::Binary(b"ab".to_vec()),
        ]
    );
}

#[test]
fn a_continuation_without_a_message_fails() {
    let (items, error) = decode(MAX, &masked(true, CONTINUATION, b"x"));
    assert!(items.is_empty());
    assert!(protocol_error(error));
    // also right after a finished message
    let bytes = concat(&[
        masked(true, TEXT, b"done"),
        masked(false, CONTINUATION, b"x"),
    ]);
    let (items, error) = decode(MAX, &bytes);
    assert_eq!(items, vec![Inbound::Text(b"done".to_vec())]);
    assert!(protocol_error(error));
}

#[test]
fn a_new_message_inside_a_fragmented_one_fails() {
    for opcode in [TEXT, BINARY] {
        let bytes = concat(&[masked(false, TEXT, b"a"), masked(true, opcode, b"b")]);
        assert!(protocol_error(decode(MAX, &bytes).1), "{opcode}");
        let bytes = concat(&[masked(false, BINARY, b"a"), masked(false, opcode, b"b")]);
        assert!(protocol_error(decode(MAX, &bytes).1), "{opcode}");
    }
}

#[test]
fn messages_over_the_limit_fail_fragments_summed() {
    let (items, error) = decode(MAX, &masked(true, BINARY, &[7; MAX]));
    assert_eq!((items, error), (vec![Inbound::Binary(vec![7; MAX])], None));
    assert_eq!(
        decode(MAX, &masked(true, TEXT, &[b'a'; MAX + 1])).1,
        Some(DecodeError::TooBig)
    );
    let bytes = concat(&[
        masked(false, TEXT, &[b'a'; 3000]),
        masked(true, PING, b""),
        masked(false, CONTINUATION, &[b'a'; 1096]),
        masked(true, CONTINUATION, &[b'a'; 1]),
    ]);
    let (items, error) = decode(MAX, &bytes);
    assert_eq!(items, vec![Inbound::Ping(Vec::new())]);
    assert_eq!(error, Some(DecodeError::TooBig));
    // Refused on the header alone: none of the payload is needed, or held.
    let huge = frame(true, BINARY, &[0; 70_000], [0; 4]);
    let mut decoder = Decoder::new(MAX);
    assert_eq!(
        decoder.feed(&huge[..14]).next(),
        Some(Err(DecodeError::TooBig))
    );
    assert_eq!(decoder.buffered(), 0);
    let mut header = vec![0x82, 0x80 | 127];
    header.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    assert_eq!(decode(MAX, &header).1, Some(DecodeError::TooBig));
}

#[test]
fn text_is_checked_across_fragments() {
    // "€" (E2 82 AC) split across three fragments and a ping.
    let bytes = concat(&[
        masked(false, TEXT, &[b'a', 0xE2]),
        masked(false, CONTINUATION, &[0x82]),
        masked(true, PING, b""),
        masked(true, CONTINUATION, &[0xAC, b'b']),
    ]);
    let (items, error) = decode(MAX, &bytes);
    assert_eq!(error, None);
    assert_eq!(items[1], Inbound::Text("a€b".as_bytes().to_vec()));
    // Cut short at the end of the message: invalid.
    let bytes = concat(&[
        masked(false, TEXT, &[b'a', 0xE2]),
        masked(true, CONTINUATION, &[0x82]),
    ]);
    assert_eq!(decode(MAX, &bytes).1, Some(DecodeError::InvalidUtf8));
    // Binary messages are not text.
    assert_eq!(decode(MAX, &masked(true, BINARY, &[0xFF])).1, None);
}

#[test]
fn invalid_text_fails_before_the_last_fragment_arrives() {
    let mut decoder = Decoder::new(MAX);
    let first = masked(false, TEXT, &[b'o', b'k', 0xFF, b'x']);
    assert_eq!(
        decoder.feed(&first).next(),
        Some(Err(DecodeError::InvalidUtf8)),
        "no continuation sent yet"
    );
    // And inside one frame, before the rest of its payload arrives.
    let mut decoder = Decoder::new(MAX);
    let mut text = "κόσμε".as_bytes().to_vec();
    text.extend_from_slice(&[0xF4, 0x90, 0x80, 0x80]);
    text.extend_from_slice(&[b'x'; 100]);
    let whole = masked(true, TEXT, &text);
    let bad_at = 6 + "κόσμε".len() + 2;
    assert_eq!(decoder.feed(&whole[..bad_at - 1]).next(), None);
    assert_eq!(
        decoder.feed(&whole[bad_at - 1..bad_at]).next(),
        Some(Err(DecodeError::InvalidUtf8))
    );
}

#[test]
fn close_frames() {
    assert_eq!(
        decode(MAX, &masked(true, CLOSE, b"")).0,
        vec![Inbound::Close(None)]
    );
    assert!(protocol_error(decode(MAX, &masked(true, CLOSE, b"x")).1));
    assert_eq!(
        decode(MAX, &masked(true, CLOSE, &[0x03, 0xE8, 0xC3, 0x28])).1,
        Some(DecodeError::InvalidUtf8)
    );
}

#[test]
fn every_split_decodes_the_same() {
    let bytes = concat(&[
        masked(false, TEXT, "κό".as_bytes()),
        masked(true, PING, b"p"),
        masked(true, CONTINUATION, "σμε".as_bytes()),
        frame(true, BINARY, &[5; 300], [1, 2, 3, 4]),
        frame(true, TEXT, "€".repeat(100).as_bytes(), [0xFF, 0, 0x80, 7]),
        masked(true, CLOSE, &[0x0F, 0xA0]),
    ]);
    let whole = decode(MAX, &bytes);
    assert_eq!(whole.0.len(), 5);
    assert_eq!(whole.1, None);
    for chunk in [1, 2, 3, 5, 7, 13, 64, 1024] {
        assert_eq!(
            decode_chunked(MAX, &bytes, chunk),
            whole,
            "chunks of {chunk}"
        );
    }
}

#[test]
fn an_idle_decoder_holds_no_memory() {
    let mut decoder = Decoder::new(MAX);
    let bytes = concat(&[masked(true, TEXT, b"hello"), masked(true, PING, b"x")]);
    assert_eq!(decoder.feed(&bytes).count(), 2);
    assert_eq!(decoder.buffered(), 0, "everything decoded: nothing held");
    // Half a header: only those bytes are kept.
    let ping = masked(true, PING, b"abc");
    assert_eq!(decoder.feed(&ping[..3]).next(), None);
    assert!(decoder.buffered() <= 3, "{}", decoder.buffered());
    assert_eq!(
        decoder.feed(&ping[3..]).next(),
        Some(Ok(Inbound::Ping(b"abc".to_vec())))
    );
    assert_eq!(decoder.buffered(), 0);
    // A fragmented message holds its payload, and nothing once it is done.
    assert_eq!(decoder.feed(&masked(false, TEXT, b"ab")).next(), None);
    assert_eq!(decoder.buffered(), 2);
    assert_eq!(
        decoder.feed(&masked(true, CONTINUATION, b"c")).next(),
        Some(Ok(Inbound::Text(b"abc".to_vec())))
    );
    assert_eq!(decoder.buffered(), 0);
}

#[test]
fn items_not_taken_wait_for_the_next_feed() {
    let mut decoder = Decoder::new(MAX);
    let bytes = concat(&[masked(true, TEXT, b"a"), masked(true, TEXT, b"b")]);
    assert_eq!(
        decoder.feed(&bytes).next(),
        Some(Ok(Inbound::Text(b"a".to_vec())))
    );
    assert_eq!(
        decoder.feed(&[]).next(),
        Some(Ok(Inbound::Text(b"b".to_vec())))
    );
    assert_eq!(decoder.feed(&[]).next(), None);
}

#[test]
fn nothing_is_decoded_after_an_error() {
    let mut decoder = Decoder::new(MAX);
    let bytes = concat(&[
        masked(true, TEXT, b"first"),
        vec![0x81, 0x01, b'x'],
        masked(true, TEXT, b"never"),
    ]);
    let items: Vec<_> = decoder.feed(&bytes).collect();
    assert_eq!(items.len(), 2, "{items:?}");
    assert_eq!(items[0], Ok(Inbound::Text(b"first".to_vec())));
    let Err(error @ DecodeError::Protocol(_)) = items[1] else {
        panic!("a protocol error, not {:?}", items[1]);
    };
    assert_eq!(decoder.buffered(), 0);
    let again: Vec<_> = decoder.feed(&masked(true, TEXT, b"x")).collect();
    assert_eq!(again, vec![Err(error)], "the same error, once per feed");
}
