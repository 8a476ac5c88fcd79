//! The SFTP protocol (draft-ietf-secsh-filexfer-02, what OpenSSH's sftp-server speaks), read
//! from both directions of a session: which files were opened, and how many bytes of each
//! were read or written. Only packet heads are kept; file data is counted and skipped.

use std::collections::{BTreeMap, HashMap};

use super::{Direction, FileTransfer, TransferProtocol};

const SSH_FXP_OPEN: u8 = 3;
const SSH_FXP_CLOSE: u8 = 4;
const SSH_FXP_READ: u8 = 5;
const SSH_FXP_WRITE: u8 = 6;
const SSH_FXP_HANDLE: u8 = 102;
const SSH_FXP_DATA: u8 = 103;
const SSH_FXF_WRITE: u32 = 0x02;

/// The longest packet OpenSSH accepts (`SFTP_MAX_MSG_LENGTH`): anything longer means the
/// stream is not (or no longer) SFTP.
const MAX_PACKET: u32 = 256 * 1024;
/// Bytes of a packet kept to read its fields: an OPEN's path is the longest field read.
const HEAD_MAX: usize = 4 + 1 + 4 + 4 + 4096 + 4;
/// Requests awaiting their reply kept at most (a client pipelines reads: OpenSSH keeps up to
/// 64 in flight).
const MAX_PENDING: usize = 1024;
/// Open files followed at most; opening more reports the oldest as incomplete (a hostile
/// client holding thousands open must not grow the daemon).
const MAX_OPEN: usize = 256;

/// One direction's packet framing.
#[derive(Debug, Default)]
struct Framer {
    head: Vec<u8>,
    /// Bytes of the current packet after its kept head, still to skip.
    skip: u64,
}

impl Framer {
    /// Splits `bytes` into packets; calls `packet(head)` for each complete one
    /// (`head` starts at the type byte). False once the stream is not SFTP.
    fn feed(&mut self, mut bytes: &[u8], mut packet: impl FnMut(&[u8])) -> bool {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = (self.skip as usize).min(bytes.len());
                self.skip -= n as u64;
                bytes = &bytes[n..];
                if self.skip == 0 {
                    self.done(&mut packet);
                }
                continue;
            }
            let want = match self.len() {
                None => 4,
                Some(len) if len == 0 || len > MAX_PACKET => return false,
                Some(len) => 4 + (len as usize).min(HEAD_MAX),
            };
            let n = (want - self.head.len()).min(bytes.len());
            self.head.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if let (Some(len), true) = (self.len(), self.head.len() == want && want > 4) {
                self.skip = u64::from(len) + 4 - want as u64;
                if self.skip == 0 {
                    self.done(&mut packet);
                }
            }
        }
        !matches!(self.len(), Some(l) if l == 0 || l > MAX_PACKET)
    }

    fn len(&self) -> Option<u32> {
        let b = self.head.get(..4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn done(&mut self, packet: &mut impl FnMut(&[u8])) {
        packet(&self.head[4..]);
        self.head.clear();
    }
}

/// Reads SFTP fields from a packet head.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    /// A packet head's type and request id, and the fields after them.
    fn packet(head: &'a [u8]) -> Option<(u8, u32, Self)> {
        let (&kind, rest) = head.split_first()?;
        let mut f = Fields(rest);
        let id = f.u32()?;
        Some((kind, id, f))
    }

    fn u32(&mut self) -> Option<u32> {
        let (b, rest) = self.0.split_first_chunk::<4>()?;
        self.0 = rest;
        Some(u32::from_be_bytes(*b))
    }
    fn u64(&mut self) -> Option<u64> {
        let (b, rest) = self.0.split_first_chunk::<8>()?;
        self.0 = rest;
        Some(u64::from_be_bytes(*b))
    }
    fn string(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        let s = self.0.get(..n)?;
        self.0 = &self.0[n..];
        Some(s)
    }
}

