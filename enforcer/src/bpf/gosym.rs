//! Where a Go program reads, writes and sizes its terminals: Go code does not call libc. Every
//! `os.File` read and write (pipes, ptys, FIFOs) goes through `internal/poll.(*FD).Read/Write`
//! to `syscall.read`/`syscall.write`, which call `syscall.Syscall`; terminal sizes go through
//! `golang.org/x/sys/unix.ioctl`. Found by name in the binary's Go function table
//! (`.gopclntab`, kept even in stripped binaries), the probe sites by decoding each function's
//! `CALL syscall.Syscall` ([`IoSites`] says why there). Probing these rather than the one
//! function every syscall goes through (`Syscall6`) traps on reads and writes only: a third of
//! a shim's syscalls at an exec start (`cargo xtask bench kube`). Go 1.18+ table layout (magic 0xfffffff0 / 0xfffffff1);
//! older Go is refused by name.

use std::{collections::HashMap, path::Path};

use object::{Object, ObjectSection};

const READ: &str = "syscall.read";
const WRITE: &str = "syscall.write";
const SYSCALL: &str = "syscall.Syscall";
const IOCTL: &str = "golang.org/x/sys/unix.ioctl";
/// How far into `syscall.read`/`write` their call of `syscall.Syscall` may be.
const SEARCH: usize = 256;
/// x86-64 `CALL rel32`.
const CALL: u8 = 0xe8;

/// Why a Go executable cannot be probed.
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

/// File offsets to probe in a Go program: the `CALL syscall.Syscall` in `syscall.read` and in
/// `syscall.write` (its arguments in registers: RAX the syscall number, RBX fd, RCX buffer,
/// RDI length), the site after each call where RAX holds its result (bytes moved, or -1), and
/// the entry of `golang.org/x/sys/unix.ioctl` when the program has it (RAX fd, RBX request,
/// RCX argument).
///
/// Why these sites: a uprobe on an instruction the kernel cannot emulate executes it out of
/// line and single-steps it, a second trap; on a call or a conditional jump it emulates the
/// instruction and returns at once. Measured here (uprobes through tracefs on a loop of reads):
/// ~12.5 µs per hit out of line against ~1 µs emulated, and an exec start makes ~60 probed reads
/// and writes in the shim. So the entry probe is the call itself, not the function's first
/// instruction (a stack check), and the return probe is the conditional jump of the error test
/// that follows the call (`TEST RCX, RCX; Jcc`, RAX untouched), where Go's compiler puts it;
/// the instruction right after the call otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoSites {
    pub read: u64,
    pub write: u64,
    pub returns: Vec<u64>,
    pub ioctl: Option<u64>,
}

/// The probe sites of the Go executable at `path`.
pub fn io_sites(path: &Path) -> Result<IoSites, GoSymError> {
    let shown = path.display().to_string();
    let data = std::fs::read(path).map_err(|source| GoSymError::Read {
        path: shown.clone(),
        source,
    })?;
    sites(&data).map_err(|why| GoSymError::Unusable { path: shown, why })
}

fn sites(data: &[u8]) -> Result<IoSites, String> {
    let elf = object::File::parse(data).map_err(|e| format!("not an ELF file: {e}"))?;
    if elf.architecture() != object::Architecture::X86_64 {
        return Err(format!(
            "{:?} is not supported (x86-64 only)",
            elf.architecture()
        ));
    }
    let table = elf
        .section_by_name(".gopclntab")
        .ok_or("no .gopclntab section: not a Go program")?
        .data()
        .map_err(|e| e.to_string())?;
    let found = functions(table, &[READ, WRITE, SYSCALL, IOCTL])?;
    let first = |name: &str| -> Result<u64, String> {
        found
            .get(name)
            .and_then(|a| a.first().copied())
            .ok_or_else(|| format!("no function {name} in the Go function table"))
    };
    let file_offset = |address: u64| -> Result<u64, String> {
        let section = elf
            .sections()
            .find(|s| (s.address()..s.address() + s.size()).contains(&address))
            .ok_or_else(|| format!("{address:#x} lies in no section"))?;
        let (start, _) = section
            .file_range()
            .ok_or_else(|| format!("{address:#x} is not in the file"))?;
        Ok(address - section.address() + start)
    };
    let syscall = found.get(SYSCALL).cloned().unwrap_or_default();
    let mut sites = IoSites {
        read: file_offset(first(READ)?)?,
        write: file_offset(first(WRITE)?)?,
        returns: Vec::new(),
        ioctl: found
            .get(IOCTL)
            .and_then(|a| a.first())
            .map(|a| file_offset(*a))
            .transpose()?,
    };
    for (name, at) in [(READ, sites.read), (WRITE, sites.write)] {
        let code = data
            .get(at as usize..at as usize + SEARCH)
            .ok_or_else(|| format!("{name} runs past the end of the file"))?;
        let address = first(name)?;
        let call = (0..code.len() - 5)
            .find(|&i| {
                let rel = i32::from_le_bytes([code[i + 1], code[i + 2], code[i + 3], code[i + 4]]);
                let target = (address + i as u64 + 5).wrapping_add(rel as i64 as u64);
                code[i] == CALL && syscall.contains(&target)
            })
            .ok_or_else(|| format!("{name} does not call {SYSCALL} (unknown Go version)"))?;
        let site = at + call as u64;
        match name {
            READ => sites.read = site,
            _ => sites.write = site,
        }
        sites
            .returns
            .push(site + 5 + error_test_len(&code[call + 5..]));
    }
    Ok(sites)
}

