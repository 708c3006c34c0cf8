//! etcd with TLS client certificates and with user/password auth, end to end: the etcd
//! layer and a real pm-scheduler process reach it through their flags, the wrong
//! credentials are refused, and the password never shows in logs.

use std::time::Duration;

use etcd_client::{Client, ConnectOptions, Permission};
use pm_etcd::{EtcdOptions, Keyspace, Secret, Store, TlsFiles};
use pm_proto::{PoolConfig, ZoneDesired};
use pm_tests::{eventually, unique_prefix, Daemon, EtcdCluster};

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

#[tokio::test]
async fn etcd_with_user_and_password() {
    let etcd = EtcdCluster::start(1).await;
    let prefix = unique_prefix();
    let keys = Keyspace::new(&prefix).unwrap();
    // Enable auth: root, and a role over pm's prefix only.
    let mut admin = etcd.client().await;
    admin.user_add("root", "root-password", None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
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
