//! File transfers (sftp, scp, rsync): which sessions are one, and what files they moved, from
//! the bytes sshd moves for them. With `recording.file_transfers = "metadata"` a transfer
//! session's bytes are parsed for this instead of being written into its recording.
//!
//! A session is a transfer only when its command is one plain transfer command (nothing a
//! shell would interpret: no `;`, `|`, `$`, redirections …) and its leader then executed that
//! very program: a shell function or alias of the same name, or anything else run in the
//! session, keeps or puts it back in full recording (see `recording::transfer`).

mod rsync;
mod scp;
mod sftp;

use serde::Serialize;

pub use self::{rsync::RsyncTally, scp::ScpParser, sftp::SftpParser};

/// What `recording.file_transfers` does with transfer sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileTransfers {
    /// Files read or written are audited (`file_transfer`), their bytes are not recorded.
    #[default]
    Metadata,
    /// Bytes recorded as for any session, and the files audited too.
    Full,
    /// Bytes not recorded, files not audited.
    Off,
}

/// Which transfer program a session runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferProtocol {
    /// `sftp-server` (sftp, and scp from OpenSSH 9.0 on).
    Sftp,
    /// Legacy scp (`scp -t` receiving, `scp -f` sending; `scp -O` on the client).
    Scp,
    /// `rsync --server`: its protocol is not parsed; bytes and the paths it was given are.
    Rsync,
}

/// Which way file contents went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// From the server to the client (a file read here).
    Download,
    /// From the client to the server (a file written here).
    Upload,
}

/// One file a transfer read or wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileTransfer {
    pub protocol: TransferProtocol,
    pub direction: Direction,
    /// As the client named it (relative paths are relative to the user's home). For rsync,
    /// the paths it was given (it names no single files on the wire we parse).
    pub path: String,
    /// File bytes moved.
    pub bytes: u64,
    /// The file's size when the protocol says it (scp), or the end of the furthest range
    /// moved (sftp).
    pub size: Option<u64>,
    /// The transfer ended (connection cut, session killed) before this file was closed.
    pub incomplete: bool,
}

/// A transfer session's command, understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferPlan {
    pub protocol: TransferProtocol,
    /// The program the session's leader must execute (its file name's last component).
    pub program: &'static str,
    /// The command's arguments after the program.
    pub args: Vec<String>,
}

/// Characters a shell would act on: a command holding one is not a plain transfer.
const SHELL_SPECIAL: &[char] = &[
    ';', '&', '|', '$', '`', '<', '>', '(', ')', '{', '}', '\n', '\\', '*', '?', '[', '~', '#', '!',
];

/// Where the program a transfer session executes must live: directories only root can write
/// (not `/usr/local`, group-writable on some systems). A user's own `scp` is no transfer.
const SYSTEM_DIRS: &[&str] = &[
    "/usr/bin/",
    "/bin/",
    "/usr/sbin/",
    "/usr/lib/",
    "/usr/libexec/",
];

/// Whether `filename`, just executed by the session's leader, is the plan's program.
pub fn is_program(plan: &TransferPlan, filename: &str) -> bool {
    let Some((dir, name)) = filename.rsplit_once('/') else {
        return false;
    };
    name == plan.program
        && !dir.split('/').any(|c| c == "..")
        && SYSTEM_DIRS.iter().any(|d| filename.starts_with(d))
}

/// The transfer a session's command runs, if it is exactly one transfer command.
pub fn plan(command: &str) -> Option<TransferPlan> {
    if command.contains(SHELL_SPECIAL) {
        return None;
    }
    let words = split_words(command)?;
    let (program, args) = words.split_first()?;
    let name = program.rsplit('/').next().unwrap_or(program);
    let args = args.to_vec();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    let scp_mode = |a: &String| {
        a.starts_with('-') && !a.starts_with("--") && (a.contains('t') || a.contains('f'))
    };
    let (protocol, program) = match name {
        "sftp-server" => (TransferProtocol::Sftp, "sftp-server"),
        "scp" if args.iter().any(scp_mode) => (TransferProtocol::Scp, "scp"),
        "rsync" if has("--server") => (TransferProtocol::Rsync, "rsync"),
        _ => return None,
    };
    Some(TransferPlan {
        protocol,
        program,
        args,
    })
}

