//! Uprobes on executables' files: sshd's PLT stubs (see `plt.rs` and the BPF side's `sshd.rs`)
//! and containerd shims' Go read/write/ioctl functions (`gosym.rs`, BPF `shim.rs`). Attached
//! once per executable file, pinned with the generation's other links, so they stay while no
//! daemon runs. Executables are told apart by (device, inode): a symlink or a second path to
//! the same file shares the probes, an upgraded binary (a new file) gets its own.

use std::{
    collections::{BTreeMap, HashMap},
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

/// One kind of hooked executable.
pub struct HookSpec {
    /// Prefix of the pins of an executable's probes: `<prefix><dev>_<ino>_<program>_<n>`.
    prefix: &'static str,
    /// Programs, the site each is attached to (a name `resolve` returns), and whether it runs
    /// where the call returns (a uretprobe).
    programs: &'static [(&'static str, &'static str, bool)],
    /// File offsets of each site in an executable (a site may have several).
    resolve: fn(&Path) -> Result<HashMap<String, Vec<u64>>, String>,
    /// Status: the feature's name, what the probes are, and what lacking them costs.
    feature: &'static str,
    describes: &'static str,
    none_yet: &'static str,
    not_hooked: &'static str,
}

/// Functions whose stubs must all be found in sshd.
pub const FUNCTIONS: [&str; 8] = [
    "read", "write", "ioctl", "setsid", "chdir", "connect", "accept", "close",
];

/// sshd: every byte between a client and its sessions, setsid, chdir and forwarding sockets.
pub const SSHD: HookSpec = HookSpec {
    prefix: "sshd_",
    programs: &[
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
    ],
    resolve: |path| plt::stubs(path, &FUNCTIONS).map_err(|e| e.to_string()),
    feature: "io_hooks",
    describes: "uprobes on sshd's read/write/ioctl/setsid/chdir/connect/accept/close stubs: processes outside sshd run no enforcer program on their syscalls",
    none_yet: "none yet (an sshd* executable is hooked when it runs its first admitted connection)",
    not_hooked: "connections from these are not recorded, their idle clocks do not move",
};

/// Sites in a Go program (see `gosym.rs`).
const GO_READ: &str = "syscall.read's call of syscall.Syscall";
const GO_WRITE: &str = "syscall.write's call of syscall.Syscall";
const GO_RETURN: &str = "syscall.read/write after syscall.Syscall";
const GO_IOCTL: &str = "golang.org/x/sys/unix.ioctl";

/// containerd's shim: the bytes of every `kubectl exec` (its pty master or stdio pipes).
pub const SHIM: HookSpec = HookSpec {
    prefix: "shim_",
    programs: &[
        ("enf_shim_read", GO_READ, false),
        ("enf_shim_write", GO_WRITE, false),
        ("enf_shim_rw_ret", GO_RETURN, false),
        ("enf_shim_ioctl", GO_IOCTL, false),
    ],
    resolve: |path| {
        let s = super::gosym::io_sites(path).map_err(|e| e.to_string())?;
        Ok(HashMap::from([
            (GO_READ.to_owned(), vec![s.read]),
            (GO_WRITE.to_owned(), vec![s.write]),
            (GO_RETURN.to_owned(), s.returns),
            (GO_IOCTL.to_owned(), s.ioctl.into_iter().collect()),
        ]))
    },
    feature: "exec_io_hooks",
    describes: "uprobes on containerd shims' Go read/write/ioctl functions (kubectl exec streams are recorded from the shim's side)",
    none_yet: "none ([kubernetes] shim_binaries lists no existing file)",
    not_hooked: "kubectl exec sessions through these are not recorded",
};

/// An executable file: (device, inode).
type FileId = (u64, u64);

/// The executables of one kind that carry this generation's uprobes.
pub struct UprobeHooks {
    spec: &'static HookSpec,
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

impl UprobeHooks {
    /// The hooks of `generation` (those pinned there by an earlier daemon of the same build).
    pub fn adopt(spec: &'static HookSpec, generation: &Path) -> Self {
        let mut hooked = BTreeMap::new();
        let mut ids = BTreeMap::new();
        for entry in std::fs::read_dir(generation)
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(spec.prefix) else {
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
            if let Some((p, _, _)) = spec.programs.iter().find(|(p, _, _)| *p == program) {
                let link: Option<FdLink> = aya::programs::links::PinnedLink::from_pin(entry.path())
                    .ok()
                    .map(Into::into);
                if let Some(id) = link.and_then(|l| l.info().ok()).map(|i| i.program_id()) {
                    ids.entry(*p).or_insert(id);
                }
            }
        }
        Self {
            spec,
            generation: generation.to_owned(),
            hooked,
            failed: BTreeMap::new(),
            ids,
        }
    }

    /// Detaches every probe of this kind pinned in `generation`.
    pub fn remove_pins(spec: &HookSpec, generation: &Path) {
        let names: Vec<String> = std::fs::read_dir(generation)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(spec.prefix))
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
        let sites = (self.spec.resolve)(path).map_err(BpfError::Hook)?;
        let mut pinned = Vec::new();
        let result = (|| {
            for &(name, site, _) in self.spec.programs {
                let program = uprobe(ebpf, name)?;
                let offsets = sites.get(site).map(Vec::as_slice).unwrap_or_default();
                if offsets.is_empty() {
                    // Optional sites (the shim's ioctl) may be absent.
                    tracing::warn!(executable = shown, site, "nothing to probe here");
                }
                for (n, offset) in offsets.iter().enumerate() {
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
                    let pin = format!("{}{:x}_{:x}_{name}_{n}", self.spec.prefix, id.0, id.1);
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
            hooks = self.spec.feature,
            "I/O uprobes attached"
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
        let at = if std::ptr::eq(self.spec, &SSHD) {
            "@plt"
        } else {
            ""
        };
        self.spec
            .programs
            .iter()
            .map(|(name, function, ret)| ProgramStatus {
                name: (*name).into(),
                kind: if *ret { "uretprobe" } else { "uprobe" }.into(),
                attach_point: format!("{function}{at} in {files}"),
                state: if self.hooked.is_empty() {
                    ProgramState::Failed(format!("not attached yet: {}", self.spec.none_yet))
                } else {
                    ProgramState::Attached
                },
                id: self.ids.get(name).copied(),
            })
            .collect()
    }

    /// Status: the feature these probes provide.
    pub fn feature(&self) -> FeatureProbe {
        let mut detail = format!(
            "{}; hooked: {}",
            self.spec.describes,
            if self.hooked.is_empty() {
                self.spec.none_yet.to_owned()
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
                "; NOT hooked ({}): {}",
                self.spec.not_hooked,
                failed.join("; ")
            ));
        }
        FeatureProbe {
            name: self.spec.feature.into(),
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
        let hooks = UprobeHooks::adopt(&SSHD, dir.path());
        assert_eq!(
            hooks.hooked.keys().copied().collect::<Vec<_>>(),
            vec![(0xfe01, 0x2a)]
        );
    }
}
