//! `pmctl config import-prevmtable POOL --project P`: moves a prevmtable installation to pm.
//!
//! prevmtable keeps its config in a project metadata attribute (`prevmtable` unless
//! `PREVMTABLE_ATTRIBUTE` named another), as rjson, and each hook it names is a further
//! attribute holding a script. The import reads the project through `projects.get`, checks
//! the config with pm's own rules ([`pm_pool::validate`]: prevmtable's field names are
//! pm's), adds `project` (and `adopt` with `--adopt`), and writes each hook script into
//! `--hooks-dir` under the name the config gives it, so the config is kept as it is.
//!
//! Nothing is half done: every problem (of the attribute, of a field, of a hook script, of a
//! file in the directory) is found before anything is written; the scripts are written
//! before the config, so agents that see the new config find its hooks.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use pm_daemon::{EtcdArgs, GceArgs};
use pm_gce::resources::Metadata;
use pm_pool::problem::did_you_mean;
use pm_pool::{ConfigDocument, HookEvent, Problem};
use pm_proto::PoolConfig;
use serde::Serialize;
use serde_json::Value;

use crate::config_diff::{self, DiffView};
use crate::config_file::{self, Format};
use crate::error::{Error, Result};
use crate::output::{self, OutputFormat, Render};
use crate::pool_config::{self, SetResult};

/// prevmtable's attribute when `PREVMTABLE_ATTRIBUTE` is not set.
pub const DEFAULT_ATTRIBUTE: &str = "prevmtable";

/// What to import, from the command line.
#[derive(clap::Args, Debug, Clone)]
pub struct ImportArgs {
    /// The pool to create or replace.
    #[arg(value_parser = crate::cli::pool_name)]
    pub pool: String,
    /// The GCE project whose metadata holds prevmtable's config; it becomes the config's
    /// `project` unless the config names one.
    #[arg(long)]
    pub project: String,
    /// The metadata attribute of the config (prevmtable's PREVMTABLE_ATTRIBUTE).
    #[arg(long, default_value = DEFAULT_ATTRIBUTE)]
    pub attribute: String,
    /// Where to write the hook scripts: the agents' --hooks-dir (copy it to each agent's
    /// host when they run elsewhere). Needed when the config names hooks.
    #[arg(long, value_name = "DIR")]
    pub hooks_dir: Option<PathBuf>,
    /// Show the resulting config, its diff and the scripts; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Set `adopt: true`: the agents take over prevmtable's VMs (labelled through
    /// setLabels) instead of creating beside them.
    #[arg(long)]
    pub adopt: bool,
}

/// What happens to one hook script's file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HookFileState {
    /// The file will be written (`--dry-run`, or no `--hooks-dir` given to a dry run).
    WouldWrite,
    /// The file was written.
    Written,
    /// The file already held this script.
    Unchanged,
}

/// One hook script of the import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HookScript {
    /// The file's name: the metadata attribute holding the script, as the config names it.
    pub name: String,
    /// The hooks that run it (`create`, `delete`, ...).
    pub events: Vec<&'static str>,
    /// Its path in `--hooks-dir`; empty without one.
    pub path: String,
    /// What happens to the file.
    pub state: HookFileState,
    /// The script.
    #[serde(skip)]
    pub script: String,
}

/// prevmtable's config as a pm config, with the hook scripts it names.
#[derive(Debug, Clone, PartialEq)]
pub struct Converted {
    /// The pool config to store.
    pub config: PoolConfig,
    /// The scripts, one per distinct hook name, in the order of the config's hooks.
    pub hooks: Vec<HookScript>,
}

/// Field of a problem found in the config attribute's field `field`.
fn in_attribute(attribute: &str, field: &str) -> String {
    if field == "(document)" {
        format!("metadata attribute {attribute:?}")
    } else {
        format!("metadata attribute {attribute:?}, field {field}")
    }
}