/// Words of a command with plain single and double quotes (what scp and rsync clients send
/// for paths with spaces); `None` for an unterminated quote.
fn split_words(command: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut quote: Option<char> = None;
    for c in command.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.get_or_insert_with(String::new).push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                word.get_or_insert_with(String::new);
            }
            (None, c) if c.is_whitespace() => words.extend(word.take()),
            (None, c) => word.get_or_insert_with(String::new).push(c),
        }
    }
    if quote.is_some() {
        return None;
    }
    words.extend(word);
    Some(words)
}

/// Parses one transfer session's bytes.
#[derive(Debug)]
pub enum Parser {
    Sftp(SftpParser),
    Scp(ScpParser),
    Rsync(RsyncTally),
}

impl Parser {
    pub fn new(plan: &TransferPlan) -> Self {
        match plan.protocol {
            TransferProtocol::Sftp => Parser::Sftp(SftpParser::default()),
            TransferProtocol::Scp => Parser::Scp(ScpParser::new(&plan.args)),
            TransferProtocol::Rsync => Parser::Rsync(RsyncTally::new(&plan.args)),
        }
    }

    /// Bytes from the client (`input`) or to it; files finished meanwhile go to `out`.
    pub fn feed(&mut self, input: bool, bytes: &[u8], out: &mut Vec<FileTransfer>) {
        match self {
            Parser::Sftp(p) => p.feed(input, bytes, out),
            Parser::Scp(p) => p.feed(input, bytes, out),
            Parser::Rsync(p) => p.feed(input, bytes),
        }
    }

    /// Bytes the kernel could not deliver: what follows cannot be parsed.
    pub fn lost(&mut self, bytes: u64) {
        match self {
            Parser::Sftp(p) => p.lost(bytes),
            Parser::Scp(p) => p.lost(bytes),
            Parser::Rsync(p) => p.lost(bytes),
        }
    }

    /// The session ended: files still open, and (rsync) the whole transfer.
    pub fn finish(self, out: &mut Vec<FileTransfer>) {
        match self {
            Parser::Sftp(p) => p.finish(out),
            Parser::Scp(p) => p.finish(out),
            Parser::Rsync(p) => p.finish(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_transfer_commands_are_planned() {
        let p = plan("/usr/lib/openssh/sftp-server").unwrap();
        assert_eq!(
            (p.protocol, p.program),
            (TransferProtocol::Sftp, "sftp-server")
        );
        let p = plan("scp -t /tmp/dest dir").unwrap();
        assert_eq!(p.protocol, TransferProtocol::Scp);
        assert_eq!(p.args, ["-t", "/tmp/dest", "dir"]);
        let p = plan("scp -f '/tmp/a b'").unwrap();
        assert_eq!(p.args, vec!["-f".to_owned(), "/tmp/a b".to_owned()]);
        let p = plan("rsync --server --sender -vlogDtpre.iLsfxCIvu . /srv/data").unwrap();
        assert_eq!(p.protocol, TransferProtocol::Rsync);
    }

    #[test]
    fn anything_a_shell_would_interpret_is_no_transfer() {
        for c in [
            "/usr/lib/openssh/sftp-server; bash -i",
            "/usr/lib/openssh/sftp-server && sh",
            "scp -t /tmp | tee x",
            "scp -f $(cat list)",
            "scp -f `id`",
            "rsync --server . /x > /dev/null",
            "bash",
            "scp /tmp/a host:",
            "rsync -av . /x",
            "X=1 scp -t /tmp",
            "scp -t 'unterminated",
            "cat /usr/lib/openssh/sftp-server",
        ] {
            assert_eq!(plan(c), None, "{c}");
        }
    }

    #[test]
    fn only_the_system_program_counts_as_executed() {
        let p = plan("scp -t /tmp").unwrap();
        assert!(is_program(&p, "/usr/bin/scp"));
        for f in [
            "/home/mallory/bin/scp",
            "/usr/local/bin/scp",
            "/tmp/scp",
            "/usr/bin/../../tmp/scp",
            "/usr/bin/bash",
            "scp",
        ] {
            assert!(!is_program(&p, f), "{f}");
        }
        let s = plan("/usr/lib/openssh/sftp-server -l INFO").unwrap();
        assert!(is_program(&s, "/usr/lib/openssh/sftp-server"));
    }
}
