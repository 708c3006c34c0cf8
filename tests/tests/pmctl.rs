//! The real `pmctl` binary against a real etcd: every verb's output (JSON shapes and
//! tables), its exit codes, the config it stores, compare-and-swap, manual exhaustion
//! leases, an unreachable etcd, and `events --follow` / `status --watch` seeing changes
//! made after they started. Build the binaries first (`cargo build --workspace --bins`).

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use pm_etcd::etcd_client::LeaseTimeToLiveOptions;
use pm_etcd::{Election, EtcdOptions, EventLog, Keyspace, Session, Store};
use pm_proto::{
    AgentInfo, InstanceState, ObservedInstance, PoolConfig, Severity, ZoneDesired, ZoneExhaustion,
};
use pm_tests::{bin_path, free_port, unique_prefix, EtcdCluster};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{ChildStdout, Command};
use tokio_util::sync::CancellationToken;

/// Bound on one pmctl run.
const RUN_BOUND: Duration = Duration::from_secs(20);
/// Bound on waiting for a line of a followed stream.
const LINE_BOUND: Duration = Duration::from_secs(20);

/// prevmtable's README example config, verbatim.
fn prevmtable_example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../pmctl/testdata/prevmtable-example.rjson")
}

const JSON_CONFIG: &str = r#"{
  "targetVMCount": 2,
  "allowedZones": ["zone-a", "zone-b"],
  "prefix": "web-",
  "instance": {"machineType": "zones/{zone}/machineTypes/e2-small",
               "labels": {"team": "infra"}, "scheduling": {"preemptible": true}},
  "hooks": {"create": "on-create.sh"},
  "distribution": "balanced"
}"#;

const YAML_CONFIG: &str = "\
TargetVMCount: 3
allowedzones:
  - zone-a
prefix: api-
instance:
  machineType: e2-small
onPreempted: restart
";

/// A real etcd, a unique prefix, a store on it, and a temp dir for config files.
struct Ctl {
    etcd: EtcdCluster,
    prefix: String,
    store: Store,
    dir: tempfile::TempDir,
}

