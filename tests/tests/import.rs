//! Migrating from prevmtable end to end: its config and hook scripts set in gce-sim's
//! project metadata through the real metadata API, `pmctl config import-prevmtable`
//! (dry run, then for real), agents running the imported hooks, adoption of prevmtable's
//! VMs beside a foreign one that stays untouched, and each refusal of the import.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use pm_gce::compute::request_id_for;
use pm_gce::resources::{Instance, Metadata, MetadataItem};
use pm_gce::rest::{Auth, RestCompute, RestConfig};
use pm_proto::PoolConfig;
use pm_tests::cluster::{Cluster, PROJECT, TEMPLATE};
use serde_json::Value;

const BOUND: Duration = Duration::from_secs(60);

/// Replaces the project's metadata items with `items` (read-modify-write with the
/// fingerprint, as gcloud does).
async fn set_metadata(c: &Cluster, items: &[(&str, &str)]) {
    let rest = RestConfig::new(c.compute_url(), Auth::None).unwrap();
    let client = RestCompute::new(rest).await.unwrap();
    let project = client.get_project(PROJECT).await.unwrap();
    let mut metadata = project.common_instance_metadata.unwrap_or_default();
    metadata.items = Some(
        items
            .iter()
            .map(|(key, value)| MetadataItem {
                key: key.to_string(),
                value: Some(value.to_string()),
            })
            .collect(),
    );
    // A request id per content: GCE replays a repeated id instead of writing.
    let id = request_id_for(&format!("metadata-{items:?}"));
    client
        .set_common_instance_metadata(PROJECT, &metadata, &id, BOUND)
        .await
        .unwrap();
    let read: Metadata = client
        .get_project(PROJECT)
        .await
        .unwrap()
        .common_instance_metadata
        .unwrap();
    assert_eq!(read.keys().count(), items.len());
}

/// prevmtable's config as an operator writes it: rjson, unquoted keys, no commas.
fn rjson(c: &Cluster, prefix: &str, target: usize, hooks: &str) -> String {
    let zones: Vec<String> = c.zones().iter().map(|z| format!("{z:?}")).collect();
    format!(
        "{{\n  secondsToRest: 1\n  secondsForExhaustion: 3\n  prefix: {prefix:?}\n  \
         allowedzones: [{}]\n  hooks: {{{hooks}}}\n  targetVMCount: {target}\n  instance: {TEMPLATE}\n}}\n",
        zones.join(", ")
    )
}

/// Runs `pmctl -o json config import-prevmtable ARGS` against the cluster, off the test's
/// runtime threads (gce-sim serves pmctl from them).
async fn import(c: &Cluster, args: &[&str]) -> Output {
    let mut command = std::process::Command::new(pm_tests::bin_path("pmctl"));
    command
        .args(["--etcd", &c.etcd_endpoints(), "--prefix", c.prefix()])
        .args(["-o", "json", "config", "import-prevmtable"])
        .args(args)
        .args([
            "--project",
            PROJECT,
            "--gce-endpoint",
            &c.compute_url(),
            "--no-auth",
        ]);
    tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap()
}

