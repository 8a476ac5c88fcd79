//! Unit tests of `file.rs`.

use super::*;

#[test]
fn an_idle_recording_gives_its_buffer_back() {
    let dir = tempfile::tempdir().unwrap();
    let s = StartRecording {
        session_id: 1,
        conn_id: 1,
        keys: Vec::new(),
        user: "alice".into(),
        uid: Some(1000),
        kind: "exec".into(),
        tty: None,
        command: None,
        client: None,
        started_at: time::OffsetDateTime::UNIX_EPOCH,
        started_boot_ns: 0,
        env: Default::default(),
        record_stdin: false,
        transfer: None,
        resume: None,
        kube: None,
        identity_pending: false,
    };
    let (mut r, _) = Recording::create(dir.path(), &s, (80, 24)).unwrap();
    let stats = RecorderStats::default();
    assert_eq!(r.buf.capacity(), 0, "nothing allocated before output");
    let out = |ns| Item::Data {
        boot_ns: ns,
        dir: DIR_OUTPUT,
        bytes: Cow::Borrowed(b"hello\n"),
    };
    r.write(out(1), &stats);
    r.tick(&stats);
    assert!(r.buf.capacity() >= BUFFER, "kept while output flows");
    r.tick(&stats);
    assert_eq!(r.buf.capacity(), 0, "given back once idle");
    r.write(out(2), &stats);
    r.close(&stats);
    let text = std::fs::read_to_string(path_of(dir.path(), &s)).unwrap();
    assert_eq!(text.matches("hello").count(), 2, "{text}");
}
