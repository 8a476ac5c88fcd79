//! Forwarding channels with the real OpenSSH client (issue 13): a tunnel (`ssh -N -L`) and a
//! ProxyJump through an enforced bastion are client activity, measured in the kernel where sshd
//! moves their bytes; they show in `enforcerctl sessions` and are audited when they open and
//! close. With `idle.forwarding = "ignore"` a tunnel alone is idle.

use std::{
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use enforcer_tests::{
    TestDaemon, TestSshd, TestUser, require_root,
    ssh::{PtySsh, wait_until},
    sshd::free_port,
};

/// A line-echo server on 127.0.0.1; returns its port.
fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut w = stream.try_clone().unwrap();
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if writeln!(w, "{line}").is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

/// One request through the tunnel on a connection of its own.
fn request(port: u16, n: u32) -> std::io::Result<()> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    writeln!(s, "ping {n}")?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line)?;
    assert_eq!(line.trim(), format!("ping {n}"));
    Ok(())
}

/// `ssh -N -L lport:127.0.0.1:target`, up once the local port answers.
fn tunnel(sshd: &TestSshd, u: &TestUser, target: u16) -> (Child, u16) {
    let lport = free_port();
    let child = sshd
        .ssh_login(u, &["-N", "-L", &format!("{lport}:127.0.0.1:{target}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(15), || TcpStream::connect((
            "127.0.0.1",
            lport
        ))
        .is_ok()),
        "tunnel did not come up: {}",
        sshd.log()
    );
    (child, lport)
}

const IDLE: &str = "[idle]\ntimeout = \"3s\"\nwarn_before = \"0\"\n";

#[test]
fn a_tunnel_carrying_requests_outlives_the_idle_timeout_and_is_audited() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start(IDLE);
    let u = TestUser::create("tn");
    let sshd = TestSshd::start(d.pam(), &[&u], "");
    let echo = echo_server();
    let (mut client, lport) = tunnel(&sshd, &u, echo);
    // A request every second for 8 s: more than twice the timeout.
    let start = Instant::now();
    for n in 0..8 {
        if let Err(e) = request(lport, n) {
            panic!(
                "request {n} through the tunnel failed after {:?} ({e}): {:#?}",
                start.elapsed(),
                d.audit()
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(
        client.try_wait().unwrap().is_none(),
        "the tunnel was cut while in use after {:?}: {:#?}",
        start.elapsed(),
        d.audit()
    );
    // A forward held open shows in `sessions` with its bytes.
    let mut held = TcpStream::connect(("127.0.0.1", lport)).unwrap();
    writeln!(held, "held").unwrap();
    let mut line = String::new();
    BufReader::new(&held).read_line(&mut line).unwrap();
    let shown = wait_until(Duration::from_secs(3), || {
        d.sessions().iter().any(|c| {
            c["forwards"].as_array().is_some_and(|f| {
                f.iter().any(|f| {
                    f["forward"] == "direct_tcpip"
                        && f["target"] == format!("127.0.0.1:{echo}")
                        && f["bytes_in"].as_u64() >= Some(5)
                        && f["bytes_out"].as_u64() >= Some(5)
                })
            })
        })
    });
    assert!(shown, "{:#?}", d.sessions());
    let text = String::from_utf8(d.ctl(&["sessions"]).stdout).unwrap();
    assert!(
        text.contains("forward") && text.contains(&format!("127.0.0.1:{echo}")),
        "{text}"
    );
    drop(held);

    let opened = d.wait_audit("forward_opened", |r| {
        r["event"] == "forward_opened"
            && r["kind"] == "direct_tcpip"
            && r["target"] == format!("127.0.0.1:{echo}")
            && r["user"] == u.name.as_str()
    });
    assert!(opened["conn_id"].as_u64().is_some(), "{opened}");
    let closed = d.wait_audit("forward_closed with bytes", |r| {
        r["event"] == "forward_closed"
            && r["bytes_in"].as_u64() >= Some(7)
            && r["bytes_out"].as_u64() >= Some(7)
    });
    assert_eq!(closed["target"], format!("127.0.0.1:{echo}"), "{closed}");
    let count = d
        .audit()
        .iter()
        .filter(|r| r["event"] == "forward_opened")
        .count();
    assert!(count >= 8, "{count} forwards audited");

    // Traffic stops: now it is idle, cut at the timeout, and the audit says why.
    assert!(
        wait_until(Duration::from_secs(10), || client
            .try_wait()
            .unwrap()
            .is_some()),
        "an unused tunnel was not cut"
    );
    d.wait_audit("idle cut", |r| {
        r["event"] == "connection_closed" && r["reason"] == "idle_timeout"
    });
}

#[test]
fn with_forwarding_ignored_a_tunnel_alone_is_cut_while_in_use() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start(&format!("{IDLE}forwarding = \"ignore\"\n"));
    let u = TestUser::create("ti");
    let sshd = TestSshd::start(d.pam(), &[&u], "");
    let echo = echo_server();
    let (mut client, lport) = tunnel(&sshd, &u, echo);
    let start = Instant::now();
    let mut n = 0;
    while client.try_wait().unwrap().is_none() && start.elapsed() < Duration::from_secs(12) {
        let _ = request(lport, n);
        n += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        client.try_wait().unwrap().is_some(),
        "a tunnel-only connection was kept alive with forwarding ignored"
    );
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "{:?}",
        start.elapsed()
    );
    d.wait_audit("idle cut", |r| {
        r["event"] == "connection_closed" && r["reason"] == "idle_timeout"
    });
}

