//! A client for a CRI exec URL, as the kubelet (or the apiserver's websocket path) speaks it:
//! WebSocket with subprotocol `v4.channel.k8s.io`, each binary message prefixed by its
//! channel — 0 stdin, 1 stdout, 2 stderr, 3 status JSON (once, at the end), 4 resize JSON.
//! v4 has no way to close stdin alone: closing the stream is the client's EOF.
//!
//! Usable from synchronous test code: the socket lives on a thread with its own tokio runtime;
//! output and status are collected there and read under a lock.

use std::{
    sync::{Arc, Condvar, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest, http::HeaderValue};

/// The subprotocol containerd 1.6's streaming server and the kubelet agree on.
pub const PROTOCOL: &str = "v4.channel.k8s.io";

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const STATUS: u8 = 3;
const RESIZE: u8 = 4;

#[derive(Default)]
struct State {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    /// The channel-3 status, as received.
    status: Option<Vec<u8>>,
    /// The socket is closed (by either side) or failed.
    closed: bool,
    error: Option<String>,
}

type Shared = Arc<(Mutex<State>, Condvar)>;

enum Cmd {
    Send(u8, Vec<u8>),
    Close,
}

/// One exec stream.
pub struct ExecStream {
    tx: mpsc::UnboundedSender<Cmd>,
    shared: Shared,
    /// How much of stdout [`ExecStream::read_until`] has consumed.
    cursor: Mutex<usize>,
    thread: Option<JoinHandle<()>>,
}

/// The exit code in a status message: 0 for `Success`, the `ExitCode` cause of a `Failure`,
/// `None` for a failure without one (the exec could not run at all).
pub fn exit_code(status: &[u8]) -> Option<i32> {
    let v: serde_json::Value = serde_json::from_slice(status).ok()?;
    if v.get("status")?.as_str()? == "Success" {
        return Some(0);
    }
    v.pointer("/details/causes")?
        .as_array()?
        .iter()
        .find(|c| c.get("reason").and_then(|r| r.as_str()) == Some("ExitCode"))?
        .get("message")?
        .as_str()?
        .parse()
        .ok()
}

impl ExecStream {
    /// Connects to `url` (`http://…/exec/<token>` as CRI Exec returns it); panics if the
    /// upgrade fails.
    pub fn connect(url: &str) -> Self {
        Self::try_connect(url).unwrap_or_else(|e| panic!("exec stream {url}: {e}"))
    }

    /// Like [`ExecStream::connect`], returning the error (a refused upgrade, for example).
    pub fn try_connect(url: &str) -> Result<Self, String> {
        let ws_url = url
            .strip_prefix("http")
            .map(|rest| format!("ws{rest}"))
            .ok_or_else(|| format!("not an http(s) URL: {url}"))?;
        let mut req = ws_url.into_client_request().map_err(|e| e.to_string())?;
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(PROTOCOL));
        let shared: Shared = Arc::default();
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("exec-stream".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                rt.block_on(run(req, rx, sh, ready_tx));
            })
            .map_err(|e| e.to_string())?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(ExecStream {
                tx,
                shared,
                cursor: Mutex::new(0),
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err("exec stream thread ended before connecting".into()),
        }
    }

    /// Sends bytes on stdin (channel 0).
    pub fn send_stdin(&self, bytes: impl AsRef<[u8]>) {
        let _ = self.tx.send(Cmd::Send(STDIN, bytes.as_ref().to_vec()));
    }

    /// Sends a terminal size (channel 4), as `kubectl exec -t` does at start and on SIGWINCH.
    pub fn resize(&self, width: u16, height: u16) {
        let json = format!("{{\"Width\":{width},\"Height\":{height}}}");
        let _ = self.tx.send(Cmd::Send(RESIZE, json.into_bytes()));
    }

    /// Waits until `pattern` appears in stdout after what earlier calls consumed, and consumes
    /// through it. False on timeout or when the stream ends without it.
    pub fn read_until(&self, pattern: impl AsRef<[u8]>, timeout: Duration) -> bool {
        let pattern = pattern.as_ref();
        let mut cursor = self.cursor.lock().unwrap();
        let found = self.wait(timeout, |st| {
            st.stdout[(*cursor).min(st.stdout.len())..]
                .windows(pattern.len().max(1))
                .position(|w| w == pattern)
                .map(|at| *cursor + at + pattern.len())
        });
        if let Some(end) = found {
            *cursor = end;
        }
        found.is_some()
    }

    /// Everything received on stdout so far.
    pub fn output(&self) -> Vec<u8> {
        self.shared.0.lock().unwrap().stdout.clone()
    }

    /// [`ExecStream::output`] as (lossy) text, for assertion messages.
    pub fn output_text(&self) -> String {
        String::from_utf8_lossy(&self.output()).into_owned()
    }

    /// Everything received on stderr so far.
    pub fn stderr(&self) -> Vec<u8> {
        self.shared.0.lock().unwrap().stderr.clone()
    }

    /// The status message (channel 3) once it came.
    pub fn status(&self) -> Option<String> {
        let st = self.shared.0.lock().unwrap();
        st.status
            .as_deref()
            .map(|s| String::from_utf8_lossy(s).into_owned())
    }

    /// Waits for the status message and returns its exit code ([`exit_code`]); `None` on
    /// timeout, when the stream ended without a status, or for a status without a code.
    pub fn wait_exit(&self, timeout: Duration) -> Option<i32> {
        self.wait(timeout, |st| st.status.as_deref().map(exit_code))
            .flatten()
    }

    /// Whether the stream has ended (closed by either side or failed).
    pub fn is_closed(&self) -> bool {
        self.shared.0.lock().unwrap().closed
    }

    /// Why the socket failed, if it did.
    pub fn error(&self) -> Option<String> {
        self.shared.0.lock().unwrap().error.clone()
    }

    /// Closes the socket (the process sees EOF on stdin) and waits for the reader to finish.
    pub fn close(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.tx.send(Cmd::Close);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Waits until `f` gives a value, the stream ends, or `timeout`.
    fn wait<T>(&self, timeout: Duration, mut f: impl FnMut(&State) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.shared;
        let mut st = lock.lock().unwrap();
        loop {
            if let Some(v) = f(&st) {
                return Some(v);
            }
            let now = Instant::now();
            if st.closed || now >= deadline {
                return None;
            }
            st = cv.wait_timeout(st, deadline - now).unwrap().0;
        }
    }
}

impl Drop for ExecStream {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The socket's task: connect, then move bytes both ways until either side closes.
async fn run(
    req: tokio_tungstenite::tungstenite::handshake::client::Request,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    shared: Shared,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let update = |f: &dyn Fn(&mut State)| {
        let (lock, cv) = &*shared;
        f(&mut lock.lock().unwrap());
        cv.notify_all();
    };
    let ws = match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => ws,
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let (mut sink, mut stream) = ws.split();
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(Ok(Message::Binary(data))) if !data.is_empty() => {
                    let (chan, body) = (data[0], &data[1..]);
                    update(&|st| match chan {
                        STDOUT => st.stdout.extend_from_slice(body),
                        STDERR => st.stderr.extend_from_slice(body),
                        STATUS => st.status.get_or_insert_with(Vec::new).extend_from_slice(body),
                        _ => {}
                    });
                }
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    let e = e.to_string();
                    update(&|st| st.error = Some(e.clone()));
                    break;
                }
            },
            cmd = rx.recv() => match cmd {
                Some(Cmd::Send(chan, bytes)) => {
                    let mut msg = Vec::with_capacity(bytes.len() + 1);
                    msg.push(chan);
                    msg.extend_from_slice(&bytes);
                    if sink.send(Message::binary(msg)).await.is_err() {
                        break;
                    }
                }
                Some(Cmd::Close) | None => {
                    let _ = sink.send(Message::Close(None)).await;
                    // Let the server answer the close; do not wait on it forever.
                    let _ = tokio::time::timeout(Duration::from_secs(2), async {
                        while let Some(Ok(m)) = stream.next().await {
                            if let Message::Close(_) = m {
                                break;
                            }
                        }
                    })
                    .await;
                    break;
                }
            },
        }
    }
    update(&|st| st.closed = true);
}
