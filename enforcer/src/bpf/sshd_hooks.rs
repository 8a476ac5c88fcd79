//! Uprobes on sshd's PLT stubs (see `plt.rs` and the BPF side's `sshd.rs`): attached once per
//! sshd executable file, pinned with the generation's other links, so they stay while no
//! daemon runs. Executables are told apart by (device, inode): a symlink or a second path to
//! the same file shares the probes, an upgraded sshd (a new file) gets its own.

use std::{
    collections::BTreeMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    programs::{
        ProgramError, UProbe,
        links::FdLink,
        uprobe::{UProbeAttachLocation, UProbeScope},
    },
};
use enforcer_proto::{FeatureProbe, ProgramState, ProgramStatus};

use super::{BpfError, links, plt};

/// Programs, the libc function whose stub each one is attached to, and whether it runs where
/// the call returns (a uretprobe).
pub const PROGRAMS: [(&str, &str, bool); 10] = [
    ("enf_u_read", "read", false),
    ("enf_u_read_ret", "read", true),
    ("enf_u_write", "write", false),
    ("enf_u_write_ret", "write", true),
    ("enf_u_ioctl", "ioctl", false),
    ("enf_u_setsid", "setsid", true),
    ("enf_u_chdir", "chdir", false),
    ("enf_u_connect", "connect", false),
    ("enf_u_accept", "accept", true),
    ("enf_u_close", "close", false),
];

/// The functions whose stubs must all be found.
pub const FUNCTIONS: [&str; 8] = [
    "read", "write", "ioctl", "setsid", "chdir", "connect", "accept", "close",
];

/// Prefix of the pins of an executable's probes: `sshd_<dev>_<ino>_<program>_<n>`.
const PIN_PREFIX: &str = "sshd_";

/// An executable file: (device, inode).
type FileId = (u64, u64);

/// The sshd executables whose stubs carry this generation's uprobes.
#[derive(Debug)]
pub struct SshdHooks {
    generation: PathBuf,
    /// Hooked files and how they were first named (a path, or "pinned" when adopted).
    hooked: BTreeMap<FileId, String>,
    /// Executables that could not be hooked, with the reason (shown in status).
    failed: BTreeMap<String, String>,
    /// Kernel ids of the programs, once known.
    ids: BTreeMap<&'static str, u32>,
}

fn file_id(path: &Path) -> std::io::Result<FileId> {
    let m = std::fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
}

impl SshdHooks {
    /// The hooks of `generation` (those pinned there by an earlier daemon of the same build).
    pub fn adopt(generation: &Path) -> Self {
        let mut hooked = BTreeMap::new();
        let mut ids = BTreeMap::new();
        for entry in std::fs::read_dir(generation)
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(PIN_PREFIX) else {
                continue;
            };
            let mut parts = rest.splitn(3, '_');
            let (Some(dev), Some(ino), Some(program)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let (Ok(dev), Ok(ino)) = (u64::from_str_radix(dev, 16), u64::from_str_radix(ino, 16))
            else {
                continue;
            };
            hooked.insert((dev, ino), "pinned by an earlier daemon".to_owned());
            let program = program.rsplit_once('_').map_or(program, |(p, _)| p);
            if let Some((p, _, _)) = PROGRAMS.iter().find(|(p, _, _)| *p == program) {
                let link: Option<FdLink> = aya::programs::links::PinnedLink::from_pin(entry.path())
                    .ok()
                    .map(Into::into);
                if let Some(id) = link.and_then(|l| l.info().ok()).map(|i| i.program_id()) {
                    ids.entry(*p).or_insert(id);
                }
            }
        }
        Self {
            generation: generation.to_owned(),
            hooked,
            failed: BTreeMap::new(),
            ids,
        }
    }

