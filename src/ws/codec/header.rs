//! Frame headers (RFC 6455 section 5.2): parsing a client's, with every rule
//! that the header alone decides checked as soon as its bytes are there, and
//! writing the server's (never masked).

use super::{DecodeError, Opcode};

/// The longest server header: 2 bytes plus a 64-bit length (no mask).
pub const MAX_HEADER: usize = 10;

const FIN: u8 = 0x80;
const RSV: u8 = 0x70;
const MASKED: u8 = 0x80;
/// Control frames carry at most this many payload bytes (section 5.5).
pub const MAX_CONTROL_PAYLOAD: u64 = 125;

/// A client frame header that passed every header-level rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    pub opcode: Opcode,
    pub mask: [u8; 4],
    pub payload_len: u64,
    /// Bytes of the header itself (6 to 14).
    pub len: usize,
}

/// Parses the client frame header at the start of `buf`; `None` until all of
/// it is there. Fails as early as the bytes allow: the reserved bits, the
/// opcode and the mask bit are judged on the first two bytes.
///
/// A 16- or 64-bit length that would have fit a shorter form (the RFC says
/// the sender MUST use the shortest) is accepted: the value is unambiguous,
/// the RFC asks nothing of the receiver, and refusing would only break
/// sloppy clients.
pub fn parse(buf: &[u8]) -> Result<Option<FrameHeader>, DecodeError> {
    let &[first, second, ..] = buf else {
        return Ok(None);
    };
    if first & RSV != 0 {
        return Err(DecodeError::Protocol(
            "reserved bits set without an extension",
        ));
    }
    let opcode = Opcode::from_bits(first & 0x0F).ok_or(DecodeError::Protocol("reserved opcode"))?;
    let fin = first & FIN != 0;
    if opcode.is_control() && !fin {
        return Err(DecodeError::Protocol("fragmented control frame"));
    }
    if second & MASKED == 0 {
        return Err(DecodeError::Protocol("unmasked client frame"));
    }
    let (payload_len, length_end) = match second & 0x7F {
        126 => match buf.get(2..4) {
            Some(&[high, low]) => (u64::from(u16::from_be_bytes([high, low])), 4),
            _ => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(&[a, b, c, d, e, f, g, h]) => {
                let len = u64::from_be_bytes([a, b, c, d, e, f, g, h]);
                if len >> 63 != 0 {
                    return Err(DecodeError::Protocol(
                        "64-bit payload length with the most significant bit set",
                    ));
                }
                (len, 10)
            }
            _ => return Ok(None),
        },
        short => (u64::from(short), 2),
    };
    if opcode.is_control() && payload_len > MAX_CONTROL_PAYLOAD {
        return Err(DecodeError::Protocol("control frame over 125 bytes"));
    }
    let Some(&[m0, m1, m2, m3]) = buf.get(length_end..length_end + 4) else {
        return Ok(None);
    };
    Ok(Some(FrameHeader {
        fin,
        opcode,
        mask: [m0, m1, m2, m3],
        payload_len,
        len: length_end + 4,
    }))
}

