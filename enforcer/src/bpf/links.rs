//! Pinned program links: the programs stay attached while enforcerd is down (crash, upgrade,
//! restart), so tracking and session limits never stop; only removing the pin directory
//! (`enforcerd --detach`, the package's remove/purge) detaches them.
//!
//! One generation of links lives in `<pin_dir>/links-<build>/`, `<build>` being a hash of the
//! BPF object and everything it was loaded with (map sizes, record settings, kernel offsets).
//! On start:
//! - the same build is pinned: its links are kept (adopted) and the daemon reads the pinned
//!   maps, events queued while it was down included — enforcement was continuous;
//! - another build (or none) is pinned: the old links are removed **before** the new programs
//!   are attached. Both generations share the pinned counting maps (ENF_CONNS, ENF_USERS), so
//!   overlapping them would count every session started meanwhile twice and refuse sessions
//!   within their limit. The gap lasts one attach (milliseconds, upgrades only); the restart
//!   reconciliation (`validate`) adopts tasks forked meanwhile, and status says enforcement was
//!   not continuous and why.

use std::path::{Path, PathBuf};

use aya::programs::links::{FdLink, PinnedLink};

use super::BpfError;

/// How the kernel side relates to the previous daemon's, for `enforcerctl status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Continuity {
    /// The same programs stayed attached while no daemon ran.
    Continuous,
    /// Nothing was pinned: first start, or the programs were detached on purpose.
    Fresh,
    /// Another build or other load settings were pinned: its links were replaced.
    Replaced { previous: String },
}

impl Continuity {
    pub fn is_continuous(&self) -> bool {
        *self == Continuity::Continuous
    }

    pub fn detail(&self) -> String {
        match self {
            Continuity::Continuous => {
                "enforcement continuous since the previous daemon: its pinned programs stayed attached and were adopted".into()
            }
            Continuity::Fresh => {
                "not continuous: no pinned programs found (first start, or detached with `enforcerd --detach`/pin directory removed)".into()
            }
            Continuity::Replaced { previous } => format!(
                "not continuous: pinned programs of another build or settings ({previous}) were detached and replaced; processes forked in the gap were reconciled from /proc"
            ),
        }
    }
}

/// FNV-1a over the object and its load-time inputs: equal hashes mean the running programs are
/// exactly what this daemon would attach.
pub fn build_id(parts: &[&[u8]]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.iter().chain(&(part.len() as u64).to_le_bytes()) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// The directory of a generation's links.
pub fn dir(pin_dir: &Path, build: &str) -> PathBuf {
    pin_dir.join(format!("links-{build}"))
}

/// Generations pinned under `pin_dir` (their build ids).
pub fn pinned_builds(pin_dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(pin_dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("links-"))
                .map(str::to_owned)
        })
        .collect()
}

/// The program ids of a complete pinned generation (one link per name), or `None`.
pub fn adopt(dir: &Path, names: &[&str]) -> Option<Vec<u32>> {
    names
        .iter()
        .map(|n| {
            let link: FdLink = PinnedLink::from_pin(dir.join(n)).ok()?.into();
            link.info().ok().map(|i| i.program_id())
        })
        .collect()
}

/// Removes a generation: its links detach once their pins are gone (no process holds them).
pub fn remove(pin_dir: &Path, build: &str) -> Result<(), BpfError> {
    let d = dir(pin_dir, build);
    std::fs::remove_dir_all(&d)
        .map_err(|e| BpfError::Pins(format!("removing {}: {e}", d.display())))
}

/// Pins one link of the generation being attached.
pub fn pin(dir: &Path, name: &str, link: FdLink) -> Result<(), BpfError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| BpfError::Pins(format!("creating {}: {e}", dir.display())))?;
    link.pin(dir.join(name))
        .map(drop)
        .map_err(|e| BpfError::Pins(format!("pinning link {name}: {e}")))
}

/// Detaches every program and frees every map by removing the pin directory (uninstall).
/// Returns whether there was anything to remove.
pub fn detach_all(pin_dir: &Path) -> Result<bool, BpfError> {
    match std::fs::remove_dir_all(pin_dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(BpfError::Pins(format!(
            "removing {}: {e}",
            pin_dir.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_id_depends_on_every_input_and_their_boundaries() {
        let a = build_id(&[b"object", b"settings"]);
        assert_eq!(a, build_id(&[b"object", b"settings"]));
        assert_ne!(a, build_id(&[b"object", b"settingz"]));
        assert_ne!(a, build_id(&[b"objects", b"ettings"]));
        assert_eq!(a.len(), 16);
    }

    #[test]
    fn continuity_says_why_not() {
        assert!(Continuity::Continuous.is_continuous());
        assert!(!Continuity::Fresh.is_continuous());
        let r = Continuity::Replaced {
            previous: "build 0123".into(),
        };
        assert!(r.detail().contains("build 0123"));
    }
}
