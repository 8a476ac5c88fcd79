//! Loading the embedded BPF object and attaching the data-path programs.

use aya::{
    Btf as AyaBtf, Ebpf, EbpfLoader,
    programs::{BtfTracePoint, TracePoint, links::FdLink},
};
use enforcer_proto::{FeatureProbe, ProgramState, ProgramStatus};

use super::{
    BpfError, BpfSettings,
    btf::Btf,
    hooks::{SHIM, SSHD, UprobeHooks},
    links, offsets, pins, probe, tracefs,
};
use crate::config::IoHooks;

/// The BPF object built by `cargo xtask build-ebpf`, embedded by build.rs (empty if it was not
/// built).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/enforcer.bpf.o"));

/// Tracepoint programs (program, category, tracepoint) that are always attached.
const SCHED: [(&str, &str, &str); 3] = [
    ("enf_exec", "sched", "sched_process_exec"),
    ("enf_exit", "sched", "sched_process_exit"),
    ("enf_signal", "signal", "signal_generate"),
];

/// The host-wide fallback for sshd's I/O, setsid and chdir (`io_hooks = "syscalls"`).
const SYSCALLS: [(&str, &str, &str); 7] = [
    ("enf_setsid", "syscalls", "sys_exit_setsid"),
    ("enf_chdir", "syscalls", "sys_enter_chdir"),
    ("enf_write", "syscalls", "sys_enter_write"),
    ("enf_read", "syscalls", "sys_enter_read"),
    ("enf_read_ret", "syscalls", "sys_exit_read"),
    ("enf_write_ret", "syscalls", "sys_exit_write"),
    ("enf_ioctl", "syscalls", "sys_enter_ioctl"),
];

/// How sshd's I/O is hooked in this run.
pub enum IoPath {
    /// Uprobes on sshd's PLT stubs; more executables are hooked as they show up.
    Sshd(UprobeHooks),
    /// Syscall tracepoints, for the reason given.
    Syscalls(String),
}

/// A loaded, attached object with what we learned while loading it.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub programs: Vec<ProgramStatus>,
    pub features: Vec<FeatureProbe>,
    pub continuity: links::Continuity,
    pub io: IoPath,
    /// containerd shims' syscall probes (`kubectl exec` recording).
    pub shim: UprobeHooks,
}

