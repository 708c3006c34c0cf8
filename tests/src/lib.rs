//! Test harness of pm: real etcd processes on free ports in temp dirs.
//!
//! ```no_run
//! # async fn f() {
//! let etcd = pm_tests::EtcdCluster::start(3).await;
//! let client = etcd.client().await;
//! let prefix = pm_tests::unique_prefix();
//! # }
//! ```
//!
//! Every test gets its own etcd (or cluster) and its own key prefix, so tests run in
//! parallel without sharing anything. Nothing uses a fixed port: each port is taken from
//! the OS. The `etcd` binary is found at `$ETCD_BIN` or on `PATH`.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use etcd_client::Client;
use rand::Rng;
use tempfile::TempDir;
use tokio::process::{Child, Command};

/// The etcd binary: `$ETCD_BIN`, else `etcd` from `PATH`.
pub fn etcd_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("ETCD_BIN") {
        return PathBuf::from(bin);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("etcd"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "etcd not found: install etcd-server (apt-get install etcd-server) or set ETCD_BIN"
            )
        })
}

/// A port the OS reports free on 127.0.0.1 right now, and that this process has not
/// handed out before: two members of one cluster, or two tests running at once, never get
/// the same port from here. (Another process, or an outgoing connection, can still take
/// it before it is bound; [`EtcdCluster::start`] retries on fresh ports when that happens.)
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("no free port on 127.0.0.1");
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if handed_out.insert(port) {
            return port;
        }
    }
}

/// A key prefix no other test uses, e.g. `/t3f9a1c07/pm`.
pub fn unique_prefix() -> String {
    format!("/t{:08x}/pm", rand::rng().random::<u32>())
}

/// Polls `check` every 20 ms until it returns `Some`, for at most `bound`; panics naming
/// `what` when the bound passes. The only way tests wait for a condition.
pub async fn eventually<T, F, Fut>(what: &str, bound: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    match poll_until(bound, check).await {
        Some(value) => value,
        None => panic!("timed out after {bound:?} waiting for: {what}"),
    }
}

/// Polls `check` every 20 ms until it returns `Some`, for at most `bound`.
pub async fn poll_until<T, F, Fut>(bound: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How many times [`EtcdCluster::start`] tries fresh ports before it gives up.
const START_ATTEMPTS: usize = 3;

/// How long a cluster may take to serve reads once its members run.
const START_BOUND: Duration = Duration::from_secs(30);

/// How many lines of each member's log a start failure shows.
const LOG_TAIL_LINES: usize = 15;

/// One etcd member's settings and process.
struct Member {
    /// Member name, `m0`, `m1`, ...
    name: String,
    /// Port for clients.
    client_port: u16,
    /// Port for peers.
    peer_port: u16,
    /// The running process; `None` while stopped.
    child: Option<Child>,
    /// `https` when the cluster serves clients over TLS, else `http`.
    scheme: &'static str,
}

impl Member {
    fn client_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }
}

/// A real etcd of one or more members, torn down (killed, data removed) on drop.
pub struct EtcdCluster {
    /// Temp dir holding each member's data dir and log.
    dir: TempDir,
    /// The members, in `--initial-cluster` order.
    members: Vec<Member>,
    /// `--initial-cluster` value shared by every member.
    initial_cluster: String,
    /// The PKI when clients must use TLS with a client certificate.
    tls: Option<tls::TlsMaterial>,
}

impl EtcdCluster {
    /// Starts `size` members and waits until the cluster serves linearizable reads.
    pub async fn start(size: usize) -> Self {
        Self::start_with(size, false).await
    }

    /// Starts one member that serves clients over TLS only and requires a client
    /// certificate signed by its CA ([`EtcdCluster::tls`] has the files).
    pub async fn start_tls() -> Self {
        Self::start_with(1, true).await
    }

