//! Reading struct member offsets from the kernel's BTF (/sys/kernel/btf/vmlinux).
//!
//! Rust BPF programs get no CO-RE relocations here, so the daemon looks the offsets up and
//! passes them in as a global. Only what that needs is parsed: struct/union members (through
//! anonymous members), typedef/modifier chains, and names. Format: linux/Documentation/bpf/btf.rst.

use std::collections::HashMap;

const MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// BTF that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("cannot read kernel BTF {path}: {message}")]
    Read { path: String, message: String },
    #[error("malformed BTF: {0}")]
    Malformed(String),
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    #[error("kernel BTF: struct {0} has no member {1}")]
    NoMember(String, String),
    #[error("kernel BTF: {0}.{1} is a bitfield")]
    Bitfield(String, String),
}

#[derive(Debug, Clone)]
struct Member {
    name: u32,
    type_id: u32,
    /// Bit offset from the start of the enclosing struct.
    bit_offset: u32,
    bitfield: bool,
}

#[derive(Debug, Clone)]
struct Type {
    kind: u32,
    name: u32,
    /// Referenced type (typedef, pointer, modifiers); 0 otherwise.
    type_id: u32,
    members: Vec<Member>,
}

/// Parsed BTF: enough to find member offsets.
pub struct Btf {
    /// Index = type id (0 is void).
    types: Vec<Type>,
    strings: Vec<u8>,
    structs: HashMap<String, u32>,
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, BtfError> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| BtfError::Malformed(format!("truncated at byte {off}")))
}

