//! The agent's hook runner with real processes and a real etcd for its events: the
//! environment, timeouts, failures, huge output, and names that are not plain.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pm_agent::hooks::{HookCall, HookError, HookEvent, HookRunner};
use pm_etcd::{EventLog, Store};
use pm_proto::Event;
use pm_tests::{eventually, write_script, EtcdCluster};

async fn runner(dir: Option<&Path>, timeout: Duration) -> (EtcdCluster, Store, HookRunner) {
    let etcd = EtcdCluster::start(1).await;
    let store = etcd.store().await;
    let events = Arc::new(EventLog::new(
        store.clone(),
        "agent-test",
        EventLog::DEFAULT_RETENTION,
    ));
    let runner = HookRunner::new(dir.map(Path::to_path_buf), timeout, 2, events);
    (etcd, store, runner)
}

fn call(name: &str, event: HookEvent) -> HookCall {
    HookCall {
        name: name.into(),
        event,
        pool: "web".into(),
        project: "proj".into(),
        zone: "zone-a".into(),
        instance: if event == HookEvent::Exhausted {
            String::new()
        } else {
            "web-abc".into()
        },
        env: Vec::new(),
    }
}

#[tokio::test]
async fn hooks_get_prevmtables_environment_plus_pool_and_event() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("env.txt");
    write_script(
        dir.path(),
        "dump",
        &format!(
            "echo \"$PROJECT|$ZONE|${{NAME-unset}}|$POOL|$EVENT\" > {}",
            out.display()
        ),
    );
    let (_etcd, _store, runner) = runner(Some(dir.path()), Duration::from_secs(10)).await;
    runner.run(&call("dump", HookEvent::Create)).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(&out).unwrap().trim(),
        "proj|zone-a|web-abc|web|create"
    );
    runner
        .run(&call("dump", HookEvent::Exhausted))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(&out).unwrap().trim(),
        "proj|zone-a|unset|web|exhausted"
    );
}

#[tokio::test]
async fn a_hanging_hook_is_killed_at_the_timeout_and_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("child.pid");
    write_script(
        dir.path(),
        "hang",
        &format!("sleep 600 & echo $! > {}; wait", pidfile.display()),
    );
    let (_etcd, store, runner) = runner(Some(dir.path()), Duration::from_millis(300)).await;
    let started = Instant::now();
    let result = runner.spawn(call("hang", HookEvent::Delete)).await.unwrap();
    assert!(
        matches!(result, Err(HookError::TimedOut { .. })),
        "{result:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "killed, not waited out"
    );
    let child = std::fs::read_to_string(&pidfile).unwrap();
    let proc_dir = format!("/proc/{}", child.trim());
    eventually(
        "what the hook started is killed too",
        Duration::from_secs(10),
        || async {
            let state = std::fs::read_to_string(format!("{proc_dir}/stat")).unwrap_or_default();
            (state.is_empty() || state.contains(") Z ")).then_some(())
        },
    )
    .await;
    let e = event_of(&store, "hook-failed").await;
    assert!(e.message.contains("timed out"), "{}", e.message);
}

#[tokio::test]
async fn failing_and_chatty_hooks_never_block_or_crash() {
    let dir = tempfile::tempdir().unwrap();
    write_script(dir.path(), "fail", "echo boom >&2; exit 3");
    // About 20 MB on stdout, much of it without newlines.
    write_script(
        dir.path(),
        "chatty",
        "head -c 20000000 /dev/zero | tr '\\0' 'x'; yes line | head -n 100000",
    );
    let (_etcd, _store, runner) = runner(Some(dir.path()), Duration::from_secs(60)).await;
    let err = runner
        .run(&call("fail", HookEvent::Vanished))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, HookError::Failed { status, .. } if status.contains('3')),
        "{err:?}"
    );
    runner
        .run(&call("chatty", HookEvent::Create))
        .await
        .expect("huge output is drained and truncated");
}

#[tokio::test]
async fn only_plain_names_in_the_hooks_dir_run() {
    let dir = tempfile::tempdir().unwrap();
    write_script(dir.path(), "ok", "exit 0");
    std::fs::write(dir.path().join("not-exec"), "#!/bin/sh\n").unwrap();
    let (_etcd, _store, runner) = runner(Some(dir.path()), Duration::from_secs(5)).await;
    for bad in ["../x", "/bin/sh", "sub/ok", ".hidden", "", "a b"] {
        let err = runner.run(&call(bad, HookEvent::Create)).await.unwrap_err();
        assert_eq!(err, HookError::BadName(bad.into()));
    }
    assert!(matches!(
        runner.run(&call("missing", HookEvent::Create)).await,
        Err(HookError::NotRunnable { .. })
    ));
    assert!(matches!(
        runner.run(&call("not-exec", HookEvent::Create)).await,
        Err(HookError::NotRunnable { .. })
    ));
    runner.run(&call("ok", HookEvent::Create)).await.unwrap();
    let (_e, _s, no_dir) = runner_without_dir().await;
    assert!(matches!(
        no_dir.run(&call("ok", HookEvent::Create)).await,
        Err(HookError::NoHooksDir(_))
    ));
}