fn json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "pmctl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The `state` of each hook script an import shows.
fn hook_states(view: &Value) -> Vec<&str> {
    let hooks = view["hooks"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    hooks
        .iter()
        .map(|h| h["state"].as_str().unwrap_or(""))
        .collect()
}

/// The stderr of a refused import, after checking it exited 1.
fn refused(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

async fn stored(c: &Cluster, pool: &str) -> Option<PoolConfig> {
    let key = c.store().keys().pool_config(pool).unwrap();
    c.store().get(&key).await.unwrap().map(|v| v.value)
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_prevmtable_pool_converges_and_runs_its_hooks() {
    let hooks_dir = tempfile::tempdir().unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let created = out_dir.path().join("created");
    let c = Cluster::builder()
        .zones(2)
        .hooks_dir(hooks_dir.path())
        .start()
        .await;
    let config = rjson(
        &c,
        "imp-",
        3,
        "create: \"on-create\"\n vanished: \"on-gone\"",
    );
    let on_create = format!("#!/bin/sh\necho \"$NAME\" >> {}\n", created.display());
    let on_gone = "#!/bin/sh\nexit 0\n";
    set_metadata(
        &c,
        &[
            ("prevmtable-web", &config),
            ("on-create", &on_create),
            ("on-gone", on_gone),
            ("ssh-keys", "someone:ssh-ed25519 AAAA"),
        ],
    )
    .await;
    let dir = hooks_dir.path().to_str().unwrap();

    let dry_run = [
        "web",
        "--attribute",
        "prevmtable-web",
        "--hooks-dir",
        dir,
        "--dry-run",
    ];
    let dry = json(&import(&c, &dry_run).await);
    assert_eq!(dry["result"], "valid");
    assert_eq!(dry["diff"]["exists"], false);
    assert_eq!(dry["config"]["project"], PROJECT);
    assert_eq!(dry["config"]["hooks"]["create"], "on-create");
    assert_eq!(hook_states(&dry), ["would-write", "would-write"]);
    assert_eq!(std::fs::read_dir(hooks_dir.path()).unwrap().count(), 0);
    assert!(
        stored(&c, "web").await.is_none(),
        "a dry run wrote the config"
    );

    let applied = json(
        &import(
            &c,
            &["web", "--attribute", "prevmtable-web", "--hooks-dir", dir],
        )
        .await,
    );
    assert_eq!(applied["result"], "created");
    for (name, script) in [("on-create", on_create.as_str()), ("on-gone", on_gone)] {
        let path = hooks_dir.path().join(name);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), script);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755, "{name}");
    }
    let config = stored(&c, "web").await.expect("config stored");
    assert_eq!(
        (config.prefix.as_str(), config.target_vm_count),
        ("imp-", 3)
    );
    assert_eq!(config.project, PROJECT);
    assert!(!config.adopt);

    c.wait(
        "3 imported VMs run and the create hook ran for each",
        BOUND,
        || async {
            let running: usize = c.count_status("web", "RUNNING").await.values().sum();
            let mut names = lines(&created);
            names.sort();
            names.dedup();
            (running == 3 && names.len() == 3 && names.iter().all(|n| n.starts_with("imp-")))
                .then_some(())
        },
    )
    .await;

    let again = json(&import(&c, &dry_run).await);
    assert_eq!(
        again["diff"]["changes"].as_array().unwrap().len(),
        0,
        "{again}"
    );
    assert_eq!(hook_states(&again), ["unchanged", "unchanged"]);
}

