//! List filters as Compute v1 accepts them, for gce-sim and the fake.
//!
//! Supported: one or more comparisons joined by whitespace or `AND`, each optionally in
//! parentheses: `field = "value"`, `field != "value"` (`*` is a wildcard),
//! `field eq 'regex'`, `field ne 'regex'` (RE2 syntax, matching the whole value).
//! Fields are dotted paths such as `name`, `status`, `labels.pm-pool`, `operationType`.

use std::borrow::Cow;

use regex_automata::dfa::{dense, regex::Regex};
use regex_automata::util::syntax;

/// Largest DFA a filter regex may compile to, so a hostile pattern cannot exhaust memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Why a filter was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid list filter {filter:?}: {problem}")]
pub struct FilterError {
    /// The filter text.
    pub filter: String,
    /// What is wrong.
    pub problem: String,
}

/// A parsed filter: all its comparisons must hold.
#[derive(Debug)]
pub struct Filter {
    comparisons: Vec<Comparison>,
}

#[derive(Debug)]
struct Comparison {
    field: String,
    negated: bool,
    pattern: Pattern,
}

#[derive(Debug)]
enum Pattern {
    /// Literal with `*` wildcards (for `=` and `!=`).
    Wildcard(String),
    /// Regular expression matching the whole value (for `eq` and `ne`).
    Regex(Box<Regex>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Open,
    Close,
    Equal,
    NotEqual,
    Word(String),
    Quoted(String),
}

impl Filter {
    /// Parses `text`; an empty or blank filter matches everything.
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        let fail = |problem: String| FilterError {
            filter: text.to_string(),
            problem,
        };
        let tokens = tokenize(text).map_err(fail)?;
        let mut comparisons = Vec::new();
        let mut rest = tokens.as_slice();
        while let Some((first, tail)) = rest.split_first() {
            match first {
                Token::Word(word) if word == "AND" => rest = tail,
                Token::Word(word) if word == "OR" || word == "NOT" => {
                    return Err(fail(format!("{word} is not supported, only AND")))
                }
                Token::Open => {
                    let (comparison, after) = parse_comparison(tail).map_err(fail)?;
                    match after.split_first() {
                        Some((Token::Close, after)) => rest = after,
                        _ => return Err(fail("missing ')'".to_string())),
                    }
                    comparisons.push(comparison);
                }
                _ => {
                    let (comparison, after) = parse_comparison(rest).map_err(fail)?;
                    comparisons.push(comparison);
                    rest = after;
                }
            }
        }
        Ok(Filter { comparisons })
    }

    /// Whether a resource matches; `field` returns a field's value as text, `None` when
    /// absent (an absent field equals nothing).
    pub fn matches<'a>(&self, field: impl Fn(&str) -> Option<Cow<'a, str>>) -> bool {
        self.comparisons.iter().all(|c| {
            let found = field(&c.field).is_some_and(|value| c.pattern.matches(&value));
            found != c.negated
        })
    }

    /// Whether the filter selects everything.
    pub fn is_empty(&self) -> bool {
        self.comparisons.is_empty()
    }
}

impl Pattern {
    fn matches(&self, value: &str) -> bool {
        match self {
            Pattern::Wildcard(pattern) => wildcard_match(pattern, value),
            Pattern::Regex(regex) => regex.is_match(value),
        }
    }
}

fn parse_comparison(tokens: &[Token]) -> Result<(Comparison, &[Token]), String> {
    let [field, op, value, rest @ ..] = tokens else {
        return Err(
            "expected `field = \"value\"`, `field != ...`, `field eq '...'` or `field ne '...'`"
                .into(),
        );
    };
    let Token::Word(field) = field else {
        return Err(format!("expected a field name, found {field:?}"));
    };
    let value = match value {
        Token::Word(v) | Token::Quoted(v) => v.clone(),
        other => return Err(format!("expected a value after {field}, found {other:?}")),
    };
    let (negated, pattern) = match op {
        Token::Equal => (false, Pattern::Wildcard(value)),
        Token::NotEqual => (true, Pattern::Wildcard(value)),
        Token::Word(w) if w == "eq" => (false, Pattern::Regex(Box::new(compile(&value)?))),
        Token::Word(w) if w == "ne" => (true, Pattern::Regex(Box::new(compile(&value)?))),
        other => return Err(format!("unknown operator {other:?} after {field}")),
    };
    Ok((
        Comparison {
            field: field.clone(),
            negated,
            pattern,
        },
        rest,
    ))
}