    async fn start_with(size: usize, with_tls: bool) -> Self {
        assert!(size >= 1, "an etcd cluster needs a member");
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let mut cluster = Self::spawn_new(size, with_tls, free_port);
            match cluster.await_start().await {
                Ok(()) => return cluster,
                Err(failure) => failures.push(failure),
            }
        }
        panic!(
            "etcd did not start in {START_ATTEMPTS} attempts:\n{}",
            failures.join("\n")
        );
    }

    /// A new cluster of `size` members on ports from `port`, every member spawned.
    fn spawn_new(size: usize, with_tls: bool, mut port: impl FnMut() -> u16) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("pm-etcd-")
            .tempdir()
            .expect("temp dir");
        let tls = with_tls.then(|| tls::generate(&dir.path().join("tls")));
        let scheme = if with_tls { "https" } else { "http" };
        let members: Vec<Member> = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: port(),
                peer_port: port(),
                child: None,
                scheme,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Self {
            dir,
            members,
            initial_cluster,
            tls,
        };
        for i in 0..size {
            cluster.spawn(i);
        }
        cluster
    }

    /// Waits until every member serves reads. Fails at once when a member exits (its
    /// port was taken between [`free_port`] and its bind, say), and after
    /// [`START_BOUND`] otherwise, with the members' log tails either way.
    async fn await_start(&mut self) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + START_BOUND;
        let mut pending: Vec<usize> = (0..self.members.len()).collect();
        while !pending.is_empty() {
            let exited = self.members.iter_mut().find_map(|member| {
                let status = member.child.as_mut()?.try_wait().ok()??;
                Some(format!("{} exited ({status})", member.name))
            });
            if let Some(exited) = exited {
                return Err(self.failure(&exited));
            }
            let mut still = Vec::new();
            for index in pending {
                if !self.serves_reads(&self.members[index].client_url()).await {
                    still.push(index);
                }
            }
            pending = still;
            if !pending.is_empty() {
                if tokio::time::Instant::now() >= deadline {
                    return Err(self.failure(&format!("not serving after {START_BOUND:?}")));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    /// `what` went wrong, with the last lines of every member's log.
    fn failure(&self, what: &str) -> String {
        let mut report = format!("etcd in {}: {what}", self.dir().display());
        for member in &self.members {
            let log = std::fs::read_to_string(self.dir().join(format!("{}.log", member.name)))
                .unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            report.push_str(&format!(
                "\n--- {} log tail:\n{}",
                member.name,
                tail.join("\n")
            ));
        }
        report
    }

    /// Whether one linearizable read through `url` succeeds.
    async fn serves_reads(&self, url: &str) -> bool {
        let mut options = self.options(vec![url.to_string()]);
        options.connect_timeout = Duration::from_millis(500);
        options.request_timeout = Duration::from_millis(1000);
        match options.connect().await {
            Ok(mut client) => client.get("pm-harness-health", None).await.is_ok(),
            Err(_) => false,
        }
    }

    /// The temp dir of this cluster (member data dirs and logs are inside).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn spawn(&mut self, index: usize) {
        let data_dir = self.dir.path().join(&self.members[index].name);
        let log_path = self
            .dir
            .path()
            .join(format!("{}.log", self.members[index].name));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("etcd log file");
        let member = &self.members[index];
        let state = if data_dir.exists() { "existing" } else { "new" };
        let mut command = Command::new(etcd_bin());
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.server_cert)
                .arg("--key-file")
                .arg(&tls.server_key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        let child = command
            .arg("--name")
            .arg(&member.name)
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--listen-client-urls")
            .arg(member.client_url())
            .arg("--advertise-client-urls")
            .arg(member.client_url())
            .arg("--listen-peer-urls")
            .arg(member.peer_url())
            .arg("--initial-advertise-peer-urls")
            .arg(member.peer_url())
            .arg("--initial-cluster")
            .arg(&self.initial_cluster)
            .arg("--initial-cluster-state")
            .arg(state)
            .arg("--initial-cluster-token")
            .arg(self.dir.path().to_string_lossy().as_ref())
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            // As INSTALL.md recommends: old revisions are compacted away, so the database
            // does not grow with every write a long benchmark makes.
            .args(["--auto-compaction-mode", "periodic"])
            .args(["--auto-compaction-retention", "10m"])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", etcd_bin().display()));
        self.members[index].child = Some(child);
    }

    /// The PKI of a TLS cluster.
    pub fn tls(&self) -> Option<&tls::TlsMaterial> {
        self.tls.as_ref()
    }

    /// Connection options for `endpoints` of this cluster, with its client certificate
    /// when it requires one.
    pub fn options(&self, endpoints: Vec<String>) -> pm_etcd::EtcdOptions {
        let mut options = pm_etcd::EtcdOptions::new(endpoints);
        options.tls = self.tls.as_ref().map(|t| pm_etcd::TlsFiles {
            ca: Some(t.ca.clone()),
            cert: Some(t.client_cert.clone()),
            key: Some(t.client_key.clone()),
        });
        options
    }

    /// A store on this cluster under a fresh [`unique_prefix`], so tests never share keys.
    pub async fn store(&self) -> pm_etcd::Store {
        let client = pm_etcd::EtcdOptions::new(self.endpoints())
            .connect()
            .await
            .expect("connect");
        let keys = pm_etcd::Keyspace::new(&unique_prefix()).expect("prefix");
        pm_etcd::Store::new(client, keys)
    }

    /// Client URLs of every member, running or not.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    /// Client URL of one member.
    pub fn endpoint(&self, index: usize) -> String {
        self.members[index].client_url()
    }

    /// A client of all members.
    pub async fn client(&self) -> Client {
        self.options(self.endpoints())
            .connect()
            .await
            .expect("connect to etcd")
    }

    /// Waits until a linearizable read succeeds through each running member.
    pub async fn wait_ready(&self) {
        let running: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.child.is_some())
            .map(Member::client_url)
            .collect();
        for url in running {
            if poll_until(START_BOUND, || async {
                self.serves_reads(&url).await.then_some(())
            })
            .await
            .is_none()
            {
                panic!(
                    "{}",
                    self.failure(&format!("{url} not serving after {START_BOUND:?}"))
                );
            }
        }
    }

    /// The process id of member `index`, while it runs.
    pub fn member_pid(&self, index: usize) -> Option<u32> {
        self.members[index].child.as_ref().and_then(Child::id)
    }

    /// Kills member `index` with SIGKILL and waits for it to exit.
    pub async fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.members[index].child.take() {
            child.start_kill().ok();
            child.wait().await.ok();
        }
    }

    /// Starts member `index` again on its ports with its data. Does not wait for it.
    pub fn restart(&mut self, index: usize) {
        assert!(
            self.members[index].child.is_none(),
            "member {index} is running"
        );
        self.spawn(index);
    }

    /// Saves a snapshot of the cluster, taken through member 0, into `path` with
    /// `etcdctl snapshot save` (Debian's etcd-client package).
    pub async fn snapshot_save(&self, path: &Path) {
        assert!(
            self.tls.is_none(),
            "snapshots of TLS clusters are not supported"
        );
        etcdctl(&[
            "--endpoints",
            &self.endpoint(0),
            "snapshot",
            "save",
            &path.to_string_lossy(),
        ])
        .await;
    }

    /// Restores the snapshot at `path` as an operator would: kills every member, replaces
    /// each one's data dir with `etcdctl snapshot restore`, starts them again and waits
    /// until the cluster serves. Revisions go back to the snapshot's.
    pub async fn restore_snapshot(&mut self, path: &Path) {
        for i in 0..self.members.len() {
            self.kill(i).await;
        }
        for i in 0..self.members.len() {
            let member = &self.members[i];
            let data_dir = self.dir.path().join(&member.name);
            std::fs::remove_dir_all(&data_dir).ok();
            etcdctl(&[
                "snapshot",
                "restore",
                &path.to_string_lossy(),
                "--name",
                &member.name,
                "--data-dir",
                &data_dir.to_string_lossy(),
                "--initial-cluster",
                &self.initial_cluster,
                "--initial-cluster-token",
                &self.dir.path().to_string_lossy(),
                "--initial-advertise-peer-urls",
                &member.peer_url(),
            ])
            .await;
        }
        for i in 0..self.members.len() {
            self.restart(i);
        }
        self.wait_ready().await;
    }

    /// Kills every member, starts them again and waits until the cluster serves.
    pub async fn restart_all(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i).await;
        }
        for i in 0..self.members.len() {
            self.restart(i);
        }
        self.wait_ready().await;
    }
}

