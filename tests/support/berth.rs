//! Runs the built `berth` binary on 127.0.0.1:0 with a config written for the
//! test, and learns its address from the `listening` log event.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{DEAD_PROXY, NO_PROXY};

pub struct Berth {
    pub addr: std::net::SocketAddr,
    /// The admin listener (/metrics, /_berth/*).
    pub admin_addr: std::net::SocketAddr,
    child: Child,
    pub cache_dir: PathBuf,
    pub log_path: PathBuf,
    /// The config file berth was started with (SIGHUP reads it again).
    pub config_path: PathBuf,
    /// Its first lines (listen, admin_listen, cache_dir, log_format).
    config_head: String,
    _dir: Option<tempfile::TempDir>,
}

impl Berth {
    /// Start berth with `[[upstream]]` sections (and any other keys) given as
    /// TOML; listen, cache_dir and log_format are set here.
    pub fn start(extra_toml: &str) -> Berth {
        let dir = tempfile::tempdir().expect("temp dir for berth");
        let cache = dir.path().join("cache");
        let mut b = Berth::start_in(dir.path(), &cache, extra_toml);
        b._dir = Some(dir);
        b
    }

    /// Start with a given work dir and cache dir (to restart on the same cache).
    pub fn start_in(work: &Path, cache_dir: &Path, extra_toml: &str) -> Berth {
        Berth::launch(work, cache_dir, extra_toml, None, &[])
    }

    /// Start inside the network namespace `netns` (a fresh temp dir), with
    /// extra environment variables.
    pub fn start_in_netns(netns: &str, extra_toml: &str, env: &[(&str, &str)]) -> Berth {
        let dir = tempfile::tempdir().expect("temp dir for berth");
        let cache = dir.path().join("cache");
        let mut b = Berth::launch(dir.path(), &cache, extra_toml, Some(netns), env);
        b._dir = Some(dir);
        b
    }

    /// Start inside `netns`, listening on `listen` (an address of that
    /// namespace) instead of 127.0.0.1:0.
    pub fn start_in_netns_on(netns: &str, listen: &str, extra_toml: &str) -> Berth {
        let dir = tempfile::tempdir().expect("temp dir for berth");
        let cache = dir.path().join("cache");
        let mut b = Berth::launch_as(dir.path(), &cache, extra_toml, Launch::NetnsOn(netns, listen), &[]);
        b._dir = Some(dir);
        b
    }

    /// Start listening on `listen` (e.g. a port picked for a replica whose
    /// peers must know it beforehand).
    pub fn start_on(listen: &str, extra_toml: &str) -> Berth {
        let dir = tempfile::tempdir().expect("temp dir for berth");
        let cache = dir.path().join("cache");
        let mut b = Berth::launch_as(dir.path(), &cache, extra_toml, Launch::On(listen), &[]);
        b._dir = Some(dir);
        b
    }

    /// Start with extra environment variables (they override the dead proxy).
    pub fn start_with_env(extra_toml: &str, env: &[(&str, &str)]) -> Berth {
        let dir = tempfile::tempdir().expect("temp dir for berth");
        let cache = dir.path().join("cache");
        let mut b = Berth::launch(dir.path(), &cache, extra_toml, None, env);
        b._dir = Some(dir);
        b
    }

    /// Start under `ulimit -n <fd_limit>` (the shell execs berth, so the
    /// child's pid is berth's).
    pub fn start_with_fd_limit(extra_toml: &str, fd_limit: u32) -> Berth {
        let dir = tempfile::tempdir().expect("temp dir for berth");
        let cache = dir.path().join("cache");
        let mut b = Berth::launch_as(dir.path(), &cache, extra_toml, Launch::FdLimit(fd_limit), &[]);
        b._dir = Some(dir);
        b
    }

    fn launch(work: &Path, cache_dir: &Path, extra_toml: &str, netns: Option<&str>, env: &[(&str, &str)]) -> Berth {
        let how = match netns {
            Some(ns) => Launch::Netns(ns),
            None => Launch::Plain,
        };
        Berth::launch_as(work, cache_dir, extra_toml, how, env)
    }

    fn launch_as(work: &Path, cache_dir: &Path, extra_toml: &str, how: Launch<'_>, env: &[(&str, &str)]) -> Berth {
        Berth::launch_until(work, cache_dir, extra_toml, how, env, "listening")
    }

    /// Start, and return once the admin surface is bound (`admin listening`),
    /// before berth is ready: `addr` is a placeholder until `listening`.
    pub fn start_until_admin(extra_toml: &str) -> Berth {
        let dir = tempfile::tempdir().expect("temp dir for berth");
        let cache = dir.path().join("cache");
        let mut b = Berth::launch_until(dir.path(), &cache, extra_toml, Launch::Plain, &[], "admin listening");
        b._dir = Some(dir);
        b
    }

