//! The kube exec test bed on real software: a private containerd 1.6 with runc, a busybox
//! image built by the test, a hostNetwork pod run through the CRI exactly as the kubelet
//! would, and exec streams over `v4.channel.k8s.io` — a tty shell, a piped `cat`, and an exec
//! SIGKILLed from the host (exit 137) while the pod's own process keeps running. Afterwards
//! nothing of it is left: no containerd or shim process, no mount, no cgroup.
//! (No enforcer yet: this is what the issue 14 tests are built on.)

use std::time::Duration;

use enforcer_tests::{
    containerd::{TestContainerd, cgroup_dirs, containerd_installed, mounts_under},
    exec_stream::ExecStream,
    kube::{cgroups_of, find_exec, pod_processes, ppid, shim_of},
    require_root,
    ssh::wait_until,
};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

const T: Duration = Duration::from_secs(15);

/// Alive and not a zombie (init may be slow to reap a killed shim).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

#[test]
fn exec_streams_through_the_cri_of_a_private_containerd() {
    if !require_root() || !containerd_installed() {
        return;
    }
    let ctrd = TestContainerd::start();
    let cri = ctrd.cri();
    let pod = cri.run_pod("web", "team-a");
    let cid = cri.start_container(&pod, "main", &["/bin/sleep", "100000"]);
    let sandbox_pid = cri.sandbox_pid(&pod.id);
    let main_pid = cri.container_pid(&cid);
    let shim = shim_of(sandbox_pid);
    assert_eq!(
        ppid(main_pid),
        Some(shim),
        "main process not under the pod's shim"
    );
    assert!(
        ctrd.shim_pids().contains(&shim),
        "shim {shim} not found by our socket"
    );
    // The cgroup parent reached runc: the kubelet's layout, in every hierarchy.
    let parent = format!("/kubepods/besteffort/pod{}", pod.uid);
    let main_cg = cgroups_of(main_pid);
    assert!(
        main_cg.values().any(|p| p.starts_with(&parent)),
        "main process cgroups {main_cg:?} not under {parent}"
    );
    assert!(
        !cgroup_dirs(&parent).is_empty(),
        "no cgroup dir for {parent}"
    );

    // A tty shell, as `kubectl exec -it … -- sh`.
    let url = cri.exec(&cid, &["sh"], true, true);
    assert!(url.starts_with("http://127.0.0.1:"), "exec URL {url}");
    let sh = ExecStream::connect(&url);
    sh.resize(100, 30);
    sh.send_stdin("echo hi-$((40+2))\n");
    assert!(
        sh.read_until("hi-42", T),
        "no hi-42 from the tty shell; got {:?}, status {:?}",
        sh.output_text(),
        sh.status()
    );
    let sh_pid = find_exec(shim, &["sh"], &[sandbox_pid, main_pid])
        .expect("the exec'd sh as a child of the shim");
    assert_eq!(
        cgroups_of(sh_pid),
        main_cg,
        "an exec runs in the container's cgroup"
    );
    assert!(
        std::fs::read_link(format!("/proc/{sh_pid}/fd/0"))
            .is_ok_and(|l| l.to_string_lossy().starts_with("/dev/pts/")),
        "the tty exec's stdin is a pty"
    );
    sh.send_stdin("exit 3\n");
    assert_eq!(
        sh.wait_exit(T),
        Some(3),
        "exit status of the tty shell: {:?}",
        sh.status()
    );
    sh.close();

    // Piped stdin/stdout (no tty), as `kubectl exec -i … -- cat`.
    let cat = ExecStream::connect(&cri.exec(&cid, &["cat"], false, true));
    cat.send_stdin("ping-1\n");
    cat.send_stdin("ping-2\n");
    assert!(
        cat.read_until("ping-1\nping-2\n", T),
        "cat did not echo; got {:?}",
        cat.output_text()
    );
    let cat_pid =
        find_exec(shim, &["cat"], &[sandbox_pid, main_pid]).expect("the exec'd cat under the shim");
    // v4 has no stdin half-close: closing the stream is the EOF that ends cat.
    cat.close();
    assert!(
        wait_until(T, || !alive(cat_pid)),
        "cat {cat_pid} still running after the stream closed"
    );

    // An exec killed from the host: the client sees 137, the pod keeps running.
    let cmd = ["sleep", "1000"];
    let victim = ExecStream::connect(&cri.exec(&cid, &cmd, false, false));
    let mut pid = None;
    assert!(
        wait_until(T, || {
            pid = find_exec(shim, &cmd, &[sandbox_pid, main_pid]);
            pid.is_some()
        }),
        "exec'd sleep not found under shim {shim}: {:?}",
        pod_processes(shim)
    );
    let pid = pid.unwrap();
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).expect("SIGKILL the exec'd process");
    assert_eq!(
        victim.wait_exit(T),
        Some(137),
        "status after SIGKILL: {:?}",
        victim.status()
    );
    victim.close();
    assert!(alive(main_pid), "the pod's main process died with the exec");
    assert!(alive(sandbox_pid), "the pod's sandbox died with the exec");
    let left: Vec<u32> = pod_processes(shim).iter().map(|p| p.pid).collect();
    assert!(
        left.contains(&main_pid) && left.contains(&sandbox_pid) && left.len() == 2,
        "pod processes after the execs: {:?}",
        pod_processes(shim)
    );

    // Deleting the pod as the kubelet does ends its processes and its shim.
    cri.remove_pod(&pod.id);
    assert!(
        wait_until(T, || !alive(main_pid) && !alive(sandbox_pid)),
        "pod processes left after RemovePodSandbox"
    );
    assert!(
        cri.list_pods().is_empty(),
        "pods left: {:?}",
        cri.list_pods()
    );
    drop(cri);

    // A second pod left running: the harness's drop must clean it up by itself.
    let cri = ctrd.cri();
    let pod2 = cri.run_pod("left-running", "team-b");
    let cid2 = cri.start_container(&pod2, "main", &["/bin/sleep", "100000"]);
    let pod2_main = cri.container_pid(&cid2);
    let shim2 = shim_of(cri.sandbox_pid(&pod2.id));
    let _held = ExecStream::connect(&cri.exec(&cid2, &["sh"], true, true));
    drop(cri);
    let dir = ctrd.dir.path().to_owned();
    let ctrd_pid = ctrd.pid();
    let parent2 = format!("/kubepods/besteffort/pod{}", pod2.uid);
    drop(ctrd);
    for (what, p) in [
        ("containerd", ctrd_pid),
        ("first shim", shim),
        ("second shim", shim2),
        ("second pod's main", pod2_main),
    ] {
        assert!(wait_until(T, || !alive(p)), "{what} {p} left running");
    }
    assert!(
        mounts_under(&dir).is_empty(),
        "mounts left: {:?}",
        mounts_under(&dir)
    );
    for p in [&parent, &parent2] {
        assert!(
            cgroup_dirs(p).is_empty(),
            "cgroups left: {:?}",
            cgroup_dirs(p)
        );
    }
    assert!(!dir.exists(), "{} left", dir.display());
}

