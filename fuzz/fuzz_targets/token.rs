//! Token verification (hex HMAC and JWT) must never panic, and a token it
//! accepts for one topic must be refused for another.
#![no_main]
use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"fuzz-secret-0123456789abcdef0123456789abcdef";

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else { return };
    let result = skywave::auth::verify(SECRET, token, "t", 1_700_000_000);
    if result.is_ok() {
        // A token that passes for "t" names "t": it must fail for any other topic.
        assert!(skywave::auth::verify(SECRET, token, "u", 1_700_000_000).is_err());
    }
});