/// Sets `key` in a config object, replacing a field of any case that names it (prevmtable's
/// and pm's field names are case-insensitive).
fn set_field(object: &mut serde_json::Map<String, Value>, key: &str, value: Value) {
    object.retain(|k, _| !k.eq_ignore_ascii_case(key));
    object.insert(key.to_string(), value);
}

/// Converts the project's metadata into the pool's config and hook scripts, or says
/// everything that stands in the way.
pub fn convert(
    args: &ImportArgs,
    metadata: &Metadata,
) -> std::result::Result<Converted, Vec<Problem>> {
    let attribute = args.attribute.as_str();
    let keys: Vec<&str> = metadata.keys().collect();
    let missing = |what: &str, name: &str| {
        let hint = match did_you_mean(name, &keys) {
            Some(close) => format!(" (did you mean {close:?}?)"),
            None if keys.is_empty() => " (it has no metadata attributes)".to_string(),
            None => format!(" (its attributes: {})", keys.join(", ")),
        };
        format!(
            "{what} {name:?} does not exist in the metadata of project {:?}{hint}",
            args.project
        )
    };
    let Some(text) = metadata.value(attribute) else {
        return Err(vec![Problem::new(
            in_attribute(attribute, "(document)"),
            missing("the attribute", attribute)
                + "; name prevmtable's attribute with --attribute (its PREVMTABLE_ATTRIBUTE)",
        )]);
    };
    let mut value = config_file::parse(text, Format::Hjson).map_err(|message| {
        vec![Problem::new(
            in_attribute(attribute, "(document)"),
            format!("is not an rjson document: {message}"),
        )]
    })?;
    if let Value::Object(object) = &mut value {
        if !object.keys().any(|k| k.eq_ignore_ascii_case("project")) {
            set_field(object, "project", Value::String(args.project.clone()));
        }
        if args.adopt {
            set_field(object, "adopt", Value::Bool(true));
        }
    }
    let config = pm_pool::validate(&args.pool, &value).map_err(|problems| {
        problems
            .into_iter()
            .map(|p| Problem::new(in_attribute(attribute, &p.field), p.message))
            .collect::<Vec<_>>()
    })?;
    let mut hooks: Vec<HookScript> = Vec::new();
    let mut problems = Vec::new();
    let mut checked = std::collections::BTreeSet::new();
    for event in HookEvent::ALL {
        let Some(name) = event.configured(config.hooks.as_ref()) else {
            continue;
        };
        if let Some(known) = hooks.iter_mut().find(|h| h.name == name) {
            known.events.push(event.as_str());
            continue;
        }
        // A script already found wanting is reported once, for the first hook naming it.
        if !checked.insert(name.clone()) {
            continue;
        }
        let field = in_attribute(attribute, &format!("hooks.{}", event.as_str()));
        match metadata.value(&name) {
            None => problems.push(Problem::new(field, missing("its script attribute", &name))),
            Some(script) if !script.starts_with("#!") => problems.push(Problem::new(
                format!("metadata attribute {name:?} (hooks.{})", event.as_str()),
                "does not start with a \"#!\" line: the agent runs a hook as an executable file, \
                 so the script must name its interpreter (e.g. #!/bin/bash)",
            )),
            Some(script) => hooks.push(HookScript {
                name: name.clone(),
                events: vec![event.as_str()],
                path: String::new(),
                state: HookFileState::WouldWrite,
                script: script.to_string(),
            }),
        }
    }
    if problems.is_empty() {
        Ok(Converted { config, hooks })
    } else {
        Err(problems)
    }
}

