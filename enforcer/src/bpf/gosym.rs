//! Where a Go program makes its system calls: Go code does not call libc, it enters the kernel
//! from one assembly function, `Syscall6` (`runtime/internal/syscall` in Go 1.19–1.22,
//! `internal/runtime/syscall` since). Found by name in the binary's Go function table
//! (`.gopclntab`, kept even in stripped binaries), then its SYSCALL instruction by decoding.
//! Go 1.18+ table layout (magic 0xfffffff0 / 0xfffffff1); older Go is refused by name.

use std::path::Path;

use object::{Object, ObjectSection};

/// The function every Go syscall goes through, by Go version.
const SYSCALL6: [&str; 2] = [
    "runtime/internal/syscall.Syscall6",
    "internal/runtime/syscall.Syscall6",
];
/// The x86-64 SYSCALL instruction.
const SYSCALL_INSN: [u8; 2] = [0x0f, 0x05];
/// How far into `Syscall6` its SYSCALL may be (it follows four register moves).
const SEARCH: usize = 32;

/// Why a Go executable's syscall function cannot be probed.
#[derive(Debug, thiserror::Error)]
pub enum GoSymError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {why}")]
    Unusable { path: String, why: String },
}

/// Where to probe a Go program's syscalls: file offsets of `Syscall6`'s first instruction
/// (arguments in registers) and of the instruction after its SYSCALL (result in RAX).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyscallSites {
    pub entry: u64,
    pub after: u64,
}

/// The probe sites of the Go executable at `path`.
pub fn syscall_sites(path: &Path) -> Result<SyscallSites, GoSymError> {
    let shown = path.display().to_string();
    let data = std::fs::read(path).map_err(|source| GoSymError::Read {
        path: shown.clone(),
        source,
    })?;
    sites(&data).map_err(|why| GoSymError::Unusable { path: shown, why })
}

fn sites(data: &[u8]) -> Result<SyscallSites, String> {
    let elf = object::File::parse(data).map_err(|e| format!("not an ELF file: {e}"))?;
    if elf.architecture() != object::Architecture::X86_64 {
        return Err(format!("{:?} is not supported (x86-64 only)", elf.architecture()));
    }
    let table = elf
        .section_by_name(".gopclntab")
        .ok_or("no .gopclntab section: not a Go program")?
        .data()
        .map_err(|e| e.to_string())?;
    let address = find_function(table, &SYSCALL6)?;
    let text = elf
        .sections()
        .find(|s| (s.address()..s.address() + s.size()).contains(&address))
        .ok_or("Syscall6 lies in no section")?;
    let (start, _) = text.file_range().ok_or("Syscall6's section is not in the file")?;
    let entry = address - text.address() + start;
    let code = data
        .get(entry as usize..entry as usize + SEARCH)
        .ok_or("Syscall6 runs past the end of the file")?;
    let at = code
        .windows(2)
        .position(|w| w == SYSCALL_INSN)
        .ok_or("no SYSCALL instruction at the start of Syscall6 (unknown Go version)")?;
    Ok(SyscallSites {
        entry,
        after: entry + at as u64 + 2,
    })
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, String> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| format!("function table truncated at {at}"))
}

fn u64_at(b: &[u8], at: usize) -> Result<u64, String> {
    let lo = u32_at(b, at)? as u64;
    let hi = u32_at(b, at + 4)? as u64;
    Ok(lo | hi << 32)
}

