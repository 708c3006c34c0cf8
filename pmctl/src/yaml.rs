//! YAML to a JSON value, built from the parser's events one at a time.
//!
//! yaml-rust2's own loader recurses once per nesting level and asserts on some inputs; the
//! event loop here does neither, and stops at [`crate::config_file::MAX_DEPTH`] levels, so
//! no input can exhaust the stack. Aliases are refused: pool configs need none, and
//! expanding them is how small documents become huge.

use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::TScalarStyle;
use yaml_rust2::Yaml;

use crate::config_file::MAX_DEPTH;

/// A collection being built.
enum Frame {
    /// A sequence and its items so far.
    Sequence(Vec<Value>),
    /// A mapping, its entries so far, and the key waiting for its value.
    Mapping(Map<String, Value>, Option<String>),
}

/// The value of a plain (unquoted) scalar, resolved as YAML's core schema does.
fn plain_scalar(text: &str) -> Value {
    match Yaml::from_str(text) {
        Yaml::Integer(i) => Value::Number(i.into()),
        Yaml::Real(real) => real
            .parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map_or_else(|| Value::String(real.clone()), Value::Number),
        Yaml::Boolean(b) => Value::Bool(b),
        Yaml::Null => Value::Null,
        _ => Value::String(text.to_string()),
    }
}

/// Adds a finished value to the collection on top of `stack`, or returns it as the
/// document when the stack is empty.
fn add(stack: &mut [Frame], value: Value) -> Result<Option<Value>, String> {
    match stack.last_mut() {
        None => Ok(Some(value)),
        Some(Frame::Sequence(items)) => {
            items.push(value);
            Ok(None)
        }
        Some(Frame::Mapping(map, key)) => match key.take() {
            Some(key) => {
                if map.contains_key(&key) {
                    return Err(format!("key {key:?} appears twice in one mapping"));
                }
                map.insert(key, value);
                Ok(None)
            }
            None => Err("mapping keys must be plain strings, not lists or mappings".into()),
        },
    }
}

/// Parses the first document of `text` into a value.
pub fn parse(text: &str) -> Result<Value, String> {
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    loop {
        let (event, mark) = parser.next_token().map_err(|e| e.to_string())?;
        let at = || format!("line {} column {}", mark.line(), mark.col() + 1);
        let finished = match event {
            Event::StreamEnd => return Err("the YAML document is empty".into()),
            Event::Nothing | Event::StreamStart | Event::DocumentStart | Event::DocumentEnd => None,
            Event::Alias(_) => {
                return Err(format!("{}: YAML aliases (*name) are not supported", at()));
            }
            Event::Scalar(text, style, _, _) => {
                if let Some(Frame::Mapping(_, key @ None)) = stack.last_mut() {
                    *key = Some(text);
                    None
                } else {
                    let value = if style == TScalarStyle::Plain {
                        plain_scalar(&text)
                    } else {
                        Value::String(text)
                    };
                    add(&mut stack, value).map_err(|e| format!("{}: {e}", at()))?
                }
            }
            Event::SequenceStart(..) | Event::MappingStart(..) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(format!(
                        "{}: nested more than {MAX_DEPTH} levels deep",
                        at()
                    ));
                }
                if let Some(Frame::Mapping(_, None)) = stack.last() {
                    return Err(format!(
                        "{}: mapping keys must be plain strings, not lists or mappings",
                        at()
                    ));
                }
                stack.push(if matches!(event, Event::SequenceStart(..)) {
                    Frame::Sequence(Vec::new())
                } else {
                    Frame::Mapping(Map::new(), None)
                });
                None
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let value = match stack.pop() {
                    Some(Frame::Sequence(items)) => Value::Array(items),
                    Some(Frame::Mapping(map, _)) => Value::Object(map),
                    None => return Err(format!("{}: unbalanced end of a collection", at())),
                };
                add(&mut stack, value).map_err(|e| format!("{}: {e}", at()))?
            }
        };
        if let Some(document) = finished {
            return Ok(document);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn scalars_resolve_like_yaml() {
        let value =
            parse("a: 1\nb: 1.5\nc: true\nd: ~\ne: text\nf: \"2\"\ng: [x, 'y']\nh: {i: -3}\n")
                .expect("parses");
        assert_eq!(
            value,
            json!({"a": 1, "b": 1.5, "c": true, "d": null, "e": "text", "f": "2",
                   "g": ["x", "y"], "h": {"i": -3}})
        );
    }

    #[test]
    fn bad_documents_are_errors_not_panics() {
        for (text, expected) in [
            ("a: &x 1\nb: *x\n", "aliases"),
            ("a: 1\na: 2\n", "appears twice"),
            ("? [a]\n: 1\n", "plain strings"),
            ("", "empty"),
            ("a: [1, 2\n", ""),
        ] {
            let err = parse(text).expect_err(text);
            assert!(err.contains(expected), "{text:?}: {err}");
        }
        let deep = "- ".repeat(10_000) + "x";
        assert!(parse(&deep).expect_err("too deep").contains("nested"));
        let deep_flow = "[".repeat(300);
        assert!(parse(&deep_flow).is_err());
    }
}
