//! Who may pull: real clients against berth with `[auth]` and `[[access]]`
//! in front of a real CNCF Distribution (through a relay that counts what
//! reaches it). Allowed identities pull; the unauthenticated, wrong
//! passwords, certificates of another CA, identities without a rule and
//! addresses outside `allow_networks` get the right status, code and cause,
//! logged once with the identity and never the password, and nothing of
//! theirs reaches the upstream.

mod support;

use std::path::Path;
use std::process::Command;

use support::images::push_tiny_image;
use support::pki::Pki;
use support::registry::Registry;
use support::relay::{Relay, RelayOptions};
use support::{Berth, UpstreamToml, skopeo_try};

const ALICE: (&str, &str) = ("alice", "correct horse battery staple");
const BOB: (&str, &str) = ("bob", "hunter2 but longer");

/// An htpasswd file of bcrypt entries, as `htpasswd -B` writes them.
fn htpasswd(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("htpasswd");
    let mut text = String::new();
    for (user, password) in [ALICE, BOB] {
        let hash = bcrypt::hash(password, 5).expect("bcrypt");
        text.push_str(&format!("{user}:{hash}\n"));
    }
    std::fs::write(&path, text).expect("write htpasswd");
    path
}

/// `[auth]` with the htpasswd file; alice may pull everything, bob only `team/*`,
/// certificates named `node-*` only `library/*`.
fn auth_toml(htpasswd: &Path, extra_auth: &str) -> String {
    format!(
        r#"[auth]
htpasswd = "{}"
{extra_auth}
[[access]]
identities = ["alice"]
[[access]]
identities = ["bob"]
repositories = ["team/*"]
[[access]]
identities = ["cn:node-*"]
repositories = ["library/*"]
"#,
        htpasswd.display()
    )
}

struct Setup {
    _registry: Registry,
    relay: Relay,
    berth: Berth,
    _dir: tempfile::TempDir,
}

async fn setup(extra_auth: &str, tls: Option<&Pki>, server: &str) -> Setup {
    let registry = Registry::start();
    push_tiny_image(&registry, "library/app", "1.0", false);
    push_tiny_image(&registry, "team/app", "1.0", false);
    let relay = Relay::start(&registry.url(), RelayOptions::default()).await;
    let dir = tempfile::tempdir().expect("dir");
    let tls = match tls {
        Some(p) => format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n",
            p.server_cert.display(),
            p.server_key.display(),
            p.ca_cert.display()
        ),
        None => String::new(),
    };
    let config = format!(
        "{server}{tls}{}{}",
        auth_toml(&htpasswd(dir.path()), extra_auth),
        UpstreamToml::default_docker_io(&relay.url()).to_toml()
    );
    let berth = Berth::start(&config);
    Setup {
        _registry: registry,
        relay,
        berth,
        _dir: dir,
    }
}

/// `skopeo inspect` of `repo:1.0` through berth over plain HTTP.
fn inspect(berth: &Berth, repo: &str, creds: Option<(&str, &str)>) -> std::process::Output {
    let src = format!("docker://{}/{repo}:1.0", berth.host());
    let creds = creds.map(|(u, p)| format!("{u}:{p}"));
    let mut args = vec!["inspect", "--raw", "--tls-verify=false"];
    match &creds {
        Some(c) => args.extend(["--creds", c.as_str()]),
        None => args.push("--no-creds"),
    }
    args.push(&src);
    tokio::task::block_in_place(|| skopeo_try(&args))
}

