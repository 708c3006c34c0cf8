//! The README's first command, run as a new user would, non-interactively, on free ports.

use std::process::Command;

use pm_tests::free_port;

fn quickstart(
    args: &[&str],
    dir: &std::path::Path,
    etcd_port: u16,
    sim_port: u16,
) -> std::process::Output {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root");
    Command::new(root.join("quickstart.sh"))
        .args(args)
        .env("PM_ETCD_PORT", etcd_port.to_string())
        .env("PM_SIM_PORT", sim_port.to_string())
        .env("PM_LOCAL_DIR", dir.join("local"))
        .env("PM_ETCD_DIR", dir.join("etcd"))
        .output()
        .expect("run quickstart.sh")
}

/// Two adjacent free ports (etcd's client and peer port).
fn free_pair() -> u16 {
    loop {
        let port = free_port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

#[test]
fn the_quick_start_converges_heals_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let (etcd_port, sim_port) = (free_pair(), free_port());
    let up = quickstart(&[], dir.path(), etcd_port, sim_port);
    let out = String::from_utf8_lossy(&up.stdout);
    let down = quickstart(&["down"], dir.path(), etcd_port, sim_port);
    assert!(
        up.status.success(),
        "quickstart.sh failed:\n{out}\n{}",
        String::from_utf8_lossy(&up.stderr)
    );
    for expected in [
        "pool demo: config created",
        "running 6, starting 0, lost 0, deleting 0",
        "\"preempted\":[",
        "us-central1-b now runs 0 VMs",
        "zone-exhausted",
        "Stop it all: ./quickstart.sh down",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert!(!dir.path().join("local").exists(), "down removes its state");
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", sim_port)).is_ok(),
        "gce-sim stopped"
    );
}