#[derive(Debug)]
struct OpenFile {
    path: String,
    write: bool,
    read_bytes: u64,
    written_bytes: u64,
    end: u64,
    /// Order of opening (the oldest goes first when too many are open).
    seq: u64,
}

impl OpenFile {
    fn transfer(self, incomplete: bool) -> FileTransfer {
        let upload = self.write || self.written_bytes > 0;
        FileTransfer {
            protocol: TransferProtocol::Sftp,
            direction: if upload {
                Direction::Upload
            } else {
                Direction::Download
            },
            path: self.path,
            bytes: if upload {
                self.written_bytes
            } else {
                self.read_bytes
            },
            size: Some(self.end),
            incomplete,
        }
    }
}

/// Both directions of one sftp session.
#[derive(Debug, Default)]
pub struct SftpParser {
    from_client: Framer,
    to_client: Framer,
    /// OPEN requests by id: (path, opened for writing).
    opening: BTreeMap<u32, (String, bool)>,
    /// READ requests by id: (handle, offset).
    reading: BTreeMap<u32, (Vec<u8>, u64)>,
    files: HashMap<Vec<u8>, OpenFile>,
    opened: u64,
    /// Bytes seen after the stream stopped being SFTP (or data was lost).
    unparsed: u64,
}

impl SftpParser {
    pub fn feed(&mut self, input: bool, bytes: &[u8], out: &mut Vec<FileTransfer>) {
        if self.unparsed > 0 {
            self.unparsed += bytes.len() as u64;
            return;
        }
        let mut packets: Vec<Vec<u8>> = Vec::new();
        let framer = if input {
            &mut self.from_client
        } else {
            &mut self.to_client
        };
        let ok = framer.feed(bytes, |head| packets.push(head.to_vec()));
        for head in packets {
            if input {
                self.request(&head, out);
            } else {
                self.reply(&head, out);
            }
        }
        if !ok {
            self.unparsed = bytes.len().max(1) as u64;
        }
    }

    /// Bytes the kernel could not deliver: the stream cannot be followed any more.
    pub fn lost(&mut self, bytes: u64) {
        self.unparsed += bytes.max(1);
    }

    fn request(&mut self, head: &[u8], out: &mut Vec<FileTransfer>) {
        let Some((kind, id, mut f)) = Fields::packet(head) else {
            return;
        };
        match kind {
            SSH_FXP_OPEN => {
                if let (Some(path), Some(flags)) = (f.string(), f.u32()) {
                    let path = String::from_utf8_lossy(path).into_owned();
                    bounded_insert(&mut self.opening, id, (path, flags & SSH_FXF_WRITE != 0));
                }
            }
            SSH_FXP_READ => {
                if let (Some(handle), Some(offset)) = (f.string(), f.u64()) {
                    bounded_insert(&mut self.reading, id, (handle.to_vec(), offset));
                }
            }
            SSH_FXP_WRITE => {
                if let (Some(handle), Some(offset), Some(n)) = (f.string(), f.u64(), f.u32()) {
                    if let Some(file) = self.files.get_mut(handle) {
                        file.written_bytes += u64::from(n);
                        file.end = file.end.max(offset.saturating_add(u64::from(n)));
                    }
                }
            }
            SSH_FXP_CLOSE => {
                if let Some(file) = f.string().and_then(|h| self.files.remove(h)) {
                    out.push(file.transfer(false));
                }
            }
            _ => {}
        }
    }

