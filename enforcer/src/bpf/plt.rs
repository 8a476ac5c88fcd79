//! Where an executable calls into shared libraries: its PLT stubs. sshd's code reaches libc's
//! read, write, ioctl, setsid and chdir through one stub each (`jmp *GOT(%rip)`), so a uprobe
//! on the stub fires for exactly sshd's own calls — in sshd processes only, unlike a probe in
//! libc, which every process on the host maps.
//!
//! A stub is found by decoding its `jmp *disp32(%rip)` and matching the GOT slot it jumps
//! through with the dynamic relocation that fills that slot (`JUMP_SLOT` for lazy or `-z now`
//! PLTs, `GLOB_DAT` for `.plt.got`, used when the function's address is also taken).

use std::{collections::HashMap, path::Path};

use object::{
    Object, ObjectSection, ObjectSymbol, ObjectSymbolTable, RelocationTarget,
    read::elf::{ElfFile64, ElfSection64},
};

/// Sections that hold PLT stubs.
const PLT_SECTIONS: [&str; 3] = [".plt", ".plt.sec", ".plt.got"];

/// Why an executable's stubs cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PltError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a 64-bit ELF file: {source}")]
    Parse {
        path: String,
        source: object::read::Error,
    },
    #[error(
        "{path} has no x86-64 PLT stub for {missing} (statically linked, built with -fno-plt, or another architecture)"
    )]
    Missing { path: String, missing: String },
}

/// File offsets of the PLT stubs of `wanted` in the executable at `path` (each name: every
/// stub that jumps through its GOT slot, usually one). Every name must have one.
pub fn stubs(path: &Path, wanted: &[&str]) -> Result<HashMap<String, Vec<u64>>, PltError> {
    let shown = path.display().to_string();
    let data = std::fs::read(path).map_err(|source| PltError::Read {
        path: shown.clone(),
        source,
    })?;
    let found = find(&data).map_err(|source| PltError::Parse {
        path: shown.clone(),
        source,
    })?;
    let mut out = HashMap::new();
    let mut missing = Vec::new();
    for name in wanted {
        match found.get(*name) {
            Some(offsets) => {
                out.insert((*name).to_owned(), offsets.clone());
            }
            None => missing.push(*name),
        }
    }
    if !missing.is_empty() {
        return Err(PltError::Missing {
            path: shown,
            missing: missing.join(", "),
        });
    }
    Ok(out)
}

/// Every imported function with a PLT stub: name → file offsets of its stubs.
fn find(data: &[u8]) -> Result<HashMap<String, Vec<u64>>, object::read::Error> {
    let file = ElfFile64::<object::Endianness>::parse(data)?;
    if file.architecture() != object::Architecture::X86_64 {
        return Ok(HashMap::new());
    }
    // GOT slot address → imported symbol name.
    let mut slots = HashMap::new();
    if let (Some(relocs), Some(symbols)) = (file.dynamic_relocations(), file.dynamic_symbol_table())
    {
        for (slot, reloc) in relocs {
            if let RelocationTarget::Symbol(index) = reloc.target() {
                if let Ok(name) = symbols.symbol_by_index(index).and_then(|s| s.name()) {
                    slots.insert(slot, name.to_owned());
                }
            }
        }
    }
    let mut stubs: HashMap<String, Vec<u64>> = HashMap::new();
    for section in file.sections() {
        if !PLT_SECTIONS.contains(&section.name().unwrap_or("")) {
            continue;
        }
        let (Ok(bytes), Some((file_offset, _))) = (section.data(), section.file_range()) else {
            continue;
        };
        let entry = entry_size(&section);
        for (at, slot) in rip_jumps(bytes, section.address()) {
            let Some(name) = slots.get(&slot) else {
                continue;
            };
            // The stub starts at its entry's boundary (endbr64 and bnd prefixes come first).
            let start = at - at % entry;
            let offsets = stubs.entry(name.clone()).or_default();
            if !offsets.contains(&(file_offset + start)) {
                offsets.push(file_offset + start);
            }
        }
    }
    Ok(stubs)
}

/// The size of one stub in a PLT section (16 when the header does not say).
fn entry_size(section: &ElfSection64<'_, '_, object::Endianness>) -> u64 {
    let size = section
        .elf_section_header()
        .sh_entsize
        .get(section.elf_file().endian());
    if size == 0 { 16 } else { size }
}

/// Every `jmp *disp32(%rip)` (ff 25 disp32) in `bytes`, a section at `address`: (offset of the
/// instruction in the section, address of the slot it jumps through).
fn rip_jumps(bytes: &[u8], address: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
    bytes.windows(6).enumerate().filter_map(move |(i, w)| {
        if w[0] != 0xff || w[1] != 0x25 {
            return None;
        }
        let disp = i32::from_le_bytes([w[2], w[3], w[4], w[5]]);
        let next = address + i as u64 + 6;
        Some((i as u64, next.wrapping_add_signed(i64::from(disp))))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rip_relative_jump_names_its_slot() {
        // endbr64; bnd jmp *0x10(%rip); nop
        let stub = [
            0xf3, 0x0f, 0x1e, 0xfa, 0xf2, 0xff, 0x25, 0x10, 0, 0, 0, 0x0f, 0x1f, 0x44, 0, 0,
        ];
        let jumps: Vec<_> = rip_jumps(&stub, 0x1000).collect();
        assert_eq!(jumps, vec![(5, 0x1000 + 5 + 6 + 0x10)]);
    }

    #[test]
    fn a_negative_displacement_points_back() {
        let stub = [0xff, 0x25, 0xf0, 0xff, 0xff, 0xff];
        assert_eq!(
            rip_jumps(&stub, 0x2000).collect::<Vec<_>>(),
            vec![(0, 0x2000 + 6 - 0x10)]
        );
    }

    #[test]
    fn sshd_calls_libc_through_stubs() {
        let sshd = Path::new("/usr/sbin/sshd");
        if !sshd.exists() {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI machines have OpenSSH's sshd"
            );
            return;
        }
        let wanted = ["read", "write", "ioctl", "setsid", "chdir"];
        let found = stubs(sshd, &wanted).unwrap();
        for name in wanted {
            let offsets = &found[name];
            assert_eq!(offsets.len(), 1, "{name}: {offsets:x?}");
        }
        // Cross-check one stub with objdump's view of the PLT, when objdump is there.
        if let Ok(out) = std::process::Command::new("objdump")
            .args(["-d", "-j", ".plt.got", "-j", ".plt.sec", "-j", ".plt"])
            .arg(sshd)
            .output()
        {
            let text = String::from_utf8_lossy(&out.stdout);
            if let Some(line) = text.lines().find(|l| l.ends_with(" <setsid@plt>:")) {
                let addr = u64::from_str_radix(line.split_whitespace().next().unwrap(), 16);
                // sshd's executable segment maps file offset = address.
                assert_eq!(Ok(found["setsid"][0]), addr);
            }
        }
    }

    #[test]
    fn a_library_without_the_imports_is_refused_by_name() {
        let err = stubs(Path::new("/proc/self/exe"), &["no_such_function_anywhere"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("no_such_function_anywhere"), "{err}");
    }

    #[test]
    fn a_missing_file_says_which() {
        let err = stubs(Path::new("/nonexistent/sshd"), &["read"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/sshd"), "{err}");
    }
}
