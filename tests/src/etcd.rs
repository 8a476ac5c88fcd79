//! A real etcd cluster (Debian's etcd-server) of 3 members on loopback ports, data in a temp
//! dir; members are stopped by pid (each its own process group), never by name.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{sshd::free_port, users::unique_name};

/// One member.
struct Member {
    name: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

/// A running cluster.
pub struct EtcdCluster {
    pub dir: tempfile::TempDir,
    members: Vec<Member>,
    token: String,
    /// Serving clients over TLS, requiring client certificates: the files (PEM).
    pub tls: Option<Tls>,
}

/// A CA, the members' server certificate (for 127.0.0.1) and one client certificate.
pub struct Tls {
    pub ca: std::path::PathBuf,
    pub server_cert: std::path::PathBuf,
    pub server_key: std::path::PathBuf,
    pub client_cert: std::path::PathBuf,
    pub client_key: std::path::PathBuf,
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Tls {
    /// Makes the certificates in `dir` with openssl.
    pub fn make(dir: &std::path::Path) -> Self {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=enforcer test etcd CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        for (name, cn, ext) in [
            (
                "server",
                "127.0.0.1",
                "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE",
            ),
            (
                "client",
                "node-a",
                "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE",
            ),
        ] {
            std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
            openssl(
                dir,
                &[
                    "req",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.csr"),
                    "-subj",
                    &format!("/CN={cn}"),
                ],
            );
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &format!("{name}.csr"),
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-out",
                    &format!("{name}.pem"),
                    "-extfile",
                    &format!("{name}.ext"),
                ],
            );
        }
        Tls {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        }
    }

    /// The `[fleet]` keys for a node using the client certificate.
    pub fn fleet_toml(&self) -> String {
        format!(
            "ca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            self.ca.display(),
            self.client_cert.display(),
            self.client_key.display()
        )
    }
}

impl EtcdCluster {
    /// Starts `n` members and waits until the cluster answers.
    pub fn start(n: usize) -> Self {
        Self::start_with(n, false)
    }

    /// Like [`EtcdCluster::start`], serving clients over TLS with client certificates required.
    pub fn start_tls(n: usize) -> Self {
        Self::start_with(n, true)
    }

    fn start_with(n: usize, tls: bool) -> Self {
        // In memory (/dev/shm): etcd syncs its log to disk on every write, and on a shared
        // machine's disk that would measure the disk, not enforcer.
        let dir = tempfile::Builder::new()
            .prefix("enf-etcd-")
            .tempdir_in("/dev/shm")
            .unwrap();
        let members = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client: free_port(),
                peer: free_port(),
                child: None,
            })
            .collect();
        let tls = tls.then(|| Tls::make(dir.path()));
        let mut c = EtcdCluster {
            dir,
            members,
            token: unique_name("etcd"),
            tls,
        };
        for i in 0..n {
            c.start_member(i);
        }
        c.wait_healthy(Duration::from_secs(30));
        c
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts member `i` (again: on its data dir).
    pub fn start_member(&mut self, i: usize) {
        let initial = self.initial_cluster();
        let data = self.dir.path().join(&self.members[i].name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(
                self.dir
                    .path()
                    .join(format!("{}.log", self.members[i].name)),
            )
            .unwrap();
        let scheme = self.scheme();
        let mut cmd = Command::new("etcd");
        if let Some(t) = &self.tls {
            cmd.arg("--cert-file").arg(&t.server_cert);
            cmd.arg("--key-file").arg(&t.server_key);
            cmd.arg("--trusted-ca-file").arg(&t.ca);
            cmd.arg("--client-cert-auth");
        }
        let m = &mut self.members[i];
        // Debian's 3.4.23 crashes at start with its default logger (capnslog): zap it is.
        cmd.args(["--logger", "zap", "--log-outputs", "stderr"])
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&data)
            .arg("--listen-client-urls")
            .arg(format!("{scheme}://127.0.0.1:{}", m.client))
            .arg("--advertise-client-urls")
            .arg(format!("{scheme}://127.0.0.1:{}", m.client))
            .arg("--listen-peer-urls")
            .arg(format!("http://127.0.0.1:{}", m.peer))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://127.0.0.1:{}", m.peer))
            .arg("--initial-cluster")
            .arg(&initial)
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--initial-cluster-token")
            .arg(&self.token)
            // Without it a leader change resets every lease's TTL (etcd 3.4).
            .arg("--experimental-enable-lease-checkpoint")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        m.child = Some(
            cmd.spawn()
                .expect("etcd (Debian etcd-server) must be installed: cargo xtask setup"),
        );
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// etcdctl with the endpoints of the running members (and the client certificate).
    fn etcdctl(&self) -> Command {
        let live: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| format!("{}://127.0.0.1:{}", self.scheme(), m.client))
            .collect();
        let mut c = Command::new("etcdctl");
        c.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", live.join(",")));
        if let Some(t) = &self.tls {
            c.arg(format!("--cacert={}", t.ca.display()))
                .arg(format!("--cert={}", t.client_cert.display()))
                .arg(format!("--key={}", t.client_key.display()));
        }
        c
    }

    /// The pids of the running members (for CPU and memory figures).
    pub fn member_pids(&self) -> Vec<u32> {
        self.members
            .iter()
            .filter_map(|m| m.child.as_ref().map(|c| c.id()))
            .collect()
    }

    /// Kills member `i` (SIGKILL, by pid).
    pub fn stop_member(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Every member's client URL, as `[fleet] etcd_endpoints` takes them.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("{}://127.0.0.1:{}", self.scheme(), m.client))
            .collect()
    }

    /// `etcd_endpoints = [...]` as TOML.
    pub fn endpoints_toml(&self) -> String {
        let list: Vec<String> = self
            .endpoints()
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect();
        format!("[{}]", list.join(", "))
    }

    /// `etcd_endpoints = [...]` naming member `i` only (a node cut off with it).
    pub fn member_toml(&self, i: usize) -> String {
        format!("[\"http://127.0.0.1:{}\"]", self.members[i].client)
    }

    /// Runs etcdctl (v3 API) against the running members.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = self.etcdctl().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Keys below `prefix`.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        self.ctl(&["get", "--prefix", "--keys-only", prefix])
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// The index of the member that leads now (asked of the running members), if one does.
    pub fn leader(&self) -> Option<usize> {
        let out = self
            .etcdctl()
            .args(["--command-timeout=1s", "endpoint", "status", "-w", "json"])
            .output()
            .ok()?;
        let st: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let leading = st.as_array()?.iter().find(|m| {
            m["Status"]["leader"].as_u64().is_some()
                && m["Status"]["leader"] == m["Status"]["header"]["member_id"]
        })?;
        let endpoint = leading["Endpoint"].as_str()?;
        self.endpoints().iter().position(|e| e == endpoint)
    }

    /// Waits until `prefix` holds exactly `n` keys; false if it does not within `within`.
    pub fn wait_keys(&self, prefix: &str, n: usize, within: Duration) -> bool {
        crate::ssh::wait_until(within, || self.keys(prefix).len() == n)
    }

    /// Waits until a write goes through.
    pub fn wait_healthy(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let ok = self
                .etcdctl()
                .args(["--command-timeout=1s", "put", "/enforcer-test/health", "ok"])
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd cluster not healthy within {within:?}; logs in {}",
                self.dir.path().display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.stop_member(i);
        }
    }
}
