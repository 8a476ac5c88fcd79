//! The legacy scp protocol (`scp -t` receiving, `scp -f` sending): control lines `C<mode>
//! <size> <name>`, `D…`/`E` entering and leaving directories, `T…` times, each file's bytes
//! after its `C` line. Only the direction that carries files is read.

use super::{Direction, FileTransfer, TransferProtocol, sftp::unparsed};

/// A control line longer than this means the stream is not scp.
const MAX_LINE: usize = 4096 + 64;

#[derive(Debug)]
enum State {
    /// Reading a control line.
    Line(Vec<u8>),
    /// Inside a file: (path, size, bytes still to come).
    Data(String, u64, u64),
    /// Not scp (or data lost): bytes counted only.
    Lost(u64),
}

/// One scp session (server side).
#[derive(Debug)]
pub struct ScpParser {
    direction: Direction,
    /// The paths the command was given.
    targets: Vec<String>,
    /// The target is a directory (`-d`, `-r`, or a trailing slash).
    into_dir: bool,
    /// Directories entered by `D` lines.
    dirs: Vec<String>,
    state: State,
}

impl ScpParser {
    pub fn new(args: &[String]) -> Self {
        let flags: String = args
            .iter()
            .take_while(|a| a.starts_with('-') && *a != "--")
            .map(|a| a.trim_start_matches('-'))
            .collect();
        let targets: Vec<String> = args
            .iter()
            .skip_while(|a| a.starts_with('-'))
            .filter(|a| *a != "--")
            .cloned()
            .collect();
        let direction = if flags.contains('f') {
            Direction::Download
        } else {
            Direction::Upload
        };
        let into_dir = flags.contains('d')
            || flags.contains('r')
            || targets.first().is_some_and(|t| t.ends_with('/'));
        ScpParser {
            direction,
            targets,
            into_dir,
            dirs: Vec::new(),
            state: State::Line(Vec::new()),
        }
    }

    pub fn feed(&mut self, input: bool, mut bytes: &[u8], out: &mut Vec<FileTransfer>) {
        // Files come from the client when receiving, go to it when sending.
        if input != (self.direction == Direction::Upload) {
            return;
        }
        while !bytes.is_empty() {
            match &mut self.state {
                State::Lost(n) => {
                    *n += bytes.len() as u64;
                    return;
                }
                State::Data(_, _, left) => {
                    let n = (*left).min(bytes.len() as u64);
                    *left -= n;
                    bytes = &bytes[n as usize..];
                    if *left == 0 {
                        self.file_done(false, out);
                    }
                }
                State::Line(line) => {
                    let end = bytes.iter().position(|&b| b == b'\n');
                    let take = end.map_or(bytes.len(), |i| i + 1);
                    line.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if end.is_some() {
                        let l = std::mem::take(line);
                        self.control(&l, out);
                    } else if line.len() > MAX_LINE {
                        let n = line.len() as u64;
                        self.state = State::Lost(n);
                    }
                }
            }
        }
    }

    /// Bytes the kernel could not deliver: the stream cannot be followed any more.
    pub fn lost(&mut self, bytes: u64) {
        self.state = State::Lost(bytes.max(1));
    }

    fn control(&mut self, line: &[u8], out: &mut Vec<FileTransfer>) {
        // Acknowledgements (`\0`) and the end-of-file status byte precede the next line.
        let start = line.iter().position(|&b| b != 0).unwrap_or(line.len());
        let line = String::from_utf8_lossy(&line[start..]);
        let line = line.trim_end_matches('\n');
        let mut parts = line.splitn(3, ' ');
        match line.chars().next() {
            Some('C') => {
                let _mode = parts.next();
                let size = parts.next().and_then(|s| s.parse::<u64>().ok());
                match (size, parts.next()) {
                    (Some(size), Some(name)) => {
                        let path = self.path_of(name);
                        self.state = State::Data(path, size, size);
                        if size == 0 {
                            self.file_done(false, out);
                        }
                    }
                    _ => self.state = State::Lost(line.len() as u64),
                }
            }
            Some('D') => {
                if let Some(name) = parts.nth(2) {
                    let path = self.path_of(name);
                    self.dirs.push(path);
                }
            }
            Some('E') => {
                self.dirs.pop();
            }
            // Times, errors (`\x01`, `\x02` and a message), empty lines.
            _ => {}
        }
    }