/// Writes the header of a final, unmasked server frame with the shortest
/// length encoding; returns its length.
pub fn encode_header(out: &mut [u8; MAX_HEADER], opcode: Opcode, len: usize) -> usize {
    crate::frames::encode_header(out, FIN | opcode.bits(), len)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{frame, masked};
    use super::*;

    #[test]
    fn text_headers_match_what_the_hub_writes() {
        for len in [0, 1, 125, 126, 127, 65_535, 65_536, 1 << 20] {
            let mut ours = [0u8; MAX_HEADER];
            let used = encode_header(&mut ours, Opcode::Text, len);
            let (hubs, hub_used) = crate::frames::text_header(len);
            assert_eq!(&ours[..used], &hubs[..hub_used], "{len}");
        }
    }

    fn protocol_error(bytes: &[u8]) -> bool {
        matches!(parse(bytes), Err(DecodeError::Protocol(_)))
    }

    #[test]
    fn client_frames_must_be_masked() {
        assert!(protocol_error(&[0x81, 0x01, b'x']));
        assert!(protocol_error(&[0x81, 0x01]), "judged on two bytes");
        assert!(parse(&masked(true, 0x1, b"x")).expect("masked").is_some());
    }

    #[test]
    fn reserved_bits_without_an_extension_fail() {
        for rsv in [0x40, 0x20, 0x10, 0x70] {
            let mut bytes = masked(true, 0x1, b"x");
            bytes[0] |= rsv;
            assert!(protocol_error(&bytes), "rsv {rsv:#x}");
            assert!(protocol_error(&bytes[..2]), "judged on two bytes");
        }
    }

    #[test]
    fn reserved_opcodes_fail() {
        for opcode in (0x3..=0x7).chain(0xB..=0xF) {
            assert!(protocol_error(&masked(true, opcode, b"")), "{opcode:#x}");
        }
        for opcode in [0x0, 0x1, 0x2, 0x8, 0x9, 0xA] {
            assert!(parse(&masked(true, opcode, b"")).is_ok(), "{opcode:#x}");
        }
    }

    #[test]
    fn control_frames_are_never_fragmented() {
        for opcode in [0x8, 0x9, 0xA] {
            assert!(protocol_error(&masked(false, opcode, b"")), "{opcode:#x}");
        }
    }

    #[test]
    fn control_frames_carry_at_most_125_bytes() {
        assert!(parse(&masked(true, 0x9, &[0; 125])).expect("125").is_some());
        for opcode in [0x8, 0x9, 0xA] {
            assert!(
                protocol_error(&masked(true, opcode, &[0; 126])),
                "{opcode:#x}"
            );
        }
        // judged on the length, before the payload arrives
        assert!(protocol_error(&masked(true, 0x9, &[0; 126])[..4]));
    }

    #[test]
    fn a_64_bit_length_with_the_top_bit_set_fails() {
        let mut bytes = vec![0x82, 0x80 | 127];
        bytes.extend_from_slice(&(1u64 << 63).to_be_bytes());
        assert!(protocol_error(&bytes), "judged before the mask arrives");
        let mut bytes = vec![0x82, 0x80 | 127];
        bytes.extend_from_slice(&u64::MAX.to_be_bytes());
        assert!(protocol_error(&bytes));
        let mut bytes = vec![0x82, 0x80 | 127];
        bytes.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
        bytes.extend_from_slice(&[1, 2, 3, 4]);
        let head = parse(&bytes)
            .expect("largest legal length")
            .expect("complete");
        assert_eq!(head.payload_len, u64::MAX >> 1);
    }

    #[test]
    fn lengths_not_minimally_encoded_are_accepted() {
        // 5 bytes announced in the 16-bit and in the 64-bit form
        let mut short16 = vec![0x81, 0x80 | 126, 0, 5, 1, 2, 3, 4];
        short16.extend_from_slice(b"hello");
        let head = parse(&short16).expect("16-bit form").expect("complete");
        assert_eq!((head.payload_len, head.len), (5, 8));
        let mut short64 = vec![0x81, 0x80 | 127, 0, 0, 0, 0, 0, 0, 0, 5, 1, 2, 3, 4];
        short64.extend_from_slice(b"hello");
        let head = parse(&short64).expect("64-bit form").expect("complete");
        assert_eq!((head.payload_len, head.len), (5, 14));
        // also for a control frame, whose value is what counts
        let ping = [0x89, 0x80 | 126, 0, 3, 1, 2, 3, 4];
        assert!(parse(&ping).expect("ping").is_some());
    }

    #[test]
    fn incomplete_headers_wait_for_more() {
        let bytes = frame(true, 0x2, &[7; 70_000], [9, 8, 7, 6]);
        for cut in 0..14 {
            assert_eq!(parse(&bytes[..cut]), Ok(None), "cut at {cut}");
        }
        let head = parse(&bytes[..14])
            .expect("whole header")
            .expect("complete");
        assert_eq!(head.mask, [9, 8, 7, 6]);
        assert_eq!((head.payload_len, head.len, head.fin), (70_000, 14, true));
    }

    #[test]
    fn server_headers_use_the_shortest_length_and_no_mask() {
        let mut out = [0u8; MAX_HEADER];
        for (len, expected) in [
            (0usize, &[0x81, 0][..]),
            (125, &[0x81, 125]),
            (126, &[0x81, 126, 0, 126]),
            (65_535, &[0x81, 126, 0xFF, 0xFF]),
            (65_536, &[0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
        ] {
            let n = encode_header(&mut out, Opcode::Text, len);
            assert_eq!(&out[..n], expected, "{len}");
        }
        let n = encode_header(&mut out, Opcode::Close, 2);
        assert_eq!(&out[..n], &[0x88, 2]);
    }
}