/// Chooses the I/O path; `Ok(None)` means the sshd uprobes.
fn choose_io(settings: &BpfSettings, uprobe: &FeatureProbe) -> Result<Option<String>, BpfError> {
    if settings.io_hooks == IoHooks::Syscalls {
        return Ok(Some("configured: [daemon] io_hooks = \"syscalls\"".into()));
    }
    let mut problems = Vec::new();
    if !uprobe.supported {
        problems.push(format!("this kernel refuses uprobes ({})", uprobe.detail));
    }
    for path in settings.sshd_binaries.iter().filter(|p| p.exists()) {
        if let Err(e) = super::plt::stubs(path, &super::hooks::FUNCTIONS) {
            problems.push(e.to_string());
        }
    }
    match (problems.is_empty(), settings.io_hooks) {
        (true, _) => Ok(None),
        (false, IoHooks::Sshd) => Err(BpfError::Hook(problems.join("; "))),
        (false, _) => Ok(Some(format!(
            "io_hooks = \"auto\" fell back to syscall tracepoints: {}",
            problems.join("; ")
        ))),
    }
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
    let discarded = pins::prepare(&settings.pin_dir, settings)?;
    let build = links::build_id(&[
        object,
        pod_bytes(&settings.record),
        pod_bytes(&offsets),
        &settings.ring_buffer_bytes.to_le_bytes(),
        &settings.max_tracked_tasks.to_le_bytes(),
        &settings.data_ring_bytes.to_le_bytes(),
    ]);
    let generation_id = links::generation_id(&build);
    let mut ebpf = EbpfLoader::new()
        .map_max_entries("ENF_EVENTS", settings.ring_buffer_bytes)
        .map_max_entries("ENF_TASKS", settings.max_tracked_tasks)
        .map_max_entries("ENF_DATA", settings.data_ring_bytes)
        .override_global("ENF_SETTINGS", &settings.record, true)
        .default_map_pin_directory(&settings.pin_dir)
        .override_global("ENF_OFFSETS", &offsets, true)
        .override_global("ENF_BUILD", &generation_id, true)
        .load(object)
        .map_err(|e| BpfError::Load(Box::new(e)))?;

    let aya_btf = AyaBtf::from_sys_fs().map_err(|e| BpfError::Btf(e.to_string()))?;
    let mut features = probe::probe_all(&mut ebpf, Some(&aya_btf));
    let uprobe = probe::uprobe(&mut ebpf);
    let syscalls = choose_io(settings, &uprobe)?;
    features.push(uprobe);
    let tracepoints: Vec<_> = SCHED
        .iter()
        .chain(syscalls.iter().flat_map(|_| SYSCALLS.iter()))
        .copied()
        .collect();

    let generation = links::dir(&settings.pin_dir, &build);
    let previous = links::pinned_builds(&settings.pin_dir);
    let names: Vec<&str> = std::iter::once("enf_fork")
        .chain(tracepoints.iter().map(|t| t.0))
        .collect();
    let adopted = previous
        .contains(&build)
        .then(|| links::adopt(&generation, &names))
        .flatten();
    if adopted.is_none() && previous.contains(&build) {
        // An incomplete generation of this very build (a crash while attaching): redo it.
        links::remove(&settings.pin_dir, &build)?;
    }
    let (programs, continuity) = match adopted {
        Some(ids) => {
            let programs = names
                .iter()
                .zip(ids)
                .map(|(name, id)| {
                    let (kind, point) = attach_point(name);
                    attached(name, kind, point, Some(id))
                })
                .collect();
            (programs, links::Continuity::Continuous)
        }
        None => {
            let programs = attach_all(&mut ebpf, &aya_btf, &generation, &tracepoints)?;
            // The globals the programs were loaded with, next to their links (bpftool map
            // dump pinned …): they are what the build id covers. bpffs refuses dots in names.
            for (name, map) in ebpf.maps().filter(|(n, _)| n.starts_with('.')) {
                if let Err(e) = map.pin(generation.join(name.replace('.', ""))) {
                    tracing::warn!(map = name, error = %e, "cannot pin BPF globals");
                }
            }
            let continuity = match previous.is_empty() {
                true => links::Continuity::Fresh,
                false => links::Continuity::Replaced {
                    previous: format!("build {}", previous.join(", ")),
                    // Scratch sizes may change freely. Identities and counts may not, and a
                    // discarded ring or loss map takes what the old programs queued while no
                    // daemon ran with it (resumed recordings then say they have a gap).
                    maps_kept: !discarded.iter().any(|d| {
                        [
                            "ENF_TASKS",
                            "ENF_CONNS",
                            "ENF_USERS",
                            "ENF_EVENTS",
                            "ENF_DATA",
                            "ENF_LOST",
                        ]
                        .iter()
                        .any(|m| d.starts_with(m))
                    }),
                },
            };
            (programs, continuity)
        }
    };
    // One I/O path per generation: both would count and record every byte twice.
    let io = match syscalls {
        Some(reason) => {
            UprobeHooks::remove_pins(&SSHD, &generation);
            IoPath::Syscalls(reason)
        }
        None => {
            links::remove_pins(&generation, SYSCALLS.iter().map(|t| t.0));
            let mut hooks = UprobeHooks::adopt(&SSHD, &generation);
            for path in settings.sshd_binaries.iter().filter(|p| p.exists()) {
                hooks.hook(&mut ebpf, path, &path.display().to_string())?;
            }
            IoPath::Sshd(hooks)
        }
    };
    let shim = hook_shims(&mut ebpf, settings, &generation);
    // Hand over: from this update on only this generation acts; then the others go.
    links::activate(&mut ebpf, generation_id)?;
    for old in previous.iter().filter(|b| **b != build) {
        links::remove(&settings.pin_dir, old)?;
    }
    tracing::info!(build, continuity = %continuity.detail(), "BPF programs attached and pinned");
    features.push(FeatureProbe {
        name: "continuous_enforcement".into(),
        supported: continuity.is_continuous(),
        detail: continuity.detail(),
    });
    features.push(FeatureProbe {
        name: "tracepoint".into(),
        supported: true,
        detail: tracepoints
            .iter()
            .map(|(_, category, tp)| format!("{category}/{tp}"))
            .collect::<Vec<_>>()
            .join(", ")
            + " attached",
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
            format!(
                "maps and program links pinned in {}",
                settings.pin_dir.display()
            )
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
        continuity,
        io,
        shim,
    })
}

