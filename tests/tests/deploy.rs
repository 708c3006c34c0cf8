//! The shipped Prometheus alert rules and Grafana dashboard (`deploy/`) name only metrics
//! the daemons export (their `METRICS` lists), cover what they must, and, where Debian's
//! `promtool` is installed (`scripts/prereqs.sh --python` installs it), pass
//! `promtool check rules` and the rules' unit tests.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .join("deploy")
}

/// Every series name PromQL may use: counters with `_total`, histograms' `_bucket`,
/// `_sum` and `_count`, gauges as they are.
fn exported_series() -> BTreeSet<String> {
    pm_scheduler::metrics::METRICS
        .iter()
        .chain(pm_agent::metrics::METRICS)
        .flat_map(|m| m.series())
        .collect()
}

/// The metric names a PromQL expression selects: identifiers outside strings, label
/// matchers and ranges that are neither functions, aggregations, keywords nor in the
/// label lists of `by`, `without`, `on`, `ignoring`, `group_left` and `group_right`.
fn metric_names(expr: &str) -> Vec<String> {
    const LABEL_LISTS: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    // Aggregations may be followed by `by (...)` before their `(`.
    const KEYWORDS: [&str; 20] = [
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "inf",
        "nan",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let skip_past = |from: usize, close: char| -> usize {
        let mut i = from + 1;
        let mut quote: Option<char> = None;
        while i < chars.len() {
            match (quote, chars[i]) {
                (Some(_), '\\') => i += 1,
                (Some(q), c) if c == q => quote = None,
                (None, '"' | '\'' | '`') => quote = Some(chars[i]),
                (None, c) if c == close => return i + 1,
                _ => {}
            }
            i += 1;
        }
        i
    };
    let mut names = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            // A string: skip to its closing quote.
            let mut j = i + 1;
            while j < chars.len() && chars[j] != c {
                j += if chars[j] == '\\' { 2 } else { 1 };
            }
            i = j + 1;
        } else if c == '{' {
            i = skip_past(i, '}');
        } else if c == '[' {
            i = skip_past(i, ']');
        } else if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '_' | ':'))
            {
                i += 1;
            }
            let ident: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let call = chars.get(next) == Some(&'(');
            let lower = ident.to_ascii_lowercase();
            if call && LABEL_LISTS.contains(&lower.as_str()) {
                i = skip_past(next, ')');
            } else if !call
                && !LABEL_LISTS.contains(&lower.as_str())
                && !KEYWORDS.contains(&lower.as_str())
            {
                names.push(ident);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Fails unless `expr` selects at least one metric and only exported ones.
fn assert_uses_exported(what: &str, expr: &str, exported: &BTreeSet<String>) -> Vec<String> {
    let names = metric_names(expr);
    assert!(!names.is_empty(), "{what}: no metric in {expr:?}");
    for name in &names {
        assert!(
            exported.contains(name),
            "{what}: {name} is not a metric pm exports (expression {expr:?}); exported: {exported:?}"
        );
    }
    names
}

/// `promtool`, when on PATH.
fn promtool() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("promtool"))
        .find(|candidate| candidate.is_file())
}

