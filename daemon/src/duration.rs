//! Durations as flags, variables and config-file settings take them.

use std::time::Duration;

/// Parses a duration such as `3s`, `500ms` or `2m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration ({e}); use e.g. 3s, 500ms, 2m"))
}