fn compile(pattern: &str) -> Result<Regex, String> {
    Regex::builder()
        .syntax(syntax::Config::new().unicode(false).utf8(false))
        .dense(
            dense::Config::new()
                .dfa_size_limit(Some(REGEX_SIZE_LIMIT))
                .determinize_size_limit(Some(REGEX_SIZE_LIMIT)),
        )
        .build(&format!("^(?:{pattern})$"))
        .map_err(|e| format!("bad regular expression {pattern:?}: {e}"))
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' => {
                chars.next();
                tokens.push(Token::Open);
            }
            ')' => {
                chars.next();
                tokens.push(Token::Close);
            }
            '=' => {
                chars.next();
                tokens.push(Token::Equal);
            }
            '!' => {
                chars.next();
                if chars.next() != Some('=') {
                    return Err("'!' must be followed by '='".into());
                }
                tokens.push(Token::NotEqual);
            }
            '"' | '\'' => {
                chars.next();
                let mut value = String::new();
                loop {
                    match chars.next() {
                        Some(ch) if ch == c => break,
                        Some('\\') => match chars.next() {
                            Some(escaped) => value.push(escaped),
                            None => return Err("unterminated string".into()),
                        },
                        Some(ch) => value.push(ch),
                        None => return Err("unterminated string".into()),
                    }
                }
                tokens.push(Token::Quoted(value));
            }
            _ => {
                let mut word = String::new();
                while let Some(&ch) = chars.peek() {
                    if ch.is_whitespace() || "()=!\"'".contains(ch) {
                        break;
                    }
                    word.push(ch);
                    chars.next();
                }
                tokens.push(Token::Word(word));
            }
        }
    }
    Ok(tokens)
}

/// Glob match where `*` matches any run of characters.
fn wildcard_match(pattern: &str, value: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = value.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn matches(filter: &str, fields: &[(&str, &str)]) -> bool {
        let map: HashMap<&str, &str> = fields.iter().copied().collect();
        Filter::parse(filter)
            .expect("parses")
            .matches(|f| map.get(f).map(|v| Cow::Owned(v.to_string())))
    }

    #[test]
    fn equality_inequality_and_wildcards() {
        let web = [("name", "web-1"), ("labels.pm-pool", "web")];
        assert!(matches(r#"labels.pm-pool = "web""#, &web));
        assert!(!matches(r#"labels.pm-pool = "db""#, &web));
        assert!(matches(r#"labels.pm-pool != "db""#, &web));
        assert!(!matches(r#"labels.other = "web""#, &web));
        assert!(matches(r#"labels.other != "web""#, &web));
        assert!(matches(r#"name = "web-*""#, &web));
        assert!(matches(r#"name = "*-1""#, &web));
        assert!(!matches(r#"name = "db-*""#, &web));
        assert!(matches("name = web-1", &web));
        assert!(matches("", &web));
    }

    #[test]
    fn regex_operators_match_the_whole_value() {
        let web = [("name", "web-12")];
        assert!(matches("name eq 'web-.*'", &web));
        assert!(matches("name eq web-[0-9]+", &web));
        assert!(!matches("name eq 'web'", &web));
        assert!(!matches("name eq 'eb-.*'", &web));
        assert!(matches("name ne 'db-.*'", &web));
    }

    #[test]
    fn conjunctions_and_parentheses() {
        let fields = [
            ("name", "web-1"),
            ("labels.pm-pool", "web"),
            ("status", "RUNNING"),
        ];
        assert!(matches(
            r#"(labels.pm-pool = "web") (status = "RUNNING")"#,
            &fields
        ));
        assert!(matches(
            r#"labels.pm-pool = "web" AND name eq 'web-.*'"#,
            &fields
        ));
        assert!(!matches(
            r#"(labels.pm-pool = "web") AND (status = "TERMINATED")"#,
            &fields
        ));
    }

    #[test]
    fn bad_filters_are_errors_naming_the_problem() {
        for (filter, problem) in [
            ("name", "expected"),
            ("name ~ 'x'", "unknown operator"),
            ("name = 'x", "unterminated"),
            ("(name = 'x'", "missing ')'"),
            ("name = 'a' OR name = 'b'", "OR is not supported"),
            ("name eq '('", "bad regular expression"),
            ("name ! 'x'", "'!' must be followed"),
        ] {
            let error = Filter::parse(filter).expect_err(filter);
            assert!(error.to_string().contains(problem), "{error}");
        }
    }

    #[test]
    fn wildcard_edge_cases() {
        assert!(wildcard_match("*", ""));
        assert!(wildcard_match("a*b*c", "aXXbYYc"));
        assert!(!wildcard_match("a*b*c", "aXXcYYb"));
        assert!(!wildcard_match("ab*ba", "aba"));
        assert!(wildcard_match("abc", "abc"));
        assert!(!wildcard_match("abc", "abcd"));
    }
}