#[test]
fn a_shell_through_a_proxyjump_bastion_lives_while_typed_into() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start(IDLE);
    let u = TestUser::create("pj");
    let sshd = TestSshd::start(d.pam(), &[&u], "");
    // The same sshd is bastion and target: `ssh -J` as a user writes it, in a config file.
    let cfg = sshd.dir.path().join("client_config");
    let host = |name: &str, jump: &str| {
        format!(
            "Host {name}\n  HostName 127.0.0.1\n  Port {}\n  User {}\n  IdentityFile {}\n  IdentitiesOnly yes\n  \
             StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  BatchMode yes\n  LogLevel ERROR\n{jump}",
            sshd.port,
            u.name,
            u.key.display()
        )
    };
    std::fs::write(
        &cfg,
        host("bastion", "") + &host("target", "  ProxyJump bastion\n"),
    )
    .unwrap();
    let mut pty = PtySsh::spawn(
        std::process::Command::new("ssh")
            .arg("-F")
            .arg(&cfg)
            .args(["-tt", "target"]),
    );
    let connections = || d.sessions().len();
    assert!(
        wait_until(Duration::from_secs(10), || connections() == 2),
        "{:#?}",
        d.sessions()
    );
    for n in 0..8 {
        pty.type_text(&format!("echo typed-{n}\n"));
        assert!(
            pty.wait_for(&format!("typed-{n}"), Duration::from_secs(5)),
            "{}",
            pty.output()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(pty.is_open(), "cut while typing: {:#?}", d.audit());
    let bastion = d
        .sessions()
        .into_iter()
        .find(|c| c["forwards"].as_array().is_some_and(|f| !f.is_empty()))
        .unwrap_or_else(|| panic!("no connection carries the jump: {:#?}", d.sessions()));
    assert_eq!(
        bastion["forwards"][0]["forward"], "direct_tcpip",
        "{bastion}"
    );
    assert_eq!(
        bastion["forwards"][0]["target"],
        format!("127.0.0.1:{}", sshd.port)
    );
}

#[test]
fn a_client_opening_hundreds_of_forwards_is_capped_and_counted_and_blinds_nobody_else() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start("[idle]\ntimeout = \"5s\"\nwarn_before = \"0\"\n");
    let greedy = TestUser::create("fg");
    let other = TestUser::create("fo");
    let sshd = TestSshd::start(d.pam(), &[&greedy, &other], "");
    let echo = echo_server();
    let (_greedy_client, gport) = tunnel(&sshd, &greedy, echo);
    let tracked = || {
        d.sessions()
            .iter()
            .filter(|c| c["user"] == greedy.name.as_str())
            .map(|c| c["forwards"].as_array().map_or(0, Vec::len))
            .sum::<usize>()
    };
    // The probe that found the tunnel up has let go of its slot.
    assert!(wait_until(Duration::from_secs(5), || tracked() == 0));
    // 200 forwards held open at once (a SOCKS client's worth): 128 are tracked, the rest
    // counted as dropped.
    let held: Vec<TcpStream> = (0..200)
        .map(|n| {
            let mut s = TcpStream::connect(("127.0.0.1", gport)).unwrap();
            writeln!(s, "hold {n}").unwrap();
            s
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(10), || {
            d.status()
                .dropped
                .get("drop_forwards_full")
                .copied()
                .unwrap_or(0)
                >= 72
        }),
        "{:?}",
        d.status().dropped
    );
    assert_eq!(tracked(), 128);
    // Another user's tunnel is still measured: it stays up while used.
    let (mut other_client, oport) = tunnel(&sshd, &other, echo);
    for n in 0..6 {
        request(oport, n).unwrap_or_else(|e| panic!("other user's tunnel: {e}"));
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(
        other_client.try_wait().unwrap().is_none(),
        "{:#?}",
        d.audit()
    );
    drop(held);
}
