//! Append-only files of whole lines (audit log, recordings) that stay valid line by line
//! whatever happens to a write: a failed write (disk full, I/O error) is cut back to the last
//! whole line, and a file a crash left ending in a half line is cut back when it is reopened.
//! The caller marks the gap (an audit record, an "m" marker) once writing works again.

use std::{
    fs::File,
    io::{self, Read, Seek, SeekFrom, Write},
};

/// Why bytes could not be written: the reasons losses are counted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WriteFailure {
    /// No space or quota left on the filesystem.
    DiskFull,
    /// Any other write error.
    Io,
}

impl WriteFailure {
    pub fn of(e: &io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG) => WriteFailure::DiskFull,
            _ => WriteFailure::Io,
        }
    }

    /// snake_case name, as in audit records and status counters.
    pub fn code(self) -> &'static str {
        match self {
            WriteFailure::DiskFull => "disk_full",
            WriteFailure::Io => "write_error",
        }
    }
}

/// A file opened for appending (`O_APPEND`) that only ever grows by whole lines.
#[derive(Debug)]
pub struct LineFile {
    file: File,
    /// Length up to the last whole line written.
    len: u64,
    /// A failed write could not be cut back yet: cut before the next write.
    torn: bool,
}

impl LineFile {
    /// Takes a file opened with `O_APPEND`; a trailing half line (left by a crash or an older
    /// build) is cut off. Returns the file and how many bytes were cut.
    pub fn new(mut file: File) -> io::Result<(LineFile, u64)> {
        let size = file.metadata()?.len();
        let len = last_line_end(&mut file, size)?;
        if len < size {
            file.set_len(len)?;
        }
        Ok((
            LineFile {
                file,
                len,
                torn: false,
            },
            size - len,
        ))
    }

    /// Appends `lines` (whole lines, each ending in `\n`). On failure nothing of them stays in
    /// the file.
    pub fn append(&mut self, lines: &[u8]) -> io::Result<()> {
        debug_assert!(lines.is_empty() || lines.ends_with(b"\n"));
        if self.torn {
            self.cut_back()?;
            self.torn = false;
        }
        match self.file.write_all(lines) {
            Ok(()) => {
                self.len += lines.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Shrinking frees blocks, so it works on a full disk; if it fails anyway the
                // next append tries again first.
                self.torn = self.cut_back().is_err();
                Err(e)
            }
        }
    }

    /// Cuts the file back to its last whole line. Someone else may have shortened it meanwhile
    /// (logrotate's copytruncate): then the last whole line is looked for in what is there, never
    /// extended to the old length (that would write a hole of NUL bytes).
    fn cut_back(&mut self) -> io::Result<()> {
        let size = self.file.metadata()?.len();
        if size < self.len {
            self.len = last_line_end(&mut self.file, size)?;
        }
        if size > self.len {
            self.file.set_len(self.len)?;
        }
        Ok(())
    }

    /// Length of the file's whole lines.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Offset just past the last `\n` in the first `size` bytes (0 when there is none).
fn last_line_end(file: &mut File, size: u64) -> io::Result<u64> {
    const CHUNK: u64 = 64 << 10;
    let mut end = size;
    let mut buf = vec![0u8; CHUNK as usize];
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        let n = (end - start) as usize;
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut buf[..n])?;
        if let Some(i) = buf[..n].iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_shortened_by_someone_else_is_never_extended_with_a_hole() {
        // Found in review: after logrotate's copytruncate, cutting back to the old length
        // extended the file with NUL bytes.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let open = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .read(true)
                .open(&path)
                .unwrap()
        };
        let (mut f, _) = LineFile::new(open()).unwrap();
        f.append(b"one\ntwo\n").unwrap();
        // copytruncate, then a write that left half a line (as a full disk does).
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        std::io::Write::write_all(&mut open(), b"new\nhal").unwrap();
        f.cut_back().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new\n");
        f.append(b"next\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new\nnext\n");
    }
    use std::fs::OpenOptions;

    fn open(path: &std::path::Path) -> (LineFile, u64) {
        let f = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .unwrap();
        LineFile::new(f).unwrap()
    }

    #[test]
    fn a_half_line_left_by_a_crash_is_cut_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"{\"a\":1}\n{\"b\":").unwrap();
        let (mut f, cut) = open(&path);
        assert_eq!(cut, 5);
        f.append(b"{\"c\":3}\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"a\":1}\n{\"c\":3}\n");
        assert_eq!(f.len(), 16);
    }

    #[test]
    fn no_newline_at_all_and_long_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![b'x'; 200_000]).unwrap();
        let (f, cut) = open(&path);
        assert_eq!((f.len(), cut), (0, 200_000));
        let mut long = vec![b'y'; 150_000];
        long.push(b'\n');
        long.extend_from_slice(b"half");
        std::fs::write(&path, &long).unwrap();
        let (f, cut) = open(&path);
        assert_eq!((f.len(), cut), (150_001, 4));
    }

    #[test]
    fn failures_are_classified() {
        let full = io::Error::from_raw_os_error(libc::ENOSPC);
        assert_eq!(WriteFailure::of(&full), WriteFailure::DiskFull);
        let other = io::Error::from_raw_os_error(libc::EIO);
        assert_eq!(WriteFailure::of(&other).code(), "write_error");
    }
}
