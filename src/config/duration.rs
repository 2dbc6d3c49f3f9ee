//! Go `time.Duration` syntax (`24h`, `1h30m`, `250ms`) for config values, and
//! the Go `String()` format that `/internal/status` uses for `uptime`.
//!
//! Both directions follow Go exactly so that a config file written for the Go
//! worker loads unchanged and the status output compares byte for byte.

use std::time::Duration;

/// Why a duration string was refused. The caller adds the config key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error("invalid duration {0:?}")]
    Invalid(String),
    #[error("missing unit in duration {0:?} (use e.g. 24h, 90m, 1h30m, 45s)")]
    MissingUnit(String),
    #[error("unknown unit {unit:?} in duration {input:?} (units: ns, us, ms, s, m, h)")]
    UnknownUnit { unit: String, input: String },
    #[error("duration {0:?} is negative")]
    Negative(String),
    #[error("duration {0:?} is too large")]
    Overflow(String),
}

/// Parses a Go duration string. Negative values are refused here: no config
/// value of this service can be negative. Zero is returned as zero and left to
/// the caller (for `topic_ttl` it is an error, for other keys it may not be).
pub fn parse_go_duration(input: &str) -> Result<Duration, DurationError> {
    let text = input.trim();
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    let (negative, mut rest) = match text.as_bytes()[0] {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(DurationError::Invalid(input.to_string()));
    }
    let mut total_nanos: u128 = 0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..number_len];
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(DurationError::Invalid(input.to_string()));
        }
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let unit_nanos: u128 = match unit {
            "" => return Err(DurationError::MissingUnit(input.to_string())),
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            other => {
                return Err(DurationError::UnknownUnit {
                    unit: other.to_string(),
                    input: input.to_string(),
                })
            }
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole
                .parse()
                .map_err(|_| DurationError::Overflow(input.to_string()))?
        };
        let mut part = whole
            .checked_mul(unit_nanos)
            .ok_or_else(|| DurationError::Overflow(input.to_string()))?;
        // Fractions are scaled digit by digit, as Go does, so `1.5h` is exact.
        let mut scale = unit_nanos;
        for digit in fraction.bytes() {
            scale /= 10;
            part += u128::from(digit - b'0') * scale;
        }
        total_nanos = total_nanos
            .checked_add(part)
            .ok_or_else(|| DurationError::Overflow(input.to_string()))?;
    }
    // Go's Duration is an int64 of nanoseconds.
    if total_nanos > i64::MAX as u128 {
        return Err(DurationError::Overflow(input.to_string()));
    }
    if negative && total_nanos > 0 {
        return Err(DurationError::Negative(input.to_string()));
    }
    Ok(Duration::from_nanos(total_nanos as u64))
}

/// Formats whole seconds the way Go prints `d.Round(time.Second)`:
/// `0s`, `45s`, `1m0s`, `3h22m0s`.
pub fn format_go_seconds(total_seconds: u64) -> String {
    let hours = total_seconds / 3600;
    let minutes = (total_seconds % 3600) / 60;
    let seconds = total_seconds % 60;
    if hours > 0 {
        format!("{hours}h{minutes}m{seconds}s")
    } else if minutes > 0 {
        format!("{minutes}m{seconds}s")
    } else {
        format!("{seconds}s")
    }
}

/// Formats a duration for messages and `check-config` output, in the same
/// syntax the config accepts (`24h0m0s`, `1.5s`, `250ms`).
pub fn format_go_duration(duration: Duration) -> String {
    if duration.subsec_nanos() == 0 {
        return format_go_seconds(duration.as_secs());
    }
    if duration < Duration::from_secs(1) {
        let millis = duration.as_secs_f64() * 1000.0;
        return format!("{}ms", trim_float(millis));
    }
    let whole = duration.as_secs();
    let fraction = f64::from(duration.subsec_nanos()) / 1e9;
    let seconds = (whole % 60) as f64 + fraction;
    let prefix = format_go_seconds(whole - whole % 60);
    let prefix = prefix.trim_end_matches("0s");
    format!("{prefix}{}s", trim_float(seconds))
}

fn trim_float(value: f64) -> String {
    let text = format!("{value:.9}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn parses_go_examples() {
        assert_eq!(parse_go_duration("24h"), Ok(secs(86_400)));
        assert_eq!(parse_go_duration("90m"), Ok(secs(5_400)));
        assert_eq!(parse_go_duration("1h30m"), Ok(secs(5_400)));
        assert_eq!(parse_go_duration("2s"), Ok(secs(2)));
        assert_eq!(parse_go_duration("1.5h"), Ok(secs(5_400)));
        assert_eq!(parse_go_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_go_duration("10us"), Ok(Duration::from_micros(10)));
        assert_eq!(parse_go_duration("10µs"), Ok(Duration::from_micros(10)));
        assert_eq!(parse_go_duration("1h0m0s"), Ok(secs(3_600)));
        assert_eq!(parse_go_duration(".5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_go_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_go_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_go_duration("+5m"), Ok(secs(300)));
    }

    #[test]
    fn refuses_what_go_refuses() {
        assert!(matches!(
            parse_go_duration("10"),
            Err(DurationError::MissingUnit(_))
        ));
        assert!(matches!(
            parse_go_duration("banana"),
            Err(DurationError::Invalid(_))
        ));
        assert!(matches!(parse_go_duration(""), Err(DurationError::Empty)));
        assert!(matches!(
            parse_go_duration("5d"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_go_duration("1..5s"),
            Err(DurationError::Invalid(_))
        ));
        assert!(matches!(
            parse_go_duration("-5m"),
            Err(DurationError::Negative(_))
        ));
        assert!(matches!(
            parse_go_duration("h"),
            Err(DurationError::Invalid(_))
        ));
        assert!(matches!(
            parse_go_duration("99999999999h"),
            Err(DurationError::Overflow(_))
        ));
    }

    #[test]
    fn formats_like_go_round_to_seconds() {
        assert_eq!(format_go_seconds(0), "0s");
        assert_eq!(format_go_seconds(45), "45s");
        assert_eq!(format_go_seconds(60), "1m0s");
        assert_eq!(format_go_seconds(3 * 3600 + 22 * 60), "3h22m0s");
        assert_eq!(format_go_seconds(26 * 3600 + 1), "26h0m1s");
    }

    #[test]
    fn formats_durations_for_humans() {
        assert_eq!(format_go_duration(secs(86_400)), "24h0m0s");
        assert_eq!(format_go_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_go_duration(Duration::from_millis(61_500)), "1m1.5s");
    }

    #[test]
    fn round_trips_whole_seconds() {
        for s in [0u64, 1, 59, 60, 61, 3599, 3600, 86_399, 86_400, 1_000_000] {
            let text = format_go_seconds(s);
            assert_eq!(parse_go_duration(&text), Ok(secs(s)), "{text}");
        }
    }
}