/// Runs `etcdctl` (API v3) with `args`; panics with its output when it fails.
async fn etcdctl(args: &[&str]) {
    let output = Command::new("etcdctl")
        .args(args)
        .env("ETCDCTL_API", "3")
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run etcdctl (apt-get install etcd-client): {e}"));
    assert!(
        output.status.success(),
        "etcdctl {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Writes the executable shell script `name` in `dir`, running `body`: a hook.
pub fn write_script(dir: &Path, name: &str, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("hook script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// Path of a binary of this workspace (`pm-scheduler`, `pm-agent`, `pmctl`, `gce-sim`):
/// beside the running executable (a binary such as `pm-bench`) or beside its `deps/`
/// directory (a test). Build them first (`cargo build --workspace --bins`; `./test.sh`
/// does).
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("executable path");
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join(name))
        .collect();
    candidates
        .iter()
        .find(|path| path.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "{name} is missing next to {}: run `cargo build --workspace --bins` first",
                exe.display()
            )
        })
}

/// A pm binary running as its own process, its output in a log file; SIGKILLed on drop.
pub struct Daemon {
    /// What it is, for messages.
    name: String,
    /// The process.
    child: Child,
    /// Where its stdout and stderr go.
    log: PathBuf,
}

impl Daemon {
    /// Starts `bin` with `args` and extra environment, logging into `dir/<name>.log`.
    pub fn start(dir: &Path, name: &str, bin: &str, args: &[String], env: &[(&str, &str)]) -> Self {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("daemon log");
        let err = out.try_clone().expect("daemon log");
        let mut cmd = Command::new(bin_path(bin));
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        Self {
            name: name.to_string(),
            child,
            log,
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or_default()
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills it with SIGKILL (`kill -9`) and reaps it.
    pub async fn kill9(&mut self) {
        self.child.start_kill().ok();
        self.child.wait().await.ok();
    }

    /// Sends SIGTERM and waits up to `bound` for it to exit; returns its exit code.
    pub async fn terminate(&mut self, bound: Duration) -> Option<i32> {
        if let Some(pid) = self.child.id() {
            std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()
                .ok();
        }
        match tokio::time::timeout(bound, self.child.wait()).await {
            Ok(Ok(status)) => status.code(),
            _ => {
                panic!(
                    "{} did not exit within {bound:?} of SIGTERM; log:\n{}",
                    self.name,
                    self.log()
                )
            }
        }
    }

    /// Whether it still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

pub mod cluster;
pub mod proxy;
pub mod receiver;
pub mod service_account;
pub mod tls;
pub use cluster::{Cluster, ClusterBuilder};
pub use proxy::TcpProxy;
pub use receiver::Receiver;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_never_handed_out_twice() {
        let ports: Vec<u16> = (0..500).map(|_| free_port()).collect();
        let distinct: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
    }

    #[tokio::test]
    async fn a_member_whose_port_is_taken_fails_the_start_at_once_with_its_log() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let taken_port = taken.local_addr().unwrap().port();
        let mut ports = [taken_port, free_port()].into_iter();
        let mut cluster = EtcdCluster::spawn_new(1, false, || ports.next().unwrap());
        let started = std::time::Instant::now();
        let failure = cluster.await_start().await.unwrap_err();
        assert!(started.elapsed() < START_BOUND, "{failure}");
        assert!(failure.contains("m0 exited"), "{failure}");
        assert!(failure.contains("address already in use"), "{failure}");
    }
}