    fn launch_until(
        work: &Path,
        cache_dir: &Path,
        extra_toml: &str,
        how: Launch<'_>,
        env: &[(&str, &str)],
        ready: &str,
    ) -> Berth {
        let config = work.join("berth.toml");
        let listen = match how {
            Launch::NetnsOn(_, listen) | Launch::On(listen) => listen,
            _ => "127.0.0.1:0",
        };
        let head = format!(
            "listen = \"{listen}\"\nadmin_listen = \"127.0.0.1:0\"\ncache_dir = \"{}\"\nlog_format = \"json\"\n",
            cache_dir.display()
        );
        std::fs::write(&config, format!("{head}{extra_toml}\n")).expect("write berth config");
        let log_path = work.join(format!("berth-{}.log", std::process::id()));
        let log = std::fs::File::create(&log_path).expect("create berth log");
        // `ip netns exec` execs berth in place: the child's pid is berth's.
        let mut cmd = match how {
            Launch::Netns(ns) | Launch::NetnsOn(ns, _) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_berth")]);
                c
            }
            Launch::FdLimit(n) => {
                let mut c = Command::new("sh");
                c.args([
                    "-c",
                    &format!("ulimit -n {n} && exec \"$0\" \"$@\""),
                    env!("CARGO_BIN_EXE_berth"),
                ]);
                c
            }
            Launch::Plain | Launch::On(_) => Command::new(env!("CARGO_BIN_EXE_berth")),
        };
        cmd.args(["serve", "--config"])
            .arg(&config)
            .env("HTTP_PROXY", DEAD_PROXY)
            .env("HTTPS_PROXY", DEAD_PROXY)
            .env("NO_PROXY", NO_PROXY)
            .env("RUST_LOG", "info,berth=debug")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log);
        let child = cmd.spawn().expect("spawn berth");
        let mut b = Berth {
            addr: "127.0.0.1:1".parse().expect("placeholder addr"),
            admin_addr: "127.0.0.1:1".parse().expect("placeholder addr"),
            child,
            cache_dir: cache_dir.to_path_buf(),
            log_path,
            config_path: config.clone(),
            config_head: head,
            _dir: None,
        };
        let addr = b.wait_logged(ready);
        if ready == "listening" {
            b.addr = addr;
        }
        // Logged before `listening`; absent when the admin surface is on listen.
        b.admin_addr = b.logged_addr("admin listening").unwrap_or(b.addr);
        b
    }

    fn wait_logged(&mut self, message: &str) -> std::net::SocketAddr {
        let (child, log_path) = (&mut self.child, &self.log_path);
        super::poll(Duration::from_secs(20), || {
            if let Some(addr) = events_in(log_path).iter().find_map(|e| {
                (e["message"] == message)
                    .then(|| e["addr"].as_str()?.parse().ok())
                    .flatten()
            }) {
                return Some(addr);
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("berth exited with {status}: {}", log_in(log_path));
            }
            None
        })
        .unwrap_or_else(|| panic!("berth did not start: {}", self.log()))
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The admin surface's base URL.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin_addr)
    }

    /// The `addr` of the first log event with this message, if logged.
    fn logged_addr(&self, message: &str) -> Option<std::net::SocketAddr> {
        events_in(&self.log_path).iter().find_map(|e| {
            (e["message"] == message)
                .then(|| e["addr"].as_str()?.parse().ok())
                .flatten()
        })
    }

    /// `127.0.0.1:PORT`, as skopeo and docker name a registry.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn log(&self) -> String {
        log_in(&self.log_path)
    }

    /// The JSON log events so far.
    pub fn events(&self) -> Vec<serde_json::Value> {
        events_in(&self.log_path)
    }

    /// The process id (the load benchmark reads its memory use).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Replace the config file's sections after its first lines (the same
    /// listen, admin_listen, cache_dir and log_format) with `extra_toml`, by
    /// rename, as config management does; berth reads it at the next SIGHUP.
    pub fn rewrite_config(&self, extra_toml: &str) {
        self.rewrite_config_raw(&format!("{}{extra_toml}\n", self.config_head));
    }

    /// Replace the whole config file with `text`, by rename.
    pub fn rewrite_config_raw(&self, text: &str) {
        let next = self.config_path.with_extension("toml.new");
        std::fs::write(&next, text).expect("write the new config");
        std::fs::rename(&next, &self.config_path).expect("replace the config");
    }

    /// `/_berth/status` as JSON (blocking; from an async test use a client).
    pub fn status(&self) -> serde_json::Value {
        let (code, body) = super::raw_get(self.admin_addr, "/_berth/status");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("status JSON")
    }

    /// Send `SIGTERM` (or another signal by name, as `kill -s` takes it).
    pub fn signal(&self, name: &str) {
        let out = Command::new("kill")
            .args(["-s", name, &self.child.id().to_string()])
            .output()
            .expect("run kill");
        assert!(
            out.status.success(),
            "kill -s {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Wait (bounded) for berth to exit; its status, or None if it did not.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = &mut self.child;
        super::poll(timeout, || child.try_wait().ok().flatten())
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn log_in(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn events_in(log_path: &Path) -> Vec<serde_json::Value> {
    log_in(log_path)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[derive(Clone, Copy)]
enum Launch<'a> {
    Plain,
    Netns(&'a str),
    /// In a namespace, listening on an address of it.
    NetnsOn(&'a str, &'a str),
    FdLimit(u32),
    /// Listening on a given address (replicas must know each other's).
    On(&'a str),
}

impl Drop for Berth {
    fn drop(&mut self) {
        self.kill();
    }
}
