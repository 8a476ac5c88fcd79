//! Types shared by enforcer's BPF programs (`enforcer-ebpf`) and userspace (`enforcer`).
//!
//! Everything here is `#[repr(C)]`, fixed-size and pointer-free: the same bytes are written by
//! the kernel side and read by userspace, so a layout change must be made here and only here.
#![no_std]

pub mod counters;
pub mod events;
pub mod io;
pub mod limits;
pub mod offsets;
pub mod tasks;