/// Two private instances side by side (their shim sockets under /run/containerd/s are named by
/// a hash of their own socket path, runc's state is in each temp dir), and the harness's
/// cleanup after containerd itself was SIGKILLed: its shims and pods are found by path.
#[test]
fn two_instances_side_by_side_and_cleanup_after_a_killed_containerd() {
    if !require_root() || !containerd_installed() {
        return;
    }
    let a = TestContainerd::start();
    let b = TestContainerd::start();
    let mut seen = Vec::new();
    for (tag, ctrd) in [("a", &a), ("b", &b)] {
        let cri = ctrd.cri();
        let pod = cri.run_pod(&format!("pod-{tag}"), "side");
        let cid = cri.start_container(&pod, "main", &["/bin/sleep", "100000"]);
        let s =
            ExecStream::connect(&cri.exec(&cid, &["sh", "-c", "echo in-$0", tag], false, false));
        assert_eq!(s.wait_exit(T), Some(0), "exec in {tag}: {:?}", s.status());
        assert!(
            s.output_text().contains(&format!("in-{tag}")),
            "exec in {tag} printed {:?}",
            s.output_text()
        );
        let main = cri.container_pid(&cid);
        seen.push((
            tag,
            main,
            shim_of(cri.sandbox_pid(&pod.id)),
            pod.uid.clone(),
        ));
    }
    assert_ne!(seen[0].2, seen[1].2, "one shim per instance");
    assert_eq!(a.shim_pids(), vec![seen[0].2], "instance a's shims");
    assert_eq!(b.shim_pids(), vec![seen[1].2], "instance b's shims");

    // containerd a dies hard: b goes on, and a's drop still removes what a left.
    kill(Pid::from_raw(a.pid() as i32), Signal::SIGKILL).unwrap();
    let a_dir = a.dir.path().to_owned();
    drop(a);
    let (_, a_main, a_shim, a_uid) = &seen[0];
    assert!(
        wait_until(T, || !alive(*a_main) && !alive(*a_shim)),
        "instance a's pod or shim left running"
    );
    assert!(
        mounts_under(&a_dir).is_empty(),
        "{:?}",
        mounts_under(&a_dir)
    );
    let a_parent = format!("/kubepods/besteffort/pod{a_uid}");
    assert!(
        cgroup_dirs(&a_parent).is_empty(),
        "{:?}",
        cgroup_dirs(&a_parent)
    );
    assert!(alive(seen[1].1), "instance b's pod died with a");
    drop(b);
    assert!(wait_until(T, || !alive(seen[1].1) && !alive(seen[1].2)));
}
