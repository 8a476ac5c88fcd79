//! The stand-in apiserver's pods and their `exec` subresource, as kubectl 1.20 uses them for
//! `kubectl exec`: what the real apiserver and kubelet do, on loopback.
//!
//! - `GET /api/v1/namespaces/<ns>/pods/<name>` → the Pod (running, its containers running),
//!   or a 404 Status, for the pods a test registered with [`Pods::add`]; `GET
//!   /api/v1/namespaces/<ns>` → the Namespace while a registered pod is in it;
//! - `POST` (or `GET`) `/api/v1/namespaces/<ns>/pods/<name>/exec?command=…&container=…&stdin=…&
//!   stdout=…&stderr=…&tty=…` with the upgrade headers: validated as the apiserver validates
//!   `PodExecOptions` (a 400 Status otherwise), then, as the kubelet does, a CRI `Exec` on the
//!   container, and the client's upgrade request is proxied to the streaming URL containerd
//!   returned (same method and headers, containerd's path): containerd's answer goes back to
//!   the client as is, and after a `101 Switching Protocols` bytes are copied both ways until
//!   either side closes — what the apiserver's `UpgradeAwareHandler` does. kubectl 1.20 speaks
//!   SPDY/3.1 (`v4.channel.k8s.io`), which containerd 1.6's streaming server answers.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, TcpStream},
    path::{Path, PathBuf},
    sync::Mutex,
    thread,
};

use serde_json::{Value, json};

use crate::{containerd::IMAGE, cri::CriClient};

/// One registered pod.
#[derive(Clone, Debug)]
struct PodEntry {
    namespace: String,
    name: String,
    uid: String,
    /// Container name → containerd container id.
    containers: Vec<(String, String)>,
    /// containerd's socket (the CRI the "kubelet" calls for this pod's execs).
    cri: PathBuf,
}

/// One proxied upgrade, as a test inspects it.
#[derive(Clone, Debug, Default)]
pub struct Upgrade {
    /// `METHOD path?query` of the client's request.
    pub request: String,
    /// The client's header lines, in order.
    pub request_headers: Vec<String>,
    /// The streaming URL containerd returned.
    pub url: String,
    /// containerd's status line and header lines, in order (empty if it never answered).
    pub response: Vec<String>,
}

/// The pods the stand-in serves, and the exec upgrades it proxied.
#[derive(Default)]
pub struct Pods {
    pods: Mutex<Vec<PodEntry>>,
    upgrades: Mutex<Vec<Upgrade>>,
}

/// What the exec module did with a request.
pub enum Route {
    /// Not a pod path: the caller answers.
    NotMine,
    /// A plain JSON answer (the connection goes on).
    Answer(u16, Value),
    /// Proxied (the connection is done).
    Upgraded,
}

impl Pods {
    /// Serves `pod` with `containers` (name, containerd id), its execs run through the CRI at
    /// `cri_socket`.
    pub fn add(&self, pod: &crate::cri::Pod, containers: &[(&str, &str)], cri_socket: &Path) {
        let entry = PodEntry {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            uid: pod.uid.clone(),
            containers: containers
                .iter()
                .map(|(n, id)| (n.to_string(), id.to_string()))
                .collect(),
            cri: cri_socket.to_path_buf(),
        };
        let mut g = self.pods.lock().unwrap_or_else(|e| e.into_inner());
        g.retain(|p| !(p.namespace == entry.namespace && p.name == entry.name));
        g.push(entry);
    }

