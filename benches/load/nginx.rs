//! nginx from Debian's package, serving one directory with `sendfile` on an
//! ephemeral loopback port: the reference for how fast a file can go out.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Nginx {
    pub addr: SocketAddr,
    child: Child,
    dir: PathBuf,
}

impl Nginx {
    /// Serve `root` (files readable by the user nginx runs as).
    pub fn start(work: &Path, root: &Path) -> Nginx {
        Nginx::start_with(work, "nginx", root, None)
    }

    /// Serve `root` over TLS with this certificate and key (berth's, for a
    /// comparison on the same certificate), offering HTTP/2 as berth does. OpenSSL encrypts in user space
    /// here: `sendfile` does not apply without kernel TLS.
    pub fn start_tls(work: &Path, root: &Path, cert: &Path, key: &Path) -> Nginx {
        Nginx::start_with(work, "nginx-tls", root, Some((cert, key)))
    }

    fn start_with(work: &Path, name: &str, root: &Path, tls: Option<(&Path, &Path)>) -> Nginx {
        let dir = work.join(name);
        std::fs::create_dir_all(dir.join("tmp")).expect("nginx dir");
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port for nginx");
        let d = dir.display();
        let ssl = match tls {
            Some((cert, key)) => format!(
                " ssl http2; ssl_certificate {}; ssl_certificate_key {}; ssl_protocols TLSv1.2 TLSv1.3",
                cert.display(),
                key.display()
            ),
            None => String::new(),
        };
        // Two workers, like the two cores; root keeps the worker able to read
        // the test's private temp dir.
        let conf = format!(
            "daemon off;\nmaster_process on;\nworker_processes 2;\nuser root;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\nevents {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  default_type application/octet-stream;\n\
             client_body_temp_path {d}/tmp/body;\n  proxy_temp_path {d}/tmp/proxy;\n  fastcgi_temp_path {d}/tmp/fastcgi;\n\
             uwsgi_temp_path {d}/tmp/uwsgi;\n  scgi_temp_path {d}/tmp/scgi;\n\
             server {{ listen {addr}{ssl}; root {}; }}\n}}\n",
            root.display()
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("write nginx.conf");
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx (apt-get install nginx)");
        let mut nginx = Nginx { addr, child, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                panic!("nginx exited with {status}: {}", nginx.log());
            }
            assert!(Instant::now() < deadline, "nginx did not start: {}", nginx.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn tls_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // TERM to the master stops its workers too; KILL would orphan them.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
