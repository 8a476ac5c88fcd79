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
