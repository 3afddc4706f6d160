//! The status page at the admin listener's `/`, rendered by a real browser
//! (Debian's chromium, headless, in a profile directory of its own): the DOM
//! it builds holds the cache, traffic, upstream and failure sections with
//! this berth's figures, and it lays out at a phone's width and a wide
//! screen's (screenshots written where `BERTH_STATUS_SCREENSHOTS` says, for
//! a person to look at).

mod support;

use std::process::Command;

use support::registry::Registry;
use support::{Berth, UpstreamToml, raw_get};

fn chromium(profile: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new("chromium")
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-proxy-server",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("run chromium (apt-get install chromium)")
}

#[test]
fn a_browser_renders_the_status_page_with_this_berths_figures() {
    let registry = Registry::start();
    support::images::push_tiny_image(&registry, "library/app", "1.0", false);
    let berth = Berth::start(&UpstreamToml::default_docker_io(&registry.url()).to_toml());
    for _ in 0..2 {
        assert_eq!(raw_get(berth.addr, "/v2/library/app/manifests/1.0").0, 200);
    }
    assert_eq!(raw_get(berth.addr, "/v2/library/app/manifests/1.1").0, 404);
    let url = format!("{}/", berth.admin_url());
    assert_eq!(raw_get(berth.addr, "/").0, 404, "not on the registry port");

    let dir = tempfile::tempdir().expect("dir");
    let out = chromium(&dir.path().join("profile"), &["--dump-dom", &url]);
    let dom = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for section in ["id=\"cache\"", "id=\"traffic\"", "id=\"upstreams\"", "id=\"failures\""] {
        assert!(dom.contains(section), "{section} in {dom}");
    }
    assert!(dom.contains(&format!("berth {}", env!("CARGO_PKG_VERSION"))), "{dom}");
    assert!(dom.contains("docker.io") && dom.contains("manifest_unknown"), "{dom}");
    assert!(dom.contains("did you mean 1.0?"), "the hint of the failure: {dom}");
    assert!(dom.contains("of 50.0 GiB"), "cache max: {dom}");

    let shots = std::env::var("BERTH_STATUS_SCREENSHOTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| dir.path().to_path_buf());
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    for (name, size) in [("phone", "390,844"), ("wide", "1400,900")] {
        let png = shots.join(format!("status-{name}.png"));
        let out = chromium(
            &dir.path().join(format!("profile-{name}")),
            &[
                &format!("--screenshot={}", png.display()),
                &format!("--window-size={size}"),
                &url,
            ],
        );
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let bytes = std::fs::read(&png).expect("screenshot written");
        assert!(
            bytes.starts_with(b"\x89PNG") && bytes.len() > 5_000,
            "{name}: {} bytes",
            bytes.len()
        );
    }
}