impl Btf {
    /// The running kernel's BTF.
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        let path = "/sys/kernel/btf/vmlinux";
        let bytes = std::fs::read(path).map_err(|e| BtfError::Read {
            path: path.into(),
            message: e.to_string(),
        })?;
        Self::parse(&bytes)
    }

    /// Parses raw (little-endian) BTF.
    pub fn parse(b: &[u8]) -> Result<Self, BtfError> {
        let magic = b.get(0..2).map(|m| u16::from_le_bytes([m[0], m[1]]));
        if magic != Some(MAGIC) {
            return Err(BtfError::Malformed(
                "bad magic (not little-endian BTF)".into(),
            ));
        }
        let hdr_len = u32_at(b, 4)? as usize;
        let type_off = u32_at(b, 8)? as usize;
        let type_len = u32_at(b, 12)? as usize;
        let str_off = u32_at(b, 16)? as usize;
        let str_len = u32_at(b, 20)? as usize;
        let tb = b
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or_else(|| BtfError::Malformed("type section out of bounds".into()))?;
        let strings = b
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or_else(|| BtfError::Malformed("string section out of bounds".into()))?
            .to_vec();
        let mut types = vec![Type {
            kind: 0,
            name: 0,
            type_id: 0,
            members: Vec::new(),
        }];
        let mut off = 0;
        while off < tb.len() {
            let name = u32_at(tb, off)?;
            let info = u32_at(tb, off + 4)?;
            let size_or_type = u32_at(tb, off + 8)?;
            off += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let mut t = Type {
                kind,
                name,
                type_id: 0,
                members: Vec::new(),
            };
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = off + i * 12;
                        let raw = u32_at(tb, m + 8)?;
                        let (bit_offset, bitfield) = if kind_flag {
                            (raw & 0xff_ffff, raw >> 24 != 0)
                        } else {
                            (raw, false)
                        };
                        t.members.push(Member {
                            name: u32_at(tb, m)?,
                            type_id: u32_at(tb, m + 4)?,
                            bit_offset,
                            bitfield,
                        });
                    }
                    vlen * 12
                }
                KIND_ENUM => vlen * 8,
                KIND_FUNC_PROTO => vlen * 8,
                KIND_DATASEC | KIND_ENUM64 => vlen * 12,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
                other => return Err(BtfError::Malformed(format!("unknown kind {other}"))),
            };
            if matches!(
                kind,
                KIND_PTR
                    | KIND_TYPEDEF
                    | KIND_VOLATILE
                    | KIND_CONST
                    | KIND_RESTRICT
                    | KIND_TYPE_TAG
            ) {
                t.type_id = size_or_type;
            }
            off += extra;
            types.push(t);
        }
        let mut btf = Btf {
            types,
            strings,
            structs: HashMap::new(),
        };
        for (id, t) in btf.types.iter().enumerate() {
            if t.kind == KIND_STRUCT && t.name != 0 {
                // First definition wins (BTF dedup leaves one per name in vmlinux).
                btf.structs
                    .entry(btf.name(t.name).to_owned())
                    .or_insert(id as u32);
            }
        }
        Ok(btf)
    }

    fn name(&self, off: u32) -> &str {
        let s = self.strings.get(off as usize..).unwrap_or_default();
        let end = s.iter().position(|&c| c == 0).unwrap_or(s.len());
        std::str::from_utf8(&s[..end]).unwrap_or("")
    }

    /// Follows typedefs and const/volatile/restrict/type tags.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.types.get(id as usize) {
                Some(t)
                    if matches!(
                        t.kind,
                        KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG
                    ) =>
                {
                    id = t.type_id
                }
                _ => break,
            }
        }
        id
    }

    /// Bit offset of `member` inside type `id`, searching anonymous struct/union members too.
    fn find(&self, id: u32, member: &str) -> Option<(u32, bool)> {
        let t = self.types.get(self.resolve(id) as usize)?;
        if !matches!(t.kind, KIND_STRUCT | KIND_UNION) {
            return None;
        }
        for m in &t.members {
            if m.name != 0 {
                if self.name(m.name) == member {
                    return Some((m.bit_offset, m.bitfield));
                }
            } else if let Some((inner, bf)) = self.find(m.type_id, member) {
                return Some((m.bit_offset + inner, bf));
            }
        }
        None
    }

    /// Byte offset of `member` in `struct name`.
    pub fn offset_of(&self, name: &str, member: &str) -> Result<u32, BtfError> {
        let id = *self
            .structs
            .get(name)
            .ok_or_else(|| BtfError::NoStruct(name.into()))?;
        match self.find(id, member) {
            Some((bits, false)) if bits % 8 == 0 => Ok(bits / 8),
            Some(_) => Err(BtfError::Bitfield(name.into(), member.into())),
            None => Err(BtfError::NoMember(name.into(), member.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-built BTF blob: struct outer { int a; union { int b; long c; }; int d:3; }.
    fn sample() -> Vec<u8> {
        let strings = b"\0int\0outer\0a\0b\0c\0d\0long\0".to_vec();
        let s = |x: &str| {
            strings
                .windows(x.len() + 1)
                .position(|w| &w[1..] == x.as_bytes() && w[0] == 0)
                .unwrap() as u32
                + 1
        };
        let mut t = Vec::new();
        let mut put = |v: u32| t.extend_from_slice(&v.to_le_bytes());
        // 1: int
        put(s("int"));
        put(KIND_INT << 24);
        put(4);
        put(32);
        // 2: long
        put(s("long"));
        put(KIND_INT << 24);
        put(8);
        put(64);
        // 3: anonymous union { int b; long c; }
        put(0);
        put((KIND_UNION << 24) | 2);
        put(8);
        put(s("b"));
        put(1);
        put(0);
        put(s("c"));
        put(2);
        put(0);
        // 4: struct outer (kind_flag: bitfield encoding)
        put(s("outer"));
        put((1 << 31) | (KIND_STRUCT << 24) | 3);
        put(24);
        put(s("a"));
        put(1);
        put(0);
        put(0);
        put(3);
        put(64);
        put(s("d"));
        put(1);
        put((3 << 24) | 128);
        // Header: magic, version 1, flags 0, hdr_len, type_off, type_len, str_off, str_len.
        let mut b = MAGIC.to_le_bytes().to_vec();
        b.extend_from_slice(&[1, 0]);
        for v in [24, 0, t.len() as u32, t.len() as u32, strings.len() as u32] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&t);
        b.extend_from_slice(&strings);
        b
    }

    #[test]
    fn members_through_anonymous_unions() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.offset_of("outer", "a").unwrap(), 0);
        assert_eq!(btf.offset_of("outer", "c").unwrap(), 8);
        assert_eq!(
            btf.offset_of("outer", "d"),
            Err(BtfError::Bitfield("outer".into(), "d".into()))
        );
        assert_eq!(
            btf.offset_of("outer", "zz"),
            Err(BtfError::NoMember("outer".into(), "zz".into()))
        );
        assert!(matches!(
            btf.offset_of("nope", "a"),
            Err(BtfError::NoStruct(_))
        ));
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(b"hello").is_err());
        let mut b = sample();
        b.truncate(40);
        assert!(Btf::parse(&b).is_err());
    }

    /// The running kernel's task_struct, as the BPF programs need it.
    #[test]
    fn kernel_btf_has_what_we_read() {
        let Ok(btf) = Btf::from_sys_fs() else {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI machines have /sys/kernel/btf/vmlinux"
            );
            return;
        };
        let exit_code = btf.offset_of("task_struct", "exit_code").unwrap();
        let tgid = btf.offset_of("task_struct", "tgid").unwrap();
        assert!(exit_code > 0 && tgid > 0 && exit_code != tgid);
        // arg_start sits in an anonymous struct inside mm_struct.
        let a = btf.offset_of("mm_struct", "arg_start").unwrap();
        assert_eq!(btf.offset_of("mm_struct", "arg_end").unwrap(), a + 8);
        assert_eq!(btf.offset_of("path", "dentry").unwrap(), 8);
        assert_eq!(btf.offset_of("qstr", "name").unwrap(), 8);
    }
}
