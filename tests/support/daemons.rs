//! Real container daemons, each with its own temp root, state dir and socket
//! (never the machine's defaults), stopped by process id when dropped:
//! dockerd with `registry-mirrors`, and containerd driven by `ctr` with a
//! `hosts.toml` directory. Their configs come from the snippets in `docker/`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use super::{DEAD_PROXY, NO_PROXY};

/// The host name the snippets in `docker/` use for berth.
pub const SNIPPET_HOST: &str = "berth.example.internal:5000";

/// A snippet from `docker/` with berth's real address put in.
pub fn snippet(relative: &str, berth_host: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docker").join(relative);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("read snippet {}: {e}", path.display()))
        .replace(SNIPPET_HOST, berth_host)
}

fn wait_for(what: &str, child: &mut Child, log: &Path, mut ready: impl FnMut() -> bool) {
    let read_log = || std::fs::read_to_string(log).unwrap_or_default();
    super::poll(Duration::from_secs(60), || {
        if ready() {
            return Some(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited with {status}: {}", read_log());
        }
        None
    })
    .unwrap_or_else(|| panic!("{what} did not become ready: {}", read_log()));
}

fn stop(child: &mut Child) {
    // SIGTERM first so the daemon stops the containerd it supervises.
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let exited = super::poll(Duration::from_secs(20), || child.try_wait().ok().flatten());
    if exited.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

pub struct Dockerd {
    child: Child,
    dir: tempfile::TempDir,
    socket: PathBuf,
}

impl Dockerd {
    /// dockerd using docker/daemon.json (berth as the registry mirror), plus
    /// what this machine needs: vfs storage, no iptables, no bridge.
    pub fn start(berth_host: &str) -> Dockerd {
        Dockerd::launch("daemon.json", berth_host, None)
    }

    /// dockerd using the snippet `daemon_snippet`, inside the network
    /// namespace `netns` and a mount namespace of its own where `etc_docker`
    /// is `/etc/docker` (dockerd reads `certs.d` from that fixed path only).
    pub fn start_in_netns(daemon_snippet: &str, berth_host: &str, netns: &str, etc_docker: &Path) -> Dockerd {
        Dockerd::launch(daemon_snippet, berth_host, Some((netns, etc_docker)))
    }

    fn launch(daemon_snippet: &str, berth_host: &str, netns: Option<(&str, &Path)>) -> Dockerd {
        Dockerd::launch_on("vfs", daemon_snippet, berth_host, netns)
    }

    fn launch_on(
        storage_driver: &str,
        daemon_snippet: &str,
        berth_host: &str,
        netns: Option<(&str, &Path)>,
    ) -> Dockerd {
        let dir = tempfile::tempdir().expect("dockerd temp dir");
        let mut config: serde_json::Value =
            serde_json::from_str(&snippet(daemon_snippet, berth_host)).expect("daemon snippet is JSON");
        config["storage-driver"] = storage_driver.into();
        config["iptables"] = false.into();
        config["ip-masq"] = false.into();
        config["ip-forward"] = false.into();
        config["bridge"] = "none".into();
        let config_path = dir.path().join("daemon.json");
        std::fs::write(&config_path, config.to_string()).expect("write daemon.json");
        let socket = dir.path().join("docker.sock");
        let log_path = dir.path().join("dockerd.log");
        let log = std::fs::File::create(&log_path).expect("dockerd log");
        // nsenter and unshare exec in place, and so does the shell after the
        // bind mount: the child's pid is dockerd's. (`ip netns exec` would
        // remount /sys and hide the cgroups dockerd needs.)
        let mut cmd = match netns {
            None => Command::new("dockerd"),
            Some((ns, etc_docker)) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}"))
                    .args(["unshare", "--mount", "--propagation", "private", "sh", "-c"])
                    .arg("mount --bind \"$0\" /etc/docker && exec dockerd \"$@\"")
                    .arg(etc_docker);
                c
            }
        };
        let mut child = cmd
            .arg("--config-file")
            .arg(&config_path)
            .arg("--data-root")
            .arg(dir.path().join("data"))
            .arg("--exec-root")
            .arg(dir.path().join("exec"))
            .arg("--pidfile")
            .arg(dir.path().join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .env("HTTP_PROXY", DEAD_PROXY)
            .env("HTTPS_PROXY", DEAD_PROXY)
            // berth's own host goes direct even when it is not loopback.
            .env(
                "NO_PROXY",
                format!(
                    "{NO_PROXY},{}",
                    berth_host.rsplit_once(':').map_or(berth_host, |(h, _)| h)
                ),
            )
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn dockerd (apt-get install docker.io)");
        let probe_socket = socket.clone();
        let cli_dir = dir.path().join("cli");
        wait_for("dockerd", &mut child, &log_path, || {
            Command::new("docker")
                .arg("version")
                .env("DOCKER_HOST", format!("unix://{}", probe_socket.display()))
                .env("DOCKER_CONFIG", &cli_dir)
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        });
        Dockerd { child, dir, socket }
    }

    pub fn docker_try(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .args(args)
            .env("DOCKER_HOST", format!("unix://{}", self.socket.display()))
            .env("DOCKER_CONFIG", self.dir.path().join("cli"))
            .output()
            .expect("run docker")
    }

    pub fn docker(&self, args: &[&str]) -> String {
        let out = self.docker_try(args);
        assert!(
            out.status.success(),
            "docker {args:?}: {}\n--- dockerd log ---\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    /// `docker image inspect`'s RepoDigests of an image.
    pub fn repo_digests(&self, image: &str) -> Vec<String> {
        let out = self.docker(&["image", "inspect", "--format", "{{json .RepoDigests}}", image]);
        serde_json::from_str(out.trim()).expect("RepoDigests JSON")
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

pub struct Containerd {
    child: Child,
    dir: tempfile::TempDir,
    socket: PathBuf,
}

impl Containerd {
    pub fn start() -> Containerd {
        let dir = tempfile::tempdir().expect("containerd temp dir");
        let socket = dir.path().join("containerd.sock");
        // Only what `ctr images pull` needs: no CRI, the portable snapshotter.
        let config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n[debug]\n  address = \"\"\n",
            root = dir.path().join("root").display(),
            state = dir.path().join("state").display(),
            sock = socket.display(),
        );
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, config).expect("write containerd config");
        let log_path = dir.path().join("containerd.log");
        let log = std::fs::File::create(&log_path).expect("containerd log");
        let mut child = Command::new("containerd")
            .arg("--config")
            .arg(&config_path)
            .env("HTTP_PROXY", DEAD_PROXY)
            .env("HTTPS_PROXY", DEAD_PROXY)
            .env("NO_PROXY", NO_PROXY)
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn containerd (apt-get install containerd)");
        let probe = socket.clone();
        wait_for("containerd", &mut child, &log_path, || {
            Command::new("ctr")
                .arg("--address")
                .arg(&probe)
                .arg("version")
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        });
        Containerd { child, dir, socket }
    }

    /// A hosts directory built from snippet dirs under `docker/` (e.g.
    /// `containerd`), with berth's address put in.
    pub fn hosts_dir(&self, snippet_dir: &str, berth_host: &str) -> PathBuf {
        let out = self.dir.path().join(format!("hosts-{}", snippet_dir.replace('/', "_")));
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("docker").join(snippet_dir);
        for entry in std::fs::read_dir(&src).expect("snippet hosts dir") {
            let registry = entry.expect("entry").file_name();
            let registry = registry.to_str().expect("utf-8 name");
            std::fs::create_dir_all(out.join(registry)).expect("hosts dir");
            let text = snippet(&format!("{snippet_dir}/{registry}/hosts.toml"), berth_host);
            std::fs::write(out.join(registry).join("hosts.toml"), text).expect("write hosts.toml");
        }
        out
    }

    pub fn ctr_try(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", "berth-test"])
            .args(args)
            .env("HTTP_PROXY", DEAD_PROXY)
            .env("HTTPS_PROXY", DEAD_PROXY)
            .env("NO_PROXY", NO_PROXY)
            .output()
            .expect("run ctr")
    }

    pub fn ctr(&self, args: &[&str]) -> String {
        let out = self.ctr_try(args);
        assert!(
            out.status.success(),
            "ctr {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// The target digest `ctr images ls` shows for an image reference.
    pub fn image_digest(&self, reference: &str) -> String {
        let out = self.ctr(&["images", "ls"]);
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(reference))
            .and_then(|l| l.split_whitespace().find(|w| w.starts_with("sha256:")))
            .unwrap_or_else(|| panic!("{reference} not in ctr images ls:\n{out}"))
            .to_string()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// podman in directories of its own (root, runroot, tmp, XDG runtime, auth
/// file), with `registries.conf` from the snippet in `docker/`.
pub struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    pub fn new(berth_host: &str) -> Podman {
        let dir = tempfile::tempdir().expect("podman temp dir");
        std::fs::write(
            dir.path().join("registries.conf"),
            snippet("registries.conf", berth_host),
        )
        .expect("registries.conf");
        // podman stats the auth file before a pull; `podman login` fills it.
        std::fs::write(dir.path().join("auth.json"), "{\"auths\":{}}\n").expect("auth.json");
        Podman { dir }
    }

    /// Run podman; (success, stdout and stderr).
    pub fn run(&self, args: &[&str]) -> (bool, String) {
        let d = self.dir.path();
        let out = Command::new("podman")
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("run"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .args([
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "none",
            ])
            .args(args)
            .env("CONTAINERS_REGISTRIES_CONF", d.join("registries.conf"))
            .env("REGISTRY_AUTH_FILE", d.join("auth.json"))
            .env("XDG_RUNTIME_DIR", d.join("xdg"))
            .env("HTTP_PROXY", DEAD_PROXY)
            .env("HTTPS_PROXY", DEAD_PROXY)
            .env("NO_PROXY", NO_PROXY)
            .output()
            .expect("run podman (apt-get install podman)");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }
}

impl Dockerd {
    /// dockerd for building and running images rather than pulling through
    /// berth (its mirror is a dead loopback port): on overlay2, as vfs copies
    /// the whole root file system at every build step (minutes, not
    /// seconds), unless the temp dir is itself on overlayfs, which overlay2
    /// cannot stack on.
    pub fn start_for_images() -> Dockerd {
        let tmp = std::env::temp_dir();
        let fs = Command::new("stat")
            .args(["-f", "-c", "%T"])
            .arg(&tmp)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let driver = if fs == "overlayfs" { "vfs" } else { "overlay2" };
        Dockerd::launch_on(driver, "daemon.json", "127.0.0.1:9", None)
    }
}

impl Dockerd {
    /// Unmounts the host's network namespace that dockerd bind-mounts under
    /// its exec root once a container ran with `--network host`, and leaves
    /// mounted when it stops (its temp dir could not be removed then). Call
    /// after the last such container is gone.
    pub fn release_host_netns(&self) {
        let netns = self.dir.path().join("exec/netns/default");
        if netns.exists() {
            let _ = Command::new("umount").arg(&netns).status();
        }
    }
}