/// The pull_failed events berth logged, as (cause, identity, status).
fn failures(berth: &Berth) -> Vec<(String, Option<String>, u64)> {
    berth
        .events()
        .iter()
        .filter(|e| e["event"] == "pull_failed")
        .map(|e| {
            (
                e["cause"].as_str().unwrap_or_default().to_string(),
                e["identity"].as_str().map(str::to_string),
                e["status"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

/// `curl` status and headers of a GET on berth.
fn curl(url: &str, args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args([
            "-s",
            "--noproxy",
            "*",
            "-o",
            "/dev/null",
            "-D",
            "-",
            "-w",
            "%{http_code}",
            "--max-time",
            "20",
        ])
        .args(args)
        .arg(url)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (headers, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), headers.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_with_credentials_pulls_and_everyone_else_is_refused_before_the_upstream() {
    let s = setup("", None, "").await;
    let ok = inspect(&s.berth, "library/app", Some(ALICE));
    assert!(
        ok.status.success(),
        "alice pulls: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let upstream_before = s.relay.requests().len();
    assert!(upstream_before > 0);

    let anonymous = inspect(&s.berth, "library/app", None);
    assert!(!anonymous.status.success());
    let wrong = inspect(&s.berth, "library/app", Some((ALICE.0, "not the password")));
    assert!(!wrong.status.success());
    let denied = inspect(&s.berth, "library/app", Some(BOB));
    assert!(!denied.status.success());
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(
        stderr.contains("denied") || stderr.contains("403"),
        "bob sees the refusal: {stderr}"
    );
    assert_eq!(
        s.relay.requests().len(),
        upstream_before,
        "nothing refused reached the upstream"
    );
    let bob_allowed = inspect(&s.berth, "team/app", Some(BOB));
    assert!(
        bob_allowed.status.success(),
        "bob pulls team/*: {}",
        String::from_utf8_lossy(&bob_allowed.stderr)
    );

    let failed = failures(&s.berth);
    assert!(
        failed.iter().any(|(c, _, st)| c == "client_unauthorized" && *st == 401),
        "{failed:?}"
    );
    assert!(
        failed
            .iter()
            .any(|(c, id, st)| c == "client_forbidden" && id.as_deref() == Some("bob") && *st == 403),
        "{failed:?}"
    );
    let log = s.berth.log();
    for (_, password) in [ALICE, BOB] {
        assert!(!log.contains(password), "a password reached the log");
    }
    assert!(!log.contains("not the password"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_base_answers_401_with_a_basic_challenge() {
    let s = setup("", None, "").await;
    let (status, headers) = curl(&format!("{}/v2/", s.berth.url()), &[]);
    assert_eq!(status, 401);
    let lower = headers.to_ascii_lowercase();
    assert!(lower.contains("www-authenticate: basic realm=\"berth\""), "{headers}");
    assert!(
        lower.contains("docker-distribution-api-version: registry/2.0"),
        "{headers}"
    );
    let creds = format!("{}:{}", ALICE.0, ALICE.1);
    let (status, _) = curl(&format!("{}/v2/", s.berth.url()), &["-u", &creds]);
    assert_eq!(status, 200);
    // HEAD is checked as GET.
    let (status, _) = curl(&format!("{}/v2/library/app/manifests/1.0", s.berth.url()), &["-I"]);
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_name_their_identity() {
    let dir = tempfile::tempdir().expect("dir");
    let pki = Pki::new(&dir.path().join("pki"), "berth");
    let s = setup("", Some(&pki), "").await;
    // skopeo's cert dir: *.crt are CAs, a *.cert/*.key pair is the client.
    let cert_dir = |cn: &str| {
        let d = dir.path().join(format!("certs-{cn}"));
        std::fs::create_dir_all(&d).expect("cert dir");
        let pair = pki.client(cn);
        std::fs::copy(&pki.ca_cert, d.join("ca.crt")).expect("ca");
        std::fs::copy(&pair.cert, d.join("client.cert")).expect("cert");
        std::fs::copy(&pair.key, d.join("client.key")).expect("key");
        d
    };
    let pull = |repo: &str, certs: &Path| {
        let src = format!("docker://{}/{repo}:1.0", s.berth.host());
        let certs = certs.to_str().expect("utf-8").to_string();
        tokio::task::block_in_place(|| skopeo_try(&["inspect", "--raw", "--no-creds", "--cert-dir", &certs, &src]))
    };
    let node = cert_dir("node-7");
    let ok = pull("library/app", &node);
    assert!(
        ok.status.success(),
        "cn:node-7 pulls library/*: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let denied = pull("team/app", &node);
    assert!(!denied.status.success(), "cn:node-7 has no rule for team/*");
    let laptop = cert_dir("laptop");
    assert!(
        !pull("library/app", &laptop).status.success(),
        "cn:laptop matches no rule"
    );
    let failed = failures(&s.berth);
    assert!(
        failed
            .iter()
            .any(|(c, id, _)| c == "client_forbidden" && id.as_deref() == Some("cn:node-7")),
        "{failed:?}"
    );
    assert!(
        failed
            .iter()
            .any(|(c, id, _)| c == "client_forbidden" && id.as_deref() == Some("cn:laptop")),
        "{failed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_outside_allow_networks_is_refused_whatever_it_sends() {
    let s = setup("allow_networks = [\"10.0.0.0/8\", \"fd00::/8\"]", None, "").await;
    let out = inspect(&s.berth, "library/app", Some(ALICE));
    assert!(!out.status.success());
    let creds = format!("{}:{}", ALICE.0, ALICE.1);
    let (status, _) = curl(&format!("{}/v2/", s.berth.url()), &["-u", &creds]);
    assert_eq!(status, 403);
    assert!(
        failures(&s.berth)
            .iter()
            .any(|(c, _, st)| c == "client_forbidden" && *st == 403)
    );
    assert!(s.relay.requests().is_empty(), "nothing reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_rate_gets_429_with_retry_after() {
    let s = setup("", None, "[server]\nclient_requests_per_second = 1\nclient_burst = 2\n").await;
    let creds = format!("{}:{}", ALICE.0, ALICE.1);
    let url = format!("{}/v2/", s.berth.url());
    let statuses: Vec<(u16, String)> = (0..4).map(|_| curl(&url, &["-u", &creds])).collect();
    let limited = statuses.iter().find(|(st, _)| *st == 429);
    let (_, headers) = limited.unwrap_or_else(|| panic!("no 429 among {statuses:?}"));
    assert!(headers.to_ascii_lowercase().contains("retry-after:"), "{headers}");
    assert!(
        failures(&s.berth)
            .iter()
            .any(|(c, id, _)| c == "client_rate_limited" && id.as_deref() == Some("alice"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_surface_on_listen_is_for_admins_only() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().expect("dir");
    let config = format!(
        "{}{}",
        auth_toml(&htpasswd(dir.path()), "admins = [\"alice\"]"),
        UpstreamToml::default_docker_io(&registry.url()).to_toml()
    );
    let berth = Berth::start_with_env(&config, &[("BERTH_ADMIN_LISTEN", "")]);
    for path in ["/metrics", "/_berth/status", "/"] {
        let url = format!("{}{path}", berth.url());
        assert_eq!(curl(&url, &[]).0, 401, "{path}");
        assert_eq!(curl(&url, &["-u", &format!("{}:{}", BOB.0, BOB.1)]).0, 403, "{path}");
        assert_eq!(
            curl(&url, &["-u", &format!("{}:{}", ALICE.0, ALICE.1)]).0,
            200,
            "{path}"
        );
    }
}

/// A hosts directory from the `docker/<snippet>` hosts.toml, with berth's
/// address, the certificate paths under `certs` and the Basic credentials put in.
fn containerd_hosts(
    containerd: &support::daemons::Containerd,
    snippet: &str,
    berth: &Berth,
    certs: &Path,
    basic: &str,
) -> std::path::PathBuf {
    let hosts = containerd.hosts_dir(snippet, &berth.host());
    let file = hosts.join("docker.io").join("hosts.toml");
    let text = std::fs::read_to_string(&file).expect("hosts.toml");
    let text = text
        .replace("/etc/containerd/certs.d/berth/", &format!("{}/", certs.display()))
        .replace("BASE64_USER_COLON_PASSWORD", basic);
    std::fs::write(&file, text).expect("write hosts.toml");
    hosts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn containerd_pulls_with_a_basic_header_or_a_client_certificate() {
    use base64::Engine;
    let dir = tempfile::tempdir().expect("dir");
    let pki = Pki::new(&dir.path().join("pki"), "berth");
    let s = setup("", Some(&pki), "").await;
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).expect("certs");
    let pair = pki.client("node-3");
    std::fs::copy(&pki.ca_cert, certs.join("ca.crt")).expect("ca");
    std::fs::copy(&pair.cert, certs.join("client.cert")).expect("cert");
    std::fs::copy(&pair.key, certs.join("client.key")).expect("key");
    let containerd = tokio::task::block_in_place(support::daemons::Containerd::start);
    let pull = |hosts: &Path, reference: &str| {
        let hosts = hosts.to_str().expect("utf-8").to_string();
        tokio::task::block_in_place(|| {
            // Fetch without unpacking: the tiny test images have no real rootfs.
            containerd.ctr_try(&[
                "content",
                "fetch",
                "--hosts-dir",
                &hosts,
                "--platform",
                "linux/amd64",
                reference,
            ])
        })
    };
    let alice = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", ALICE.0, ALICE.1));
    let basic = containerd_hosts(&containerd, "containerd-basic", &s.berth, &certs, &alice);
    let out = pull(&basic, "docker.io/team/app:1.0");
    assert!(
        out.status.success(),
        "alice's header pulls: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wrong = base64::engine::general_purpose::STANDARD.encode(format!("{}:nope", ALICE.0));
    let wrong = containerd_hosts(&containerd, "containerd-basic", &s.berth, &certs, &wrong);
    assert!(
        !pull(&wrong, "docker.io/library/app:1.0").status.success(),
        "a wrong password is refused"
    );
    let mtls = containerd_hosts(&containerd, "containerd-mtls", &s.berth, &certs, "");
    let out = pull(&mtls, "docker.io/library/app:1.0");
    assert!(
        out.status.success(),
        "cn:node-3 pulls library/*: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let failed = failures(&s.berth);
    assert!(
        failed.iter().any(|(c, _, st)| c == "client_unauthorized" && *st == 401),
        "{failed:?}"
    );
}

/// `curl` GET with Basic credentials: the status and the body.
fn get_as(url: &str, who: (&str, &str)) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "--noproxy", "*", "-w", "\n%{http_code}", "--max-time", "30", "-u"])
        .arg(format!("{}:{}", who.0, who.1))
        .arg(url)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_private_layer_is_not_served_under_another_name() {
    let registry = Registry::start();
    let (_, _, layer) = push_tiny_image(&registry, "private/app", "1.0", false);
    let secret = "upstream-secret-not-for-clients";
    let relay = Relay::start(
        &registry.url(),
        RelayOptions {
            token_auth: Some(("puller".into(), secret.into())),
            ..RelayOptions::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().expect("dir");
    let config = format!(
        "[auth]\nhtpasswd = \"{}\"\n[[access]]\nidentities = [\"alice\"]\n[[access]]\nidentities = [\"bob\"]\nrepositories = [\"public/*\"]\n{}",
        htpasswd(dir.path()).display(),
        UpstreamToml::default_docker_io(&relay.url())
            .set("username", "puller")
            .set("password", secret)
            .to_toml()
    );
    let berth = Berth::start(&config);
    // alice, allowed everything, pulls the private layer: it is cached now.
    let (status, _) = get_as(&format!("{}/v2/private/app/blobs/{layer}", berth.url()), ALICE);
    assert_eq!(status, 200);
    // bob, allowed only public/*, knows the digest.
    let (status, body) = get_as(&format!("{}/v2/public/x/blobs/{layer}", berth.url()), BOB);
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("BLOB_UNKNOWN"), "{body}");
    let asked = relay.requests();
    assert!(
        asked
            .iter()
            .any(|r| r.starts_with("HEAD") && r.contains(&format!("/v2/public/x/blobs/{layer}"))),
        "the upstream was asked under public/x: {asked:#?}"
    );
    assert!(
        !asked
            .iter()
            .any(|r| r.starts_with("GET") && r.contains("/v2/public/x/")),
        "nothing was fetched under public/x"
    );
    let (status, body) = get_as(&format!("{}/v2/private/app/blobs/{layer}", berth.url()), BOB);
    assert_eq!(status, 403, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_htpasswd_file_is_picked_up_without_a_restart() {
    let s = setup("", None, "").await;
    let url = format!("{}/v2/", s.berth.url());
    let carol = ("carol", "a new colleague's password");
    assert_eq!(get_as(&url, carol).0, 401, "carol is not in the file yet");
    let file = s._dir.path().join("htpasswd");
    let mut text = std::fs::read_to_string(&file).expect("htpasswd");
    text.push_str(&format!("{}:{}\n", carol.0, bcrypt::hash(carol.1, 5).expect("bcrypt")));
    std::fs::write(&file, text).expect("rewrite htpasswd");
    tokio::task::block_in_place(|| {
        support::eventually(std::time::Duration::from_secs(10), "carol is let in", || {
            get_as(&url, carol).0 == 200
        })
    });
    assert_eq!(get_as(&url, ALICE).0, 200, "alice still is");
}

/// dockerd sends a mirror only the docker.io credentials of `docker login`,
/// so a fleet of dockerd nodes is let in by network: anonymous access from
/// `allow_networks`, and nothing from anywhere else.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dockerd_pulls_through_a_mirror_that_allows_its_network() {
    let registry = Registry::start();
    let fixtures = tokio::task::block_in_place(|| support::images::seed(&registry));
    let relay = Relay::start(&registry.url(), RelayOptions::default()).await;
    let mirror = |networks: &str| {
        Berth::start(&format!(
            "[auth]\nallow_networks = [{networks}]\nanonymous = true\n[[access]]\nidentities = [\"anonymous\"]\n{}",
            UpstreamToml::default_docker_io(&relay.url()).to_toml()
        ))
    };
    let image = &fixtures.v2s2;
    let reference = format!("{}:{}", support::client_name(&image.repo), image.tag);

    let allowed = mirror("\"127.0.0.0/8\"");
    let dockerd = tokio::task::block_in_place(|| support::daemons::Dockerd::start(&allowed.host()));
    let out = tokio::task::block_in_place(|| dockerd.docker_try(&["pull", &reference]));
    assert!(
        out.status.success(),
        "dockerd pulls from an allowed network: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let digests = tokio::task::block_in_place(|| dockerd.repo_digests(&reference));
    assert!(digests.iter().any(|d| d.ends_with(&image.digest)), "{digests:?}");
    drop(dockerd);

    let elsewhere = mirror("\"10.0.0.0/8\"");
    let before = relay.requests().len();
    let dockerd = tokio::task::block_in_place(|| support::daemons::Dockerd::start(&elsewhere.host()));
    let out = tokio::task::block_in_place(|| dockerd.docker_try(&["pull", &reference]));
    assert!(
        !out.status.success(),
        "a node outside allow_networks does not pull through berth"
    );
    assert_eq!(relay.requests().len(), before, "nothing reached the upstream");
    assert!(
        failures(&elsewhere)
            .iter()
            .any(|(c, _, st)| c == "client_forbidden" && *st == 403)
    );
    // dockerd names berth's refusal only in its own log, on its way to the origin.
    let log = dockerd.log();
    assert!(log.contains("403") || log.contains("denied"), "{log}");
}

/// dockerd with a client certificate in `certs.d/<mirror host:port>/`
/// (`docker/daemon-mtls.json`). dockerd treats 127.0.0.0/8 as an insecure
/// registry and then reads no `certs.d` at all, so berth, dockerd and a
/// Distribution on the same storage run in a network namespace where berth
/// listens on 10.77.0.1, an address dockerd verifies and sends its
/// certificate to.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dockerd_pulls_with_a_client_certificate_from_certs_d() {
    let registry = Registry::start();
    let fixtures = tokio::task::block_in_place(|| support::images::seed(&registry));
    let ns = support::netns::NetNs::create("dockerd-mtls");
    ns.add_address("10.77.0.1/32");
    let upstream = tokio::task::block_in_place(|| registry.serve_in_netns(&ns.name));
    let dir = tempfile::tempdir().expect("dir");
    let pki = Pki::for_addresses(&dir.path().join("pki"), "berth", &["127.0.0.1", "10.77.0.1"]);
    let berth = Berth::start_in_netns_on(
        &ns.name,
        "10.77.0.1:0",
        &format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n{}{}",
            pki.server_cert.display(),
            pki.server_key.display(),
            pki.ca_cert.display(),
            auth_toml(&htpasswd(dir.path()), ""),
            UpstreamToml::default_docker_io(&upstream.url()).to_toml()
        ),
    );
    // What an operator puts on each node: certs.d/<berth host:port>/ with
    // the CA (*.crt) and the node's pair (*.cert + *.key).
    let etc_docker = dir.path().join("etc-docker");
    let certs = etc_docker.join("certs.d").join(berth.host());
    std::fs::create_dir_all(&certs).expect("certs.d");
    let pair = pki.client("node-1");
    std::fs::copy(&pki.ca_cert, certs.join("ca.crt")).expect("ca");
    std::fs::copy(&pair.cert, certs.join("client.cert")).expect("cert");
    std::fs::copy(&pair.key, certs.join("client.key")).expect("key");
    let dockerd = tokio::task::block_in_place(|| {
        support::daemons::Dockerd::start_in_netns("daemon-mtls.json", &berth.host(), &ns.name, &etc_docker)
    });

    let image = &fixtures.v2s2;
    let reference = format!("{}:{}", support::client_name(&image.repo), image.tag);
    let out = tokio::task::block_in_place(|| dockerd.docker_try(&["pull", &reference]));
    assert!(
        out.status.success(),
        "dockerd pulls with its certs.d certificate: {}\n--- dockerd ---\n{}\n--- berth ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        dockerd.log(),
        berth.log()
    );
    let digests = tokio::task::block_in_place(|| dockerd.repo_digests(&reference));
    assert!(digests.iter().any(|d| d.ends_with(&image.digest)), "{digests:?}");

    // The certificate is the identity: cn:node-* has no rule for a/b/c.
    let nested = &fixtures.nested;
    let other = format!("{}:{}", support::client_name(&nested.repo), nested.tag);
    let out = tokio::task::block_in_place(|| dockerd.docker_try(&["pull", &other]));
    assert!(!out.status.success(), "cn:node-1 may not pull {other}");
    let refused: Vec<_> = berth
        .events()
        .into_iter()
        .filter(|e| e["event"] == "pull_failed")
        .map(|e| {
            (
                e["cause"].as_str().unwrap_or("").to_string(),
                e["identity"].as_str().map(String::from),
            )
        })
        .collect();
    assert!(
        refused.contains(&("client_forbidden".to_string(), Some("cn:node-1".to_string()))),
        "{refused:?}"
    );
    assert!(
        !refused.iter().any(|(c, _)| c == "client_unauthorized"),
        "dockerd always sent its certificate: {refused:?}"
    );
}

/// podman, in directories of its own: `podman login` to berth, then a pull
/// of a docker.io image through the `registries.conf` mirror (the snippet in
/// `docker/registries.conf`), with the credentials of that login.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn podman_logs_in_to_berth_and_pulls_through_the_mirror() {
    let registry = Registry::start();
    let fixtures = tokio::task::block_in_place(|| support::images::seed(&registry));
    let relay = Relay::start(&registry.url(), RelayOptions::default()).await;
    let dir = tempfile::tempdir().expect("dir");
    let config = format!(
        "{}{}",
        auth_toml(&htpasswd(dir.path()), ""),
        UpstreamToml::default_docker_io(&relay.url()).to_toml()
    );
    let berth = Berth::start(&config);
    let podman = support::daemons::Podman::new(&berth.host());
    let podman = |args: &[&str]| podman.run(args);
    let image = &fixtures.v2s2;
    let reference = format!("docker.io/{}:{}", image.repo, image.tag);
    let (ok, text) = tokio::task::block_in_place(|| podman(&["pull", "--quiet", &reference]));
    assert!(!ok, "without a login berth refuses podman: {text}");
    let (ok, text) = tokio::task::block_in_place(|| {
        podman(&[
            "login",
            "--tls-verify=false",
            "-u",
            ALICE.0,
            "-p",
            ALICE.1,
            &berth.host(),
        ])
    });
    assert!(ok, "podman login to berth: {text}");
    let (ok, text) = tokio::task::block_in_place(|| podman(&["pull", "--quiet", &reference]));
    assert!(ok, "podman pulls through the mirror with its login: {text}");
    let path = format!("GET /v2/{}/manifests/{}", image.repo, image.tag);
    assert_eq!(
        relay.count(|r| r == path),
        1,
        "through berth, the mirror: {:#?}",
        relay.requests()
    );
    assert!(failures(&berth).iter().any(|(c, _, _)| c == "client_unauthorized"));
}
