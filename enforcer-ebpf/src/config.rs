//! Where kernel structures and tracepoint fields are, filled in by the daemon at load time
//! (`EbpfLoader::override_global("ENF_OFFSETS", …)`); see enforcer_common::offsets.

use enforcer_common::{io::RecordSettings, offsets::KernelOffsets};

#[unsafe(no_mangle)]
pub static ENF_OFFSETS: KernelOffsets = KernelOffsets::UNSET;

/// What to record (all off until the loader says otherwise).
#[unsafe(no_mangle)]
pub static ENF_SETTINGS: RecordSettings = RecordSettings {
    enabled: 0,
    pipe_input: 0,
    mask_echo_off: 1,
    _pad: 0,
};

/// This generation's build id (the daemon's hash of the object and its load settings).
#[unsafe(no_mangle)]
pub static ENF_BUILD: u64 = 0;

/// Whether this program generation is the active one. While the daemon replaces the programs
/// (another build), both generations are attached for a moment and share the counting maps;
/// only the generation named in `ENF_GEN` acts, so nothing is counted twice and nothing is
/// left unwatched.
#[inline(always)]
pub fn active() -> bool {
    // SAFETY: reading a static the loader rewrites before the program runs.
    let mine = unsafe { core::ptr::read_volatile(&ENF_BUILD) };
    crate::maps::ENF_GEN.get(0).is_some_and(|g| *g == mine)
}

/// One offset, read so the compiler cannot fold the built-in value in.
macro_rules! off {
    ($field:ident) => {{
        // Callers are often inside `unsafe` already.
        #[allow(unused_unsafe)]
        // SAFETY: reading a field of a static the loader rewrites before the program runs.
        let v = unsafe { core::ptr::read_volatile(&$crate::config::ENF_OFFSETS.$field) };
        v
    }};
}
pub(crate) use off;
