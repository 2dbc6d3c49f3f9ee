//! The close codes a session sends, and how each close is made: the only
//! place that picks WebSocket close codes.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::timeout;

use super::super::codec::DecodeError;
use super::super::conn::{Connection, ReadError};
use crate::node::Node;

/// Bound on the polite part of a close (the rest of a frame left unsent,
/// the close frame, the peer's close).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

pub const NORMAL: u16 = 1000;
pub const GOING_AWAY: u16 = 1001;
pub const PROTOCOL_ERROR: u16 = 1002;
pub const INVALID_DATA: u16 = 1007;
pub const POLICY_VIOLATION: u16 = 1008;
pub const TOO_BIG: u16 = 1009;
/// "Try again later" (RFC 6455's registry, 1013): the server casts off a
/// socket that took nothing while its queue overflowed. A client should
/// reconnect after a pause and refetch, as after `lagged`; unlike 1008 it
/// did nothing wrong.
pub const TRY_AGAIN_LATER: u16 = 1013;

/// Boxed, like every path taken once per socket, so that its state does not
/// enlarge the long-lived session future.
pub async fn close_with(conn: &mut Connection, code: u16, reason: &'static str) {
    let _ = Box::pin(timeout(CLOSE_TIMEOUT, conn.close(code, reason))).await;
}

/// Maps a read error to the close the peer gets.
pub async fn fail(conn: &mut Connection, node: &Node, error: ReadError) {
    match error {
        ReadError::Gone => {}
        ReadError::Invalid(DecodeError::TooBig) => {
            node.metrics()
                .oversize_messages
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!("inbound message over 4 KiB");
            close_with(conn, TOO_BIG, "message too big").await;
        }
        ReadError::Invalid(DecodeError::Protocol(problem)) => {
            tracing::debug!(problem, "websocket protocol error");
            close_with(conn, PROTOCOL_ERROR, "protocol error").await;
        }
        ReadError::Invalid(DecodeError::InvalidUtf8) => {
            close_with(conn, INVALID_DATA, "invalid utf-8").await;
        }
    }
}

/// The close (code, reason) that answers a peer's close: its own code when
/// a peer may send it, 1000 when it sent none, and 1002 for a code no
/// endpoint may put on the wire (RFC 6455 section 7.4): undefined (below
/// 1000, 1016-2999, 5000 and up), reserved (1004) or only for reporting a
/// close locally (1005, 1006, 1015).
pub fn reply_to_close(code: Option<u16>) -> (u16, &'static str) {
    match code {
        None => (NORMAL, ""),
        Some(code) if is_sendable_close_code(code) => (code, ""),
        Some(_) => (PROTOCOL_ERROR, "invalid close code"),
    }
}

/// The RFC's codes (1000-1003, 1007-1011), those IANA registered since
/// (1012-1014), and those for libraries and applications (3000-4999).
fn is_sendable_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_close_codes_are_echoed() {
        for code in [
            1000, 1001, 1002, 1003, 1007, 1010, 1011, 1014, 3000, 4000, 4999,
        ] {
            assert_eq!(reply_to_close(Some(code)), (code, ""), "{code}");
        }
        assert_eq!(reply_to_close(None), (NORMAL, ""), "no code: 1000");
    }

    #[test]
    fn invalid_close_codes_are_answered_with_1002() {
        for code in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535,
        ] {
            assert_eq!(reply_to_close(Some(code)).0, PROTOCOL_ERROR, "{code}");
        }
    }
}
