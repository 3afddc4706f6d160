//! "Why did node 10.0.0.7 fail to pull busybox?" as one lookup: failures of
//! two clients (127.0.0.1 and 127.0.0.2, both loopback on Linux) for two
//! images, found by client, image, cause and age through `/_berth/failures`
//! and through `berth failures`.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Output};
use std::time::Duration;

use support::fake_upstream::{Answer, FakeUpstream};
use support::{Berth, UpstreamToml, client, eventually, lazy};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A GET sent from the address `from`; the status berth answered.
fn get_from(from: &str, to: SocketAddr, path: &str) -> u16 {
    let from: IpAddr = from.parse().expect("source address");
    runtime().block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind(SocketAddr::new(from, 0)).expect("bind the client address");
        let mut s = socket.connect(to).await.expect("connect to berth");
        let req = format!("GET {path} HTTP/1.1\r\nHost: berth\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("send");
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out)).await;
        let head = String::from_utf8_lossy(&out).to_string();
        head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
    })
}

struct Fixture {
    berth: Berth,
    _fake: FakeUpstream,
}

/// busybox exists upstream (its tags `nope` and `gone` do not:
/// `manifest_unknown`); alpine does not exist at all (`name_unknown`).
/// 127.0.0.1 asks for busybox:nope and alpine:3; 127.0.0.2 for busybox:gone.
fn three_failures() -> Fixture {
    let fake = FakeUpstream::start();
    for tag in ["nope", "gone"] {
        fake.route(&format!("/v2/library/busybox/manifests/{tag}"), |_, _| {
            Answer::json(
                404,
                r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
            )
        });
    }
    fake.route("/v2/library/busybox/tags/list", |_, _| {
        Answer::json(200, r#"{"name":"library/busybox","tags":["1.36","latest"]}"#)
    });
    let berth = Berth::start(
        &UpstreamToml::default_docker_io(&fake.url())
            .set("attempts", 1)
            .to_toml(),
    );
    for (from, path) in [
        ("127.0.0.1", "/v2/busybox/manifests/nope"),
        ("127.0.0.1", "/v2/alpine/manifests/3"),
        ("127.0.0.2", "/v2/library/busybox/manifests/gone"),
    ] {
        assert_eq!(get_from(from, berth.addr, path), 404, "{from} {path}: {}", berth.log());
    }
    let fx = Fixture { berth, _fake: fake };
    eventually(
        Duration::from_secs(10),
        lazy(|| format!("three failures recorded: {}", fx.berth.log())),
        || lookup(&fx.berth, "").1["matched"] == 3,
    );
    fx
}

/// `/_berth/failures?<query>`: (status, JSON body).
fn lookup(berth: &Berth, query: &str) -> (u16, serde_json::Value) {
    let url = format!("{}/_berth/failures?{query}", berth.admin_url());
    runtime().block_on(async {
        let resp = client().get(&url).send().await.expect("admin answers");
        let status = resp.status().as_u16();
        (status, resp.json().await.expect("a JSON body"))
    })
}

/// (client address without port, repository:reference) of each entry,
/// newest first; the repository as the client sent it.
fn found(report: &serde_json::Value) -> Vec<(String, String)> {
    let entries = report["failures"].as_array().expect("failures").iter();
    entries
        .map(|e| {
            let client: SocketAddr = e["client"].as_str().expect("client").parse().expect("ip:port");
            let image = format!(
                "{}:{}",
                e["repository"].as_str().unwrap_or("-"),
                e["reference"].as_str().unwrap_or("-")
            );
            (client.ip().to_string(), image)
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

#[test]
fn each_filter_finds_its_failures_over_http() {
    let fx = three_failures();
    let b = &fx.berth;
    let (status, all) = lookup(b, "");
    assert_eq!(status, 200);
    assert_eq!(all["matched"], 3);
    assert_eq!(all["counts"]["manifest_unknown"], 2, "{all}");
    assert_eq!(all["counts"]["name_unknown"], 1, "{all}");

    let cases: &[(&str, &[(&str, &str)])] = &[
        ("client=127.0.0.2", &[("127.0.0.2", "library/busybox:gone")]),
        (
            "client=127.0.0.1",
            &[("127.0.0.1", "alpine:3"), ("127.0.0.1", "busybox:nope")],
        ),
        ("client=127.0.0.2%2F32", &[("127.0.0.2", "library/busybox:gone")]),
        ("client=10.0.0.7", &[]),
        (
            "image=busybox",
            &[("127.0.0.2", "library/busybox:gone"), ("127.0.0.1", "busybox:nope")],
        ),
        (
            "image=docker.io%2Flibrary%2Fbusybox%3Anope",
            &[("127.0.0.1", "busybox:nope")],
        ),
        ("image=library%2Fbusybox:gone", &[("127.0.0.2", "library/busybox:gone")]),
        ("image=ghcr.io%2Flibrary%2Fbusybox", &[]),
        ("cause=name_unknown", &[("127.0.0.1", "alpine:3")]),
        ("client=127.0.0.1&image=busybox", &[("127.0.0.1", "busybox:nope")]),
        ("client=127.0.0.2&cause=name_unknown", &[]),
        ("since=1h&image=alpine", &[("127.0.0.1", "alpine:3")]),
        ("since=0s", &[]),
    ];
    for (query, want) in cases {
        let (status, report) = lookup(b, query);
        assert_eq!(status, 200, "{query}: {report}");
        assert_eq!(found(&report), pairs(want), "{query}: {report}");
        assert_eq!(report["matched"], want.len(), "{query}");
        assert_eq!(
            report["counts"], all["counts"],
            "{query}: counts are every failure since start"
        );
    }

    for (query, parameter, says) in [
        ("cause=bogus", "cause", "manifest_unknown"),
        ("client=node7", "client", "node7"),
        ("image=Busybox", "image", "Busybox"),
        ("since=soon", "since", "soon"),
        ("clinet=127.0.0.1", "clinet", "unknown parameter"),
    ] {
        let (status, body) = lookup(b, query);
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["parameter"], parameter, "{query}: {body}");
        let message = body["error"].as_str().expect("error message");
        assert!(message.contains(says), "{query}: {message}");
    }
}

fn berth_failures(b: &Berth, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["failures", "--url", &b.admin_url()])
        .args(args)
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .output()
        .expect("run berth failures")
}

/// The table's rows (the lines between the header and the legend).
fn rows(out: &Output) -> Vec<String> {
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .skip(1)
        .take_while(|l| !l.starts_with("(GOT"))
        .map(str::to_string)
        .collect()
}

#[test]
fn berth_failures_takes_the_same_filters() {
    let fx = three_failures();
    let b = &fx.berth;

    let out = berth_failures(b, &["--client", "127.0.0.2"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.lines().next().is_some_and(|h| h.contains("CLIENT")), "{text}");
    let found = rows(&out);
    assert_eq!(found.len(), 1, "{text}");
    assert!(
        found[0].contains("127.0.0.2") && found[0].contains("library/busybox:gone"),
        "{text}"
    );
    assert!(text.contains("1 recent failure match client 127.0.0.2."), "{text}");
    assert!(
        text.contains("manifest_unknown") && text.contains("name_unknown"),
        "counts: {text}"
    );

    let out = berth_failures(b, &["--image", "busybox:nope", "--client", "127.0.0.1"]);
    let found = rows(&out);
    assert_eq!(found.len(), 1, "{out:?}");
    assert!(
        found[0].contains("127.0.0.1") && found[0].contains("manifest_unknown"),
        "{out:?}"
    );

    let out = berth_failures(b, &["--cause", "name_unknown", "--since", "1h"]);
    let found = rows(&out);
    assert_eq!(found.len(), 1, "{out:?}");
    assert!(found[0].contains("alpine:3"), "{out:?}");

    let out = berth_failures(b, &["--image", "alpine", "--client", "127.0.0.2"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "No failures match client 127.0.0.2, image alpine.\n"
    );

    let out = berth_failures(b, &["--json", "--image", "docker.io/library/busybox"]);
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["matched"], 2, "{report}");

    for (args, says) in [
        (&["--cause", "bogus"][..], "rate_limited"),
        (&["--since", "a while"][..], "--since"),
        (&["--client", "node7", "--json"][..], "--client"),
    ] {
        let out = berth_failures(b, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn an_image_routed_by_a_path_prefix_is_found_by_its_registry() {
    let fake = FakeUpstream::start();
    let config = format!(
        "{}\n{}",
        UpstreamToml::default_docker_io(&fake.url()).set("attempts", 1),
        UpstreamToml::new("ghcr.io", &fake.url())
            .set("prefix", "gh")
            .set("attempts", 1)
    );
    let berth = Berth::start(&config);
    assert_eq!(get_from("127.0.0.1", berth.addr, "/v2/gh/org/app/manifests/v1"), 404);
    assert_eq!(get_from("127.0.0.1", berth.addr, "/v2/org/app/manifests/v1"), 404);
    let recorded = || lookup(&berth, "").1["matched"] == 2;
    eventually(Duration::from_secs(10), lazy(|| berth.log()), recorded);
    let (_, report) = lookup(&berth, "image=ghcr.io%2Forg%2Fapp%3Av1");
    assert_eq!(found(&report), pairs(&[("127.0.0.1", "gh/org/app:v1")]), "{report}");
    assert_eq!(report["failures"][0]["upstream"], "ghcr.io", "{report}");
    let (_, report) = lookup(&berth, "image=docker.io%2Forg%2Fapp");
    assert_eq!(found(&report), pairs(&[("127.0.0.1", "org/app:v1")]), "{report}");
}
