//! Reading a pool config file: prevmtable's rjson (parsed as Hjson), JSON or YAML, into a
//! generic JSON value that [`pm_pool::validate`] then checks. An object naming a key twice
//! is refused in every syntax.
//!
//! With `--format auto` (the default) a document whose first character (after blank lines
//! and comments) is `{` or `[` is read as JSON, and when that fails as Hjson, which
//! accepts rjson's unquoted keys and missing commas; anything else is read as YAML.

use std::io::Read;
use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::unique_keys::UniqueKeys;

/// Largest config file read: far beyond any real template.
pub const MAX_SIZE: usize = 1 << 20;

/// Deepest nesting of lists and objects accepted. Real templates nest about 5 levels; the
/// limit keeps the parsers' recursion far from the stack's end.
pub const MAX_DEPTH: usize = 64;

/// The syntax of a config file.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// JSON or Hjson/rjson when the document starts with `{` or `[`, else YAML.
    #[default]
    Auto,
    /// Hjson, a superset of prevmtable's rjson and of JSON.
    Hjson,
    /// Strict JSON.
    Json,
    /// YAML.
    Yaml,
}

/// Reads the file at `path` (`-`: stdin) as UTF-8 text of at most [`MAX_SIZE`] bytes.
pub fn read(path: &Path) -> Result<String> {
    let shown = path.display().to_string();
    let io = |source| Error::ReadFile {
        path: shown.clone(),
        source,
    };
    let mut bytes = Vec::new();
    let limit = u64::try_from(MAX_SIZE + 1).unwrap_or(u64::MAX);
    if path == Path::new("-") {
        std::io::stdin()
            .take(limit)
            .read_to_end(&mut bytes)
            .map_err(io)?;
    } else {
        std::fs::File::open(path)
            .and_then(|f| f.take(limit).read_to_end(&mut bytes))
            .map_err(io)?;
    }
    if bytes.len() > MAX_SIZE {
        return Err(Error::Syntax {
            path: shown,
            message: format!("larger than {MAX_SIZE} bytes; a pool config is far smaller"),
        });
    }
    String::from_utf8(bytes).map_err(|e| Error::Syntax {
        path: shown,
        message: format!(
            "not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ),
    })
}

/// The first character that is not blank or part of a comment line (`#`, `//`).
fn first_significant(text: &str) -> Option<char> {
    text.lines()
        .map(str::trim)
        .find(|line| !line.is_empty() && !line.starts_with('#') && !line.starts_with("//"))
        .and_then(|line| line.chars().next())
}

/// The deepest nesting of `[` and `{`, counting those inside strings too: an upper
/// bound that needs no parsing, so it is safe to take before any parser runs.
fn bracket_depth(text: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    for byte in text.bytes() {
        match byte {
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

fn parse_json(text: &str) -> std::result::Result<Value, String> {
    serde_json::from_str::<UniqueKeys>(text)
        .map(|v| v.0)
        .map_err(|e| format!("not valid JSON: {e}"))
}

/// Parses Hjson. deser-hjson 2.2 slices its input by byte offsets and panics on some
/// non-ASCII text (a `'` followed by a multi-byte character); such a panic is caught, with
/// the panic message silenced, and reported as a syntax error.
fn parse_hjson(text: &str) -> std::result::Result<Value, String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let outcome = std::panic::catch_unwind(|| deser_hjson::from_str::<UniqueKeys>(text));
    std::panic::set_hook(hook);
    match outcome {
        Ok(parsed) => parsed
            .map(|v| v.0)
            .map_err(|e| format!("not valid rjson/Hjson: {e}")),
        Err(_) => Err(
            "not valid rjson/Hjson: the parser gave up on this text (check quotes around non-ASCII characters)"
                .into(),
        ),
    }
}

/// Parses config text into a value. `Err` holds a message for the user, with a line and
/// column when the parser gives one.
pub fn parse(text: &str, format: Format) -> std::result::Result<Value, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let bracketed = matches!(first_significant(text), Some('{' | '['));
    let format = match format {
        Format::Auto if bracketed => Format::Hjson,
        Format::Auto => Format::Yaml,
        other => other,
    };
    if format != Format::Yaml && bracket_depth(text) > MAX_DEPTH {
        return Err(format!("nested more than {MAX_DEPTH} levels deep"));
    }
    match format {
        Format::Json => parse_json(text),
        Format::Yaml => crate::yaml::parse(text).map_err(|e| format!("not valid YAML: {e}")),
        // JSON first: its errors are the most precise for a JSON file. Hjson reads JSON
        // too, so its verdict stands when both fail.
        Format::Hjson | Format::Auto => parse_json(text).or_else(|_| parse_hjson(text)),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    #[test]
    fn formats_are_told_apart() {
        let expected = json!({"a": 1, "b": ["x"]});
        for (text, format) in [
            (r#"{"a": 1, "b": ["x"]}"#, Format::Auto),
            (
                "# comment\n{\n  a: 1\n  b: [\n    \"x\"\n  ]\n}\n",
                Format::Auto,
            ),
            ("a: 1\nb:\n  - x\n", Format::Auto),
            ("a: 1\nb: [x]\n", Format::Yaml),
            (r#"{"a": 1, "b": ["x"]}"#, Format::Json),
            ("{a: 1, b: [\"x\"]}", Format::Hjson),
        ] {
            assert_eq!(parse(text, format).as_ref(), Ok(&expected), "{text}");
        }
        assert!(parse("{a: 1}", Format::Json).is_err());
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        let mut inputs: Vec<String> = vec![
            String::new(),
            "{".into(),
            "{ prefix: \"a".into(),
            "[[[[".into(),
            "}}}}".into(),
            "\u{0}\u{1}\u{2}".into(),
            "{\"a\": 1e999999}".into(),
            "{a: '''\n".into(),
            "- - - - :".into(),
            ": : :".into(),
            "{".repeat(100_000),
            "[".repeat(65) + &"]".repeat(65),
            "a:\n".to_string() + &" b:\n".repeat(2000),
            // Made deser-hjson 2.2.6 panic on a char boundary.
            "'\u{b0f}".into(),
            "{ a: '\u{e9}t\u{e9}' }".into(),
        ];
        let valid = "{ prefix: \"x-\", allowedZones: [\"us-central1-a\"] }";
        for cut in 0..valid.len() {
            inputs.push(valid[..cut].to_string());
        }
        for text in &inputs {
            for format in [Format::Auto, Format::Hjson, Format::Json, Format::Yaml] {
                if let Ok(value) = parse(text, format) {
                    // Whatever parsed must validate without panicking, too.
                    let _ = pm_pool::validate("web", &value);
                }
            }
        }
        assert!(parse(&"{".repeat(100_000), Format::Auto)
            .unwrap_err()
            .contains("nested"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        #[test]
        fn no_input_panics(text in "\\PC{0,200}") {
            for format in [Format::Auto, Format::Hjson, Format::Yaml] {
                if let Ok(value) = parse(&text, format) {
                    let _ = pm_pool::validate("web", &value);
                }
            }
        }

        #[test]
        fn no_structured_input_panics(text in "[{}\\[\\]:,\"' a-z0-9\\n#-]{0,120}") {
            for format in [Format::Auto, Format::Hjson, Format::Yaml] {
                if let Ok(value) = parse(&text, format) {
                    let _ = pm_pool::validate("web", &value);
                }
            }
        }
    }
}

/// Config files as pmctl reads them, through to the stored config pm-pool builds.
#[cfg(test)]
mod end_to_end_tests {
    use pm_pool::{validate, ConfigDocument};
    use pm_proto::{Distribution, OnPreempted, PoolConfig};
    use serde_json::{json, Value};

    use super::*;

    /// prevmtable's README example, verbatim.
    const PREVMTABLE_EXAMPLE: &str = include_str!("../testdata/prevmtable-example.rjson");

    #[test]
    fn prevmtable_example_is_accepted_verbatim_and_mapped() {
        let value = parse(PREVMTABLE_EXAMPLE, Format::Auto).expect("parses");
        let config = validate("web", &value).expect("valid");
        assert_eq!(config.target_vm_count, 1);
        assert_eq!(config.allowed_zones, vec!["us-central1-b"]);
        assert_eq!(config.prefix, "delete-");
        assert_eq!(config.seconds_to_rest, 30);
        assert_eq!(config.seconds_for_exhaustion, 120);
        assert_eq!(config.hooks, None);
        assert_eq!(config.project, "");
        assert_eq!(config.distribution(), Distribution::Even);
        assert_eq!(config.on_preempted(), OnPreempted::Delete);
        assert!(!config.deleted);
        let instance: Value = serde_json::from_str(&config.instance_json).expect("JSON text");
        assert_eq!(instance["name"], "{name}");
        assert_eq!(instance["scheduling"]["preemptible"], true);
        assert_eq!(
            instance["metadata"]["items"][0]["value"],
            "docker run --rm -p 8080:8080 skelterjohn/http"
        );
        assert_eq!(instance["disks"][0]["initializeParams"]["sourceImage"],
            "https://www.googleapis.com/compute/v1/projects/coreos-cloud/global/images/coreos-stable-647-0-0-v20150512");
    }

    #[test]
    fn stored_configs_round_trip_through_the_document() {
        let value = parse(PREVMTABLE_EXAMPLE, Format::Auto).expect("parses");
        let config = validate("web", &value).expect("valid");
        let document = serde_json::to_value(ConfigDocument::from_config(&config)).expect("json");
        assert_eq!(document["allowedZones"], json!(["us-central1-b"]));
        assert_eq!(validate("web", &document), Ok(config));
        // A config using every field round-trips too: pm-pool's
        // `stored_configs_are_checked_with_the_same_rules`.
    }

    #[test]
    fn json_yaml_and_hjson_give_the_same_config() {
        let json_text = r#"{"targetVMCount": 3, "allowedZones": ["zone-a"], "prefix": "w-",
            "instance": {"machineType": "m", "scheduling": {"preemptible": true}},
            "hooks": {"create": "c.sh"}, "distribution": "any"}"#;
        let yaml_text = "targetVMCount: 3\nallowedZones:\n  - zone-a\nprefix: w-\ninstance:\n  machineType: m\n  scheduling:\n    preemptible: true\nhooks:\n  create: c.sh\ndistribution: any\n";
        let hjson_text = "{\n  targetVMCount: 3\n  allowedZones: [\"zone-a\"]\n  prefix: \"w-\"\n  instance: {\n    machineType: \"m\"\n    scheduling: { preemptible: true }\n  }\n  hooks: { create: \"c.sh\" }\n  distribution: \"any\"\n}\n";
        let configs: Vec<PoolConfig> = [json_text, yaml_text, hjson_text]
            .iter()
            .map(|text| {
                let value = parse(text, Format::Auto).expect("parses");
                validate("web", &value).expect("valid")
            })
            .collect();
        assert_eq!(configs[0], configs[1]);
        assert_eq!(configs[0], configs[2]);
        assert_eq!(configs[0].distribution(), Distribution::Any);
        assert_eq!(
            configs[0].hooks.as_ref().map(|h| h.create.as_str()),
            Some("c.sh")
        );
    }
}