/// The address of the first of `names` in the function table `t` (Go 1.18+ layout: a header of
/// eight words after the magic, then `(entry offset, func offset)` pairs from `pclnOffset`,
/// each func starting with its entry offset and the offset of its name).
fn find_function(t: &[u8], names: &[&str]) -> Result<u64, String> {
    let magic = u32_at(t, 0)?;
    if magic != 0xffff_fff0 && magic != 0xffff_fff1 {
        return Err(format!(
            "Go function table magic {magic:#x}: built by a Go older than 1.18"
        ));
    }
    if t.get(7) != Some(&8) {
        return Err("Go function table is not for 64-bit pointers".into());
    }
    let word = |i: usize| u64_at(t, 8 + 8 * i).map(|v| v as usize);
    let (nfunc, text_start, names_at, functab) = (word(0)?, word(2)? as u64, word(3)?, word(7)?);
    for i in 0..nfunc {
        let func = functab + u32_at(t, functab + 8 * i + 4)? as usize;
        let name_at = names_at + u32_at(t, func + 4)? as usize;
        let name = t
            .get(name_at..)
            .and_then(|s| s.split(|b| *b == 0).next())
            .unwrap_or_default();
        if names.iter().any(|n| n.as_bytes() == name) {
            return Ok(text_start + u32_at(t, func)? as u64);
        }
    }
    Err(format!("no function {} in the Go function table", names.join(" or ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Go 1.18+ table with the given functions at entry offsets.
    fn table(funcs: &[(&str, u32)]) -> Vec<u8> {
        let text_start = 0x40_1000u64;
        let mut names = Vec::new();
        let mut name_offs = Vec::new();
        for (n, _) in funcs {
            name_offs.push(names.len() as u32);
            names.extend_from_slice(n.as_bytes());
            names.push(0);
        }
        let names_at = 8 + 8 * 8;
        let functab = names_at + names.len();
        let mut t = vec![0xf0, 0xff, 0xff, 0xff, 0, 0, 1, 8];
        for w in [funcs.len() as u64, 0, text_start, names_at as u64, 0, 0, 0, functab as u64] {
            t.extend_from_slice(&w.to_le_bytes());
        }
        t.extend_from_slice(&names);
        let funcs_at = 8 * (funcs.len() + 1);
        for (i, (_, entry)) in funcs.iter().enumerate() {
            t.extend_from_slice(&entry.to_le_bytes());
            t.extend_from_slice(&((funcs_at + 8 * i) as u32).to_le_bytes());
        }
        t.extend_from_slice(&[0; 8]);
        for (i, (_, entry)) in funcs.iter().enumerate() {
            t.extend_from_slice(&entry.to_le_bytes());
            t.extend_from_slice(&name_offs[i].to_le_bytes());
        }
        t
    }

    #[test]
    fn a_function_is_found_by_either_name() {
        let t = table(&[("main.main", 0x10), ("internal/runtime/syscall.Syscall6", 0x200)]);
        assert_eq!(find_function(&t, &SYSCALL6), Ok(0x40_1200));
        let t = table(&[("runtime/internal/syscall.Syscall6", 0x80)]);
        assert_eq!(find_function(&t, &SYSCALL6), Ok(0x40_1080));
    }

    #[test]
    fn old_missing_or_truncated_tables_are_refused_with_why() {
        let t = table(&[("main.main", 0x10)]);
        assert!(find_function(&t, &SYSCALL6).unwrap_err().contains("no function"));
        let mut old = table(&[("runtime/internal/syscall.Syscall6", 0x80)]);
        old[0] = 0xfa;
        assert!(find_function(&old, &SYSCALL6).unwrap_err().contains("older than 1.18"));
        let t = table(&[("runtime/internal/syscall.Syscall6", 0x80)]);
        assert!(find_function(&t[..40], &SYSCALL6).unwrap_err().contains("truncated"));
    }

    #[test]
    fn non_go_programs_are_refused() {
        let e = syscall_sites(Path::new("/bin/sh")).unwrap_err().to_string();
        assert!(e.contains("not a Go program"), "{e}");
    }

    /// The shim containerd runs here: its Syscall6 is found and its SYSCALL follows the
    /// register moves (the layout the BPF programs read).
    #[test]
    fn the_installed_containerd_shim_has_probe_sites() {
        let shim = Path::new("/usr/bin/containerd-shim-runc-v2");
        if !shim.exists() {
            assert!(std::env::var_os("CI").is_none(), "CI needs containerd installed");
            return;
        }
        let s = syscall_sites(shim).unwrap();
        assert!(s.after > s.entry && s.after - s.entry <= SEARCH as u64, "{s:?}");
        let data = std::fs::read(shim).unwrap();
        assert_eq!(&data[s.after as usize - 2..s.after as usize], &SYSCALL_INSN);
    }
}
