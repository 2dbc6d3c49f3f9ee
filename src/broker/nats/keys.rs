//! Topic names and node ids as key-value keys. A key may hold only letters,
//! digits and `-/_=.`, and `.` separates subject tokens; a topic may hold
//! anything. Letters, digits, `-`, `_` and `/` stay as they are (so keys
//! stay readable in `nats kv ls`), every other byte becomes `=XX` (its hex
//! value): `qso:7` is `qso=3A7`, `a.b` is `a=2Eb`.

pub fn encode(name: &str) -> String {
    let mut key = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'/') {
            key.push(char::from(byte));
        } else {
            key.push('=');
            key.push_str(&format!("{byte:02X}"));
        }
    }
    key
}

/// The name behind a key this module made; `None` for anything else.
pub fn decode(key: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(key.len());
    let mut rest = key.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        if byte == b'=' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = tail.get(2..)?;
        } else {
            bytes.push(byte);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readable_where_it_can_be_and_reversible_everywhere() {
        assert_eq!(encode("qso:7"), "qso=3A7");
        assert_eq!(encode("worker.status"), "worker=2Estatus");
        assert_eq!(encode("contest/2026_cq-ww"), "contest/2026_cq-ww");
        for name in ["qso:7", "a.b.c", "x=y", "ü*>", " ", "::1", "=", ""] {
            let key = encode(name);
            assert!(key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-/_=".contains(&b)));
            assert_eq!(decode(&key).as_deref(), Some(name), "{name:?}");
        }
    }

    #[test]
    fn foreign_keys_are_not_names() {
        assert_eq!(decode("a=4"), None);
        assert_eq!(decode("a=ZZ"), None);
        assert_eq!(decode("=FF"), None);
    }
}