    fn reply(&mut self, head: &[u8], out: &mut Vec<FileTransfer>) {
        let Some((kind, id, mut f)) = Fields::packet(head) else {
            return;
        };
        match kind {
            SSH_FXP_HANDLE => {
                if let (Some((path, write)), Some(handle)) = (self.opening.remove(&id), f.string())
                {
                    if self.files.len() >= MAX_OPEN {
                        let oldest = self
                            .files
                            .iter()
                            .min_by_key(|(_, f)| f.seq)
                            .map(|(h, _)| h.clone());
                        if let Some(f) = oldest.and_then(|h| self.files.remove(&h)) {
                            out.push(f.transfer(true));
                        }
                    }
                    self.opened += 1;
                    let file = OpenFile {
                        path,
                        write,
                        read_bytes: 0,
                        written_bytes: 0,
                        end: 0,
                        seq: self.opened,
                    };
                    self.files.insert(handle.to_vec(), file);
                }
            }
            SSH_FXP_DATA => {
                if let (Some((handle, offset)), Some(n)) = (self.reading.remove(&id), f.u32()) {
                    if let Some(file) = self.files.get_mut(&handle) {
                        file.read_bytes += u64::from(n);
                        file.end = file.end.max(offset.saturating_add(u64::from(n)));
                    }
                }
            }
            // STATUS and the rest: an OPEN or READ that failed leaves its id behind until it
            // is pushed out of the bounded table.
            _ => {
                self.opening.remove(&id);
                self.reading.remove(&id);
            }
        }
    }

    /// The session ended: files never closed, and what could not be parsed.
    pub fn finish(self, out: &mut Vec<FileTransfer>) {
        let mut open: Vec<OpenFile> = self.files.into_values().collect();
        open.sort_by(|a, b| a.path.cmp(&b.path));
        out.extend(open.into_iter().map(|f| f.transfer(true)));
        if self.unparsed > 0 {
            out.push(unparsed(TransferProtocol::Sftp, self.unparsed));
        }
    }
}

/// What stands for the files of a stream that could not be followed to its end.
pub(super) fn unparsed(protocol: TransferProtocol, bytes: u64) -> FileTransfer {
    FileTransfer {
        protocol,
        direction: Direction::Download,
        path: "?".into(),
        bytes,
        size: None,
        incomplete: true,
    }
}

