//! A registry that sends blobs to a CDN with a signed URL (`?X-Amz-Signature=…`):
//! when following it fails, the failure says where berth went but not the
//! signature, in the client's error body, in `/_berth/failures` and in the
//! log. The upstream is an in-process fake: the point is the signed URL it
//! hands out, which a real Distribution on loopback does not produce. The CDN
//! redirects to itself, so the redirect is given up (berth's redirect policy
//! names the refused target by origin only; reqwest's own error would name the
//! signed URL, whose query the redaction removes).

mod support;

use support::fake_upstream::{Answer, FakeUpstream};
use support::{Berth, UpstreamToml, client};

const SIGNATURE: &str = "X-Amz-Signature=c0ffee5ecret&X-Amz-Credential=AKIAEXAMPLE";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_signed_redirect_keeps_its_signature_out_of_errors() {
    let fake = FakeUpstream::start();
    let upstream = fake.addr;
    let digest = format!("sha256:{}", "ab".repeat(32));
    let location = format!("http://{upstream}/cdn/layer?{SIGNATURE}");
    let redirect = move |_: &str, _: &str| Answer::json(307, "").header("location", &location);
    fake.route(&format!("/v2/library/app/blobs/{digest}"), redirect.clone());
    fake.route("/cdn/layer", redirect);
    let berth = Berth::start(
        &UpstreamToml::default_docker_io(&fake.url())
            .set("attempts", 1)
            .set("breaker_threshold", 1000)
            .to_toml(),
    );
    let http = client();
    let r = http
        .get(format!("{}/v2/library/app/blobs/{digest}", berth.url()))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_server_error(), "{}", r.status());
    let body = r.text().await.unwrap();
    assert!(body.contains("(cause="), "{body}");
    // Where berth was sent is named (by origin, as the redirect policy
    // reports it, or as a URL with its query redacted), the signature is not.
    assert!(body.contains(&format!("http://{upstream}")), "{body}");
    let failures = http
        .get(format!("{}/_berth/failures", berth.admin_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(failures.contains(&format!("http://{upstream}")), "{failures}");
    for (what, text) in [("body", &body), ("failures", &failures), ("log", &berth.log())] {
        assert!(
            !text.contains("c0ffee5ecret") && !text.contains("AKIAEXAMPLE"),
            "{what}: {text}"
        );
    }
}
