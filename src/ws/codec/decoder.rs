//! The inbound side of the codec: a state machine fed whatever the socket
//! read, in any split, that hands out messages and control frames in order.
//!
//! Memory follows the connection's needs, not its reads: a data frame's
//! payload is unmasked straight into its message as the bytes arrive (so a
//! message is capped, fragments summed, before any of it is buffered past
//! the limit, and its UTF-8 is checked as it comes), only an incomplete
//! header or control frame waits in the input buffer, and an idle decoder
//! holds no heap memory at all.

use super::close::parse_close;
use super::header::{self, FrameHeader};
use super::utf8::Utf8Validator;
use super::{DecodeError, Inbound, Opcode};

pub struct Decoder {
    max_message: usize,
    /// Fed bytes not decoded yet: at most an incomplete header or control
    /// frame once decoding stops, unallocated when empty.
    input: Vec<u8>,
    /// The data message in progress, from its first frame to its last;
    /// boxed, because a decoder lives in every idle socket's task.
    message: Option<Box<Message>>,
    /// Set by the first error; the connection is over, input is ignored.
    failed: Option<DecodeError>,
}

struct Message {
    text: bool,
    payload: Vec<u8>,
    utf8: Utf8Validator,
    /// The frame whose payload is arriving; `None` between fragments.
    frame: Option<DataFrame>,
}

enum Control {
    Ping,
    Pong,
    Close,
}

struct DataFrame {
    fin: bool,
    mask: [u8; 4],
    len: usize,
    received: usize,
}

/// What one [`Decoder::feed`] completes, decoded lazily: messages and
/// control frames in order, then the error that ends the connection, if
/// one does. Items not taken stay in the decoder (as bytes) and come out of
/// the next feed, which may be of no bytes at all.
pub struct Decoded<'a> {
    decoder: &'a mut Decoder,
    error_given: bool,
}

impl Decoder {
    /// `max_message`: the largest message (fragments summed) accepted;
    /// larger ones fail with [`DecodeError::TooBig`].
    pub fn new(max_message: usize) -> Decoder {
        Decoder {
            max_message,
            input: Vec::new(),
            message: None,
            failed: None,
        }
    }

    /// Takes `bytes` (read from the peer) and returns what they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Decoded<'_> {
        if self.failed.is_none() {
            self.input.extend_from_slice(bytes);
        }
        Decoded {
            decoder: self,
            error_given: false,
        }
    }

    /// Heap bytes held: zero for an idle connection.
    pub fn buffered(&self) -> usize {
        self.input.capacity() + self.message.as_ref().map_or(0, |m| m.payload.capacity())
    }

    fn decode(&mut self) -> Result<Option<Inbound>, DecodeError> {
        if let Some(error) = self.failed {
            return Err(error);
        }
        let mut consumed = 0;
        let decoded = self.decode_from(&mut consumed);
        if let Err(error) = decoded {
            self.failed = Some(error);
            self.input = Vec::new();
            self.message = None;
            return decoded;
        }
        self.input.drain(..consumed);
        if self.input.is_empty() {
            self.input = Vec::new();
        } else {
            // Only the start of a frame is left: keep just its bytes.
            self.input.shrink_to_fit();
        }
        decoded
    }

    /// Decodes from `input[*consumed..]` up to the next item, or as far as
    /// the bytes go, advancing `consumed` past what it used.
    fn decode_from(&mut self, consumed: &mut usize) -> Result<Option<Inbound>, DecodeError> {
        loop {
            let input = &self.input[*consumed..];
            if let Some(message) = &mut self.message {
                if let Some(frame) = &mut message.frame {
                    let take = (frame.len - frame.received).min(input.len());
                    let start = message.payload.len();
                    message.payload.extend_from_slice(&input[..take]);
                    unmask(&mut message.payload[start..], frame.mask, frame.received);
                    frame.received += take;
                    *consumed += take;
                    let frame_done = frame.received == frame.len;
                    let message_done = frame_done && frame.fin;
                    if message.text {
                        message.utf8.check(&message.payload, message_done)?;
                    }
                    if !frame_done {
                        return Ok(None);
                    }
                    message.frame = None;
                    if message_done {
                        return Ok(self.message.take().map(|message| message.finish()));
                    }
                    continue;
                }
            }
            let Some(head) = header::parse(input)? else {
                return Ok(None);
            };
            let control = match head.opcode {
                Opcode::Continuation | Opcode::Text | Opcode::Binary => {
                    self.start_data_frame(&head)?;
                    *consumed += head.len;
                    continue;
                }
                Opcode::Ping => Control::Ping,
                Opcode::Pong => Control::Pong,
                Opcode::Close => Control::Close,
            };
            // Control frames are taken whole (the header checked they carry
            // at most 125 bytes); they may come between a message's fragments.
            let end = head.len + head.payload_len as usize;
            let Some(masked) = input.get(head.len..end) else {
                return Ok(None);
            };
            let mut payload = masked.to_vec();
            unmask(&mut payload, head.mask, 0);
            *consumed += end;
            return Ok(Some(match control {
                Control::Ping => Inbound::Ping(payload),
                Control::Pong => Inbound::Pong,
                Control::Close => Inbound::Close(parse_close(&payload)?),
            }));
        }
    }

    /// Applies the continuation and size rules to a data frame's header and
    /// makes room for its payload in the message.
    fn start_data_frame(&mut self, head: &FrameHeader) -> Result<(), DecodeError> {
        let so_far = match (&self.message, head.opcode) {
            (None, Opcode::Continuation) => {
                return Err(DecodeError::Protocol(
                    "continuation frame without a message",
                ))
            }
            (Some(_), Opcode::Text | Opcode::Binary) => {
                return Err(DecodeError::Protocol("new message inside a fragmented one"))
            }
            (Some(message), _) => message.payload.len(),
            (None, _) => 0,
        };
        let len = usize::try_from(head.payload_len)
            .ok()
            .filter(|len| so_far.saturating_add(*len) <= self.max_message)
            .ok_or(DecodeError::TooBig)?;
        let message = self.message.get_or_insert_with(|| {
            Box::new(Message {
                text: head.opcode == Opcode::Text,
                payload: Vec::new(),
                utf8: Utf8Validator::default(),
                frame: None,
            })
        });
        message.payload.reserve_exact(len);
        message.frame = Some(DataFrame {
            fin: head.fin,
            mask: head.mask,
            len,
            received: 0,
        });
        Ok(())
    }
}

impl Message {
    fn finish(self) -> Inbound {
        if self.text {
            Inbound::Text(self.payload)
        } else {
            Inbound::Binary(self.payload)
        }
    }
}

impl Iterator for Decoded<'_> {
    type Item = Result<Inbound, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.error_given {
            return None;
        }
        match self.decoder.decode() {
            Ok(inbound) => inbound.map(Ok),
            Err(error) => {
                self.error_given = true;
                Some(Err(error))
            }
        }
    }
}

/// Unmasks `payload`, whose first byte is byte `offset` of its frame.
fn unmask(payload: &mut [u8], mask: [u8; 4], offset: usize) {
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[(offset + i) & 3];
    }
}

#[cfg(test)]
mod tests;
