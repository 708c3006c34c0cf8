//! How results are printed: aligned tables for people, JSON for scripts, and the times
//! and durations both show.

use std::io::Write;
use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;

use crate::error::{Error, Result};

/// `-o table` or `-o json`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// Aligned columns and short summaries, for people.
    #[default]
    Table,
    /// One JSON document (pretty-printed); `--watch` and `--follow` print one compact
    /// JSON object per line instead.
    Json,
}

/// A result that prints both ways.
pub trait Render: Serialize {
    /// The human-readable form, ending with a newline.
    fn table(&self) -> String;
}

/// Writes `text` to stdout and flushes it.
pub fn print(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(Error::Output)
}

/// Prints a result in `format`: pretty JSON, or its table.
pub fn emit<R: Render>(format: OutputFormat, result: &R) -> Result<()> {
    match format {
        OutputFormat::Table => print(&result.table()),
        OutputFormat::Json => print(&format!("{}\n", to_json(result, true))),
    }
}

/// Prints one JSON object on one line, for streams (`--follow`, `--watch`).
pub fn emit_line<T: Serialize>(value: &T) -> Result<()> {
    print(&format!("{}\n", to_json(value, false)))
}

/// `value` as JSON. pmctl's own types always serialize, so a failure would be a bug; it
/// still yields a JSON error object rather than a panic.
fn to_json<T: Serialize>(value: &T, pretty: bool) -> String {
    let text = if pretty {
        serde_json::to_string_pretty(value)
    } else {
        serde_json::to_string(value)
    };
    text.unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }).to_string())
}

/// How a column's cells line up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text: padded on the right.
    Left,
    /// Numbers: padded on the left.
    Right,
}

/// A table with a header row, columns padded to their widest cell.
#[derive(Debug, Clone)]
pub struct Table {
    /// Column titles and alignment.
    columns: Vec<(&'static str, Align)>,
    /// Rows; each has one cell per column.
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these columns.
    pub fn new(columns: &[(&'static str, Align)]) -> Self {
        Self {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are blank, extra cells are dropped.
    pub fn row(&mut self, cells: Vec<String>) {
        let mut cells = cells;
        cells.resize(self.columns.len(), String::new());
        self.rows.push(cells);
    }

    /// The table as text, two spaces between columns, no trailing blanks.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.columns.iter().map(|(t, _)| t.len()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let header: Vec<String> = self.columns.iter().map(|(t, _)| t.to_string()).collect();
        let mut out = String::new();
        for row in std::iter::once(&header).chain(&self.rows) {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .zip(&self.columns)
                .map(|((cell, width), (_, align))| match align {
                    Align::Left => format!("{cell:<width$}"),
                    Align::Right => format!("{cell:>width$}"),
                })
                .collect();
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
        }
        out
    }
}

/// A Unix time in milliseconds as RFC 3339 UTC, to the second; `-` for 0 (unset).
pub fn time(unix_ms: i64) -> String {
    match u64::try_from(unix_ms) {
        Ok(ms) if ms > 0 => {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
        }
        _ => "-".into(),
    }
}

/// A span of seconds, short: `45s`, `9m58s`, `2h05m`, `3d04h`.
pub fn span(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// How long ago `unix_ms` was, seen at `now_ms`: `5m03s`; `-` for 0 (unset).
pub fn age(unix_ms: i64, now_ms: i64) -> String {
    if unix_ms <= 0 {
        "-".into()
    } else {
        span(now_ms.saturating_sub(unix_ms) / 1000)
    }
}

/// Whole seconds from `now_ms` until `until_ms`, rounded up, never negative.
pub fn seconds_until(until_ms: i64, now_ms: i64) -> i64 {
    let ms = until_ms.saturating_sub(now_ms).max(0);
    ms / 1000 + i64::from(ms % 1000 > 0)
}

/// ANSI: move home and clear the screen, so `--watch` redraws in place.
pub const CLEAR_SCREEN: &str = "\x1b[H\x1b[2J";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_text_left_and_numbers_right() {
        let mut table = Table::new(&[("ZONE", Align::Left), ("RUNNING", Align::Right)]);
        table.row(vec!["us-central1-a".into(), "3".into()]);
        table.row(vec!["b".into(), "12".into()]);
        assert_eq!(
            table.render(),
            "ZONE           RUNNING\nus-central1-a        3\nb                   12\n"
        );
    }

    #[test]
    fn times_and_spans_read_well() {
        assert_eq!(time(0), "-");
        assert_eq!(time(1_700_000_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(span(45), "45s");
        assert_eq!(span(598), "9m58s");
        assert_eq!(span(7500), "2h05m");
        assert_eq!(span(273_600), "3d04h");
        assert_eq!(span(-3), "0s");
        assert_eq!(age(1_000, 61_000), "1m00s");
        assert_eq!(seconds_until(10_001, 0), 11);
        assert_eq!(seconds_until(5, 10), 0);
    }
}