/// `TEST RCX, RCX` (the errno `syscall.Syscall` returns) followed by a conditional jump.
const ERROR_TEST: [u8; 3] = [0x48, 0x85, 0xc9];

/// How far past a call of `syscall.Syscall` its error test's jump is (RAX still the result
/// there), or 0 when `code` does not start with that test.
fn error_test_len(code: &[u8]) -> u64 {
    let jcc = matches!(
        code.get(ERROR_TEST.len()..),
        Some([0x70..=0x7f, ..] | [0x0f, 0x80..=0x8f, ..])
    );
    if code.starts_with(&ERROR_TEST) && jcc {
        ERROR_TEST.len() as u64
    } else {
        0
    }
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

/// The addresses of the functions named `names` in the function table `t` (a name may have
/// several: ABI wrappers). Go 1.18+ layout: a header of eight words after the magic, then
/// `(entry offset, func offset)` pairs from `pclnOffset`, each func starting with its entry
/// offset and the offset of its name.
fn functions(t: &[u8], names: &[&str]) -> Result<HashMap<String, Vec<u64>>, String> {
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
    let mut found: HashMap<String, Vec<u64>> = HashMap::new();
    for i in 0..nfunc {
        let func = functab + u32_at(t, functab + 8 * i + 4)? as usize;
        let name_at = names_at + u32_at(t, func + 4)? as usize;
        let name = t
            .get(name_at..)
            .and_then(|s| s.split(|b| *b == 0).next())
            .unwrap_or_default();
        if let Some(n) = names.iter().find(|n| n.as_bytes() == name) {
            found
                .entry((*n).to_owned())
                .or_default()
                .push(text_start + u32_at(t, func)? as u64);
        }
    }
    Ok(found)
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
        for w in [
            funcs.len() as u64,
            0,
            text_start,
            names_at as u64,
            0,
            0,
            0,
            functab as u64,
        ] {
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
    fn functions_are_found_with_every_address() {
        let t = table(&[
            ("main.main", 0x10),
            ("syscall.Syscall", 0x200),
            ("syscall.read", 0x300),
            ("syscall.Syscall", 0x280),
        ]);
        let f = functions(&t, &[SYSCALL, READ, WRITE]).unwrap();
        assert_eq!(f[SYSCALL], vec![0x40_1200, 0x40_1280]);
        assert_eq!(f[READ], vec![0x40_1300]);
        assert!(!f.contains_key(WRITE));
    }

    #[test]
    fn old_or_truncated_tables_are_refused_with_why() {
        let mut old = table(&[(READ, 0x80)]);
        old[0] = 0xfa;
        assert!(
            functions(&old, &[READ])
                .unwrap_err()
                .contains("older than 1.18")
        );
        let t = table(&[(READ, 0x80)]);
        assert!(
            functions(&t[..40], &[READ])
                .unwrap_err()
                .contains("truncated")
        );
    }

    #[test]
    fn non_go_programs_are_refused() {
        let e = io_sites(Path::new("/bin/sh")).unwrap_err().to_string();
        assert!(e.contains("not a Go program"), "{e}");
    }

    /// The shim containerd runs here: read and write are found at their calls of
    /// `syscall.Syscall`, and each return site is that call's error test's jump (the layout
    /// the BPF programs read, on instructions the kernel emulates).
    #[test]
    fn the_installed_containerd_shim_has_probe_sites() {
        let shim = Path::new("/usr/bin/containerd-shim-runc-v2");
        if !shim.exists() {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI needs containerd installed"
            );
            return;
        }
        let s = io_sites(shim).unwrap();
        let data = std::fs::read(shim).unwrap();
        assert_eq!(s.returns.len(), 2, "{s:?}");
        for (call, ret) in [(s.read, s.returns[0]), (s.write, s.returns[1])] {
            assert_eq!(data[call as usize], CALL, "{s:?}");
            assert_eq!(ret, call + 5 + ERROR_TEST.len() as u64, "{s:?}");
            assert!(matches!(data[ret as usize], 0x74 | 0x75), "{s:?}");
        }
        assert!(s.ioctl.is_some(), "{s:?}");
    }

    #[test]
    fn the_return_site_is_the_error_tests_jump_when_there_is_one() {
        assert_eq!(error_test_len(&[0x48, 0x85, 0xc9, 0x74, 0x65]), 3);
        assert_eq!(
            error_test_len(&[0x48, 0x85, 0xc9, 0x0f, 0x84, 0, 0, 0, 0]),
            3
        );
        // Another layout: the instruction right after the call.
        assert_eq!(error_test_len(&[0x48, 0x89, 0x44, 0x24, 0x20]), 0);
        assert_eq!(error_test_len(&[0x48, 0x85, 0xc9, 0x48, 0x89]), 0);
        assert_eq!(error_test_len(&[0x48, 0x85]), 0);
    }
}
