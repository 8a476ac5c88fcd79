//! rsync (`rsync --server`): its protocol (multiplexed, often compressed) is not parsed. What
//! is audited is the paths it was given and the bytes it moved each way, as one record.

use super::{Direction, FileTransfer, TransferProtocol};

#[derive(Debug)]
pub struct RsyncTally {
    direction: Direction,
    /// The paths after the `.` that separates rsync's server options from them.
    paths: String,
    from_client: u64,
    to_client: u64,
    lost: bool,
}

impl RsyncTally {
    pub fn new(args: &[String]) -> Self {
        let direction = if args.iter().any(|a| a == "--sender") {
            Direction::Download
        } else {
            Direction::Upload
        };
        let paths = match args.iter().position(|a| a == ".") {
            Some(i) => args[i + 1..].join(" "),
            None => args
                .iter()
                .filter(|a| !a.starts_with('-'))
                .cloned()
                .collect::<Vec<_>>()
                .join(" "),
        };
        RsyncTally {
            direction,
            paths,
            from_client: 0,
            to_client: 0,
            lost: false,
        }
    }

    pub fn feed(&mut self, input: bool, bytes: &[u8]) {
        let n = bytes.len() as u64;
        if input {
            self.from_client += n;
        } else {
            self.to_client += n;
        }
    }

    pub fn lost(&mut self, _bytes: u64) {
        self.lost = true;
    }

    pub fn finish(self, out: &mut Vec<FileTransfer>) {
        let bytes = match self.direction {
            Direction::Download => self.to_client,
            Direction::Upload => self.from_client,
        };
        out.push(FileTransfer {
            protocol: TransferProtocol::Rsync,
            direction: self.direction,
            path: self.paths,
            bytes,
            size: None,
            incomplete: self.lost,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_record_with_the_paths_and_the_bytes_of_the_data_direction() {
        let args: Vec<String> = "--server --sender -vlogDtpre.iLsfxCIvu . /srv/a /srv/b"
            .split(' ')
            .map(String::from)
            .collect();
        let mut t = RsyncTally::new(&args);
        t.feed(true, &[0; 10]);
        t.feed(false, &[0; 5000]);
        let mut out = Vec::new();
        t.finish(&mut out);
        assert_eq!(out[0].path, "/srv/a /srv/b");
        assert_eq!(
            (out[0].direction, out[0].bytes),
            (Direction::Download, 5000)
        );
    }
}
