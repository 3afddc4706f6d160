//! Network namespaces for network faults (needs root): a namespace with its
//! own loopback, where iptables rules and a resolver that answers nothing
//! affect only what runs inside it, never the machine's own network.

use std::path::PathBuf;
use std::process::{Command, Output};

pub struct NetNs {
    pub name: String,
    etc: PathBuf,
}

fn ip(args: &[&str]) -> Output {
    Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (apt-get install iproute2)")
}

impl NetNs {
    /// A new namespace with loopback up; `tag` keeps names apart per test.
    pub fn create(tag: &str) -> NetNs {
        let name = format!("berth-{tag}-{}", std::process::id());
        let _ = ip(&["netns", "delete", &name]);
        let out = ip(&["netns", "add", &name]);
        assert!(
            out.status.success(),
            "ip netns add {name} (tests run as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ns = NetNs {
            etc: PathBuf::from("/etc/netns").join(&name),
            name,
        };
        let out = ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        ns
    }

    /// Inside the namespace, DNS goes to 127.0.0.1:53 where nothing listens:
    /// every lookup fails at once and no query leaves the machine.
    /// (`ip netns exec` bind-mounts `/etc/netns/<name>/resolv.conf`.)
    pub fn with_dead_resolver(self) -> NetNs {
        std::fs::create_dir_all(&self.etc).expect("/etc/netns dir");
        std::fs::write(
            self.etc.join("resolv.conf"),
            "nameserver 127.0.0.1\noptions attempts:1 timeout:1\n",
        )
        .expect("resolv.conf");
        std::fs::write(self.etc.join("hosts"), "127.0.0.1 localhost\n").expect("hosts");
        self
    }

    /// Inside the namespace, names resolve from these `/etc/hosts` lines
    /// only (and DNS goes nowhere, as with `with_dead_resolver`).
    pub fn with_hosts(self, lines: &str) -> NetNs {
        let ns = self.with_dead_resolver();
        std::fs::write(ns.etc.join("hosts"), format!("127.0.0.1 localhost\n{lines}")).expect("hosts");
        ns
    }

    /// Give the namespace's loopback another address, e.g. `10.77.0.1/32`:
    /// one that clients do not treat as loopback (dockerd reads `certs.d` only
    /// for registries outside 127.0.0.0/8), still inside this namespace.
    pub fn add_address(&self, cidr: &str) {
        let out = ip(&["-n", &self.name, "addr", "add", cidr, "dev", "lo"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        let mut full = vec!["netns", "exec", &self.name, program];
        full.extend(args);
        ip(&full)
    }

    /// Add an iptables rule inside the namespace.
    pub fn iptables(&self, rule: &[&str]) {
        let out = self.exec("iptables", rule);
        assert!(
            out.status.success(),
            "iptables {rule:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = ip(&["netns", "delete", &self.name]);
        let _ = std::fs::remove_dir_all(&self.etc);
    }
}