/// Checks each script's file in `dir`: a file that holds another content is a clash; one
/// that holds the same script is left as it is. A missing `dir` is created when writing.
pub fn plan_files(dir: &Path, hooks: &mut [HookScript]) -> std::result::Result<(), Vec<Problem>> {
    if dir.exists() && !dir.is_dir() {
        return Err(vec![Problem::new(
            "--hooks-dir",
            format!("{} exists and is not a directory", dir.display()),
        )]);
    }
    let mut problems = Vec::new();
    for hook in hooks.iter_mut() {
        let path = dir.join(&hook.name);
        hook.path = path.display().to_string();
        match std::fs::read(&path) {
            Ok(existing) if existing == hook.script.as_bytes() => {
                hook.state = HookFileState::Unchanged;
            }
            Ok(_) => problems.push(Problem::new(
                "--hooks-dir",
                format!(
                    "{} already exists with other content (the script of hooks.{} is named {:?}): \
                     move it away or choose another --hooks-dir",
                    path.display(),
                    hook.events.join(", hooks."),
                    hook.name
                ),
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => problems.push(Problem::new(
                "--hooks-dir",
                format!("cannot read {}: {e}", path.display()),
            )),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// Writes the scripts [`plan_files`] found missing, each through a temporary file renamed
/// into place, so an agent never runs half a script; every script ends up mode 0755.
pub fn write_files(dir: &Path, hooks: &mut [HookScript]) -> Result<()> {
    let io = |path: &Path, source: std::io::Error| {
        Error::Refused(format!("cannot write {}: {source}", path.display()))
    };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    for hook in hooks.iter_mut() {
        let path = dir.join(&hook.name);
        if hook.state != HookFileState::Unchanged {
            let mut file = tempfile::NamedTempFile::new_in(dir).map_err(|e| io(dir, e))?;
            file.write_all(hook.script.as_bytes())
                .and_then(|()| file.as_file().sync_all())
                .map_err(|e| io(file.path(), e))?;
            file.persist(&path).map_err(|e| io(&path, e.error))?;
            hook.state = HookFileState::Written;
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| io(&path, e))?;
    }
    Ok(())
}

/// What `pmctl config import-prevmtable` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImportView {
    /// The pool.
    pub pool: String,
    /// The project read.
    pub project: String,
    /// The metadata attribute of the config.
    pub attribute: String,
    /// What happened to the config (`valid` for `--dry-run`).
    pub result: SetResult,
    /// The config key's mod_revision now (0 for `--dry-run`).
    pub mod_revision: i64,
    /// The resulting pm config.
    pub config: ConfigDocument,
    /// How it differs from the stored one.
    pub diff: DiffView,
    /// The hook scripts.
    pub hooks: Vec<HookScript>,
}

impl Render for ImportView {
    fn table(&self) -> String {
        let document = serde_json::to_string_pretty(&self.config).unwrap_or_default();
        let mut out = format!(
            "pool {}: prevmtable's config from project {}, metadata attribute {:?}:\n{document}\n\n",
            self.pool, self.project, self.attribute
        );
        out.push_str("against the stored config:\n");
        out.push_str(&self.diff.table());
        for hook in &self.hooks {
            let state = match hook.state {
                HookFileState::WouldWrite => "would be written",
                HookFileState::Written => "written",
                HookFileState::Unchanged => "unchanged (already there)",
            };
            let path = if hook.path.is_empty() {
                format!("{} (give --hooks-dir to write it)", hook.name)
            } else {
                hook.path.clone()
            };
            out.push_str(&format!(
                "hook {}: {path}: {state}\n",
                hook.events.join(", ")
            ));
        }
        out.push_str(&match self.result {
            SetResult::Valid => "--dry-run: nothing was written\n".to_string(),
            SetResult::Created => format!("config created (revision {})\n", self.mod_revision),
            SetResult::Updated => format!("config updated (revision {})\n", self.mod_revision),
            SetResult::Unchanged => "config unchanged (already stored)\n".to_string(),
        });
        out
    }
}

/// Reads the project's metadata through the Compute API.
async fn read_metadata(gce: &GceArgs, project: &str) -> Result<Metadata> {
    gce.validate().map_err(Error::Refused)?;
    let failed = |source| Error::Gce {
        project: project.to_string(),
        source: Box::new(source),
    };
    let client = gce.client().await.map_err(failed)?;
    let found = client.get_project(project).await.map_err(failed)?;
    Ok(found.common_instance_metadata.unwrap_or_default())
}

/// `pmctl config import-prevmtable POOL --project P ...`.
pub async fn import(
    etcd: &EtcdArgs,
    gce: &GceArgs,
    args: &ImportArgs,
    format: OutputFormat,
) -> Result<()> {
    let metadata = read_metadata(gce, &args.project).await?;
    let refused = |problems| Error::Import {
        project: args.project.clone(),
        problems,
    };
    let Converted { config, mut hooks } = convert(args, &metadata).map_err(refused)?;
    match &args.hooks_dir {
        Some(dir) => plan_files(dir, &mut hooks).map_err(refused)?,
        None if !hooks.is_empty() && !args.dry_run => {
            let names: Vec<&str> = hooks.iter().map(|h| h.name.as_str()).collect();
            return Err(refused(vec![Problem::new(
                "--hooks-dir",
                format!(
                    "the config names hook scripts ({}): give --hooks-dir DIR, the agents' --hooks-dir, to write them",
                    names.join(", ")
                ),
            )]));
        }
        None => {}
    }
    let store = crate::connect::connect(etcd).await?;
    let stored = pool_config::current(&store, &args.pool).await?;
    let diff = config_diff::diff(&args.pool, stored.as_ref().map(|s| &s.value), &config);
    let (result, mod_revision, config) = if args.dry_run {
        (SetResult::Valid, 0, ConfigDocument::from_config(&config))
    } else {
        if let Some(dir) = &args.hooks_dir {
            write_files(dir, &mut hooks)?;
        }
        // Only over the config the diff was shown against: a change since is a conflict.
        let shown = Some(stored.as_ref().map_or(0, |s| s.mod_revision));
        let set = pool_config::apply(&store, &args.pool, config, shown).await?;
        (set.result, set.mod_revision, set.config)
    };
    let view = ImportView {
        pool: args.pool.clone(),
        project: args.project.clone(),
        attribute: args.attribute.clone(),
        result,
        mod_revision,
        config,
        diff,
        hooks,
    };
    output::emit(format, &view)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pm_gce::resources::MetadataItem;

    const CONFIG: &str = r#"{
      secondsToRest: 30
      secondsForExhaustion: 120
      prefix: "delete-"
      allowedzones: ["us-central1-b", "us-central1-f"]
      hooks: { create: "on-create", vanished: "on-gone", delete: "on-create" }
      targetVMCount: 1
      instance: {
        machineType: "zones/{zone}/machineTypes/f1-micro"
        tags: { items: ["prevmtable-http"] }
      }
    }"#;

    fn metadata(items: &[(&str, &str)]) -> Metadata {
        Metadata {
            items: Some(
                items
                    .iter()
                    .map(|(k, v)| MetadataItem {
                        key: k.to_string(),
                        value: Some(v.to_string()),
                    })
                    .collect(),
            ),
            extra: Default::default(),
        }
    }

    fn args(adopt: bool) -> ImportArgs {
        ImportArgs {
            pool: "web".into(),
            project: "proj-1".into(),
            attribute: DEFAULT_ATTRIBUTE.into(),
            hooks_dir: None,
            dry_run: false,
            adopt,
        }
    }

    #[test]
    fn prevmtables_example_becomes_a_pool_with_its_project_and_scripts() {
        let meta = metadata(&[
            ("prevmtable", CONFIG),
            ("on-create", "#!/bin/sh\necho made\n"),
            ("on-gone", "#!/bin/bash\necho gone\n"),
        ]);
        let converted = convert(&args(true), &meta).unwrap();
        assert_eq!(converted.config.prefix, "delete-");
        assert_eq!(converted.config.project, "proj-1");
        assert!(converted.config.adopt);
        assert_eq!(converted.config.seconds_to_rest, 30);
        let names: Vec<(&str, Vec<&str>)> = converted
            .hooks
            .iter()
            .map(|h| (h.name.as_str(), h.events.clone()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("on-create", vec!["create", "delete"]),
                ("on-gone", vec!["vanished"])
            ]
        );
        assert!(!convert(&args(false), &meta).unwrap().config.adopt);
    }

    #[test]
    fn a_project_in_the_config_is_kept() {
        let text = CONFIG.replace(
            "targetVMCount: 1",
            "targetVMCount: 1\nPROJECT: \"other-proj\"",
        );
        let meta = metadata(&[
            ("prevmtable", &text),
            ("on-create", "#!/bin/sh\n"),
            ("on-gone", "#!/bin/sh\n"),
        ]);
        assert_eq!(
            convert(&args(false), &meta).unwrap().config.project,
            "other-proj"
        );
    }

    #[test]
    fn a_missing_attribute_is_named_with_a_suggestion() {
        let meta = metadata(&[("prevmtabel", CONFIG), ("ssh-keys", "x")]);
        let problems = convert(&args(false), &meta).unwrap_err();
        let text = Problem::joined(&problems);
        assert!(text.contains("\"prevmtable\" does not exist"), "{text}");
        assert!(text.contains("did you mean \"prevmtabel\""), "{text}");
        let problems = convert(&args(false), &metadata(&[])).unwrap_err();
        assert!(Problem::joined(&problems).contains("no metadata attributes"));
    }

    #[test]
    fn hook_scripts_that_are_missing_or_lack_a_shebang_are_named() {
        let meta = metadata(&[("prevmtable", CONFIG), ("on-create", "echo made\n")]);
        let problems = convert(&args(false), &meta).unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(
            problems[0].field,
            "metadata attribute \"on-create\" (hooks.create)"
        );
        assert!(problems[0].message.contains("\"#!\""));
        assert_eq!(
            problems[1].field,
            "metadata attribute \"prevmtable\", field hooks.vanished"
        );
        assert!(problems[1].message.contains("\"on-gone\" does not exist"));
    }

    #[test]
    fn config_problems_name_the_attribute_and_the_field() {
        let meta = metadata(&[("prevmtable", "{ targetVMCount: -1, prefix: \"x-\" }")]);
        let problems = convert(&args(false), &meta).unwrap_err();
        assert!(
            problems
                .iter()
                .any(|p| p.field == "metadata attribute \"prevmtable\", field targetVMCount"),
            "{problems:?}"
        );
        let meta = metadata(&[("prevmtable", "{ not rjson")]);
        let problems = convert(&args(false), &meta).unwrap_err();
        assert_eq!(problems[0].field, "metadata attribute \"prevmtable\"");
        assert!(problems[0].message.contains("not an rjson document"));
    }

    #[test]
    fn files_are_written_executable_and_a_clash_stops_everything() {
        let dir = tempfile::tempdir().unwrap();
        let hooks_dir = dir.path().join("hooks");
        let meta = metadata(&[
            ("prevmtable", CONFIG),
            ("on-create", "#!/bin/sh\necho made\n"),
            ("on-gone", "#!/bin/sh\necho gone\n"),
        ]);
        let mut hooks = convert(&args(false), &meta).unwrap().hooks;
        plan_files(&hooks_dir, &mut hooks).unwrap();
        write_files(&hooks_dir, &mut hooks).unwrap();
        assert!(hooks.iter().all(|h| h.state == HookFileState::Written));
        let mode = std::fs::metadata(hooks_dir.join("on-create"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(
            std::fs::read_to_string(hooks_dir.join("on-gone")).unwrap(),
            "#!/bin/sh\necho gone\n"
        );
        let mut again = convert(&args(false), &meta).unwrap().hooks;
        plan_files(&hooks_dir, &mut again).unwrap();
        assert!(again.iter().all(|h| h.state == HookFileState::Unchanged));
        std::fs::write(hooks_dir.join("on-gone"), "#!/bin/sh\nother\n").unwrap();
        let mut clash = convert(&args(false), &meta).unwrap().hooks;
        let problems = plan_files(&hooks_dir, &mut clash).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert!(problems[0]
            .message
            .contains("on-gone already exists with other content"));
        let file = dir.path().join("plain");
        std::fs::write(&file, "").unwrap();
        assert!(plan_files(&file, &mut clash).is_err());
    }
}