/// Runs promtool with `args` in `dir` and fails with its output unless it succeeds.
fn run_promtool(promtool: &Path, dir: &Path, args: &[&str]) {
    let out = Command::new(promtool)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn text(y: &Yaml, what: &str) -> String {
    y.as_str()
        .unwrap_or_else(|| panic!("{what} is missing or not a string"))
        .to_string()
}

#[test]
fn promql_metric_names_are_extracted() {
    let expr = r#"sum by (pool) (rate(pm_a_total{result!~"ok|x}"}[5m] offset 1h))
        / on (zone) group_left(pool) pm_b > bool 0.9 and absent(pm_c) unless pm_d[10m:1m]
        or 1e3 # pm_not_a_metric"#;
    assert_eq!(
        metric_names(expr),
        vec!["pm_a_total", "pm_b", "pm_c", "pm_d"]
    );
    let exported: BTreeSet<String> = ["pm_b".to_string()].into();
    let caught = std::panic::catch_unwind(|| assert_uses_exported("t", "pm_b + pm_e", &exported));
    assert!(caught.is_err(), "an unknown metric is caught");
}

#[test]
fn alert_rules_cover_the_issue_and_use_only_exported_metrics() {
    let dir = deploy_dir().join("prometheus");
    let source = std::fs::read_to_string(dir.join("pm-alerts.yml")).expect("pm-alerts.yml");
    let docs = YamlLoader::load_from_str(&source).expect("pm-alerts.yml is YAML");
    let groups = docs[0]["groups"].as_vec().expect("groups");
    assert!(!groups.is_empty());
    let exported = exported_series();
    // Each alert the issue asks for, with its `for` and a metric it must be about.
    let mut required = vec![
        ("PmPoolBelowTarget", "10m", "pm_pool_target_instances"),
        ("PmZoneExhaustedLong", "10m", "pm_zone_exhausted"),
        ("PmNoSchedulerLeader", "1m", "pm_scheduler_leader"),
        ("PmZoneWithoutActiveAgent", "2m", "pm_agent_active"),
        ("PmGceErrorRateHigh", "10m", "pm_gce_calls_total"),
        ("PmEventsSinkLagging", "5m", "pm_events_sink_lag_seconds"),
    ];
    let mut seen = BTreeSet::new();
    for group in groups {
        text(&group["name"], "group name");
        for rule in group["rules"].as_vec().expect("rules") {
            let alert = text(&rule["alert"], "alert");
            assert!(seen.insert(alert.clone()), "alert {alert} defined twice");
            let expr = text(&rule["expr"], &format!("{alert}: expr"));
            let names = assert_uses_exported(&alert, &expr, &exported);
            let severity = text(&rule["labels"]["severity"], &format!("{alert}: severity"));
            assert!(
                ["warning", "critical"].contains(&severity.as_str()),
                "{alert}: severity {severity}"
            );
            text(
                &rule["annotations"]["summary"],
                &format!("{alert}: summary"),
            );
            text(
                &rule["annotations"]["description"],
                &format!("{alert}: description"),
            );
            if let Some(at) = required.iter().position(|(name, _, _)| *name == alert) {
                let (_, wait, metric) = required.remove(at);
                assert_eq!(
                    text(&rule["for"], &format!("{alert}: for")),
                    wait,
                    "{alert}"
                );
                assert!(
                    names.iter().any(|n| n == metric),
                    "{alert} is not about {metric}: {expr}"
                );
            }
        }
    }
    assert!(required.is_empty(), "alerts missing: {required:?}");
    assert!(
        source.contains("[1h:1m]"),
        "PmZoneExhaustedLong looks at the last hour"
    );

    match promtool() {
        Some(promtool) => {
            run_promtool(&promtool, &dir, &["check", "rules", "pm-alerts.yml"]);
            run_promtool(&promtool, &dir, &["test", "rules", "pm-alerts.test.yml"]);
        }
        None => eprintln!(
            "promtool is not installed (scripts/prereqs.sh --python installs it): the rules were parsed and checked against the exported metrics only"
        ),
    }
}

/// Every `expr` in a dashboard JSON value, with where it is.
fn exprs(value: &serde_json::Value, path: &str, out: &mut Vec<(String, String)>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => {
                        out.push((path.to_string(), e.clone()))
                    }
                    _ => exprs(v, &format!("{path}.{key}"), out),
                }
            }
        }
        serde_json::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                exprs(v, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn the_dashboard_shows_every_exported_metric_and_nothing_else() {
    let path = deploy_dir().join("grafana").join("pm-dashboard.json");
    let source = std::fs::read_to_string(&path).expect("pm-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&source).expect("dashboard is JSON");
    assert!(dashboard["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(dashboard["uid"].as_str().is_some_and(|t| !t.is_empty()));
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for panel in panels {
        let id = panel["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "panel id {id} used twice");
        let grid = &panel["gridPos"];
        let right = grid["x"].as_u64().expect("x") + grid["w"].as_u64().expect("w");
        assert!(right <= 24, "panel {id} is wider than the grid");
        if panel["type"] != "row" {
            assert_eq!(panel["datasource"]["uid"], "${datasource}", "panel {id}");
            let targets = panel["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "panel {id} has no query");
        }
    }
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("variables");
    assert!(variables
        .iter()
        .any(|v| v["type"] == "datasource" && v["query"] == "prometheus"));

    let exported = exported_series();
    let mut found = Vec::new();
    exprs(&dashboard, "", &mut found);
    assert!(!found.is_empty());
    let mut shown = BTreeSet::new();
    for (at, expr) in &found {
        shown.extend(assert_uses_exported(at, expr, &exported));
    }
    for variable in variables.iter().filter(|v| v["type"] == "query") {
        let query = variable["definition"]
            .as_str()
            .expect("variable definition");
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.split(',').next())
            .expect("label_values(METRIC, LABEL)");
        shown.extend(assert_uses_exported(query, inner, &exported));
    }
    for metric in pm_scheduler::metrics::METRICS
        .iter()
        .chain(pm_agent::metrics::METRICS)
    {
        assert!(
            metric.series().iter().any(|s| shown.contains(s)),
            "the dashboard does not show {}",
            metric.name
        );
    }

    match promtool() {
        Some(promtool) => {
            // Every query is valid PromQL: promtool checks them as recording rules.
            let dir = tempfile::tempdir().unwrap();
            let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
            for (i, (_, expr)) in found.iter().enumerate() {
                let expr = expr
                    .replace("$__rate_interval", "5m")
                    .replace("$pool", ".*")
                    .replace("$zone", ".*");
                rules.push_str(&format!(
                    "      - record: dashboard:query_{i}\n        expr: {}\n",
                    serde_json::to_string(&expr).unwrap()
                ));
            }
            std::fs::write(dir.path().join("dashboard.yml"), rules).unwrap();
            run_promtool(&promtool, dir.path(), &["check", "rules", "dashboard.yml"]);
        }
        None => eprintln!(
            "promtool is not installed (scripts/prereqs.sh --python installs it): the dashboard's queries were checked against the exported metrics only"
        ),
    }
}