    /// Every exec upgrade proxied so far.
    pub fn upgrades(&self) -> Vec<Upgrade> {
        self.upgrades
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn find(&self, ns: &str, name: &str) -> Option<PodEntry> {
        let g = self.pods.lock().unwrap_or_else(|e| e.into_inner());
        g.iter()
            .find(|p| p.namespace == ns && p.name == name)
            .cloned()
    }

    /// A namespace exists while a registered pod is in it.
    fn namespace(&self, ns: &str) -> Route {
        let g = self.pods.lock().unwrap_or_else(|e| e.into_inner());
        if !g.iter().any(|p| p.namespace == ns) {
            let msg = format!("namespaces \"{ns}\" not found");
            return Route::Answer(404, status(404, "NotFound", &msg));
        }
        Route::Answer(
            200,
            json!({"kind": "Namespace", "apiVersion": "v1",
                   "metadata": {"name": ns, "resourceVersion": "1"},
                   "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}),
        )
    }

    /// Routes one request whose head has been read (`headers` are its raw header lines);
    /// `reader` holds the rest of the client's connection.
    pub fn route(
        &self,
        node: &str,
        method: &str,
        target: &str,
        headers: &[String],
        reader: &mut BufReader<TcpStream>,
    ) -> std::io::Result<Route> {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let Some(rest) = path.strip_prefix("/api/v1/namespaces/") else {
            return Ok(Route::NotMine);
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let (ns, name, sub) = match parts.as_slice() {
            // kubectl reads the namespace after a pod's 404 (to say which one is missing).
            [ns] if method == "GET" => return Ok(self.namespace(ns)),
            [ns, "pods", name] => (*ns, *name, None),
            [ns, "pods", name, sub] => (*ns, *name, Some(*sub)),
            _ => return Ok(Route::NotMine),
        };
        let Some(pod) = self.find(ns, name) else {
            return Ok(Route::Answer(
                404,
                status(404, "NotFound", &format!("pods \"{name}\" not found")),
            ));
        };
        match (method, sub) {
            ("GET", None) => Ok(Route::Answer(200, pod_json(&pod, node))),
            ("GET" | "POST", Some("exec")) => {
                let opts = match ExecOptions::parse(query, &pod, headers) {
                    Ok(o) => o,
                    Err(msg) => return Ok(Route::Answer(400, status(400, "BadRequest", &msg))),
                };
                self.exec(&pod, opts, method, target, headers, reader)
            }
            (_, Some(sub)) => Ok(Route::Answer(
                404,
                status(
                    404,
                    "NotFound",
                    &format!("pods \"{name}\" has no {sub} here"),
                ),
            )),
            _ => Ok(Route::Answer(
                405,
                status(
                    405,
                    "MethodNotAllowed",
                    &format!("{method} is not supported"),
                ),
            )),
        }
    }

    /// The kubelet's part (CRI Exec) and the apiserver's (proxying the upgrade).
    fn exec(
        &self,
        pod: &PodEntry,
        o: ExecOptions,
        method: &str,
        target: &str,
        headers: &[String],
        reader: &mut BufReader<TcpStream>,
    ) -> std::io::Result<Route> {
        let cmd: Vec<&str> = o.command.iter().map(String::as_str).collect();
        let url = match CriClient::connect(&pod.cri)
            .and_then(|c| c.try_exec(&o.container_id, &cmd, o.tty, o.stdin, o.stdout, o.stderr))
        {
            Ok(u) => u,
            Err(e) => {
                let msg = format!("error while running the exec through the CRI: {e}");
                return Ok(Route::Answer(500, status(500, "InternalError", &msg)));
            }
        };
        let up = Upgrade {
            request: format!("{method} {target}"),
            request_headers: headers.to_vec(),
            url,
            response: Vec::new(),
        };
        proxy(up, method, headers, reader, &self.upgrades).map(|()| Route::Upgraded)
    }
}

/// `PodExecOptions` from the query, checked as the apiserver checks them.
struct ExecOptions {
    command: Vec<String>,
    container_id: String,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
}

impl ExecOptions {
    fn parse(query: &str, pod: &PodEntry, headers: &[String]) -> Result<Self, String> {
        let mut command = Vec::new();
        let mut one: BTreeMap<String, String> = BTreeMap::new();
        for kv in query.split('&').filter(|kv| !kv.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let v = super::kube_api::decode(v);
            match k {
                "command" => command.push(v),
                "container" | "stdin" | "stdout" | "stderr" | "tty" => {
                    one.insert(k.to_owned(), v);
                }
                _ => return Err(format!("unknown exec option {k:?}")),
            }
        }
        let flag = |k: &str| -> Result<bool, String> {
            match one.get(k).map(String::as_str) {
                None | Some("false") | Some("0") => Ok(false),
                Some("true") | Some("1") | Some("") => Ok(true),
                Some(v) => Err(format!("{k}: invalid boolean value {v:?}")),
            }
        };
        let (stdin, stdout, stderr, tty) = (
            flag("stdin")?,
            flag("stdout")?,
            flag("stderr")?,
            flag("tty")?,
        );
        if command.is_empty() || command[0].is_empty() {
            return Err("you must specify at least 1 command".into());
        }
        if !(stdin || stdout || stderr) {
            return Err("you must specify at least one of stdin, stdout, stderr".into());
        }
        if tty && stderr {
            return Err("tty and stderr cannot both be true".into());
        }
        let names: Vec<&str> = pod.containers.iter().map(|(n, _)| n.as_str()).collect();
        let container = match one.get("container") {
            Some(c) if !c.is_empty() => c.clone(),
            _ if names.len() == 1 => names[0].to_owned(),
            _ => {
                return Err(format!(
                    "a container name must be specified for pod {}, choose one of: {names:?}",
                    pod.name
                ));
            }
        };
        let Some((_, container_id)) = pod.containers.iter().find(|(n, _)| *n == container) else {
            return Err(format!(
                "container {container} is not valid for pod {}",
                pod.name
            ));
        };
        let header = |name: &str| {
            headers.iter().any(|h| {
                h.split_once(':')
                    .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            })
        };
        if !header("upgrade") {
            return Err("Upgrade request required".into());
        }
        Ok(ExecOptions {
            command,
            container_id: container_id.clone(),
            stdin,
            stdout,
            stderr,
            tty,
        })
    }
}

/// Sends the client's request to `up.url` and couples the two connections; `up` is recorded
/// in `log` once containerd has answered (or failed to).
fn proxy(
    mut up: Upgrade,
    method: &str,
    headers: &[String],
    reader: &mut BufReader<TcpStream>,
    log: &Mutex<Vec<Upgrade>>,
) -> std::io::Result<()> {
    let answered = handshake(&mut up, method, headers, reader);
    log.lock().unwrap_or_else(|e| e.into_inner()).push(up);
    let Some((backend, from_backend)) = answered? else {
        return Ok(());
    };
    let client = reader.get_ref().try_clone()?;
    // Both ways until either side is done, then both are closed (UpgradeAwareHandler).
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let mut client_in = client.try_clone()?;
    let mut backend_out = backend.try_clone()?;
    let tx = done_tx.clone();
    thread::spawn(move || {
        let _ = std::io::copy(&mut client_in, &mut backend_out);
        let _ = tx.send(());
    });
    let mut client_out = client.try_clone()?;
    let mut from_backend = from_backend;
    thread::spawn(move || {
        let _ = std::io::copy(&mut from_backend, &mut client_out);
        let _ = done_tx.send(());
    });
    let _ = done_rx.recv();
    let _ = client.shutdown(Shutdown::Both);
    let _ = backend.shutdown(Shutdown::Both);
    Ok(())
}

/// The connection to containerd's streaming server, and its reader.
type Backend = (TcpStream, BufReader<TcpStream>);

/// The client's request on to containerd and containerd's answer back; the backend
/// connection if containerd switched protocols.
fn handshake(
    up: &mut Upgrade,
    method: &str,
    headers: &[String],
    reader: &mut BufReader<TcpStream>,
) -> std::io::Result<Option<Backend>> {
    let url = up.url.clone();
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    let rest = url
        .as_str()
        .strip_prefix("http://")
        .ok_or_else(|| invalid(format!("not an http URL: {url}")))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut backend = TcpStream::connect(host)?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    for h in headers {
        if !h
            .split_once(':')
            .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("host"))
        {
            head.push_str(h);
            head.push_str("\r\n");
        }
    }
    head.push_str("\r\n");
    backend.write_all(head.as_bytes())?;
    // Bytes the client sent after its request head go after ours.
    let early = reader.buffer().to_vec();
    reader.consume(early.len());
    backend.write_all(&early)?;

    let mut from_backend = BufReader::new(backend.try_clone()?);
    let head = crate::http::read_head(&mut from_backend)?;
    if !head.complete {
        return Err(invalid("containerd closed before answering".into()));
    }
    let content_length = head.content_length;
    let mut response: String = head.lines.iter().map(|l| format!("{l}\r\n")).collect();
    response.push_str("\r\n");
    up.response.extend(head.lines);
    let mut client = reader.get_ref().try_clone()?;
    client.write_all(response.as_bytes())?;
    let switched = up
        .response
        .first()
        .is_some_and(|s| s.split_whitespace().nth(1) == Some("101"));
    if !switched {
        // A refusal (no upgrade): its body, then this connection is done.
        let mut body = vec![0; content_length];
        from_backend.read_exact(&mut body)?;
        client.write_all(&body)?;
        let _ = client.shutdown(Shutdown::Both);
        let _ = backend.shutdown(Shutdown::Both);
        return Ok(None);
    }
    let buffered = from_backend.buffer().to_vec();
    from_backend.consume(buffered.len());
    client.write_all(&buffered)?;
    Ok(Some((backend, from_backend)))
}

/// A `Status` object, as the apiserver answers errors.
pub fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn pod_json(p: &PodEntry, node: &str) -> Value {
    const T0: &str = "2026-01-01T00:00:00Z";
    let specs: Vec<Value> = p
        .containers
        .iter()
        .map(|(n, _)| json!({"name": n, "image": IMAGE, "imagePullPolicy": "Never"}))
        .collect();
    let statuses: Vec<Value> = p
        .containers
        .iter()
        .map(|(n, id)| {
            json!({"name": n, "ready": true, "started": true, "restartCount": 0,
                   "image": IMAGE, "imageID": IMAGE, "containerID": format!("containerd://{id}"),
                   "state": {"running": {"startedAt": T0}}})
        })
        .collect();
    json!({
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": p.name,
            "namespace": p.namespace,
            "uid": p.uid,
            "resourceVersion": "1",
            "creationTimestamp": T0,
        },
        "spec": {
            "containers": specs,
            "nodeName": node,
            "hostNetwork": true,
            "restartPolicy": "Always",
        },
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"},
                           {"type": "ContainersReady", "status": "True"}],
            "hostIP": "127.0.0.1",
            "podIP": "127.0.0.1",
            "startTime": T0,
            "containerStatuses": statuses,
            "qosClass": "BestEffort",
        },
    })
}