    /// Detaches every sshd probe pinned in `generation` (the syscall path is in use).
    pub fn remove_pins(generation: &Path) {
        let names: Vec<String> = std::fs::read_dir(generation)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(PIN_PREFIX))
            .collect();
        links::remove_pins(generation, names.iter().map(String::as_str));
    }

    /// Whether the executable at `path` carries the probes.
    pub fn covers(&self, path: &Path) -> bool {
        file_id(path).is_ok_and(|id| self.hooked.contains_key(&id))
    }

    /// Hooks the executable at `path` (shown as `shown`) unless it already is. On failure,
    /// nothing of it stays attached and the reason is kept for status.
    pub fn hook(&mut self, ebpf: &mut Ebpf, path: &Path, shown: &str) -> Result<(), BpfError> {
        let result = self.try_hook(ebpf, path, shown);
        match &result {
            Ok(()) => {
                self.failed.remove(shown);
            }
            Err(e) => {
                self.failed.insert(shown.to_owned(), e.to_string());
            }
        }
        result
    }

    fn try_hook(&mut self, ebpf: &mut Ebpf, path: &Path, shown: &str) -> Result<(), BpfError> {
        let id = file_id(path).map_err(|e| BpfError::Hook(format!("{shown}: {e}")))?;
        if self.hooked.contains_key(&id) {
            return Ok(());
        }
        let stubs = plt::stubs(path, &FUNCTIONS).map_err(|e| BpfError::Hook(e.to_string()))?;
        let mut pinned = Vec::new();
        let result = (|| {
            for (name, function, _) in PROGRAMS {
                let program = uprobe(ebpf, name)?;
                for (n, offset) in stubs[function].iter().enumerate() {
                    let err = |source| BpfError::Program { name, source };
                    let link = program
                        .attach(
                            UProbeAttachLocation::AbsoluteOffset(*offset),
                            path,
                            UProbeScope::AllProcesses,
                        )
                        .map_err(err)?;
                    let link: FdLink = program
                        .take_link(link)
                        .map_err(err)?
                        .try_into()
                        .map_err(|e| BpfError::Hook(format!("{name}: no BPF link to pin: {e}")))?;
                    let pin = format!("{PIN_PREFIX}{:x}_{:x}_{name}_{n}", id.0, id.1);
                    links::pin(&self.generation, &pin, link)?;
                    pinned.push(pin);
                }
                if let Ok(info) = program.info() {
                    self.ids.insert(name, info.id());
                }
            }
            Ok(())
        })();
        if result.is_err() {
            for pin in pinned {
                let _ = std::fs::remove_file(self.generation.join(pin));
            }
            return result;
        }
        tracing::info!(
            executable = shown,
            dev = id.0,
            ino = id.1,
            "sshd I/O uprobes attached"
        );
        self.hooked.insert(id, shown.to_owned());
        Ok(())
    }

    /// Hooks the executable process `pid` runs, when it is sshd and not hooked yet (a
    /// connection's root). A failure is logged and shown in status; the connection goes on
    /// without I/O hooks.
    pub fn hook_process(&mut self, ebpf: &mut Ebpf, pid: u32) {
        let exe = PathBuf::from(format!("/proc/{pid}/exe"));
        let Ok(target) = std::fs::read_link(&exe) else {
            return;
        };
        if self.covers(&exe) || !looks_like_sshd(&target) {
            return;
        }
        let shown = target.display().to_string();
        if let Err(e) = self.hook(ebpf, &exe, &shown) {
            tracing::warn!(pid, executable = shown, error = %e, "cannot hook this sshd: its connections are not recorded");
        }
    }

    /// Status: one line per program.
    pub fn programs(&self) -> Vec<ProgramStatus> {
        let files = self.hooked.values().cloned().collect::<Vec<_>>().join(", ");
        PROGRAMS
            .iter()
            .map(|(name, function, ret)| ProgramStatus {
                name: (*name).into(),
                kind: if *ret { "uretprobe" } else { "uprobe" }.into(),
                attach_point: format!("{function}@plt in {files}"),
                state: if self.hooked.is_empty() {
                    ProgramState::Failed("not attached yet: no sshd executable found".into())
                } else {
                    ProgramState::Attached
                },
                id: self.ids.get(name).copied(),
            })
            .collect()
    }

    /// Status: the `io_hooks` feature.
    pub fn feature(&self) -> FeatureProbe {
        let mut detail = format!(
            "uprobes on sshd's read/write/ioctl/setsid/chdir/connect/accept/close stubs: processes outside sshd run no enforcer program on their syscalls; hooked: {}",
            if self.hooked.is_empty() {
                "none yet (an sshd* executable is hooked when it runs its first admitted connection)".to_owned()
            } else {
                self.hooked.values().cloned().collect::<Vec<_>>().join(", ")
            }
        );
        if !self.failed.is_empty() {
            let failed: Vec<String> = self
                .failed
                .iter()
                .map(|(path, why)| format!("{path}: {why}"))
                .collect();
            detail.push_str(&format!(
                "; NOT hooked (connections from these are not recorded, their idle clocks do not move): {}",
                failed.join("; ")
            ));
        }
        FeatureProbe {
            name: "io_hooks".into(),
            supported: self.failed.is_empty(),
            detail,
        }
    }
}

/// A uprobe program of the object, loaded on first use.
fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut UProbe, BpfError> {
    let err = |source: ProgramError| BpfError::Program { name, source };
    let program: &mut UProbe = ebpf
        .program_mut(name)
        .ok_or(BpfError::MissingProgram(name))?
        .try_into()
        .map_err(err)?;
    if program.fd().is_err() {
        program.load().map_err(err)?;
    }
    Ok(program)
}

/// Whether a connection's root running `exe` should get the probes when it has none: sshd
/// under any name (`sshd`, `sshd-session`, a renamed copy), and nothing else — a probe on
/// another program would cost every process running it.
pub fn looks_like_sshd(exe: &Path) -> bool {
    exe.file_name()
        .and_then(|n| n.to_str())
        .map(|n| n.trim_end_matches(" (deleted)"))
        .is_some_and(|n| n.starts_with("sshd"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sshd_executables_are_hooked_on_sight() {
        assert!(looks_like_sshd(Path::new("/usr/sbin/sshd")));
        assert!(looks_like_sshd(Path::new("/usr/lib/openssh/sshd-session")));
        assert!(looks_like_sshd(Path::new("/usr/sbin/sshd (deleted)")));
        assert!(!looks_like_sshd(Path::new("/usr/bin/dash")));
        assert!(!looks_like_sshd(Path::new("/usr/bin/bash")));
        assert!(!looks_like_sshd(Path::new("/")));
    }

    #[test]
    fn pins_of_an_earlier_daemon_are_adopted_by_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("sshd_fe01_2a_enf_u_read_0"), b"").unwrap();
        std::fs::write(dir.path().join("enf_fork"), b"").unwrap();
        std::fs::write(dir.path().join("sshd_zz_2a_enf_u_read_0"), b"").unwrap();
        let hooks = SshdHooks::adopt(dir.path());
        assert_eq!(
            hooks.hooked.keys().copied().collect::<Vec<_>>(),
            vec![(0xfe01, 0x2a)]
        );
    }
}
