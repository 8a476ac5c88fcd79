//! A private Prometheus server (Debian's `prometheus`, installed by `cargo xtask setup`) that
//! scrapes a test daemon: own config, data dir and port on 127.0.0.1, stopped by pid and
//! removed by path when dropped. Its system service is never involved.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{http, sshd::free_port};

pub const PROMETHEUS: &str = "/usr/bin/prometheus";
pub const PROMTOOL: &str = "/usr/bin/promtool";

/// True when `tool` is installed; under CI a missing one fails the test, elsewhere it is
/// skipped with a note.
pub fn require_tool(tool: &str) -> bool {
    if Path::new(tool).is_file() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "{tool} is missing and CI is set: run `cargo xtask setup` (Debian package prometheus)"
        );
    }
    eprintln!("SKIPPED: {tool} missing (run `cargo xtask setup`)");
    false
}

pub struct TestPrometheus {
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    child: Child,
}

impl TestPrometheus {
    /// Starts a server scraping `target`'s /metrics every second as job "enforcer", and waits
    /// until it is ready.
    pub fn start(target: SocketAddr) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("enf-prom-")
            .tempdir()
            .unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: enforcer\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let mut cmd = Command::new(PROMETHEUS);
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().expect("spawn prometheus");
        let mut p = TestPrometheus { dir, addr, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = p.child.try_wait().unwrap() {
                panic!("prometheus exited during start ({st}):\n{}", p.log());
            }
            if matches!(
                http::get(addr, "/-/ready", Duration::from_secs(1)),
                Ok((200, _))
            ) {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready in 30 s:\n{}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query through the HTTP API (/api/v1/query): each series' labels and value.
    pub fn query(&self, expr: &str) -> Vec<(serde_json::Value, f64)> {
        let path = format!("/api/v1/query?query={}", http::encode(expr));
        let (status, body) = http::get(self.addr, &path, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("query {expr}: {e}"));
        let v: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("query {expr}: {e}: {body}"));
        assert_eq!(status, 200, "query {expr}: {body}");
        assert_eq!(v["status"], "success", "query {expr}: {body}");
        v["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let value = r["value"][1].as_str().unwrap().parse().unwrap();
                (r["metric"].clone(), value)
            })
            .collect()
    }

    /// Waits (up to `timeout`) until `expr` has exactly one series with value `want`.
    pub fn wait_value(&self, expr: &str, want: f64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.query(expr);
            if got.len() == 1 && got[0].1 == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{expr}: wanted {want}, Prometheus has {got:?}; targets: {}\n{}",
                self.targets(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The scrape targets' health as Prometheus reports it (for failure messages).
    pub fn targets(&self) -> String {
        http::get(self.addr, "/api/v1/targets", Duration::from_secs(5))
            .map(|(_, b)| b)
            .unwrap_or_default()
    }
}

impl Drop for TestPrometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
