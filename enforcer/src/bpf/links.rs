//! Pinned program links: the programs stay attached while enforcerd is down (crash, upgrade,
//! restart), so tracking and session limits never stop; only removing the pin directory
//! (`enforcerd --detach`, the package's remove/purge) detaches them.
//!
//! One generation of links lives in `<pin_dir>/links-<build>/`, `<build>` being a hash of the
//! BPF object and everything it was loaded with (map sizes, record settings, kernel offsets).
//! On start:
//! - the same build is pinned: its links are kept (adopted) and the daemon reads the pinned
//!   maps, events queued while it was down included — enforcement was continuous;
//! - another build is pinned: the new programs are attached next to the old ones, then one map
//!   update (`ENF_GEN`, the active generation) hands over, then the old links are removed.
//!   Both generations share the pinned counting maps (ENF_CONNS, ENF_USERS): were both active
//!   during the overlap, every session started meanwhile would be counted twice (and a session
//!   within its limit refused). Every program first checks that its own build id (`ENF_BUILD`,
//!   a load-time global) is the active one, so exactly one generation acts at any moment and
//!   there is no gap. A crash in the middle leaves both pinned and the old one active; the next
//!   start hands over again.

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
    /// Another build or other load settings were pinned: its links were replaced without a
    /// gap; `maps_kept` is false when the identity, count, ring or loss maps had another layout
    /// and were discarded (what they held is gone).
    Replaced { previous: String, maps_kept: bool },
}

impl Continuity {
    pub fn is_continuous(&self) -> bool {
        matches!(
            self,
            Continuity::Continuous
                | Continuity::Replaced {
                    maps_kept: true,
                    ..
                }
        )
    }

    pub fn detail(&self) -> String {
        match self {
            Continuity::Continuous => {
                "enforcement continuous since the previous daemon: its pinned programs stayed attached and were adopted".into()
            }
            Continuity::Fresh => {
                "not continuous: no pinned programs found (first start, or detached with `enforcerd --detach`/pin directory removed)".into()
            }
            Continuity::Replaced {
                previous,
                maps_kept: true,
            } => format!(
                "enforcement continuous: the pinned programs of another build or settings ({previous}) ran until this build's took over, without a gap"
            ),
            Continuity::Replaced {
                previous,
                maps_kept: false,
            } => format!(
                "not continuous: the pinned programs of another build ({previous}) were replaced, but maps with another layout were discarded: task identities or session counts (live sessions lost their kernel identity), or the event and recording rings with what they held"
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

/// The generation id the programs compare with `ENF_GEN` (never 0, the value of a fresh map).
pub fn generation_id(build: &str) -> u64 {
    u64::from_str_radix(build, 16).unwrap_or(1).max(1)
}

/// Makes `generation` the one whose programs act (`ENF_GEN`).
pub fn activate(ebpf: &mut aya::Ebpf, generation: u64) -> Result<(), BpfError> {
    let map = ebpf
        .map_mut("ENF_GEN")
        .ok_or(BpfError::MissingMap("ENF_GEN"))?;
    let mut gen_map: aya::maps::Array<_, u64> =
        aya::maps::Array::try_from(map).map_err(|source| BpfError::Map {
            name: "ENF_GEN",
            source,
        })?;
    gen_map
        .set(0, generation, 0)
        .map_err(|source| BpfError::Map {
            name: "ENF_GEN",
            source,
        })
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

/// Removes the pins `names` of a generation where present: their links detach.
pub fn remove_pins<'a>(dir: &Path, names: impl IntoIterator<Item = &'a str>) {
    for name in names {
        match std::fs::remove_file(dir.join(name)) {
            Ok(()) => tracing::info!(program = name, "detached (not used in this mode)"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(program = name, error = %e, "cannot remove pinned link"),
        }
    }
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
            maps_kept: true,
        };
        assert!(r.is_continuous() && r.detail().contains("build 0123"));
        let lost = Continuity::Replaced {
            previous: "build 0123".into(),
            maps_kept: false,
        };
        assert!(!lost.is_continuous() && lost.detail().contains("discarded"));
        assert_ne!(generation_id("0000000000000000"), 0);
    }
}
