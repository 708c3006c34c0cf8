//! The real credential path end to end: a generated service-account key file whose
//! `token_uri` is gce-sim's token endpoint, against `gce-sim --require-auth`. The REST
//! client fetches a token, and after a 401 for a revoked one fetches a fresh token and
//! retries once; a real `pm-agent --credentials FILE` converges a pool; an agent without
//! credentials gets 401s and creates nothing.

use std::time::Duration;

use gce_sim::{RunningSim, Sim};
use pm_gce::{Auth, Compute, GceError, RestCompute, RestConfig};
use pm_tests::Cluster;
use serde_json::Value;

const PROJECT: &str = "pm-test";
const ZONE: &str = "us-central1-a";
const BOUND: Duration = Duration::from_secs(45);

async fn auth_sim() -> RunningSim {
    Sim::builder()
        .zones([ZONE])
        .op_delay(Duration::from_millis(20))
        .boot_delay(Duration::from_millis(20))
        .require_auth(true)
        .build()
        .expect("config")
        .start_local()
        .await
        .expect("sim starts")
}

async fn client(sim: &RunningSim, auth: Auth) -> RestCompute {
    let mut config = RestConfig::new(sim.compute_url(), auth).expect("config");
    config.timeout = Duration::from_secs(5);
    config.max_attempts = 1;
    RestCompute::new(config).await.expect("client")
}

#[tokio::test]
async fn the_client_fetches_a_token_and_a_fresh_one_after_a_401() {
    let sim = auth_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = pm_tests::service_account::generate(dir.path(), &sim.token_url());
    let compute = client(&sim, Auth::ServiceAccountFile(key)).await;
    compute
        .list(PROJECT, ZONE, None)
        .await
        .expect("list with a token");
    let tokens = sim.control().tokens().await.expect("tokens");
    assert_eq!((tokens.issued, tokens.refused), (1, 0), "{tokens:?}");

    let revoked = sim.control().revoke_tokens().await.expect("revoke");
    assert_eq!((revoked.active, revoked.revoked), (0, 1), "{revoked:?}");
    compute
        .list(PROJECT, ZONE, None)
        .await
        .expect("401, a fresh token, then success");
    let tokens = sim.control().tokens().await.expect("tokens");
    assert_eq!(
        (tokens.issued, tokens.active, tokens.refused),
        (2, 1, 1),
        "{tokens:?}"
    );

    let anonymous = client(&sim, Auth::None).await;
    let error = anonymous
        .list(PROJECT, ZONE, None)
        .await
        .expect_err("no credentials");
    assert!(
        matches!(error, GceError::Http { status: 401, .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn the_token_endpoint_and_the_bearer_check_answer_as_google_does() {
    let sim = auth_sim().await;
    let http = reqwest::Client::new();
    let list = format!(
        "{}projects/{PROJECT}/zones/{ZONE}/instances",
        sim.compute_url()
    );
    for (bearer, reason, message) in [
        (None, "required", "Login Required."),
        (Some("ya29.forged"), "authError", "Invalid Credentials"),
    ] {
        let mut request = http.get(&list);
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("send");
        assert_eq!(response.status().as_u16(), 401);
        assert!(response
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("Bearer realm=")));
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["error"]["code"], 401);
        assert_eq!(body["error"]["status"], "UNAUTHENTICATED");
        assert_eq!(body["error"]["errors"][0]["reason"], reason);
        assert_eq!(body["error"]["errors"][0]["message"], message);
        assert_eq!(body["error"]["errors"][0]["location"], "Authorization");
    }
    for (form, error) in [
        (
            vec![("grant_type", "client_credentials"), ("assertion", "a.b.c")],
            "unsupported_grant_type",
        ),
        (
            vec![("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer")],
            "invalid_request",
        ),
        (
            vec![
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", "not-a-jwt"),
            ],
            "invalid_grant",
        ),
    ] {
        let response = http
            .post(sim.token_url())
            .form(&form)
            .send()
            .await
            .expect("send");
        assert_eq!(response.status().as_u16(), 400, "{form:?}");
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["error"], error, "{form:?}: {body}");
    }
    assert_eq!(sim.control().tokens().await.expect("tokens").issued, 0);
}

#[tokio::test]
async fn an_agent_with_a_key_file_converges_and_one_without_credentials_gets_401s() {
    let mut c = Cluster::builder().zones(1).require_auth().start().await;
    c.set_pool("web", c.pool_config("web", 2)).await;
    let running = |want: usize| {
        let c = &c;
        async move {
            let listed = c.count_status("web", "RUNNING").await;
            (listed.values().sum::<usize>() == want).then_some(())
        }
    };
    c.wait("2 RUNNING through the agent's token", BOUND, || running(2))
        .await;
    let before = c.sim().tokens().await.expect("tokens");
    assert!(
        before.issued >= 2,
        "the agent's and the cluster's: {before:?}"
    );

    // Revoked tokens: the agent's next call gets a 401, fetches a fresh token and goes on.
    c.sim().revoke_tokens().await.expect("revoke");
    c.set_pool("web", c.pool_config("web", 3)).await;
    c.wait("3 RUNNING after the tokens were revoked", BOUND, || {
        running(3)
    })
    .await;
    let after = c.sim().tokens().await.expect("tokens");
    assert!(after.refused > before.refused, "{after:?}");
    assert!(after.issued > before.issued, "{after:?}");

    // An agent without credentials only gets 401s: it creates nothing.
    c.agent("zone-a", 0).kill9().await;
    let anonymous = c.start_agent_without_credentials("zone-a");
    c.set_pool("web", c.pool_config("web", 4)).await;
    c.wait(
        "the agent without credentials logs a 401",
        BOUND,
        || async {
            c.sim()
                .tokens()
                .await
                .ok()
                .filter(|t| t.refused > after.refused + 2)
                .map(|_| ())
        },
    )
    .await;
    let log = c.agent("zone-a", anonymous).log();
    assert!(log.contains("401"), "{log}");
    let all = c.gce_instances("web").await;
    assert_eq!(all.values().map(Vec::len).sum::<usize>(), 3, "{all:?}");
}
