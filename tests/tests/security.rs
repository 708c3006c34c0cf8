//! etcd with TLS client certificates and with user/password auth, end to end: the etcd
//! layer and a real pm-scheduler process reach it through their flags, the wrong
//! credentials are refused, and the password never shows in logs. With auth on, each
//! component works under the least-privilege role INSTALL.md section 6 documents, and is
//! refused a sample of what that role leaves out (see `least_privilege_roles_per_component`).

use std::collections::BTreeSet;
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, Permission};
use gce_sim::Sim;
use pm_etcd::{EtcdOptions, Keyspace, Secret, Store, TlsFiles};
use pm_gce::compute::Compute;
use pm_gce::rest::{Auth, RestCompute, RestConfig};
use pm_proto::{AgentInfo, Event, PoolConfig, ZoneDesired};
use pm_tests::cluster::{http_get, metrics_addr, PROJECT, TEMPLATE};
use pm_tests::{bin_path, eventually, poll_until, unique_prefix, Daemon, EtcdCluster};
use tokio::process::Command;

const BOUND: Duration = Duration::from_secs(20);
const PASSWORD: &str = "s3cret-pm-password-7d1f";

fn pool() -> PoolConfig {
    PoolConfig {
        target_vm_count: 2,
        allowed_zones: vec!["zone-a".into()],
        prefix: "web-".into(),
        instance_json: "{}".into(),
        ..Default::default()
    }
}

/// Starts a pm-scheduler process with `args` and waits until it placed pool `web`.
async fn scheduler_places_the_pool(
    store: &Store,
    etcd: &EtcdCluster,
    args: Vec<String>,
    env: &[(&str, &str)],
) -> Daemon {
    store
        .put(&store.keys().pool_config("web").unwrap(), &pool(), 0)
        .await
        .unwrap();
    let scheduler = Daemon::start(etcd.dir(), "scheduler", "pm-scheduler", &args, env);
    let key = store.keys().zone_desired("web", "zone-a").unwrap();
    eventually("the scheduler writes desired counts", BOUND, || async {
        store
            .get::<ZoneDesired>(&key)
            .await
            .ok()
            .flatten()
            .map(|d| d.value.count)
    })
    .await;
    scheduler
}

#[tokio::test]
async fn etcd_with_client_certificates() {
    let etcd = EtcdCluster::start_tls().await;
    let tls = etcd.tls().unwrap().clone();
    let prefix = unique_prefix();
    let store = Store::new(etcd.client().await, Keyspace::new(&prefix).unwrap());
    assert!(etcd.endpoints()[0].starts_with("https://"));

    // Without a client certificate, or without TLS, etcd refuses.
    let mut no_cert = EtcdOptions::new(etcd.endpoints());
    no_cert.tls = Some(TlsFiles {
        ca: Some(tls.ca.clone()),
        cert: None,
        key: None,
    });
    no_cert.request_timeout = Duration::from_secs(2);
    let refused = match no_cert.connect().await {
        Ok(client) => Store::new(client, Keyspace::new(&prefix).unwrap())
            .get::<PoolConfig>("/x")
            .await
            .is_err(),
        Err(_) => true,
    };
    assert!(refused, "a client without a certificate must be refused");
    let plain = etcd.endpoints()[0].replace("https://", "http://");
    let mut plain = EtcdOptions::new(vec![plain]);
    plain.request_timeout = Duration::from_secs(2);
    let refused = match plain.connect().await {
        Ok(client) => Store::new(client, Keyspace::new(&prefix).unwrap())
            .get::<PoolConfig>("/x")
            .await
            .is_err(),
        Err(_) => true,
    };
    assert!(refused, "plain HTTP must be refused");

    // A scheduler given the CA, certificate and key through its flags works.
    let args = vec![
        "--etcd".to_string(),
        etcd.endpoints()[0].replace("https://", "http://"),
        "--prefix".into(),
        prefix.clone(),
        "--etcd-cacert".into(),
        tls.ca.to_string_lossy().into_owned(),
        "--etcd-cert".into(),
        tls.client_cert.to_string_lossy().into_owned(),
        "--etcd-key".into(),
        tls.client_key.to_string_lossy().into_owned(),
        "--lease-ttl".into(),
        "2s".into(),
    ];
    let mut scheduler = scheduler_places_the_pool(&store, &etcd, args, &[]).await;
    assert_eq!(scheduler.terminate(BOUND).await, Some(0));
}

