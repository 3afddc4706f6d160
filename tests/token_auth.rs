//! An upstream that demands the registry Bearer token flow (a relay with its
//! own token endpoint in front of a real Distribution) is pulled through, with
//! credentials from a password file that never appears in berth's log.

mod support;

use support::images::seed;
use support::registry::Registry;
use support::relay::{Relay, RelayOptions};
use support::{Berth, UpstreamToml, client, client_name, sha256_hex, skopeo};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bearer_token_flow_with_credentials() {
    let registry = Registry::start();
    let fixtures = tokio::task::block_in_place(|| seed(&registry));
    let secret = "s3cret-pass-do-not-log";
    let relay = Relay::start(
        &registry.url(),
        RelayOptions {
            token_auth: Some(("puller".into(), secret.into())),
            ..RelayOptions::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, format!("{secret}\n")).unwrap();
    let berth = Berth::start(
        &UpstreamToml::default_docker_io(&relay.url())
            .set("username", "puller")
            .set("password_file", password_file.display().to_string())
            .to_toml(),
    );

    let image = &fixtures.v2s2;
    let src = format!("docker://{}/{}:{}", berth.host(), client_name(&image.repo), image.tag);
    let raw = tokio::task::block_in_place(|| skopeo(&["inspect", "--raw", "--tls-verify=false", &src]).stdout);
    assert_eq!(sha256_hex(&raw), image.digest);
    let out = tempfile::tempdir().unwrap();
    let dest = format!("oci:{}:x", out.path().display());
    tokio::task::block_in_place(|| skopeo(&["copy", "--src-tls-verify=false", &src, &dest]));

    assert!(relay.tokens_issued() >= 1, "berth fetched a token");
    // The token is cached: one token for the one repository scope.
    assert_eq!(relay.tokens_issued(), 1, "{:#?}", relay.requests());
    let log = berth.log();
    assert!(!log.contains(secret), "the password never reaches the log");
    assert!(!log.contains("tok-"), "tokens never reach the log");

    // Wrong credentials: the client gets a clear cause, not a token hunt.
    let wrong = tempfile::tempdir().unwrap();
    let berth2 = Berth::start(
        &UpstreamToml::default_docker_io(&relay.url())
            .set("username", "puller")
            .set("password", "wrong")
            .to_toml(),
    );
    drop(wrong);
    let resp = client()
        .get(format!(
            "{}/v2/{}/manifests/{}",
            berth2.url(),
            client_name(&image.repo),
            image.tag
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 502);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "UNAUTHORIZED");
    assert_eq!(body["errors"][0]["detail"]["cause"], "unauthorized");
    let failures: Vec<_> = berth2
        .events()
        .into_iter()
        .filter(|e| e["event"] == "pull_failed")
        .collect();
    assert_eq!(failures.len(), 1, "exactly one pull_failed event");
    assert_eq!(failures[0]["cause"], "unauthorized");
}
