//! Where a binary's settings come from, in order of precedence: flags, `PM_*` environment
//! variables, an optional config file (`--config FILE` or `PM_CONFIG`; TOML, YAML or
//! JSON, keys named like the long flags, `-` or `_` alike), then built-in defaults.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{ArgMatches, CommandFactory, FromArgMatches};

/// The sections a shared config file may hold, one per pm binary.
const SECTIONS: [&str; 3] = ["scheduler", "agent", "pmctl"];

/// Largest edit distance at which an unknown setting gets a "did you mean".
const HINT_DISTANCE: usize = 3;

/// Parses the command line of a pm binary, with values from the optional config file as
/// defaults under flags and `PM_*` variables. Errors are clap errors: printed with
/// `.exit()`, usage problems exit 2.
pub fn parse_args<P: CommandFactory + FromArgMatches>(
    args: Vec<OsString>,
) -> Result<P, clap::Error> {
    let mut cmd = P::command();
    if let Some(path) = config_path(&args) {
        let name = cmd.get_name().to_string();
        let section = name.strip_prefix("pm-").unwrap_or(&name).to_string();
        let pairs = read_config_file(&path, &section)
            .map_err(|m| cmd.error(clap::error::ErrorKind::InvalidValue, m))?;
        for (key, value) in pairs {
            let known = cmd
                .get_arguments()
                .any(|a| a.get_long() == Some(key.as_str()) && key != "config");
            if !known {
                let hint = closest_flag(&cmd, &key)
                    .map(|c| format!(" (did you mean {c}?)"))
                    .unwrap_or_default();
                return Err(cmd.error(
                    clap::error::ErrorKind::UnknownArgument,
                    format!(
                        "config file {}: unknown setting {key:?}{hint}",
                        path.display()
                    ),
                ));
            }
            let id = cmd
                .get_arguments()
                .find(|a| a.get_long() == Some(key.as_str()))
                .map(|a| a.get_id().clone());
            if let Some(id) = id {
                cmd = cmd.mut_arg(id, |a| a.default_value(value));
            }
        }
    }
    let matches: ArgMatches = cmd.try_get_matches_from_mut(args)?;
    P::from_arg_matches(&matches).map_err(|e| e.format(&mut cmd))
}

/// Finds `--config FILE` in `args`, else `PM_CONFIG`.
fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut iter = args.iter().skip(1);
    while let Some(arg) = iter.next() {
        let text = arg.to_string_lossy();
        if text == "--" {
            break;
        }
        if text == "--config" {
            return iter.next().map(PathBuf::from);
        }
        if let Some(path) = text.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os("PM_CONFIG").map(PathBuf::from)
}

/// Renders one setting's value as flag text.
fn setting_text(shown: &str, key: &str, value: config::Value) -> Result<String, String> {
    match value.kind {
        config::ValueKind::Array(items) => Ok(items
            .into_iter()
            .map(|v| v.into_string())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("config file {shown}: setting {key}: {e}"))?
            .join(",")),
        config::ValueKind::Table(_) => Err(format!(
            "config file {shown}: setting {key} must be a single value, not a table"
        )),
        other => config::Value::new(None, other)
            .into_string()
            .map_err(|e| format!("config file {shown}: setting {key}: {e}")),
    }
}

/// Reads a config file into (setting, value) pairs for the binary whose section is
/// `section`: top-level settings are shared by every binary, `[scheduler]`, `[agent]` and
/// `[pmctl]` tables hold each one's own (and override shared ones). Other binaries'
/// sections are skipped.
fn read_config_file(path: &Path, section: &str) -> Result<Vec<(String, String)>, String> {
    let shown = path.display().to_string();
    if !path.is_file() {
        return Err(format!(
            "config file {shown} does not exist or is not a file"
        ));
    }
    let settings = config::Config::builder()
        .add_source(config::File::from(path))
        .build()
        .map_err(|e| format!("config file {shown}: {e}"))?;
    let table = settings
        .try_deserialize::<config::Map<String, config::Value>>()
        .map_err(|e| format!("config file {shown}: {e}"))?;
    let mut shared = Vec::new();
    let mut own = Vec::new();
    for (key, value) in table {
        if key == section {
            let config::ValueKind::Table(entries) = value.kind else {
                return Err(format!(
                    "config file {shown}: [{key}] must be a table of settings"
                ));
            };
            for (inner, v) in entries {
                own.push((inner.replace('_', "-"), setting_text(&shown, &inner, v)?));
            }
        } else if SECTIONS.contains(&key.as_str()) {
            continue;
        } else {
            shared.push((key.replace('_', "-"), setting_text(&shown, &key, value)?));
        }
    }
    shared.retain(|(k, _)| !own.iter().any(|(o, _)| o == k));
    shared.extend(own);
    Ok(shared)
}

