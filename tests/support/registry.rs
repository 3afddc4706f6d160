//! The real upstream: CNCF Distribution from Debian's `docker-registry`
//! package, on an ephemeral loopback port with its storage in a temp dir.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Registry {
    pub addr: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        Registry::start_with("", Lifetime::Owner)
    }

    /// A registry that serves every test of this process and goes with the
    /// process however it ends (a `static` is never dropped): a shell runs
    /// Distribution, waits for its stdin, a pipe only this process holds, to
    /// close, then stops it and removes its directory. For test files whose
    /// checks only read one seeded upstream. `pid()` is the shell's.
    pub fn start_for_this_process() -> Registry {
        Registry::start_with("", Lifetime::Process)
    }

    /// Distribution in proxy mode in front of `remote_url` (used by the
    /// benchmark to compare against berth).
    pub fn start_proxy(remote_url: &str) -> Registry {
        Registry::start_with(&format!("proxy:\n  remoteurl: {remote_url}\n"), Lifetime::Owner)
    }

    fn start_with(extra_yaml: &str, lifetime: Lifetime) -> Registry {
        // Distribution takes a fixed address, so a free port is picked first;
        // another test's server can take it before Distribution binds it.
        // Then Distribution says so in its log and it starts again elsewhere.
        for _ in 0..4 {
            let mut registry = Registry::spawn(extra_yaml, lifetime);
            if registry.wait_ready() {
                return registry;
            }
            registry.stop();
        }
        panic!("docker-registry found no free port in four tries");
    }

    fn spawn(extra_yaml: &str, lifetime: Lifetime) -> Registry {
        let dir = tempfile::tempdir().expect("registry temp dir");
        let addr = super::fixed_port_addr();
        let config = dir.path().join("config.yml");
        let yaml = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{extra_yaml}",
            dir.path().join("data").display()
        );
        std::fs::write(&config, yaml).expect("write registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("registry log");
        let mut cmd = match lifetime {
            Lifetime::Owner => {
                let mut c = Command::new("docker-registry");
                c.arg("serve").arg(&config).stdin(Stdio::null());
                c
            }
            Lifetime::Process => {
                let mut c = Command::new("sh");
                c.args([
                    "-c",
                    "docker-registry serve \"$0\" & read -r _; kill $!; wait; rm -rf \"$1\"",
                ])
                .arg(&config)
                .arg(dir.path())
                .stdin(Stdio::piped());
                c
            }
        };
        let child = cmd
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn docker-registry (apt-get install docker-registry)");
        Registry { addr, child, dir }
    }

    /// Ready when this Distribution logged that it listens on its address
    /// and answers there (a 200 alone could be another test's server on a
    /// port taken first); false when its port was taken.
    fn wait_ready(&mut self) -> bool {
        let (addr, log_path) = (self.addr, self.log_path());
        let listening = format!("listening on {addr}");
        let child = &mut self.child;
        super::poll(Duration::from_secs(20), || {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            if log.contains("address already in use") {
                return Some(false);
            }
            if log.contains(&listening) && super::raw_get(addr, "/v2/").0 == 200 {
                return Some(true);
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("docker-registry exited with {status}: {log}");
            }
            None
        })
        .unwrap_or_else(|| panic!("docker-registry did not start: {}", self.log()))
    }

    /// A second Distribution inside the network namespace `netns`, serving
    /// this registry's storage (what was pushed here) on an ephemeral port of
    /// that namespace's loopback, for a berth that runs there too.
    pub fn serve_in_netns(&self, netns: &str) -> Registry {
        let dir = tempfile::tempdir().expect("registry temp dir");
        let config = dir.path().join("config.yml");
        let yaml = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:0\n",
            self.dir.path().join("data").display()
        );
        std::fs::write(&config, yaml).expect("write registry config");
        let log_path = dir.path().join("registry.log");
        let log = std::fs::File::create(&log_path).expect("registry log");
        // `ip netns exec` execs Distribution in place: the child's pid is its.
        let mut child = Command::new("ip")
            .args(["netns", "exec", netns, "docker-registry", "serve"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn docker-registry in the namespace");
        // Not reachable from here: its address comes from its log line
        // `listening on 127.0.0.1:<port>`.
        let addr = super::poll(Duration::from_secs(20), || {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            if let Some(addr) = text.split("listening on ").nth(1).and_then(|rest| {
                let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))?;
                rest[..end].parse().ok()
            }) {
                return Some(addr);
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("docker-registry in {netns} exited with {status}: {text}");
            }
            None
        })
        .unwrap_or_else(|| panic!("docker-registry in {netns} did not start"));
        Registry { addr, child, dir }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The process id (the load benchmark reads its memory use).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stop(&mut self) {
        // A process-lifetime registry's shell stops it when its stdin closes.
        if self.child.stdin.take().is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Who stops the registry: the `Registry` value when dropped, or the end of
/// the test process.
#[derive(Clone, Copy)]
enum Lifetime {
    Owner,
    Process,
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}