impl Ctl {
    async fn new() -> Self {
        let etcd = EtcdCluster::start(1).await;
        let prefix = unique_prefix();
        let client = EtcdOptions::new(etcd.endpoints())
            .connect()
            .await
            .expect("connect");
        let store = Store::new(client, Keyspace::new(&prefix).expect("prefix"));
        Self {
            etcd,
            prefix,
            store,
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin_path("pmctl"));
        cmd.arg("--etcd")
            .arg(self.etcd.endpoints().join(","))
            .arg("--prefix")
            .arg(&self.prefix)
            .args(args)
            .env_remove("PM_ETCD")
            .env_remove("PM_PREFIX")
            .env_remove("PM_OUTPUT")
            .env_remove("PM_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Runs pmctl to its end, within [`RUN_BOUND`].
    async fn run(&self, args: &[&str]) -> Output {
        let run = self.command(args).output();
        tokio::time::timeout(RUN_BOUND, run)
            .await
            .unwrap_or_else(|_| panic!("pmctl {args:?} did not finish"))
            .expect("pmctl runs")
    }

    /// Like [`Ctl::run`], owning its arguments, for running several at once.
    async fn run_owned(&self, args: Vec<String>) -> Output {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run(&refs).await
    }

    /// Runs pmctl with `input` on stdin.
    async fn run_with_stdin(&self, args: &[&str], input: &str) -> Output {
        let mut cmd = self.command(args);
        cmd.stdin(Stdio::piped());
        let mut child = cmd.spawn().expect("pmctl starts");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(input.as_bytes())
            .await
            .expect("write stdin");
        drop(stdin);
        tokio::time::timeout(RUN_BOUND, child.wait_with_output())
            .await
            .expect("pmctl finishes")
            .expect("pmctl runs")
    }

    /// Runs `pmctl -o json ARGS`, which must succeed, and parses its output.
    async fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["-o", "json"];
        all.extend_from_slice(args);
        let out = self.run(&all).await;
        assert_ok(&out, args);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "pmctl {args:?} printed no JSON ({e}): {}",
                text(&out.stdout)
            )
        })
    }

    /// Runs pmctl, which must succeed, and returns its stdout.
    async fn table(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert_ok(&out, args);
        text(&out.stdout)
    }

    fn file(&self, name: &str, content: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).expect("write config file");
        path.to_string_lossy().into_owned()
    }

    async fn stored_config(&self, pool: &str) -> Option<(PoolConfig, i64)> {
        let key = self.store.keys().pool_config(pool).expect("key");
        let stored = self.store.get::<PoolConfig>(&key).await.expect("get");
        stored.map(|v| (v.value, v.mod_revision))
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_ok(out: &Output, args: &[&str]) {
    assert_eq!(
        out.status.code(),
        Some(0),
        "pmctl {args:?} failed\nstdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Asserts the exit code and returns stderr.
fn assert_exit(out: &Output, code: i32, args: &[&str]) -> String {
    assert_eq!(
        out.status.code(),
        Some(code),
        "pmctl {args:?}\nstdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stderr)
}

fn keys_of(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

/// Reads lines until one satisfies `wanted`, within [`LINE_BOUND`].
async fn line_where(
    lines: &mut Lines<BufReader<ChildStdout>>,
    what: &str,
    wanted: impl Fn(&str) -> bool,
) -> String {
    let read = async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            if wanted(&line) {
                return line;
            }
        }
        panic!("stream ended before: {what}");
    };
    tokio::time::timeout(LINE_BOUND, read)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for: {what}"))
}

#[tokio::test]
async fn config_set_accepts_rjson_json_and_yaml_and_get_prints_it_back() {
    let ctl = Ctl::new().await;
    let example = prevmtable_example();
    let example = example.to_string_lossy();

    let set = ctl.json(&["config", "set", "legacy", "-f", &example]).await;
    assert_eq!(keys_of(&set), ["config", "mod_revision", "pool", "result"]);
    assert_eq!(set["result"], "created");
    let (stored, revision) = ctl.stored_config("legacy").await.expect("stored");
    assert_eq!(set["mod_revision"], revision);
    assert_eq!(stored.target_vm_count, 1);
    assert_eq!(stored.allowed_zones, vec!["us-central1-b"]);
    assert_eq!(
        (stored.prefix.as_str(), stored.seconds_to_rest),
        ("delete-", 30)
    );
    let instance: Value = serde_json::from_str(&stored.instance_json).expect("instance JSON");
    assert_eq!(instance["scheduling"]["preemptible"], true);

    let again = ctl.json(&["config", "set", "legacy", "-f", &example]).await;
    assert_eq!(again["result"], "unchanged");
    assert_eq!(
        ctl.stored_config("legacy").await.expect("stored").1,
        revision
    );

    let json_file = ctl.file("web.json", JSON_CONFIG);
    assert_eq!(
        ctl.json(&["config", "set", "web", "-f", &json_file]).await["result"],
        "created"
    );
    let yaml = ctl
        .run_with_stdin(
            &["-o", "json", "config", "set", "api", "-f", "-"],
            YAML_CONFIG,
        )
        .await;
    assert_ok(&yaml, &["config set api -f -"]);
    let (api, _) = ctl.stored_config("api").await.expect("stored");
    assert_eq!(api.target_vm_count, 3);
    assert_eq!(api.on_preempted(), pm_proto::OnPreempted::Restart);

    let get = ctl.json(&["config", "get", "web"]).await;
    assert_eq!(keys_of(&get), ["config", "deleted", "mod_revision", "pool"]);
    assert_eq!(get["pool"], "web");
    assert_eq!(get["deleted"], false);
    let config = &get["config"];
    assert_eq!(
        keys_of(config),
        [
            "allowedZones",
            "distribution",
            "hooks",
            "instance",
            "onPreempted",
            "prefix",
            "targetVMCount"
        ]
    );
    assert_eq!(config["targetVMCount"], 2);
    assert_eq!(config["allowedZones"], json!(["zone-a", "zone-b"]));
    assert_eq!(config["distribution"], "balanced");
    assert_eq!(config["onPreempted"], "delete");
    assert_eq!(config["hooks"], json!({"create": "on-create.sh"}));
    assert_eq!(config["instance"]["labels"]["team"], "infra");

    // What `config get` prints is a config `config set` accepts, unchanged.
    let round_trip = ctl.file("round-trip.json", &config.to_string());
    let again = ctl.json(&["config", "set", "web", "-f", &round_trip]).await;
    assert_eq!(again["result"], "unchanged");

    let table = ctl.table(&["config", "get", "web"]).await;
    assert!(table.contains("targetVMCount:        2"), "{table}");
    assert!(
        table.contains("hooks:                create=on-create.sh"),
        "{table}"
    );
    assert!(table.contains("\"machineType\""), "{table}");

    let dry = ctl
        .json(&["config", "set", "dry", "-f", &json_file, "--dry-run"])
        .await;
    assert_eq!(dry["result"], "valid");
    assert!(ctl.stored_config("dry").await.is_none(), "--dry-run wrote");
}

#[tokio::test]
async fn a_bad_config_exits_1_names_each_field_and_changes_nothing() {
    let ctl = Ctl::new().await;
    let good = ctl.file("good.json", JSON_CONFIG);
    ctl.json(&["config", "set", "web", "-f", &good]).await;
    let before = ctl.stored_config("web").await.expect("stored");

    let bad = ctl.file(
        "bad.rjson",
        "{\n  targetVMCount: -1\n  allowedZones: [\"zone-a\", \"US-central\"]\n  prefix: \"web-\"\n  instance: { name: \"fixed\" }\n  hooks: { create: \"../x\" }\n  secondsToRets: 5\n}\n",
    );
    let args = ["config", "set", "web", "-f", bad.as_str()];
    let stderr = assert_exit(&ctl.run(&args).await, 1, &args);
    for expected in [
        "targetVMCount: -1 is out of range",
        "allowedZones[1]: \"US-central\" is not a valid zone",
        "instance.name: must be \"{name}\"",
        "hooks.create: \"../x\" is not a plain file name",
        "secondsToRets: unknown field (did you mean \"secondsToRest\"?)",
        "nothing was written",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    let syntax = ctl.file("broken.json", "{\"targetVMCount\": ");
    let args = ["config", "set", "web", "-f", syntax.as_str()];
    let stderr = assert_exit(&ctl.run(&args).await, 1, &args);
    assert!(stderr.contains("not valid"), "{stderr}");
    for (name, text) in [
        ("twice.json", "{\"targetVMCount\": 2, \"allowedZones\": [\"zone-a\"], \"prefix\": \"web-\", \"prefix\": \"api-\", \"instance\": {}}"),
        ("twice.rjson", "{\n  targetVMCount: 2\n  allowedZones: [\"zone-a\"]\n  prefix: \"web-\"\n  instance: { labels: { a: \"x\", a: \"y\" } }\n}\n"),
    ] {
        let twice = ctl.file(name, text);
        let args = ["config", "set", "web", "-f", twice.as_str()];
        let stderr = assert_exit(&ctl.run(&args).await, 1, &args);
        assert!(stderr.contains("given twice"), "{name}: {stderr}");
    }
    let args = ["config", "set", "web", "-f", "/nonexistent/pool.yaml"];
    let stderr = assert_exit(&ctl.run(&args).await, 1, &args);
    assert!(
        stderr.contains("cannot read /nonexistent/pool.yaml"),
        "{stderr}"
    );

    assert_eq!(ctl.stored_config("web").await, Some(before));
}

#[tokio::test]
async fn usage_errors_exit_2_and_every_verb_has_help_with_an_example() {
    let ctl = Ctl::new().await;
    for args in [
        vec!["frobnicate"],
        vec!["scale", "web"],
        vec!["scale", "web", "-1"],
        vec!["scale", "web", "many"],
        vec!["config", "get", "Bad_Pool"],
        vec!["config", "set", "web"],
        vec!["zone", "exhaust", "web", "zone-a"],
        vec!["zone", "exhaust", "web", "zone-a", "--for", "soon"],
        vec!["instances", "web", "--zone", "Zone_A"],
        vec!["-o", "xml", "leader"],
    ] {
        assert_exit(&ctl.run(&args).await, 2, &args);
    }
    for verb in [
        vec!["config", "set"],
        vec!["config", "get"],
        vec!["config", "delete"],
        vec!["scale"],
        vec!["status"],
        vec!["instances"],
        vec!["zone", "exhaust"],
        vec!["zone", "clear"],
        vec!["events"],
        vec!["agents"],
        vec!["leader"],
    ] {
        let mut args = verb.clone();
        args.push("--help");
        let help = ctl.table(&args).await;
        assert!(
            help.contains("Example") && help.contains(&format!("pmctl {}", verb.join(" "))),
            "{verb:?} help lacks an example:\n{help}"
        );
    }
}

#[tokio::test]
async fn writes_are_compare_and_swap() {
    let ctl = Ctl::new().await;
    let file = ctl.file("web.json", JSON_CONFIG);
    let created = ctl.json(&["config", "set", "web", "-f", &file]).await;
    let read_revision = created["mod_revision"]
        .as_i64()
        .expect("revision")
        .to_string();
    // Someone else changes the pool after our read.
    ctl.json(&["scale", "web", "9"]).await;
    let args = [
        "config",
        "set",
        "web",
        "-f",
        file.as_str(),
        "--if-revision",
        read_revision.as_str(),
    ];
    let stderr = assert_exit(&ctl.run(&args).await, 1, &args);
    assert!(stderr.contains("changed by someone else"), "{stderr}");
    assert_eq!(
        ctl.stored_config("web")
            .await
            .expect("stored")
            .0
            .target_vm_count,
        9
    );
    // Creating only when absent: --if-revision 0 on an existing pool is a conflict too.
    let args = [
        "config",
        "set",
        "web",
        "-f",
        file.as_str(),
        "--if-revision",
        "0",
    ];
    assert_exit(&ctl.run(&args).await, 1, &args);

    // Concurrent scales never lose a write: each one reads again after a conflict.
    let runs: Vec<_> = (1..=4)
        .map(|n| {
            ctl.run_owned(vec![
                "-o".into(),
                "json".into(),
                "scale".into(),
                "web".into(),
                n.to_string(),
            ])
        })
        .collect();
    for out in futures::future::join_all(runs).await {
        assert_ok(&out, &["scale web N"]);
    }
    let events = ctl.json(&["events", "web", "--limit", "0"]).await;
    let scaled = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["kind"] == "scaled")
        .count();
    assert_eq!(scaled, 5, "one event per effective scale: {events}");
}

#[tokio::test]
async fn scale_and_delete_write_the_config() {
    let ctl = Ctl::new().await;
    let file = ctl.file("web.json", JSON_CONFIG);
    ctl.json(&["config", "set", "web", "-f", &file]).await;

    let scaled = ctl.json(&["scale", "web", "5"]).await;
    assert_eq!(
        keys_of(&scaled),
        ["changed", "mod_revision", "pool", "previous", "target"]
    );
    assert_eq!(
        (scaled["previous"].as_i64(), scaled["target"].as_i64()),
        (Some(2), Some(5))
    );
    assert_eq!(scaled["changed"], true);
    let (config, revision) = ctl.stored_config("web").await.expect("stored");
    assert_eq!(
        (config.target_vm_count, revision),
        (5, scaled["mod_revision"].as_i64().unwrap_or(-1))
    );
    assert_eq!(ctl.json(&["scale", "web", "5"]).await["changed"], false);
    assert!(ctl
        .table(&["scale", "web", "6"])
        .await
        .contains("targetVMCount 5 -> 6"));

    let deleted = ctl.json(&["config", "delete", "web"]).await;
    assert_eq!(keys_of(&deleted), ["mod_revision", "pool", "result"]);
    assert_eq!(deleted["result"], "deleting");
    let (tombstone, _) = ctl.stored_config("web").await.expect("tombstone stays");
    assert!(tombstone.deleted);
    assert_eq!(tombstone.target_vm_count, 0);
    assert_eq!(tombstone.allowed_zones, vec!["zone-a", "zone-b"]);
    assert_eq!(
        ctl.json(&["config", "delete", "web"]).await["result"],
        "already-deleting"
    );
    assert_eq!(ctl.json(&["config", "get", "web"]).await["deleted"], true);

    let args = ["scale", "web", "3"];
    let stderr = assert_exit(&ctl.run(&args).await, 1, &args);
    assert!(stderr.contains("being deleted"), "{stderr}");
    for args in [
        ["scale", "nopool", "3"].as_slice(),
        ["config", "get", "nopool"].as_slice(),
        ["config", "delete", "nopool"].as_slice(),
        ["instances", "nopool"].as_slice(),
        ["status", "nopool"].as_slice(),
    ] {
        let stderr = assert_exit(&ctl.run(args).await, 1, args);
        assert!(
            stderr.contains("pool \"nopool\" does not exist"),
            "{args:?}: {stderr}"
        );
    }
    // A deleted pool is re-created by setting its config again.
    assert_eq!(
        ctl.json(&["config", "set", "web", "-f", &file]).await["result"],
        "updated"
    );
    assert!(!ctl.stored_config("web").await.expect("stored").0.deleted);
}

#[tokio::test]
async fn zone_exhaust_writes_a_lease_bound_mark_and_clear_removes_it() {
    let ctl = Ctl::new().await;
    let file = ctl.file("web.json", JSON_CONFIG);
    ctl.json(&["config", "set", "web", "-f", &file]).await;

    let exhausted = ctl
        .json(&["zone", "exhaust", "web", "zone-b", "--for", "10m"])
        .await;
    assert_eq!(keys_of(&exhausted), ["exhausted", "lease", "pool", "zone"]);
    assert_eq!(
        keys_of(&exhausted["exhausted"]),
        [
            "backoff_multiplier",
            "class",
            "reason",
            "seconds_left",
            "set_by",
            "since_unix_ms",
            "until_unix_ms"
        ]
    );
    let key = ctl.store.keys().exhausted("web", "zone-b").expect("key");
    let mark = ctl
        .store
        .get::<ZoneExhaustion>(&key)
        .await
        .expect("get")
        .expect("the mark exists");
    assert_eq!(mark.value.reason, "manual");
    assert_eq!(mark.value.set_by, "pmctl");
    assert_eq!(mark.value.backoff_multiplier, 1);
    assert_eq!(mark.value.until_unix_ms - mark.value.since_unix_ms, 600_000);
    assert_ne!(mark.lease, 0, "the mark is bound to a lease");
    assert_eq!(exhausted["lease"].as_i64(), Some(mark.lease));
    let ttl = ctl
        .store
        .client()
        .lease_client()
        .time_to_live(mark.lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .expect("lease");
    assert!((590..=600).contains(&ttl.ttl()), "ttl {}", ttl.ttl());
    assert_eq!(ttl.keys(), [key.as_bytes().to_vec()]);

    let status = ctl.json(&["status", "web"]).await;
    let zone_b = &status["pools"][0]["zones"][1];
    assert_eq!(zone_b["zone"], "zone-b");
    let left = zone_b["exhausted"]["seconds_left"]
        .as_i64()
        .expect("seconds_left");
    assert!((590..=600).contains(&left), "{left}");
    let table = ctl.table(&["status", "web"]).await;
    assert!(table.contains("left)"), "{table}");

    let args = ["zone", "exhaust", "web", "zone-z", "--for", "1m"];
    let stderr = assert_exit(&ctl.run(&args).await, 1, &args);
    assert!(
        stderr.contains("not one of pool \"web\"'s allowedZones"),
        "{stderr}"
    );

    let cleared = ctl.json(&["zone", "clear", "web", "zone-b"]).await;
    assert_eq!(
        cleared,
        json!({"pool": "web", "zone": "zone-b", "cleared": true})
    );
    assert!(ctl
        .store
        .get::<ZoneExhaustion>(&key)
        .await
        .expect("get")
        .is_none());
    let ttl = ctl
        .store
        .client()
        .lease_client()
        .time_to_live(mark.lease, None)
        .await
        .expect("lease lookup");
    assert_eq!(ttl.ttl(), -1, "the lease was revoked");
    assert_eq!(
        ctl.json(&["zone", "clear", "web", "zone-b"]).await["cleared"],
        false
    );
    let events = ctl.json(&["events", "web"]).await;
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert_eq!(kinds, ["config-set", "zone-exhausted", "zone-cleared"]);
}

fn instance(state: InstanceState, preempted: bool, agent: &str) -> ObservedInstance {
    ObservedInstance {
        state: state as i32,
        preempted,
        agent_id: agent.into(),
        gce_id: "4242".into(),
        created_unix_ms: pm_etcd::now_unix_ms() - 60_000,
        state_changed_unix_ms: pm_etcd::now_unix_ms() - 30_000,
        ..Default::default()
    }
}

#[tokio::test]
async fn reads_show_what_etcd_holds() {
    let ctl = Ctl::new().await;
    let file = ctl.file("web.json", JSON_CONFIG);
    ctl.json(&["config", "set", "web", "-f", &file]).await;
    let (store, keys) = (&ctl.store, ctl.store.keys().clone());

    // Nothing elected yet.
    assert_eq!(ctl.json(&["leader"]).await, json!({"leader": null}));
    assert_eq!(ctl.json(&["agents"]).await["agents"], json!([]));

    let desired = |count, accept_new| ZoneDesired {
        count,
        accept_new,
        ..Default::default()
    };
    store
        .put(
            &keys.zone_desired("web", "zone-a").unwrap(),
            &desired(3, true),
            0,
        )
        .await
        .unwrap();
    for (name, state, preempted) in [
        ("web-aaaa0001", InstanceState::Running, false),
        ("web-aaaa0002", InstanceState::Staging, false),
        ("web-aaaa0003", InstanceState::Terminated, true),
        ("web-aaaa0004", InstanceState::Deleting, false),
    ] {
        let key = keys.instance("web", "zone-a", name).unwrap();
        store
            .put(&key, &instance(state, preempted, "agent-a1"), 0)
            .await
            .unwrap();
    }
    let key = keys.instance("web", "zone-b", "web-bbbb0001").unwrap();
    store
        .put(
            &key,
            &instance(InstanceState::Running, false, "agent-b1"),
            0,
        )
        .await
        .unwrap();

    // Agents: two in zone-a (a1 active), one in zone-b; and a scheduler leader.
    let none = CancellationToken::new();
    let mut sessions = Vec::new();
    let mut leaderships = Vec::new();
    for (zone, id) in [
        ("zone-a", "agent-a1"),
        ("zone-a", "agent-a2"),
        ("zone-b", "agent-b1"),
    ] {
        let session = Session::grant(store.client(), Duration::from_secs(30))
            .await
            .unwrap();
        let info = AgentInfo {
            agent_id: id.into(),
            zone: zone.into(),
            hostname: format!("host-{id}"),
            started_unix_ms: pm_etcd::now_unix_ms() - 3_600_000,
            version: "0.1.0".into(),
            // a1 reconciles, a2 stands by, b1 is older than the field.
            reconciling: match id {
                "agent-a1" => Some(true),
                "agent-a2" => Some(false),
                _ => None,
            },
            last_pass_unix_ms: if id == "agent-a1" {
                pm_etcd::now_unix_ms() - 5_000
            } else {
                0
            },
        };
        store
            .put(
                &keys.agent_member(zone, id).unwrap(),
                &info,
                session.lease_id(),
            )
            .await
            .unwrap();
        if id != "agent-a2" {
            let election =
                Election::new(store.client().clone(), &keys.agent_election(zone).unwrap());
            leaderships.push(election.campaign(&session, id, &none).await.unwrap());
        }
        sessions.push(session);
    }
    let scheduler = Session::grant(store.client(), Duration::from_secs(30))
        .await
        .unwrap();
    let election = Election::new(store.client().clone(), &keys.scheduler_election());
    let _leader = election
        .campaign(&scheduler, "sched-1", &none)
        .await
        .unwrap();
    let events = EventLog::new(store.clone(), "agent-a1", Duration::from_secs(3600));
    events
        .record(
            "web",
            "preempted",
            Severity::Warning,
            "zone-a",
            "web-aaaa0003",
            "instance preempted",
        )
        .await
        .unwrap();

    let status = ctl.json(&["status"]).await;
    assert_eq!(keys_of(&status), ["leader", "now_unix_ms", "pools"]);
    assert_eq!(status["leader"]["id"], "sched-1");
    let pool = &status["pools"][0];
    assert_eq!(
        keys_of(pool),
        [
            "distribution",
            "phase",
            "pool",
            "rollout",
            "target",
            "totals",
            "zones"
        ]
    );
    assert_eq!(
        (pool["pool"].as_str(), pool["phase"].as_str()),
        (Some("web"), Some("active"))
    );
    assert_eq!(pool["target"], 2);
    assert_eq!(
        pool["totals"],
        json!({"desired": 3, "running": 2, "starting": 1, "lost": 1, "deleting": 1})
    );
    let zone_a = &pool["zones"][0];
    assert_eq!(
        keys_of(zone_a),
        [
            "accept_new",
            "agent",
            "allowed",
            "deleting",
            "desired",
            "exhausted",
            "lost",
            "running",
            "starting",
            "zone"
        ]
    );
    assert_eq!(
        zone_a["agent"],
        json!({"active": "agent-a1", "standbys": ["agent-a2"]})
    );
    assert_eq!(
        (zone_a["running"].as_u64(), zone_a["lost"].as_u64()),
        (Some(1), Some(1))
    );
    let zone_b = &pool["zones"][1];
    assert_eq!(zone_b["desired"], 0, "an absent desired key means 0");
    assert_eq!(
        zone_b["agent"],
        json!({"active": "agent-b1", "standbys": []})
    );

    let table = ctl.table(&["status", "web"]).await;
    assert!(table.contains("scheduler leader: sched-1"), "{table}");
    assert!(
        table.contains("pool web: target 2, desired 3, running 2, starting 1, lost 1"),
        "{table}"
    );
    assert!(table.contains("agent-a1 +1 standby"), "{table}");

    let instances = ctl.json(&["instances", "web"]).await;
    assert_eq!(keys_of(&instances), ["instances", "now_unix_ms", "pool"]);
    let rows = instances["instances"].as_array().expect("list");
    assert_eq!(rows.len(), 5);
    assert_eq!(
        keys_of(&rows[0]),
        [
            "agent_id",
            "created_unix_ms",
            "gce_id",
            "labels",
            "name",
            "preempted",
            "state",
            "state_changed_unix_ms",
            "status",
            "zone"
        ]
    );
    let statuses: Vec<(&str, &str, &str)> = rows
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap_or(""),
                r["state"].as_str().unwrap_or(""),
                r["status"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [
            ("web-aaaa0001", "RUNNING", "running"),
            ("web-aaaa0002", "STAGING", "starting"),
            ("web-aaaa0003", "TERMINATED", "lost"),
            ("web-aaaa0004", "DELETING", "deleting"),
            ("web-bbbb0001", "RUNNING", "running"),
        ]
    );
    let only_b = ctl.json(&["instances", "web", "--zone", "zone-b"]).await;
    assert_eq!(only_b["instances"].as_array().map(Vec::len), Some(1));
    let table = ctl.table(&["instances", "web"]).await;
    assert!(table.contains("TERMINATED (preempted)"), "{table}");

    let agents = ctl.json(&["agents"]).await;
    let rows: Vec<(String, String, String, Value)> = agents["agents"]
        .as_array()
        .expect("agents")
        .iter()
        .map(|a| {
            (
                a["zone"].as_str().unwrap_or("").to_string(),
                a["agent_id"].as_str().unwrap_or("").to_string(),
                a["role"].as_str().unwrap_or("").to_string(),
                a["reconciling"].clone(),
            )
        })
        .collect();
    let expected: Vec<(String, String, String, Value)> = [
        ("zone-a", "agent-a1", "active", json!(true)),
        ("zone-a", "agent-a2", "standby", json!(false)),
        ("zone-b", "agent-b1", "active", Value::Null),
    ]
    .iter()
    .map(|(z, a, r, c)| (z.to_string(), a.to_string(), r.to_string(), c.clone()))
    .collect();
    assert_eq!(rows, expected);
    assert_eq!(agents["agents"][0]["hostname"], "host-agent-a1");
    assert!(agents["agents"][0]["last_pass_unix_ms"].as_i64().unwrap() > 0);
    let table = ctl.table(&["agents"]).await;
    assert!(table.contains("host-agent-a2"), "{table}");
    assert!(table.contains("RECONCILING"), "{table}");
    let b1 = table.lines().find(|l| l.contains("agent-b1")).unwrap_or("");
    assert!(b1.contains("unknown"), "{table}");

    let leader = ctl.json(&["leader"]).await;
    assert_eq!(
        keys_of(&leader["leader"]),
        ["create_revision", "id", "key", "lease"]
    );
    assert_eq!(leader["leader"]["id"], "sched-1");
    assert!(ctl
        .table(&["leader"])
        .await
        .contains("scheduler leader: sched-1"));

    let events = ctl.json(&["events", "web"]).await;
    let last = events["events"]
        .as_array()
        .and_then(|e| e.last())
        .expect("events");
    assert_eq!(
        keys_of(last),
        [
            "count",
            "instance",
            "kind",
            "last_unix_ms",
            "message",
            "pool",
            "seq",
            "severity",
            "source",
            "time",
            "unix_ms",
            "zone"
        ]
    );
    assert_eq!(
        (
            last["kind"].as_str(),
            last["severity"].as_str(),
            last["source"].as_str()
        ),
        (Some("preempted"), Some("warning"), Some("agent-a1"))
    );
    assert_eq!(
        ctl.json(&["events", "--limit", "1"]).await["events"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    let table = ctl.table(&["events"]).await;
    assert!(table.contains("instance preempted [agent-a1]"), "{table}");
    drop(leaderships);
}

#[tokio::test]
async fn an_unreachable_etcd_fails_fast_with_a_clear_message() {
    let ctl = Ctl::new().await;
    let dead = format!("http://127.0.0.1:{}", free_port());
    let started = Instant::now();
    let out = tokio::time::timeout(
        RUN_BOUND,
        Command::new(bin_path("pmctl"))
            .args(["--etcd", &dead, "--prefix", &ctl.prefix, "status"])
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("pmctl gave up in time")
    .expect("pmctl runs");
    let elapsed = started.elapsed();
    let stderr = assert_exit(&out, 1, &["status"]);
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    assert!(
        stderr.contains(&format!("cannot reach etcd at {dead}")) && stderr.contains("refused"),
        "{stderr}"
    );
}

#[tokio::test]
async fn events_follow_and_status_watch_show_later_changes() {
    let ctl = Ctl::new().await;
    let file = ctl.file("web.json", JSON_CONFIG);
    ctl.json(&["config", "set", "web", "-f", &file]).await;

    let mut follow = ctl
        .command(&["-o", "json", "events", "web", "--follow"])
        .spawn()
        .expect("events --follow starts");
    let mut events = BufReader::new(follow.stdout.take().expect("stdout")).lines();
    // The event written before it started is listed first...
    line_where(&mut events, "the config-set event", |l| {
        l.contains("\"config-set\"")
    })
    .await;

    let mut watch = ctl
        .command(&["status", "web", "--watch"])
        .spawn()
        .expect("status --watch starts");
    let mut screen = BufReader::new(watch.stdout.take().expect("stdout")).lines();
    let top = line_where(&mut screen, "the first screen", |l| {
        l.contains("scheduler leader")
    })
    .await;
    assert!(
        top.starts_with("\x1b[H\x1b[2J"),
        "redrawn in place: {top:?}"
    );
    line_where(&mut screen, "the first status", |l| {
        l.contains("pool web: target 2")
    })
    .await;

    // ...and a change made afterwards arrives on both.
    ctl.json(&["scale", "web", "7"]).await;
    let line = line_where(&mut events, "the scaled event", |l| {
        l.contains("\"scaled\"")
    })
    .await;
    let event: Value = serde_json::from_str(&line).expect("one JSON object per line");
    assert_eq!(event["message"], "scaled by pmctl: targetVMCount 2 -> 7");
    line_where(&mut screen, "the redrawn status", |l| {
        l.contains("pool web: target 7")
    })
    .await;

    let key = ctl
        .store
        .keys()
        .instance("web", "zone-a", "web-cccc0001")
        .unwrap();
    ctl.store
        .put(
            &key,
            &instance(InstanceState::Running, false, "agent-a1"),
            0,
        )
        .await
        .unwrap();
    line_where(&mut screen, "the new instance counted", |l| {
        l.contains("pool web: target 7, desired 0, running 1")
    })
    .await;

    follow.kill().await.ok();
    watch.kill().await.ok();
}