/// The event of kind `kind` recorded for pool `web`, once it is there.
async fn event_of(store: &Store, kind: &str) -> Event {
    let prefix = store.keys().events_prefix("web").unwrap();
    eventually(
        &format!("a {kind} event"),
        Duration::from_secs(10),
        || async {
            store
                .list::<Event>(&prefix)
                .await
                .unwrap()
                .items
                .into_iter()
                .map(|(_, v)| v.value)
                .find(|e| e.kind == kind)
        },
    )
    .await
}

fn is_gone(pid: &str) -> bool {
    let state = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
    state.is_empty() || state.contains(") Z ")
}

#[tokio::test]
async fn a_child_left_holding_the_pipes_neither_holds_the_slot_nor_outlives_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("child.pid");
    write_script(
        dir.path(),
        "daemonize",
        &format!(
            "sleep 600 & echo $! > {}; echo started; exit 0",
            pidfile.display()
        ),
    );
    let (_etcd, _store, runner) = runner(Some(dir.path()), Duration::from_secs(60)).await;
    let started = Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        runner.run(&call("daemonize", HookEvent::Create)),
    )
    .await
    .expect("the run ends although a child holds its stdout");
    assert_eq!(result, Ok(()), "the hook itself succeeded");
    assert!(started.elapsed() < Duration::from_secs(30));
    let child = std::fs::read_to_string(&pidfile).unwrap();
    eventually(
        "the child is killed with the group",
        Duration::from_secs(10),
        || async { is_gone(&child).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn hooks_see_a_cleared_environment_plus_what_hook_env_passes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("env.txt");
    write_script(
        dir.path(),
        "env",
        &format!("env | sort > {}", out.display()),
    );
    // Set for this test process only by its own unique names.
    std::env::set_var("PM_HOOK_TEST_SECRET", "s3cret");
    std::env::set_var("PM_HOOK_TEST_PASSED", "visible");
    let (_etcd, _store, runner) = runner(Some(dir.path()), Duration::from_secs(10)).await;
    let runner = runner.passing_env(vec!["PM_HOOK_TEST_PASSED".into()]);
    runner.run(&call("env", HookEvent::Create)).await.unwrap();
    let env = std::fs::read_to_string(&out).unwrap();
    let names: Vec<&str> = env
        .lines()
        .filter_map(|l| l.split_once('=').map(|(n, _)| n))
        .filter(|n| !["PWD", "SHLVL", "_", "OLDPWD"].contains(n))
        .collect();
    assert_eq!(
        names,
        [
            "EVENT",
            "NAME",
            "PATH",
            "PM_HOOK_TEST_PASSED",
            "POOL",
            "PROJECT",
            "ZONE"
        ],
        "{env}"
    );
    assert!(!env.contains("s3cret"), "{env}");
    for refused in [
        "PM_ETCD_PASSWORD",
        "DB_PASSWORD",
        "PATH",
        "NAME",
        "1X",
        "A-B",
    ] {
        assert!(
            pm_agent::hooks::check_passed_env(refused).is_err(),
            "{refused}"
        );
    }
    assert_eq!(pm_agent::hooks::check_passed_env("HTTPS_PROXY"), Ok(()));
}

#[tokio::test]
async fn hooks_beyond_the_queue_are_dropped_with_an_event() {
    let dir = tempfile::tempdir().unwrap();
    write_script(dir.path(), "slow", "sleep 2");
    let (_etcd, store, runner) = runner(Some(dir.path()), Duration::from_secs(30)).await;
    let runner = runner.with_queue(2);
    let handles: Vec<_> = (0..5)
        .map(|_| runner.spawn(call("slow", HookEvent::Create)))
        .collect();
    let mut dropped = 0;
    for handle in handles {
        match handle.await.unwrap() {
            Err(HookError::Dropped { queued: 2, .. }) => dropped += 1,
            other => assert_eq!(other, Ok(())),
        }
    }
    assert_eq!(dropped, 3, "two fit the queue, three are dropped");
    let event = event_of(&store, "hook-failed").await;
    assert!(event.message.contains("dropped"), "{}", event.message);
}

async fn runner_without_dir() -> (EtcdCluster, Store, HookRunner) {
    runner(None, Duration::from_secs(5)).await
}