/// A one-node etcd with its root user added (auth not enabled yet), a fresh prefix, its
/// keyspace, and a client to set up users and roles with.
async fn etcd_with_root() -> (EtcdCluster, String, Keyspace, Client) {
    let etcd = EtcdCluster::start(1).await;
    let prefix = unique_prefix();
    let keys = Keyspace::new(&prefix).unwrap();
    let mut admin = etcd.client().await;
    admin.user_add("root", "root-password", None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    (etcd, prefix, keys, admin)
}

#[tokio::test]
async fn etcd_with_user_and_password() {
    // Auth: root, and a role over pm's prefix only.
    let (etcd, prefix, keys, mut admin) = etcd_with_root().await;
    admin.role_add("pm").await.unwrap();
    admin
        .role_grant_permission("pm", Permission::read_write(keys.root()).with_prefix())
        .await
        .unwrap();
    admin.user_add("pm", PASSWORD, None).await.unwrap();
    admin.user_grant_role("pm", "pm").await.unwrap();
    admin.auth_enable().await.unwrap();

    let mut options = EtcdOptions::new(etcd.endpoints());
    options.user = Some(("pm".into(), Secret::new(PASSWORD)));
    let store = Store::new(options.connect().await.unwrap(), keys.clone());
    store
        .put(&keys.pool_config("probe").unwrap(), &pool(), 0)
        .await
        .unwrap();

    // A wrong password is refused; so is a key outside the role's prefix.
    let mut wrong = EtcdOptions::new(etcd.endpoints());
    wrong.user = Some(("pm".into(), Secret::new("not-the-password")));
    let err = wrong.connect().await.err().expect("wrong password refused");
    assert!(!err.to_string().contains("not-the-password"), "{err}");
    let err = store
        .put("/elsewhere", &pool(), 0)
        .await
        .expect_err("outside the role");
    assert!(err.to_string().contains("permission denied"), "{err}");
    let anonymous = Client::connect(etcd.endpoints(), Some(ConnectOptions::new()))
        .await
        .unwrap();
    assert!(Store::new(anonymous, keys.clone())
        .get::<PoolConfig>(&keys.pool_config("probe").unwrap())
        .await
        .is_err());

    // A scheduler given the user and the password (by variable) works, and its log,
    // even at debug level, never shows the password.
    let args = vec![
        "--etcd".to_string(),
        etcd.endpoints().join(","),
        "--prefix".into(),
        prefix,
        "--etcd-user".into(),
        "pm".into(),
        "--lease-ttl".into(),
        "2s".into(),
    ];
    let mut scheduler = scheduler_places_the_pool(
        &store,
        &etcd,
        args,
        &[("PM_ETCD_PASSWORD", PASSWORD), ("RUST_LOG", "debug")],
    )
    .await;
    assert_eq!(scheduler.terminate(BOUND).await, Some(0));
    let log = scheduler.log();
    assert!(log.contains("elected leader"), "{log}");
    assert!(!log.contains(PASSWORD), "the password leaked into the log");
}

/// Bound on the pool converging under the least-privilege roles.
const CONVERGE_BOUND: Duration = Duration::from_secs(60);
/// Bound on one pmctl run.
const PMCTL_BOUND: Duration = Duration::from_secs(20);

/// The password of one of the least-privilege test users.
fn password_of(user: &str) -> String {
    format!("{user}-pw-41c9")
}

/// The per-component roles of INSTALL.md section 6 over `keys`' root (`<prefix>/v1/`),
/// by user name (each user has the role of the same name).
fn least_privilege_roles(keys: &Keyspace) -> Vec<(&'static str, Vec<Permission>)> {
    let root = keys.root();
    let pools = keys.pools_prefix();
    let events = keys.all_events_prefix();
    let scheduler = format!("{root}scheduler/");
    let agents_zone_a = format!("{}zone-a/", keys.agents_prefix());
    vec![
        (
            "pm-scheduler",
            vec![
                Permission::read(root).with_prefix(),
                Permission::read_write(pools.as_str()).with_prefix(),
                Permission::read_write(events.as_str()).with_prefix(),
                Permission::read_write(scheduler).with_prefix(),
            ],
        ),
        (
            "pm-agent-zone-a",
            vec![
                // The root key itself, not the prefix: the readiness probe of --metrics.
                Permission::read(root),
                Permission::read_write(pools.as_str()).with_prefix(),
                Permission::read_write(events.as_str()).with_prefix(),
                Permission::read_write(agents_zone_a).with_prefix(),
            ],
        ),
        (
            "pm-operator",
            vec![
                Permission::read(root).with_prefix(),
                Permission::read_write(pools.as_str()).with_prefix(),
                Permission::read_write(events.as_str()).with_prefix(),
            ],
        ),
        ("pm-viewer", vec![Permission::read(root).with_prefix()]),
    ]
}

/// A store under `keys` logged in as `user`.
async fn store_as(etcd: &EtcdCluster, keys: &Keyspace, user: &str) -> Store {
    let mut options = EtcdOptions::new(etcd.endpoints());
    options.user = Some((user.into(), Secret::new(password_of(user))));
    let client = options
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{user} logs in: {e}"));
    Store::new(client, keys.clone())
}

/// Asserts that an etcd request was refused for lack of permission.
fn assert_denied<T: std::fmt::Debug>(what: &str, result: pm_etcd::Result<T>) {
    match result {
        Ok(value) => panic!("{what} was allowed: {value:?}"),
        Err(e) => assert!(
            e.to_string().contains("permission denied"),
            "{what} failed, but not for lack of permission: {e}"
        ),
    }
}

/// Runs the real pmctl as etcd user `user` to its end.
async fn pmctl_as(etcd: &EtcdCluster, prefix: &str, user: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(bin_path("pmctl"));
    cmd.arg("--etcd")
        .arg(etcd.endpoints().join(","))
        .arg("--prefix")
        .arg(prefix)
        .arg("--etcd-user")
        .arg(user)
        .args(args)
        .env("PM_ETCD_PASSWORD", password_of(user))
        .env_remove("PM_ETCD")
        .env_remove("PM_PREFIX")
        .env_remove("PM_OUTPUT")
        .env_remove("PM_CONFIG")
        .env_remove("PM_ETCD_USER")
        .env_remove("PM_ETCD_PASSWORD_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    tokio::time::timeout(PMCTL_BOUND, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("pmctl {args:?} as {user} did not finish"))
        .expect("pmctl runs")
}

/// Asserts that a pmctl run succeeded; returns its stdout.
fn succeeded(user: &str, args: &[&str], out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "pmctl {args:?} as {user} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A pmctl config file of pool `web` in zone-a with the standard template.
fn web_config(target: i64) -> String {
    let instance: serde_json::Value = serde_json::from_str(TEMPLATE).expect("template is JSON");
    serde_json::json!({
        "targetVMCount": target,
        "allowedZones": ["zone-a"],
        "prefix": "web-",
        "instance": instance,
        "secondsToRest": 1,
        "secondsForExhaustion": 3,
    })
    .to_string()
}

/// The daemons' logs, for failure messages.
fn logs(daemons: &[&Daemon]) -> String {
    daemons
        .iter()
        .map(|d| format!("==== {}\n{}", d.name(), d.log()))
        .collect()
}

/// Polls `check` for at most `bound`; on timeout panics with `what` and the daemons' logs.
async fn wait<T, F, Fut>(what: &str, bound: Duration, daemons: &[&Daemon], check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    match poll_until(bound, check).await {
        Some(value) => value,
        None => panic!(
            "timed out after {bound:?} waiting for: {what}\n{}",
            logs(daemons)
        ),
    }
}

/// The per-component roles of INSTALL.md section 6 are enough for a real scheduler, agent
/// and operator's pmctl to converge a pool (events and readiness included), and refuse
/// what they leave out: the viewer cannot write; the agent of zone-a cannot write the
/// scheduler's election nor zone-b's agent membership and election keys, nor read the
/// scheduler's keys or zone-b's agent members; the scheduler cannot write an agent's
/// membership key, nor the operator that or the scheduler's election. The agent's role
/// has readwrite on all of `pools/` (etcd grants key ranges, and a pool's keys start with
/// its name), so it is not checked to be kept out of other zones' keys there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_privilege_roles_per_component() {
    // Auth on, with root and one user per component, each with its own role.
    let (etcd, prefix, keys, mut admin) = etcd_with_root().await;
    for (user, permissions) in least_privilege_roles(&keys) {
        admin.role_add(user).await.unwrap();
        for permission in permissions {
            admin.role_grant_permission(user, permission).await.unwrap();
        }
        admin.user_add(user, password_of(user), None).await.unwrap();
        admin.user_grant_role(user, user).await.unwrap();
    }
    admin.auth_enable().await.unwrap();
    let operator = store_as(&etcd, &keys, "pm-operator").await;

    // gce-sim in this process, with one zone.
    let sim = Sim::builder()
        .zones(["zone-a"])
        .capacity(100)
        .op_delay(Duration::from_millis(50))
        .boot_delay(Duration::from_millis(100))
        .build()
        .expect("gce-sim settings")
        .start_local()
        .await
        .expect("gce-sim starts");
    let mut rest = RestConfig::new(sim.compute_url(), Auth::None).expect("rest config");
    rest.timeout = Duration::from_secs(10);
    let compute: Arc<dyn Compute> = Arc::new(RestCompute::new(rest).await.expect("rest client"));

    // A real scheduler and a real agent, each logged in as its own user.
    let common = |user: &str| {
        vec![
            "--etcd".to_string(),
            etcd.endpoints().join(","),
            "--prefix".into(),
            prefix.clone(),
            "--etcd-user".into(),
            user.into(),
            "--lease-ttl".into(),
            "2s".into(),
            "--metrics".into(),
            "127.0.0.1:0".into(),
        ]
    };
    let mut scheduler_args = common("pm-scheduler");
    scheduler_args.extend(["--id".into(), "scheduler-lp".into()]);
    let scheduler_password = password_of("pm-scheduler");
    let mut scheduler = Daemon::start(
        etcd.dir(),
        "scheduler-lp",
        "pm-scheduler",
        &scheduler_args,
        &[("PM_ETCD_PASSWORD", scheduler_password.as_str())],
    );
    let mut agent_args = common("pm-agent-zone-a");
    agent_args.extend([
        "--zone".into(),
        "zone-a".into(),
        "--id".into(),
        "agent-zone-a-lp".into(),
        "--project".into(),
        PROJECT.into(),
        "--gce-endpoint".into(),
        sim.compute_url(),
        "--no-auth".into(),
        "--gce-timeout".into(),
        "10s".into(),
    ]);
    let agent_password = password_of("pm-agent-zone-a");
    let mut agent = Daemon::start(
        etcd.dir(),
        "agent-zone-a-lp",
        "pm-agent",
        &agent_args,
        &[("PM_ETCD_PASSWORD", agent_password.as_str())],
    );

    // The operator creates the pool through the real pmctl.
    let config_file = etcd.dir().join("web.json");
    std::fs::write(&config_file, web_config(2)).unwrap();
    let config_path = config_file.to_string_lossy().into_owned();
    let set = ["config", "set", "web", "-f", config_path.as_str()];
    let out = pmctl_as(&etcd, &prefix, "pm-operator", &set).await;
    succeeded("pm-operator", &set, &out);

    // The pool converges: 2 RUNNING labelled instances in GCE, both observed in etcd.
    let instances_prefix = keys.instances_prefix("web", "zone-a").unwrap();
    let filter = "labels.pm-pool = \"web\"";
    wait(
        "2 RUNNING instances of pool web, observed in etcd",
        CONVERGE_BOUND,
        &[&scheduler, &agent],
        || async {
            let listed = compute.list(PROJECT, "zone-a", Some(filter)).await.ok()?;
            let running: BTreeSet<String> = listed
                .iter()
                .filter(|i| i.status.map(|s| s.as_str()) == Some("RUNNING"))
                .map(|i| i.name.clone())
                .collect();
            let observed: BTreeSet<String> = operator
                .list_keys(&instances_prefix)
                .await
                .ok()?
                .iter()
                .filter_map(|k| k.strip_prefix(&instances_prefix).map(str::to_string))
                .collect();
            (listed.len() == 2 && running.len() == 2 && observed == running).then_some(())
        },
    )
    .await;

    // Both daemons are ready (their etcd probe passes) and every component could record
    // its events.
    for daemon in [&scheduler, &agent] {
        let addr = wait(
            &format!("{} logs its metrics address", daemon.name()),
            CONVERGE_BOUND,
            &[&scheduler, &agent],
            || async { metrics_addr(&daemon.log()) },
        )
        .await;
        wait(
            &format!("{} is ready", daemon.name()),
            CONVERGE_BOUND,
            &[&scheduler, &agent],
            || async {
                (http_get(addr, "/readyz").await? == (200, "ready\n".into())).then_some(())
            },
        )
        .await;
    }
    let events_prefix = keys.events_prefix("web").unwrap();
    let wanted: BTreeSet<String> = ["scheduler-lp", "agent-zone-a-lp", "pmctl"]
        .map(String::from)
        .into();
    wait(
        "events of the scheduler, the agent and pmctl",
        CONVERGE_BOUND,
        &[&scheduler, &agent],
        || async {
            let listing = operator.list::<Event>(&events_prefix).await.ok()?;
            let sources: BTreeSet<String> = listing
                .items
                .into_iter()
                .map(|(_, e)| e.value.source)
                .collect();
            sources.is_superset(&wanted).then_some(())
        },
    )
    .await;

    // The viewer reads everything pmctl shows, and can change nothing.
    let reads: [(&[&str], &str); 6] = [
        (&["status"], "web"),
        (&["instances", "web"], "web-"),
        (&["events", "web"], "config-set"),
        (&["agents"], "agent-zone-a-lp"),
        (&["leader"], "scheduler-lp"),
        (&["config", "get", "web"], "zone-a"),
    ];
    for (args, shown) in reads {
        let out = pmctl_as(&etcd, &prefix, "pm-viewer", args).await;
        let stdout = succeeded("pm-viewer", args, &out);
        assert!(
            stdout.contains(shown),
            "pmctl {args:?} as pm-viewer does not show {shown:?}: {stdout}"
        );
    }
    std::fs::write(&config_file, web_config(3)).unwrap();
    let writes: [&[&str]; 3] = [
        &set,
        &["scale", "web", "5"],
        &["zone", "exhaust", "web", "zone-a", "--for", "1m"],
    ];
    for args in writes {
        let out = pmctl_as(&etcd, &prefix, "pm-viewer", args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "pmctl {args:?} as pm-viewer: {stderr}"
        );
        assert!(
            stderr.contains("permission denied"),
            "pmctl {args:?} as pm-viewer: {stderr}"
        );
    }
    let stored = operator
        .get::<PoolConfig>(&keys.pool_config("web").unwrap())
        .await
        .unwrap()
        .expect("pool web exists");
    assert_eq!(
        stored.value.target_vm_count, 2,
        "the viewer changed the pool"
    );
    assert!(operator
        .get::<pm_proto::ZoneExhaustion>(&keys.exhausted("web", "zone-a").unwrap())
        .await
        .unwrap()
        .is_none());

    // The agent cannot write the scheduler's election nor zone-b's agent membership and
    // election keys, nor read the scheduler's keys or zone-b's agent members. (Its
    // readwrite on all of pools/ also covers other zones' keys there.)
    let agent_store = store_as(&etcd, &keys, "pm-agent-zone-a").await;
    let scheduler_election = format!("{}/intruder", keys.scheduler_election());
    let zone_b_member = keys.agent_member("zone-b", "intruder").unwrap();
    let zone_b_election = format!("{}/intruder", keys.agent_election("zone-b").unwrap());
    for key in [&scheduler_election, &zone_b_member, &zone_b_election] {
        assert_denied(
            &format!("agent of zone-a writes {key}"),
            agent_store.put(key, &AgentInfo::default(), 0).await,
        );
    }
    assert_denied(
        "agent of zone-a reads the scheduler's keys",
        agent_store
            .list_keys(&format!("{}scheduler/", keys.root()))
            .await,
    );
    assert_denied(
        "agent of zone-a reads zone-b's agent members",
        agent_store
            .list_keys(&keys.agent_members_prefix("zone-b").unwrap())
            .await,
    );
    assert!(agent_store
        .get::<PoolConfig>(&keys.pool_config("web").unwrap())
        .await
        .unwrap()
        .is_some());
    // The scheduler cannot write an agent's membership key; the operator neither that
    // nor the scheduler's election.
    let scheduler_store = store_as(&etcd, &keys, "pm-scheduler").await;
    let zone_a_member = keys.agent_member("zone-a", "intruder").unwrap();
    assert_denied(
        "scheduler writes an agent key",
        scheduler_store
            .put(&zone_a_member, &AgentInfo::default(), 0)
            .await,
    );
    for key in [&zone_a_member, &scheduler_election] {
        assert_denied(
            &format!("operator writes {key}"),
            operator.put(key, &AgentInfo::default(), 0).await,
        );
    }

    // On SIGTERM each daemon resigns and revokes its session lease, which takes write
    // permission on every key bound to it: its election and membership keys are gone at
    // once.
    assert_eq!(scheduler.terminate(CONVERGE_BOUND).await, Some(0));
    assert_eq!(agent.terminate(CONVERGE_BOUND).await, Some(0));
    for prefix in [
        format!("{}scheduler/", keys.root()),
        format!("{}zone-a/", keys.agents_prefix()),
    ] {
        let left = operator.list_keys(&prefix).await.unwrap();
        assert!(
            left.is_empty(),
            "left under {prefix}: {left:?}\n{}",
            logs(&[&scheduler, &agent])
        );
    }
    let all = logs(&[&scheduler, &agent]);
    assert!(!all.contains("permission denied"), "{all}");
    assert!(!all.contains(&scheduler_password) && !all.contains(&agent_password));
}
