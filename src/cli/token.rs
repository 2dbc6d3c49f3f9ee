//! `skywave token`: a token for a topic, signed with the configured secret,
//! as the PHP app would make it (for testing).

use std::process::ExitCode;
use std::time::Duration;

use skywave::config::{format_go_duration, parse_go_duration};

use super::discovery::{configured_secret, Discovery};
use super::print;

pub fn token(discovery: &Discovery, topic: &str, user: i64, ttl: &str, jwt: bool) -> ExitCode {
    let secret = match configured_secret(discovery) {
        Ok(secret) => secret,
        Err(code) => return code,
    };
    let ttl: Duration = match parse_go_duration(ttl) {
        Ok(ttl) if !ttl.is_zero() => ttl,
        Ok(_) => {
            eprintln!("skywave token: --ttl must be greater than zero");
            return ExitCode::from(2);
        }
        Err(error) => {
            eprintln!("skywave token: --ttl: {error}");
            return ExitCode::from(2);
        }
    };
    let secret = secret.expose().as_bytes();
    let expires = skywave::auth::unix_now() + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2);
    let token = if jwt {
        match skywave::auth::sign_jwt(secret, user, topic, expires) {
            Ok(token) => token,
            Err(error) => {
                eprintln!("skywave token: {error}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        skywave::auth::sign_hex_token(secret, user, topic, expires)
    };
    eprintln!(
        "token for topic {topic:?}, user {user}, valid for {}",
        format_go_duration(ttl)
    );
    print(&token);
    ExitCode::SUCCESS
}
