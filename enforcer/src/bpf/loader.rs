//! Loading the embedded BPF object and attaching the data-path programs.

use aya::{
    Btf as AyaBtf, Ebpf, EbpfLoader,
    programs::{BtfTracePoint, TracePoint},
};
use enforcer_proto::{FeatureProbe, ProgramState, ProgramStatus};

use super::{BpfError, BpfSettings, btf::Btf, offsets, pins, probe, tracefs};

/// The BPF object built by `cargo xtask build-ebpf`, embedded by build.rs (empty if it was not
/// built).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/enforcer.bpf.o"));

/// Tracepoint programs: (program, category, tracepoint).
const TRACEPOINTS: [(&str, &str, &str); 9] = [
    ("enf_exec", "sched", "sched_process_exec"),
    ("enf_exit", "sched", "sched_process_exit"),
    ("enf_setsid", "syscalls", "sys_exit_setsid"),
    ("enf_chdir", "syscalls", "sys_enter_chdir"),
    ("enf_write", "syscalls", "sys_enter_write"),
    ("enf_read", "syscalls", "sys_enter_read"),
    ("enf_read_ret", "syscalls", "sys_exit_read"),
    ("enf_write_ret", "syscalls", "sys_exit_write"),
    ("enf_ioctl", "syscalls", "sys_enter_ioctl"),
];

/// A loaded, attached object with what we learned while loading it.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub programs: Vec<ProgramStatus>,
    pub features: Vec<FeatureProbe>,
}

fn attached(name: &str, kind: &str, attach_point: String, id: Option<u32>) -> ProgramStatus {
    ProgramStatus {
        name: name.into(),
        kind: kind.into(),
        attach_point,
        state: ProgramState::Attached,
        id,
    }
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
    let btf = Btf::from_sys_fs().map_err(|e| BpfError::Btf(e.to_string()))?;
    let (offsets, missing) = offsets::build(&btf, &layout)?;
    let discarded = pins::prepare(&settings.pin_dir, settings.max_tracked_tasks)?;
    let mut ebpf = EbpfLoader::new()
        .map_max_entries("ENF_EVENTS", settings.ring_buffer_bytes)
        .map_max_entries("ENF_TASKS", settings.max_tracked_tasks)
        .map_max_entries("ENF_DATA", settings.data_ring_bytes)
        .override_global("ENF_SETTINGS", &settings.record, true)
        .default_map_pin_directory(&settings.pin_dir)
        .override_global("ENF_OFFSETS", &offsets, true)
        .load(object)
        .map_err(|e| BpfError::Load(Box::new(e)))?;

    let aya_btf = AyaBtf::from_sys_fs().map_err(|e| BpfError::Btf(e.to_string()))?;
    let mut features = probe::probe_all(&mut ebpf, Some(&aya_btf));

    let mut programs = Vec::new();
    let fork: &mut BtfTracePoint = ebpf
        .program_mut("enf_fork")
        .ok_or(BpfError::MissingProgram("enf_fork"))?
        .try_into()
        .map_err(|source| BpfError::Program {
            name: "enf_fork",
            source,
        })?;
    fork.load("sched_process_fork", &aya_btf)
        .map_err(|source| BpfError::Program {
            name: "enf_fork",
            source,
        })?;
    fork.attach().map_err(|source| BpfError::Program {
        name: "enf_fork",
        source,
    })?;
    programs.push(attached(
        "enf_fork",
        "tp_btf",
        "sched_process_fork".into(),
        fork.info().ok().map(|i| i.id()),
    ));

    for (name, category, tp) in TRACEPOINTS {
        let program = ebpf
            .program_mut(name)
            .ok_or(BpfError::MissingProgram(name))?;
        let program: &mut TracePoint = program
            .try_into()
            .map_err(|source| BpfError::Program { name, source })?;
        program
            .load()
            .map_err(|source| BpfError::Program { name, source })?;
        program
            .attach(category, tp)
            .map_err(|source| BpfError::Program { name, source })?;
        programs.push(attached(
            name,
            "tracepoint",
            format!("{category}/{tp}"),
            program.info().ok().map(|i| i.id()),
        ));
    }
    features.push(FeatureProbe {
        name: "tracepoint".into(),
        supported: true,
        detail: "sched_process_{exec,exit}, sys_exit_setsid, sys_enter_chdir, sys_{enter,exit}_{read,write}, sys_enter_ioctl attached".into(),
    });
    features.push(FeatureProbe {
        name: "tracepoint_exit_group_dead".into(),
        supported: layout.exit_group_dead.is_some(),
        detail: match layout.exit_group_dead {
            Some(off) => format!("sched_process_exit.group_dead at offset {off}"),
            None => "absent (kernel < 6.14): process end = thread-group leader exit".into(),
        },
    });
    features.push(FeatureProbe {
        name: "kernel_btf_members".into(),
        supported: missing.is_empty(),
        detail: if missing.is_empty() {
            "every struct member the programs read was found".into()
        } else {
            format!(
                "missing (the fields they feed stay empty): {}",
                missing.join("; ")
            )
        },
    });
    features.push(FeatureProbe {
        name: "pinned_maps".into(),
        supported: true,
        detail: if discarded.is_empty() {
            format!("identity maps pinned in {}", settings.pin_dir.display())
        } else {
            format!(
                "pinned in {}; {}",
                settings.pin_dir.display(),
                discarded.join("; ")
            )
        },
    });
    Ok(Loaded {
        ebpf,
        programs,
        features,
    })
}
