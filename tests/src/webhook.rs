//! `enforcerd webhook` for the tests: the real binary serving HTTPS on a loopback port with a
//! certificate for 127.0.0.1, and reviews POSTed by curl over verified TLS — the bodies the
//! apiserver sends for CONNECT of `pods/exec` and `pods/attach` (admission.k8s.io/v1).

use std::{
    io::Write,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{env::bin, etcd::Tls, ssh::wait_until, sshd::free_port};

/// A running webhook; stopped by pid on drop.
pub struct Webhook {
    child: Child,
    pub port: u16,
    ca: PathBuf,
    /// The client certificate and key `call` presents (`[webhook] client_ca` set).
    client: Option<(PathBuf, PathBuf)>,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Webhook {
    /// Starts the webhook on etcd `endpoints` (TOML list) with `extra` TOML appended (whole
    /// sections), and waits until it accepts connections.
    pub fn start(endpoints: &str, extra: &str) -> Self {
        Self::start_with(endpoints, extra, false)
    }

    /// [`Webhook::start`] requiring client certificates of the test CA (`[webhook] client_ca`,
    /// as the apiserver's admission kubeconfig gives it one); `call` presents one.
    pub fn start_mtls(endpoints: &str, extra: &str) -> Self {
        Self::start_with(endpoints, extra, true)
    }

    fn start_with(endpoints: &str, extra: &str, mtls: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let tls = Tls::make(dir.path());
        let port = free_port();
        let config = dir.path().join("webhook.toml");
        std::fs::write(
            &config,
            format!(
                "[fleet]\netcd_endpoints = {endpoints}\n\
                 [webhook]\nlisten = \"127.0.0.1:{port}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n{}{extra}\n",
                tls.server_cert.display(),
                tls.server_key.display(),
                match mtls {
                    true => format!("client_ca = \"{}\"\n", tls.ca.display()),
                    false => String::new(),
                }
            ),
        )
        .unwrap();
        let log = dir.path().join("webhook.log");
        let child = Command::new(bin("enforcerd"))
            .args(["webhook", "--config"])
            .arg(&config)
            .env("ENFORCER_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let w = Webhook {
            child,
            port,
            ca: tls.ca,
            client: mtls.then_some((tls.client_cert, tls.client_key)),
            log,
            _dir: dir,
        };
        assert!(
            wait_until(Duration::from_secs(10), || std::net::TcpStream::connect((
                "127.0.0.1",
                port
            ))
            .is_ok()),
            "webhook not listening: {}",
            w.log_text()
        );
        w
    }

    /// The CA the serving certificate (and the client certificates) chain to.
    pub fn ca(&self) -> &std::path::Path {
        &self.ca
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `method` of `body` to `/validate` over TLS checked against the test CA: HTTP status and
    /// body.
    pub fn call(&self, method: &str, body: &str) -> (u16, String) {
        self.try_call(method, body, true)
            .unwrap_or_else(|e| panic!("curl: {e}"))
    }

    /// [`Webhook::call`], presenting the client certificate only with `with_cert`; `Err`:
    /// curl's complaint (no HTTP answer).
    pub fn try_call(
        &self,
        method: &str,
        body: &str,
        with_cert: bool,
    ) -> Result<(u16, String), String> {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "15", "--cacert"])
            .arg(&self.ca);
        if let Some((cert, key)) = self.client.as_ref().filter(|_| with_cert) {
            cmd.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        let mut curl = cmd
            .args(["-X", method, "-H", "Content-Type: application/json"])
            .args(["--data-binary", "@-", "-w", "\n%{http_code}"])
            .arg(format!("https://127.0.0.1:{}/validate", self.port))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        curl.stdin
            .take()
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
        let out = curl.wait_with_output().unwrap();
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap();
        Ok((code.trim().parse().unwrap(), body.to_owned()))
    }

    /// POSTs a review; the AdmissionReview answered (HTTP 200 required).
    pub fn review(&self, body: &str) -> serde_json::Value {
        let (code, text) = self.call("POST", body);
        assert_eq!(code, 200, "{text}\n{}", self.log_text());
        serde_json::from_str(&text).unwrap()
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `kubectl exec` as the apiserver sends it to a validating webhook.
pub struct Exec<'a> {
    pub uid: &'a str,
    pub user: &'a str,
    pub groups: &'a [&'a str],
    pub namespace: &'a str,
    pub pod: &'a str,
    pub container: &'a str,
    pub command: &'a [&'a str],
    pub tty: bool,
}

impl Exec<'_> {
    /// The AdmissionReview body: CONNECT of pods/exec with its PodExecOptions.
    pub fn body(&self) -> String {
        self.review("exec", "PodExecOptions", "CONNECT")
    }

    /// The same request for `pods/attach`, or for any operation and subresource.
    pub fn review(&self, sub: &str, kind: &str, operation: &str) -> String {
        serde_json::json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": self.uid,
                "kind": {"group": "", "version": "v1", "kind": kind},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "subResource": sub,
                "requestKind": {"group": "", "version": "v1", "kind": kind},
                "requestResource": {"group": "", "version": "v1", "resource": "pods"},
                "requestSubResource": sub,
                "name": self.pod,
                "namespace": self.namespace,
                "operation": operation,
                "userInfo": {
                    "username": self.user,
                    "uid": format!("{}-uid", self.user),
                    "groups": self.groups,
                },
                "object": {
                    "kind": kind,
                    "apiVersion": "v1",
                    "stdin": true,
                    "stdout": true,
                    "stderr": !self.tty,
                    "tty": self.tty,
                    "container": self.container,
                    "command": self.command,
                },
                "oldObject": null,
                "dryRun": false,
                "options": null,
            }
        })
        .to_string()
    }
}