fn bounded_insert<V>(map: &mut BTreeMap<u32, V>, id: u32, v: V) {
    if map.len() >= MAX_PENDING {
        map.pop_first();
    }
    map.insert(id, v);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(kind: u8, fields: &[&[u8]]) -> Vec<u8> {
        let body: Vec<u8> = fields.concat();
        let mut p = ((body.len() + 1) as u32).to_be_bytes().to_vec();
        p.push(kind);
        p.extend(body);
        p
    }
    fn string(s: &[u8]) -> Vec<u8> {
        let mut v = (s.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(s);
        v
    }
    fn u32b(n: u32) -> Vec<u8> {
        n.to_be_bytes().to_vec()
    }
    fn u64b(n: u64) -> Vec<u8> {
        n.to_be_bytes().to_vec()
    }

    /// Feeds `bytes` in chunks of `chunk` (the kernel splits reads anywhere).
    fn feed(
        p: &mut SftpParser,
        input: bool,
        bytes: &[u8],
        chunk: usize,
        out: &mut Vec<FileTransfer>,
    ) {
        for c in bytes.chunks(chunk) {
            p.feed(input, c, out);
        }
    }

    fn download(chunk: usize) -> Vec<FileTransfer> {
        let mut p = SftpParser::default();
        let mut out = Vec::new();
        let init = packet(1, &[&u32b(3)]);
        feed(&mut p, true, &init, chunk, &mut out);
        let open = packet(
            SSH_FXP_OPEN,
            &[&u32b(7), &string(b"/etc/motd"), &u32b(1), &u32b(0)],
        );
        feed(&mut p, true, &open, chunk, &mut out);
        let handle = packet(SSH_FXP_HANDLE, &[&u32b(7), &string(b"\0\0\0\x01")]);
        feed(&mut p, false, &handle, chunk, &mut out);
        for (id, off) in [(8u32, 0u64), (9, 32768)] {
            let read = packet(
                SSH_FXP_READ,
                &[&u32b(id), &string(b"\0\0\0\x01"), &u64b(off), &u32b(32768)],
            );
            feed(&mut p, true, &read, chunk, &mut out);
        }
        let data = vec![0x41; 32768];
        let reply = packet(SSH_FXP_DATA, &[&u32b(8), &string(&data)]);
        feed(&mut p, false, &reply, chunk, &mut out);
        let reply = packet(SSH_FXP_DATA, &[&u32b(9), &string(&data[..100])]);
        feed(&mut p, false, &reply, chunk, &mut out);
        let close = packet(SSH_FXP_CLOSE, &[&u32b(10), &string(b"\0\0\0\x01")]);
        feed(&mut p, true, &close, chunk, &mut out);
        p.finish(&mut out);
        out
    }

    #[test]
    fn a_download_is_one_file_with_its_bytes_however_the_stream_is_cut() {
        for chunk in [1, 3, 7, 4096, 1 << 20] {
            assert_eq!(
                download(chunk),
                vec![FileTransfer {
                    protocol: TransferProtocol::Sftp,
                    direction: Direction::Download,
                    path: "/etc/motd".into(),
                    bytes: 32868,
                    size: Some(32868),
                    incomplete: false,
                }],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn an_upload_counts_written_bytes_and_an_unclosed_file_is_incomplete() {
        let mut p = SftpParser::default();
        let mut out = Vec::new();
        let open = packet(
            SSH_FXP_OPEN,
            &[&u32b(1), &string(b"up.bin"), &u32b(0x1a), &u32b(0)],
        );
        p.feed(true, &open, &mut out);
        p.feed(
            false,
            &packet(SSH_FXP_HANDLE, &[&u32b(1), &string(b"h")]),
            &mut out,
        );
        let data = vec![0u8; 5000];
        let write = packet(
            SSH_FXP_WRITE,
            &[&u32b(2), &string(b"h"), &u64b(0), &string(&data)],
        );
        p.feed(true, &write, &mut out);
        assert!(out.is_empty());
        p.finish(&mut out);
        assert_eq!(out.len(), 1);
        let f = &out[0];
        assert_eq!(
            (f.direction, f.path.as_str(), f.bytes, f.incomplete),
            (Direction::Upload, "up.bin", 5000, true)
        );
    }

    #[test]
    fn a_client_holding_many_files_open_costs_a_bounded_table() {
        let mut p = SftpParser::default();
        let mut out = Vec::new();
        for id in 0..(MAX_OPEN as u32 + 10) {
            let path = format!("/f{id}");
            p.feed(
                true,
                &packet(
                    SSH_FXP_OPEN,
                    &[&u32b(id), &string(path.as_bytes()), &u32b(1), &u32b(0)],
                ),
                &mut out,
            );
            p.feed(
                false,
                &packet(SSH_FXP_HANDLE, &[&u32b(id), &string(&id.to_be_bytes())]),
                &mut out,
            );
        }
        assert_eq!(p.files.len(), MAX_OPEN);
        assert_eq!(out.len(), 10);
        assert!(out.iter().all(|f| f.incomplete) && out[0].path == "/f0");
    }

    #[test]
    fn a_stream_that_is_not_sftp_is_reported_unparsed_never_a_panic() {
        let mut p = SftpParser::default();
        let mut out = Vec::new();
        p.feed(true, b"GET / HTTP/1.0\r\n\r\n", &mut out);
        p.feed(false, &[0xff; 100], &mut out);
        p.finish(&mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].path, "?");
        assert!(out[0].incomplete && out[0].bytes > 0);
        // Truncated fields in well-framed packets are ignored.
        let mut p = SftpParser::default();
        let mut out = Vec::new();
        for kind in [
            SSH_FXP_OPEN,
            SSH_FXP_READ,
            SSH_FXP_WRITE,
            SSH_FXP_CLOSE,
            SSH_FXP_HANDLE,
            SSH_FXP_DATA,
        ] {
            p.feed(true, &packet(kind, &[&[0, 0]]), &mut out);
            p.feed(false, &packet(kind, &[&u32b(1), &[0, 0, 0, 9]]), &mut out);
        }
        p.finish(&mut out);
        assert!(out.is_empty(), "{out:?}");
    }
}
