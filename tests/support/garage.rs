//! A real Garage cluster (crate `garage` 2.5, `cargo install garage
//! --locked`; tests/run.sh installs it when missing): three nodes on
//! loopback, replication factor 3, each in its own zone, with one access
//! key and one bucket for berth. Garage takes fixed addresses, so free
//! ports are picked first; a node whose port was taken meanwhile says so in
//! its log, and the cluster starts again on other ports.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const BUCKET: &str = "berth";
const REGION: &str = "garage";

pub struct Node {
    pub s3: std::net::SocketAddr,
    pub rpc: std::net::SocketAddr,
    /// The admin API, for its unauthenticated `/health`.
    admin: std::net::SocketAddr,
    config: PathBuf,
    child: Option<Child>,
    /// The other nodes as `id@address`, connected to again after a restart.
    others: Vec<String>,
}

pub struct Garage {
    pub nodes: Vec<Node>,
    pub key_id: String,
    pub secret: String,
    dir: tempfile::TempDir,
}

fn free_addr() -> std::net::SocketAddr {
    super::fixed_port_addr()
}

fn binary() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let installed = Path::new(&home).join(".cargo/bin/garage");
    if installed.exists() {
        installed
    } else {
        PathBuf::from("garage")
    }
}

impl Node {
    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(binary())
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run garage (cargo install garage --locked)");
        assert!(
            out.status.success(),
            "garage {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.config.with_file_name("garage.log")).unwrap_or_default()
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.config.with_file_name("garage.log")).expect("garage log");
        let child = Command::new(binary())
            .arg("-c")
            .arg(&self.config)
            .arg("server")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn garage (cargo install garage --locked)");
        self.child = Some(child);
    }

    /// Up when its S3 port answers; false when it gave up (port taken).
    fn wait_up(&mut self) -> bool {
        let s3 = self.s3;
        let up = super::poll(Duration::from_secs(20), || {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(_)) = child.try_wait()
            {
                return Some(false);
            }
            let listening = self.log().contains("S3 API server listening");
            (listening && std::net::TcpStream::connect(s3).is_ok()).then_some(true)
        });
        up == Some(true)
    }

    /// Whether the node answers S3 requests: Garage's `/health` is 200 once
    /// it reaches a quorum of the layout's nodes, 503 before (a node just
    /// restarted answers 503 until it has reconnected to its peers).
    fn wait_healthy(&self) -> bool {
        super::poll(Duration::from_secs(30), || {
            (super::raw_get(self.admin, "/health").0 == 200).then_some(())
        })
        .is_some()
    }

    /// Stop this node (by its own pid) as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start it again on the same addresses and data.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
        assert!(self.wait_up(), "garage node did not come back: {}", self.log());
        // Its peers retry the lost connection only on their own (growing)
        // schedule; connecting from here makes it rejoin now. A peer that
        // is down itself just does not answer.
        for other in &self.others {
            let _ = Command::new(binary())
                .arg("-c")
                .arg(&self.config)
                .args(["node", "connect", other])
                .env("RUST_LOG", "warn")
                .output();
        }
        assert!(
            self.wait_healthy(),
            "garage node did not rejoin its peers: {}",
            self.log()
        );
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Garage {
    pub fn start() -> Garage {
        for _ in 0..4 {
            if let Some(g) = Garage::try_start() {
                return g;
            }
        }
        panic!("garage found no free ports in four tries");
    }

    fn try_start() -> Option<Garage> {
        let dir = tempfile::tempdir().expect("garage temp dir");
        let secret: String = (0..32).map(|_| format!("{:02x}", rand::random::<u8>())).collect();
        let mut nodes = Vec::new();
        for i in 0..3 {
            let node_dir = dir.path().join(format!("node{i}"));
            std::fs::create_dir_all(&node_dir).expect("node dir");
            let (s3, rpc, admin) = (free_addr(), free_addr(), free_addr());
            let config = node_dir.join("garage.toml");
            std::fs::write(
                &config,
                format!(
                    "metadata_dir = \"{meta}\"\ndata_dir = \"{data}\"\ndb_engine = \"sqlite\"\n\
                     replication_factor = 3\nrpc_bind_addr = \"{rpc}\"\nrpc_public_addr = \"{rpc}\"\n\
                     rpc_secret = \"{secret}\"\n[s3_api]\ns3_region = \"{REGION}\"\napi_bind_addr = \"{s3}\"\n\
                     root_domain = \".s3.garage.localhost\"\n[admin]\napi_bind_addr = \"{admin}\"\n",
                    meta = node_dir.join("meta").display(),
                    data = node_dir.join("data").display(),
                ),
            )
            .expect("garage config");
            // Garage refuses a config holding a secret that others may read.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).expect("chmod");
            let mut node = Node {
                s3,
                rpc,
                admin,
                config,
                child: None,
                others: Vec::new(),
            };
            node.spawn();
            nodes.push(node);
        }
        if !nodes.iter_mut().all(Node::wait_up) {
            return None;
        }
        let ids: Vec<String> = nodes
            .iter()
            .map(|n| n.cli(&["node", "id", "-q"]).trim().to_string())
            .collect();
        for id in &ids[1..] {
            nodes[0].cli(&["node", "connect", id]);
        }
        for (i, node) in nodes.iter_mut().enumerate() {
            node.others = ids
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, id)| id.clone())
                .collect();
        }
        for (i, id) in ids.iter().enumerate() {
            let short = id.split('@').next().unwrap_or(id);
            nodes[0].cli(&["layout", "assign", "-z", &format!("dc{i}"), "-c", "1G", short]);
        }
        nodes[0].cli(&["layout", "apply", "--version", "1"]);
        nodes[0].cli(&["key", "create", "berth-test"]);
        nodes[0].cli(&["bucket", "create", BUCKET]);
        nodes[0].cli(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            BUCKET,
            "--key",
            "berth-test",
        ]);
        let info = nodes[0].cli(&["key", "info", "berth-test", "--show-secret"]);
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
                .unwrap_or_else(|| panic!("{name} in {info}"))
        };
        let (key_id, secret) = (field("Key ID:"), field("Secret key:"));
        for node in &nodes {
            assert!(
                node.wait_healthy(),
                "garage node not healthy after the layout: {}",
                node.log()
            );
        }
        Some(Garage {
            nodes,
            key_id,
            secret,
            dir,
        })
    }

    /// The S3 endpoint of node `i`.
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://{}", self.nodes[i].s3)
    }

    /// `[storage]` for berth on node `i`'s S3 endpoint.
    pub fn storage_toml(&self, i: usize) -> String {
        format!(
            "[storage]\nkind = \"s3\"\nendpoint = \"{}\"\nbucket = \"{BUCKET}\"\nregion = \"{REGION}\"\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\n",
            self.endpoint(i),
            self.key_id,
            self.secret
        )
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `n` berth replicas on the bucket that know each other (`[cluster]`),
    /// replica `i` on node `i % 3`'s S3 endpoint; `cluster_extra` goes into
    /// `[cluster]`, `extra` after it (`[auth]`, `[[upstream]]`).
    pub fn fleet(&self, n: usize, cluster_extra: &str, extra: &str) -> Vec<super::Berth> {
        let listens: Vec<String> = (0..n).map(|_| super::fixed_port_addr().to_string()).collect();
        let peers: Vec<String> = listens.iter().map(|l| format!("\"http://{l}\"")).collect();
        (0..n)
            .map(|i| {
                let cluster = format!(
                    "[cluster]\nself = \"http://{}\"\npeers = [{}]\n{cluster_extra}\n",
                    listens[i],
                    peers.join(", ")
                );
                super::Berth::start_on(&listens[i], &format!("{}{cluster}{extra}", self.storage_toml(i % 3)))
            })
            .collect()
    }
}