/// Inserts `name` into `zone` as another tool would, with `pool`'s label when given.
async fn insert(c: &Cluster, zone: &str, name: &str, pool: Option<&str>) {
    let mut value: Value = serde_json::from_str(
        &TEMPLATE
            .replace("{name}", name)
            .replace("{project}", PROJECT)
            .replace("{zone}", zone),
    )
    .unwrap();
    if let Some(pool) = pool {
        value["labels"]["pm-pool"] = pool.into();
    }
    let instance: Instance = serde_json::from_value(value).unwrap();
    c.compute()
        .insert(PROJECT, zone, &instance, &request_id_for(name))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopt_takes_prevmtables_vms_and_leaves_a_foreign_one_alone() {
    let c = Cluster::builder().zones(2).start().await;
    let zone = c.zones()[0].clone();
    insert(&c, &zone, "old-aaaa", None).await;
    insert(&c, &zone, "old-bbbb", None).await;
    insert(&c, &zone, "old-cccc", Some("other")).await;
    insert(&c, &zone, "else-dddd", None).await;
    set_metadata(&c, &[("prevmtable", &rjson(&c, "old-", 3, ""))]).await;

    let applied = json(&import(&c, &["web", "--adopt"]).await);
    assert_eq!(applied["config"]["adopt"], true);
    assert!(stored(&c, "web").await.unwrap().adopt);

    let labelled = c
        .wait(
            "prevmtable's 2 VMs are adopted and 1 more is created",
            BOUND,
            || async {
                let all: Vec<Instance> = c
                    .gce_instances("web")
                    .await
                    .into_values()
                    .flatten()
                    .collect();
                let running = all
                    .iter()
                    .filter(|i| i.status.map(|s| s.as_str()) == Some("RUNNING"))
                    .count();
                (running == 3 && all.len() == 3).then_some(all)
            },
        )
        .await;
    let names: Vec<&str> = labelled.iter().map(|i| i.name.as_str()).collect();
    assert!(
        names.contains(&"old-aaaa") && names.contains(&"old-bbbb"),
        "{names:?}"
    );
    for instance in &labelled {
        assert!(
            instance.labels.contains_key("pm-rev"),
            "{:?}",
            instance.labels
        );
        assert_eq!(
            instance.labels.get("team").map(String::as_str),
            Some("test")
        );
    }
    for (name, label) in [("old-cccc", Some("other")), ("else-dddd", None)] {
        let instance = c
            .compute()
            .get(PROJECT, &zone, name)
            .await
            .unwrap()
            .expect("still there");
        assert_eq!(
            instance.labels.get("pm-pool").map(String::as_str),
            label,
            "{name} was touched"
        );
        assert_eq!(
            instance.status.map(|s| s.as_str()),
            Some("RUNNING"),
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_problem_of_an_import_is_named_and_nothing_is_written() {
    let c = Cluster::builder()
        .zones(1)
        .schedulers(0)
        .agents(0)
        .start()
        .await;
    let hooks_dir = tempfile::tempdir().unwrap();
    let dir = hooks_dir.path().to_str().unwrap();
    let hooks = "create: \"on-create\"\n delete: \"on-delete\"";

    set_metadata(&c, &[("prevmtabel", &rjson(&c, "x-", 1, ""))]).await;
    let text = refused(&import(&c, &["web", "--hooks-dir", dir]).await);
    assert!(text.contains("metadata attribute \"prevmtable\""), "{text}");
    assert!(text.contains("does not exist"), "{text}");
    assert!(text.contains("did you mean \"prevmtabel\""), "{text}");

    set_metadata(
        &c,
        &[
            ("prevmtable", &rjson(&c, "x-", 1, hooks)),
            ("on-create", "#!/bin/sh\n"),
        ],
    )
    .await;
    let text = refused(&import(&c, &["web", "--hooks-dir", dir]).await);
    assert!(text.contains("field hooks.delete"), "{text}");
    assert!(text.contains("\"on-delete\" does not exist"), "{text}");

    set_metadata(
        &c,
        &[
            ("prevmtable", &rjson(&c, "x-", 1, hooks)),
            ("on-create", "#!/bin/sh\n"),
            ("on-delete", "echo no interpreter\n"),
        ],
    )
    .await;
    let text = refused(&import(&c, &["web", "--hooks-dir", dir]).await);
    assert!(
        text.contains("metadata attribute \"on-delete\" (hooks.delete)"),
        "{text}"
    );
    assert!(text.contains("\"#!\" line"), "{text}");

    set_metadata(
        &c,
        &[
            ("prevmtable", &rjson(&c, "x-", 1, hooks)),
            ("on-create", "#!/bin/sh\n"),
            ("on-delete", "#!/bin/sh\necho deleted\n"),
        ],
    )
    .await;
    std::fs::write(hooks_dir.path().join("on-delete"), "#!/bin/sh\necho mine\n").unwrap();
    let text = refused(&import(&c, &["web", "--hooks-dir", dir]).await);
    assert!(
        text.contains("on-delete already exists with other content"),
        "{text}"
    );
    assert!(
        !hooks_dir.path().join("on-create").exists(),
        "a refused import wrote a script"
    );
    assert_eq!(
        std::fs::read_to_string(hooks_dir.path().join("on-delete")).unwrap(),
        "#!/bin/sh\necho mine\n"
    );

    let text = refused(&import(&c, &["web"]).await);
    assert!(text.contains("--hooks-dir"), "{text}");

    set_metadata(
        &c,
        &[("prevmtable", "{ prefix: \"x-\"\n targetVMCount: -2 }")],
    )
    .await;
    let text = refused(&import(&c, &["web"]).await);
    assert!(
        text.contains("metadata attribute \"prevmtable\", field targetVMCount"),
        "{text}"
    );
    assert!(
        stored(&c, "web").await.is_none(),
        "a refused import wrote the config"
    );
}
