//! Loading the embedded BPF object and attaching the data-path programs.

use aya::{Btf, Ebpf, EbpfLoader, programs::TracePoint};
use enforcer_proto::{FeatureProbe, ProgramState, ProgramStatus};

use super::{BpfError, BpfSettings, probe, tracefs};

/// The BPF object built by `cargo xtask build-ebpf`, embedded by build.rs (empty if it was not
/// built).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/enforcer.bpf.o"));

/// Data-path programs: (program, tracepoint category, tracepoint name).
pub const TRACEPOINTS: [(&str, &str, &str); 3] = [
    ("enf_fork", "sched", "sched_process_fork"),
    ("enf_exec", "sched", "sched_process_exec"),
    ("enf_exit", "sched", "sched_process_exit"),
];

/// A loaded, attached object with what we learned while loading it.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub programs: Vec<ProgramStatus>,
    pub features: Vec<FeatureProbe>,
}

/// Loads the object, probes features and attaches every data-path program. A data-path program
/// that cannot be attached is an error: without it nothing can be enforced.
pub fn load(object: &[u8], settings: &BpfSettings) -> Result<Loaded, BpfError> {
    if object.is_empty() {
        return Err(BpfError::NoObject);
    }
    // aya finds tracepoint ids through tracefs and caches the location on first use.
    let root = tracefs::ensure_mounted()?;
    let layout = tracefs::read_layout(&root)?;
    let group_dead = layout.exit_group_dead.unwrap_or(u32::MAX);
    let mut ebpf = EbpfLoader::new()
        .map_max_entries("ENF_EVENTS", settings.ring_buffer_bytes)
        .map_max_entries("ENF_TASKS", settings.max_tracked_tasks)
        .override_global("FORK_CHILD_OFF", &layout.fork_child_pid, true)
        .override_global("EXEC_FILENAME_OFF", &layout.exec_filename, true)
        .override_global("EXEC_OLD_PID_OFF", &layout.exec_old_pid, true)
        .override_global("EXIT_GROUP_DEAD_OFF", &group_dead, true)
        .load(object)
        .map_err(|e| BpfError::Load(Box::new(e)))?;

    let btf = match Btf::from_sys_fs() {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::warn!(error = %e, "kernel BTF unreadable; BTF-based probes report unsupported");
            None
        }
    };
    let mut features = probe::probe_all(&mut ebpf, btf.as_ref());

    let mut programs = Vec::new();
    for (name, category, tp) in TRACEPOINTS {
        let program = ebpf.program_mut(name).ok_or(BpfError::MissingProgram(name))?;
        let program: &mut TracePoint =
            program.try_into().map_err(|source| BpfError::Program { name, source })?;
        program.load().map_err(|source| BpfError::Program { name, source })?;
        program.attach(category, tp).map_err(|source| BpfError::Program { name, source })?;
        let id = program.info().ok().map(|i| i.id());
        programs.push(ProgramStatus {
            name: name.into(),
            kind: "tracepoint".into(),
            attach_point: format!("{category}/{tp}"),
            state: ProgramState::Attached,
            id,
        });
    }
    features.push(FeatureProbe {
        name: "tracepoint".into(),
        supported: true,
        detail: "sched_process_{fork,exec,exit} attached".into(),
    });
    features.push(FeatureProbe {
        name: "tracepoint_exit_group_dead".into(),
        supported: layout.exit_group_dead.is_some(),
        detail: match layout.exit_group_dead {
            Some(off) => format!("sched_process_exit.group_dead at offset {off}"),
            None => "absent (kernel < 6.14): process end = thread-group leader exit".into(),
        },
    });
    Ok(Loaded { ebpf, programs, features })
}
