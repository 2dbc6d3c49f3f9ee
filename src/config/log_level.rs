//! `log_level` as a tracing filter. Operators copy levels from other
//! loggers, so their common spellings are understood; anything else would
//! silence every log line, so it falls back to `info` with a warning instead.

const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// The filter for `text`, and the warning to give when it had to fall back.
/// Common spellings of other loggers are mapped (`warning`, `verbose`,
/// `fatal`); a value that is still not a level or `target=level` list gives
/// `info` and a warning that names the key.
pub(super) fn log_filter(text: &str) -> (String, Option<String>) {
    let level = |word: &str| -> Option<&'static str> {
        let word = word.trim().to_ascii_lowercase();
        let mapped = match word.as_str() {
            "warning" => "warn",
            "verbose" => "debug",
            "fatal" | "critical" | "panic" => "error",
            "none" | "quiet" => "off",
            other => other,
        };
        LOG_LEVELS.iter().find(|l| **l == mapped).copied()
    };
    let mut directives = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let directive = match part.rsplit_once('=') {
            Some((target, value)) if !target.trim().is_empty() => {
                level(value).map(|l| format!("{}={l}", target.trim()))
            }
            Some(_) => None,
            None => level(part).map(str::to_string),
        };
        match directive {
            Some(directive) => directives.push(directive),
            None => {
                return (
                    "info".to_string(),
                    Some(format!(
                        "config key `log_level`: {text:?} is not a level ({}) or a filter such \
                         as \"info,skywave=debug\"; logging at info",
                        LOG_LEVELS.join(", ")
                    )),
                )
            }
        }
    }
    if directives.is_empty() {
        return ("info".to_string(), None);
    }
    (directives.join(","), None)
}
