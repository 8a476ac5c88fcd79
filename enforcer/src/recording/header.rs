//! A header written before everything it will hold is known: a `kubectl exec` recording starts
//! with the exec (its first bytes must not wait), but the Kubernetes user behind it comes from
//! the fleet a moment later. Its header line is written with [`RESERVE`] spaces before the line
//! end (JSON allows trailing whitespace) and rewritten in place, same length, once the user is
//! known.

use std::{
    fs::OpenOptions,
    io,
    os::unix::fs::FileExt,
    path::Path,
    time::{Duration, Instant},
};

use super::cast::Header;

/// Room kept in a header line for the user and their groups.
pub(super) const RESERVE: usize = 2048;

/// How long a header waits for its user before it is taken as final (the daemon answers
/// within seconds; this only bounds a lost answer).
pub(super) const HOLD_MAX: Duration = Duration::from_secs(60);

/// A recording whose header may still change.
#[derive(Debug, Clone)]
pub(super) struct Held {
    pub path: std::path::PathBuf,
    pub header: Header,
    /// Length of the header line on disk, line end included.
    pub line_len: usize,
    pub since: Instant,
}

/// The header line: `header` as JSON, `pad` spaces, a line end.
pub(super) fn line(header: &Header, pad: usize) -> Vec<u8> {
    let mut out = serde_json::to_vec(header).expect("a header serialises");
    out.resize(out.len() + pad, b' ');
    out.push(b'\n');
    out
}

/// `header` with the Kubernetes user and groups, as it fits in `line_len` bytes: groups that
/// do not fit are left out (and the header says so); `None` when not even the user fits.
pub(super) fn with_user(
    header: &Header,
    user: &str,
    groups: &[String],
    line_len: usize,
) -> Option<(Header, Vec<u8>)> {
    let mut h = header.clone();
    let kube = h.enforcer.kube.as_mut()?;
    kube.kube_user = Some(user.to_owned());
    kube.kube_groups = groups.to_vec();
    loop {
        let json = serde_json::to_vec(&h).ok()?;
        if json.len() < line_len {
            let pad = line_len - 1 - json.len();
            return Some((h.clone(), line(&h, pad)));
        }
        let kube = h.enforcer.kube.as_mut()?;
        kube.kube_groups.pop()?;
        kube.kube_groups_truncated = true;
    }
}

/// Writes `line` over the first `line.len()` bytes of `path` (the header line of the same
/// length). A descriptor of its own: on the recording's (`O_APPEND`) a positioned write appends.
/// Not synced, like the rest of a recording (a sync here would flush the whole file's dirty
/// pages while the recorder thread waits).
pub(super) fn rewrite(path: &Path, line: &[u8]) -> io::Result<()> {
    let f = OpenOptions::new().write(true).open(path)?;
    f.write_all_at(line, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recording::{cast::KubeMeta, store};

    fn exec_header() -> Header {
        let mut h = store::tests::header(7, "", 1_700_000_000);
        h.enforcer.kube = Some(KubeMeta {
            node: "n1".into(),
            namespace: "ns".into(),
            pod: "p".into(),
            pod_uid: "u".into(),
            container: "c".into(),
            container_id: "cid".into(),
            exec_id: "e1".into(),
            kube_user: None,
            kube_groups: Vec::new(),
            kube_groups_truncated: false,
        });
        h
    }

    #[test]
    fn a_padded_header_reads_back_and_is_rewritten_to_the_same_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("session-7.cast");
        let h = exec_header();
        let first = line(&h, RESERVE);
        let mut file = first.clone();
        file.extend_from_slice(b"[0.1,\"o\",\"hi\"]\n");
        std::fs::write(&path, &file).unwrap();
        assert_eq!(store::load(path.clone()).unwrap().header, h);

        let groups = vec!["system:authenticated".to_owned(), "dev".to_owned()];
        let (new, bytes) = with_user(&h, "alice", &groups, first.len()).unwrap();
        assert_eq!(bytes.len(), first.len());
        rewrite(&path, &bytes).unwrap();
        let back = store::load(path.clone()).unwrap();
        assert_eq!(back.header, new);
        let k = back.header.enforcer.kube.unwrap();
        assert_eq!(
            (
                k.kube_user.as_deref(),
                k.kube_groups,
                k.kube_groups_truncated
            ),
            (Some("alice"), groups, false)
        );
        // The events after the header are untouched.
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with("\n[0.1,\"o\",\"hi\"]\n"), "{text}");
    }

    #[test]
    fn groups_that_do_not_fit_are_left_out_and_said_so() {
        let h = exec_header();
        let len = line(&h, RESERVE).len();
        let groups: Vec<String> = (0..200).map(|i| format!("group-number-{i:04}")).collect();
        let (new, bytes) = with_user(&h, "bob", &groups, len).unwrap();
        assert_eq!(bytes.len(), len);
        let k = new.enforcer.kube.unwrap();
        assert!(k.kube_groups_truncated);
        assert!(!k.kube_groups.is_empty() && k.kube_groups.len() < 200);
        assert_eq!(k.kube_groups[..], groups[..k.kube_groups.len()]);
        // A user longer than the room: nothing is written.
        assert!(with_user(&h, &"x".repeat(RESERVE * 2), &[], len).is_none());
        // An SSH header has no Kubernetes part to fill.
        let ssh = store::tests::header(8, "alice", 1);
        assert!(with_user(&ssh, "bob", &[], line(&ssh, RESERVE).len()).is_none());
    }
}
