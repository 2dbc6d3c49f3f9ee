//! UTF-8 validation of a text message as its bytes arrive (RFC 6455 section
//! 8.1): an invalid sequence fails at once, before the rest of the message
//! is even sent, while a character split across two fragments (or two reads)
//! waits for its remaining bytes.

use super::DecodeError;

/// How much of a message is known to be valid so far.
#[derive(Debug, Default)]
pub struct Utf8Validator {
    valid_up_to: usize,
}

impl Utf8Validator {
    /// Checks the bytes of `message` added since the last call (the message
    /// only ever grows). `complete`: no more bytes will follow, so a
    /// character cut short at the end is invalid too.
    pub fn check(&mut self, message: &[u8], complete: bool) -> Result<(), DecodeError> {
        let unchecked = message.get(self.valid_up_to..).unwrap_or_default();
        match std::str::from_utf8(unchecked) {
            Ok(_) => {
                self.valid_up_to = message.len();
                Ok(())
            }
            // `error_len() == None`: the input ended inside a character that
            // its remaining bytes may still complete. The standard library
            // already refuses a prefix no continuation could make valid
            // (overlong forms, surrogates, beyond U+10FFFF).
            Err(error) if error.error_len().is_none() && !complete => {
                self.valid_up_to += error.valid_up_to();
                Ok(())
            }
            Err(_) => Err(DecodeError::InvalidUtf8),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `text` to a validator in pieces cut at `cuts`.
    fn check_in_pieces(text: &[u8], cuts: &[usize]) -> Result<(), DecodeError> {
        let mut validator = Utf8Validator::default();
        for &cut in cuts {
            validator.check(&text[..cut], false)?;
        }
        validator.check(text, true)
    }

    #[test]
    fn a_character_split_across_pieces_is_fine() {
        let text = "κόσμε €𝄞".as_bytes();
        for cut in 0..=text.len() {
            assert_eq!(check_in_pieces(text, &[cut]), Ok(()), "cut at {cut}");
        }
        let every_byte: Vec<usize> = (0..=text.len()).collect();
        assert_eq!(check_in_pieces(text, &every_byte), Ok(()));
    }

    #[test]
    fn an_invalid_sequence_fails_before_the_end_arrives() {
        // Autobahn 6.4.1: valid text, then U+110000 (F4 90 80 80), then more.
        let mut validator = Utf8Validator::default();
        let mut text = "κόσμε".as_bytes().to_vec();
        assert_eq!(validator.check(&text, false), Ok(()));
        text.extend_from_slice(&[0xF4, 0x90]);
        assert_eq!(
            validator.check(&text, false),
            Err(DecodeError::InvalidUtf8),
            "refused on the second byte of the bad character"
        );
        for bad in [
            &[0xFF][..],         // never in UTF-8
            &[0x80],             // a lone continuation byte
            &[0xC0, 0xAF],       // overlong
            &[0xED, 0xA0],       // a surrogate
            &[0xE2, 0x82, b'a'], // cut short by an ASCII byte
        ] {
            let mut validator = Utf8Validator::default();
            assert_eq!(
                validator.check(bad, false),
                Err(DecodeError::InvalidUtf8),
                "{bad:x?}"
            );
        }
    }

    #[test]
    fn a_character_cut_short_at_the_end_fails() {
        let mut validator = Utf8Validator::default();
        assert_eq!(validator.check(&[b'a', 0xE2, 0x82], false), Ok(()));
        assert_eq!(
            validator.check(&[b'a', 0xE2, 0x82], true),
            Err(DecodeError::InvalidUtf8)
        );
        assert_eq!(Utf8Validator::default().check(b"", true), Ok(()));
    }
}