/// The long flag name of `cmd` closest to `name` (Levenshtein distance at most
/// [`HINT_DISTANCE`]), for "did you mean".
fn closest_flag(cmd: &clap::Command, name: &str) -> Option<String> {
    cmd.get_arguments()
        .filter_map(|a| a.get_long())
        .map(|long| (strsim::levenshtein(long, name), long))
        .filter(|(d, _)| *d <= HINT_DISTANCE)
        .min()
        .map(|(_, long)| long.to_string())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{parse_duration, EtcdArgs};
    use clap::Parser;

    #[derive(Parser, Debug)]
    #[command(name = "demo")]
    struct Demo {
        #[command(flatten)]
        etcd: EtcdArgs,
        #[arg(long, value_parser = parse_duration, default_value = "3s")]
        lease_ttl: Duration,
    }

    fn args(list: &[&str]) -> Vec<OsString> {
        std::iter::once("demo")
            .chain(list.iter().copied())
            .map(OsString::from)
            .collect()
    }

    /// A config file `name` holding `text`, in a temporary directory that lives as long
    /// as the returned guard.
    fn config_file(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(name);
        std::fs::write(&file, text).unwrap();
        (dir, file)
    }

    /// The command line `--config FILE` plus `rest`.
    fn with_config(file: &Path, rest: &[&str]) -> Vec<OsString> {
        let file = file.to_string_lossy();
        let mut list = vec!["--config", &file];
        list.extend_from_slice(rest);
        args(&list)
    }

    #[test]
    fn config_file_values_sit_under_flags() {
        let (_dir, file) = config_file(
            "pm.toml",
            "etcd = \"http://10.0.0.1:2379\"\nlease_ttl = \"7s\"\nprefix = \"/x\"\n",
        );
        let d: Demo = parse_args(with_config(&file, &["--prefix", "/flag"])).unwrap();
        assert_eq!(d.etcd.endpoints, "http://10.0.0.1:2379");
        assert_eq!(d.lease_ttl, Duration::from_secs(7));
        assert_eq!(d.etcd.prefix, "/flag");
    }

    #[test]
    fn sections_hold_each_binarys_own_settings() {
        let (_dir, file) = config_file(
            "pm.toml",
            "prefix = \"/shared\"\n[demo]\nlease-ttl = \"9s\"\nprefix = \"/own\"\n[agent]\nzone = \"z\"\n",
        );
        let pairs = read_config_file(&file, "demo").unwrap();
        assert!(pairs.contains(&("lease-ttl".into(), "9s".into())));
        assert!(
            !pairs.iter().any(|(k, _)| k == "zone"),
            "other sections are skipped"
        );
        let d: Demo = parse_args(with_config(&file, &[])).unwrap();
        assert_eq!(d.etcd.prefix, "/own", "a section overrides shared settings");
        assert_eq!(d.lease_ttl, Duration::from_secs(9));
    }

    #[test]
    fn unknown_config_settings_are_rejected_with_a_hint() {
        let (_dir, file) = config_file("pm.yaml", "lease-tll: 3s\n");
        let err = parse_args::<Demo>(with_config(&file, &[]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("lease-tll") && err.contains("did you mean lease-ttl"),
            "{err}"
        );
    }

    #[test]
    fn bad_durations_and_missing_files_are_clear_errors() {
        let err = parse_args::<Demo>(args(&["--lease-ttl", "soon"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a duration"), "{err}");
        let err = parse_args::<Demo>(args(&["--config", "/nonexistent/pm.toml"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not exist"), "{err}");
    }

    #[test]
    fn distance_is_levenshtein() {
        assert_eq!(strsim::levenshtein("lease-ttl", "lease-tll"), 1);
        assert_eq!(strsim::levenshtein("kitten", "sitting"), 3);
        assert_eq!(strsim::levenshtein("", "abc"), 3);
        assert_eq!(strsim::levenshtein("same", "same"), 0);
        let cmd = Demo::command();
        assert_eq!(
            closest_flag(&cmd, "lease-tll").as_deref(),
            Some("lease-ttl")
        );
        assert_eq!(
            closest_flag(&cmd, "etcd-cerd").as_deref(),
            Some("etcd-cert")
        );
        assert_eq!(closest_flag(&cmd, "completely-different"), None);
    }
}