/// Probes the configured containerd shims (none unless `[kubernetes]` is on). A shim that
/// cannot be probed is shown in status; exec sessions through it go unrecorded, nothing else
/// depends on it.
fn hook_shims(
    ebpf: &mut Ebpf,
    settings: &BpfSettings,
    generation: &std::path::Path,
) -> UprobeHooks {
    if settings.shim_binaries.is_empty() {
        UprobeHooks::remove_pins(&SHIM, generation);
    }
    let mut hooks = UprobeHooks::adopt(&SHIM, generation);
    for path in settings.shim_binaries.iter().filter(|p| p.exists()) {
        if let Err(e) = hooks.hook(ebpf, path, &path.display().to_string()) {
            tracing::warn!(shim = %path.display(), error = %e, "cannot probe this containerd shim: its kubectl exec sessions are not recorded");
        }
    }
    hooks
}

/// Kind and attach point of a data-path program, for status.
fn attach_point(name: &str) -> (&'static str, String) {
    match SCHED.iter().chain(&SYSCALLS).find(|t| t.0 == name) {
        Some((_, category, tp)) => ("tracepoint", format!("{category}/{tp}")),
        None => ("tp_btf", "sched_process_fork".into()),
    }
}

/// Attaches every data-path program and pins its link under `generation`.
fn attach_all(
    ebpf: &mut Ebpf,
    aya_btf: &AyaBtf,
    generation: &std::path::Path,
    tracepoints: &[(&'static str, &'static str, &'static str)],
) -> Result<Vec<ProgramStatus>, BpfError> {
    let mut programs = Vec::new();
    let fork: &mut BtfTracePoint = ebpf
        .program_mut("enf_fork")
        .ok_or(BpfError::MissingProgram("enf_fork"))?
        .try_into()
        .map_err(|source| BpfError::Program {
            name: "enf_fork",
            source,
        })?;
    let err = |source| BpfError::Program {
        name: "enf_fork",
        source,
    };
    fork.load("sched_process_fork", aya_btf).map_err(err)?;
    let link = fork.attach().map_err(err)?;
    links::pin(
        generation,
        "enf_fork",
        fork.take_link(link).map_err(err)?.into(),
    )?;
    programs.push(attached(
        "enf_fork",
        "tp_btf",
        "sched_process_fork".into(),
        fork.info().ok().map(|i| i.id()),
    ));

    for &(name, category, tp) in tracepoints {
        let err = |source| BpfError::Program { name, source };
        let program: &mut TracePoint = ebpf
            .program_mut(name)
            .ok_or(BpfError::MissingProgram(name))?
            .try_into()
            .map_err(err)?;
        program.load().map_err(err)?;
        let link = program.attach(category, tp).map_err(err)?;
        let link: FdLink = program
            .take_link(link)
            .map_err(err)?
            .try_into()
            .map_err(|e| {
                BpfError::Pins(format!(
                    "{name}: the kernel gave no BPF link to pin ({e}); pinned tracepoints need Linux 5.15+"
                ))
            })?;
        links::pin(generation, name, link)?;
        programs.push(attached(
            name,
            "tracepoint",
            format!("{category}/{tp}"),
            program.info().ok().map(|i| i.id()),
        ));
    }
    Ok(programs)
}

/// The bytes of a plain `#[repr(C)]` value (no padding is read uninitialised: the shared
/// types spell their padding out as fields).
fn pod_bytes<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: `T` is plain old data; the slice lives no longer than `v`.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }
}
