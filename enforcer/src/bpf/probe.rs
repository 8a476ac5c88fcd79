//! Feature probes: load trivial programs of each type we might use and record what the kernel
//! says. Probe programs are unloaded right after; only the uprobe is attached (to the daemon
//! itself, for a moment), since attaching is what a kernel may refuse.

use aya::{
    Btf, Ebpf,
    programs::{
        BtfTracePoint, CgroupSkb, CgroupSockAddr, FEntry, Lsm, ProgramError, ProgramType, UProbe,
        uprobe::UProbeScope,
    },
    sys::{BpfHelper, is_helper_supported},
};
use enforcer_proto::FeatureProbe;

fn describe(err: &ProgramError) -> String {
    match err {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            let log = log.trim_matches(|c: char| c == '"' || c.is_whitespace());
            if log.is_empty() {
                format!("load refused: {io_error} (empty verifier log)")
            } else {
                let last = log
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or(log);
                format!(
                    "load refused: {io_error}; verifier: {}",
                    last.chars().take(160).collect::<String>()
                )
            }
        }
        other => format!("load failed: {other}"),
    }
}

fn probe(name: &str, how: &str, result: Result<(), ProgramError>) -> FeatureProbe {
    match result {
        Ok(()) => FeatureProbe {
            name: name.into(),
            supported: true,
            detail: format!("{how}: loaded"),
        },
        Err(e) => FeatureProbe {
            name: name.into(),
            supported: false,
            detail: format!("{how}: {}", describe(&e)),
        },
    }
}

/// Loads program `prog` as `T` with `load`, then unloads it.
fn try_load<T>(
    ebpf: &mut Ebpf,
    prog: &str,
    load: impl FnOnce(&mut T) -> Result<(), ProgramError>,
) -> Result<(), ProgramError>
where
    for<'a> &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
    T: Unload,
{
    let program = ebpf.program_mut(prog).ok_or(ProgramError::NotLoaded)?;
    let typed: &mut T = program.try_into()?;
    load(typed)?;
    // Probes are never attached; give the kernel object back at once.
    typed.unload_probe()
}

/// Unloading, for the program types we probe.
trait Unload {
    fn unload_probe(&mut self) -> Result<(), ProgramError>;
}

macro_rules! unload_impl {
    ($($t:ty),*) => {$(
        impl Unload for $t {
            fn unload_probe(&mut self) -> Result<(), ProgramError> {
                self.unload()
            }
        }
    )*};
}
unload_impl!(
    FEntry,
    Lsm,
    BtfTracePoint,
    CgroupSockAddr,
    CgroupSkb,
    UProbe
);

/// Whether uprobes can be loaded and attached here: one on libc's getpid in this process,
/// detached again at once.
pub fn uprobe(ebpf: &mut Ebpf) -> FeatureProbe {
    probe(
        "uprobe",
        "uprobe on libc getpid in enforcerd",
        try_load::<UProbe>(ebpf, "enf_p_uprobe", |p| {
            p.load()?;
            let link = p.attach("getpid", "libc", UProbeScope::CallingProcess)?;
            p.detach(link)
        }),
    )
}

/// Probes every optional feature. `btf` is the kernel's BTF (`None` when unreadable).
pub fn probe_all(ebpf: &mut Ebpf, btf: Option<&Btf>) -> Vec<FeatureProbe> {
    let mut out = Vec::new();
    match btf {
        Some(btf) => {
            out.push(probe(
                "fentry",
                "fentry/do_exit",
                try_load::<FEntry>(ebpf, "enf_p_fentry", |p| p.load("do_exit", btf)),
            ));
            out.push(probe(
                "lsm",
                "lsm/bprm_check_security",
                try_load::<Lsm>(ebpf, "enf_p_lsm", |p| p.load("bprm_check_security", btf)),
            ));
            out.push(probe(
                "tp_btf",
                "tp_btf/sched_process_exec",
                try_load::<BtfTracePoint>(ebpf, "enf_p_tpbtf", |p| {
                    p.load("sched_process_exec", btf)
                }),
            ));
        }
        None => {
            for name in ["fentry", "lsm", "tp_btf"] {
                out.push(FeatureProbe {
                    name: name.into(),
                    supported: false,
                    detail: "kernel BTF (/sys/kernel/btf/vmlinux) unreadable".into(),
                });
            }
        }
    }
    out.push(probe(
        "cgroup_sock_addr",
        "cgroup/connect4",
        try_load::<CgroupSockAddr>(ebpf, "enf_p_connect4", |p| p.load()),
    ));
    out.push(probe(
        "cgroup_skb",
        "cgroup/skb",
        try_load::<CgroupSkb>(ebpf, "enf_p_cgskb", |p| p.load()),
    ));
    let signal = is_helper_supported(ProgramType::TracePoint, BpfHelper::BPF_FUNC_send_signal);
    out.push(match signal {
        Ok(s) => FeatureProbe {
            name: "bpf_send_signal".into(),
            supported: s,
            detail: format!(
                "helper from tracepoint programs: {}",
                if s { "accepted" } else { "rejected" }
            ),
        },
        Err(e) => FeatureProbe {
            name: "bpf_send_signal".into(),
            supported: false,
            detail: format!("probe failed: {e}"),
        },
    });
    out
}
