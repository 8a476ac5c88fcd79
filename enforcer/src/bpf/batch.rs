//! Reading a whole BPF hash map in a few syscalls (`BPF_MAP_LOOKUP_BATCH`, Linux 5.6+).
//! aya walks a map with two syscalls per entry (next key, then lookup): ~20 ms for 10 000
//! entries here, which the idle check would pay four times a second. A batch read copies
//! thousands of entries per syscall. Kernels without it fall back to aya's walk.

use std::{
    io,
    mem::size_of,
    os::fd::{AsFd, AsRawFd},
};

use aya::{
    Pod,
    maps::{HashMap, IterableMap, MapData, MapError},
};

/// `BPF_MAP_LOOKUP_BATCH` (uapi `enum bpf_cmd`).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// The kernel's `ENOTSUPP` (not in libc): a map type without batch operations.
const ENOTSUPP: i32 = 524;

/// Entries asked for per syscall (the kernel needs room for at least one whole hash bucket).
const CHUNK: usize = 4096;

/// The `batch` member of uapi `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Every (key, value) of a hash map. Entries that come or go meanwhile may or may not be
/// included, as with any walk of a live map.
pub fn entries<K: Pod, V: Pod>(map: &HashMap<MapData, K, V>) -> Result<Vec<(K, V)>, MapError> {
    match lookup_batch(map) {
        Ok(all) => Ok(all),
        // Batch operations missing (old kernel) or refused: aya's walk, two syscalls an entry
        // (an entry deleted between the two is skipped).
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EINVAL | ENOTSUPP | libc::EPERM)
            ) =>
        {
            Ok(map.iter().filter_map(Result::ok).collect())
        }
        Err(e) => Err(MapError::SyscallError(aya::sys::SyscallError {
            call: "bpf_map_lookup_batch",
            io_error: e,
        })),
    }
}

fn lookup_batch<K: Pod, V: Pod>(map: &HashMap<MapData, K, V>) -> io::Result<Vec<(K, V)>> {
    let fd = map.map().fd().as_fd().as_raw_fd();
    let mut keys: Vec<K> = Vec::with_capacity(CHUNK);
    let mut values: Vec<V> = Vec::with_capacity(CHUNK);
    let mut out = Vec::new();
    // The kernel's cursor (a bucket index for hash maps); 8 bytes leave room to spare.
    let mut cursor = [0u64; 1];
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { cursor.as_ptr() as u64 },
            out_batch: cursor.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: fd as u32,
            ..Default::default()
        };
        // SAFETY: `attr` points at buffers of CHUNK keys and values and an 8-byte cursor, all
        // alive for the call; the kernel writes at most `count` entries and updates `count`.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                size_of::<BatchAttr>() as u32,
            )
        };
        let err = (r < 0).then(io::Error::last_os_error);
        let n = (attr.count as usize).min(CHUNK);
        match &err {
            None => {}
            // End of the map; this last call may still have copied entries.
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Some(_) => return Err(err.expect("checked")),
        }
        // SAFETY: the kernel initialised the first `n` keys and values (plain data).
        unsafe {
            keys.set_len(n);
            values.set_len(n);
        }
        out.extend(keys.drain(..).zip(values.drain(..)));
        if err.is_some() {
            return Ok(out);
        }
        first = false;
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::{FromRawFd, OwnedFd};

    use super::*;

    /// A fresh kernel hash map u32 → u64 (root only).
    fn hash_map(max_entries: u32) -> HashMap<MapData, u32, u64> {
        // The `map_create` member of `union bpf_attr`, up to `max_entries` (the rest is zero).
        #[repr(C)]
        struct Create {
            map_type: u32,
            key_size: u32,
            value_size: u32,
            max_entries: u32,
        }
        let attr = Create {
            map_type: 1, // BPF_MAP_TYPE_HASH
            key_size: 4,
            value_size: 8,
            max_entries,
        };
        // SAFETY: BPF_MAP_CREATE (0) with a valid attr; a non-negative result is our fd.
        let fd = unsafe { libc::syscall(libc::SYS_bpf, 0, &attr, size_of::<Create>() as u32) };
        assert!(fd >= 0, "BPF_MAP_CREATE: {}", io::Error::last_os_error());
        // SAFETY: just created, owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let data = MapData::from_fd(fd).expect("map info");
        HashMap::try_from(aya::maps::Map::HashMap(data)).expect("a hash map")
    }

    #[test]
    fn reads_every_entry_across_chunks_once() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: creating a BPF map needs root");
            return;
        }
        let mut map = hash_map(20_000);
        assert!(entries(&map).unwrap().is_empty(), "empty map");
        let n = 3 * CHUNK as u32 + 17;
        for k in 0..n {
            map.insert(k, u64::from(k) * 7, 0).unwrap();
        }
        // The batch operation itself, not the fallback (this kernel has it).
        let mut got = lookup_batch(&map).unwrap();
        got.sort_unstable();
        let want: Vec<(u32, u64)> = (0..n).map(|k| (k, u64::from(k) * 7)).collect();
        assert_eq!(got, want);
        // The batch read must agree with aya's entry-by-entry walk.
        let mut walked: Vec<(u32, u64)> = map.iter().map(Result::unwrap).collect();
        walked.sort_unstable();
        assert_eq!(walked, want);
        assert_eq!(entries(&map).unwrap().len(), n as usize);
    }
}