    /// Where file (or directory) `name` of the current place is.
    fn path_of(&self, name: &str) -> String {
        if let Some(dir) = self.dirs.last() {
            return format!("{dir}/{name}");
        }
        match self.direction {
            Direction::Download => self
                .targets
                .iter()
                .find(|t| t.rsplit('/').next() == Some(name))
                .cloned()
                .unwrap_or_else(|| name.to_owned()),
            Direction::Upload => {
                let target = self.targets.first().map(String::as_str).unwrap_or(".");
                if self.into_dir {
                    format!("{}/{name}", target.trim_end_matches('/'))
                } else {
                    target.to_owned()
                }
            }
        }
    }

    fn file_done(&mut self, incomplete: bool, out: &mut Vec<FileTransfer>) {
        if let State::Data(path, size, left) =
            std::mem::replace(&mut self.state, State::Line(Vec::new()))
        {
            out.push(FileTransfer {
                protocol: TransferProtocol::Scp,
                direction: self.direction,
                path,
                bytes: size - left,
                size: Some(size),
                incomplete,
            });
        }
    }

    pub fn finish(mut self, out: &mut Vec<FileTransfer>) {
        match self.state {
            State::Data(..) => self.file_done(true, out),
            State::Lost(n) => out.push(unparsed(TransferProtocol::Scp, n)),
            State::Line(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn an_upload_into_a_directory_names_each_file() {
        let mut p = ScpParser::new(&args("-r -t /srv/in/"));
        let mut out = Vec::new();
        let mut stream =
            b"D0755 0 docs\nC0644 5 a.txt\nhello\0C0600 3 b\nxyz\0E\nC0644 0 empty\n".to_vec();
        stream.splice(0..0, b"T1700000000 0 1700000000 0\n".iter().copied());
        for c in stream.chunks(2) {
            p.feed(true, c, &mut out);
            p.feed(false, b"\0", &mut out);
        }
        p.finish(&mut out);
        let got: Vec<(&str, u64, Direction)> = out
            .iter()
            .map(|f| (f.path.as_str(), f.bytes, f.direction))
            .collect();
        assert_eq!(
            got,
            vec![
                ("/srv/in/docs/a.txt", 5, Direction::Upload),
                ("/srv/in/docs/b", 3, Direction::Upload),
                ("/srv/in/empty", 0, Direction::Upload),
            ]
        );
    }

    #[test]
    fn a_download_cut_short_is_incomplete() {
        let mut p = ScpParser::new(&args("-f /var/log/syslog"));
        let mut out = Vec::new();
        p.feed(true, b"\0", &mut out);
        p.feed(false, b"C0640 1000 syslog\n", &mut out);
        p.feed(false, &[b'x'; 400], &mut out);
        p.finish(&mut out);
        assert_eq!(out.len(), 1);
        let f = &out[0];
        assert_eq!(
            (f.path.as_str(), f.bytes, f.size, f.incomplete, f.direction),
            (
                "/var/log/syslog",
                400,
                Some(1000),
                true,
                Direction::Download
            )
        );
    }

    #[test]
    fn garbage_is_unparsed_not_a_panic() {
        let mut p = ScpParser::new(&args("-t /tmp/x"));
        let mut out = Vec::new();
        p.feed(true, b"C0644 notanumber x\n", &mut out);
        p.feed(true, &[0xff; 10_000], &mut out);
        p.finish(&mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].path, "?");
    }
}
