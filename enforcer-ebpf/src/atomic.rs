//! 64-bit atomic fetch-and-add.
//!
//! Rust exposes no `fetch_add` on bpfel, and the `atomic_xadd` intrinsic is miscompiled by this
//! toolchain (it emits a non-fetching add and reuses the operand register as the "old value";
//! measured: the old value never changes). The instruction is therefore written out; it needs
//! `-C target-cpu=v3` (set by `cargo xtask build-ebpf`) and a 5.12+ kernel.

/// Adds `delta` (wrapping: pass `u64::MAX` to subtract one) and returns the previous value.
#[inline(always)]
pub fn fetch_add(target: *mut u64, delta: u64) -> u64 {
    let mut v = delta;
    // SAFETY: `target` points into a map value the caller looked up; BPF_ATOMIC|BPF_FETCH on an
    // 8-byte aligned u64.
    unsafe {
        core::arch::asm!(
            "{v} = atomic_fetch_add((u64 *)({p} + 0), {v})",
            p = in(reg) target,
            v = inout(reg) v,
        );
    }
    v
}
