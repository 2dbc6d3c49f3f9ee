//! The first WebSocket frame of a socket, on private and public topics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use skywave::registry::TopicMeta;

const SECRET: &[u8] = b"fuzz-secret-0123456789abcdef0123456789abcdef";

fuzz_target!(|data: &[u8]| {
    let _ = skywave::ws::check_auth_frame(data, "t", TopicMeta { require_token: true }, SECRET, 1_700_000_000);
    let public = skywave::ws::check_auth_frame(data, "t", TopicMeta { require_token: false }, SECRET, 1_700_000_000);
    if let Ok(user_id) = public {
        assert_eq!(user_id, 0, "public topics are anonymous");
    }
});
