//! One thing wrong with a pool config, and where: the error every check of this crate
//! reports, with the helpers that word its messages.

use std::fmt;

use serde_json::Value;

/// One thing wrong with a config, and where.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// Path of the field, e.g. `allowedZones[1]` or `hooks.create`; `(document)` for the
    /// document as a whole.
    pub field: String,
    /// What is wrong, e.g. `"US-central" is not a valid zone`.
    pub message: String,
}

impl Problem {
    /// A problem of `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The problems as an indented list, one per line.
    pub fn list(problems: &[Problem]) -> String {
        problems
            .iter()
            .map(|p| format!("  - {p}"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The problems on one line, separated by `; `, for an event or a log line.
    pub fn joined(problems: &[Problem]) -> String {
        problems
            .iter()
            .map(Problem::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// "a string", "an object", ...: how a JSON type is named in messages.
pub fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A value as JSON, cut short when long, for quoting in a message.
pub fn shown(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 60 {
        format!("{}...", text.chars().take(57).collect::<String>())
    } else {
        text
    }
}

/// The candidate closest to `name` (case-insensitively, by Levenshtein distance), when it
/// is close enough to be a likely typo.
pub fn did_you_mean<'a>(name: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let lower = name.to_ascii_lowercase();
    candidates
        .iter()
        .map(|c| (strsim::levenshtein(&lower, &c.to_ascii_lowercase()), *c))
        .filter(|(d, c)| *d <= if c.len() <= 6 { 2 } else { 3 })
        .min()
        .map(|(_, c)| c)
}

/// An unknown name, with a suggestion or the list of known ones.
pub fn unknown(what: &str, name: &str, known: &[&str]) -> String {
    match did_you_mean(name, known) {
        Some(close) => format!("unknown {what} (did you mean {close:?}?)"),
        None => format!("unknown {what}; known: {}", known.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_come_only_for_likely_typos() {
        let known = ["targetVMCount", "prefix", "hooks"];
        assert_eq!(did_you_mean("targetvmcont", &known), Some("targetVMCount"));
        assert_eq!(did_you_mean("PREFX", &known), Some("prefix"));
        assert_eq!(did_you_mean("zebra", &known), None);
        assert!(unknown("field", "zebra", &known).contains("known: targetVMCount, prefix"));
        assert!(unknown("hook", "hoks", &known).contains("did you mean \"hooks\""));
    }

    #[test]
    fn problems_read_as_lists_and_lines() {
        let problems = vec![Problem::new("a", "bad"), Problem::new("b.c", "worse")];
        assert_eq!(Problem::list(&problems), "  - a: bad\n  - b.c: worse");
        assert_eq!(Problem::joined(&problems), "a: bad; b.c: worse");
        assert_eq!(shown(&Value::String("x".repeat(100))).chars().count(), 60);
    }
}
