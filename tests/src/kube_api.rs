//! A loopback stand-in for the Kubernetes apiserver, for one Node: what kube's watcher and
//! kubectl ask of it, in the real wire format (plain HTTP/1.1 on 127.0.0.1: the kube client and
//! kubectl both take `http://` servers, so no TLS is needed).
//!
//! - `GET /api/v1/nodes?fieldSelector=metadata.name%3D<n>` → a NodeList with
//!   `metadata.resourceVersion`;
//! - the same with `watch=true&resourceVersion=<rv>` → chunked, newline-delimited WatchEvents
//!   (`ADDED`, `MODIFIED`, `DELETED`; a `BOOKMARK` first when `allowWatchBookmarks=true`), every
//!   event after `<rv>` replayed, kept open for the ones [`KubeApi::set_labels`] makes;
//! - `GET /api/v1/nodes/<n>` → the Node, or a 404 Status;
//! - discovery (`/api`, `/apis`, `/api/v1`, `/apis/apps/v1`, `/apis/rbac.authorization.k8s.io/v1`)
//!   so that kubectl can map the kinds of `packaging/kubernetes/`;
//! - the pods a test registers ([`KubeApi::pods`]) and their `exec` subresource, proxied to
//!   containerd's streaming server as the apiserver and kubelet do (`kube_api_exec`).
//!
//! [`KubeApi::restart`] drops every connection and the listener and serves again on the same
//! port with the same history (an apiserver restart: watches must resume).

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    path::Path,
    sync::{Arc, Condvar, Mutex},
    thread,
    time::Duration,
};

use serde_json::{Value, json};

/// One recorded change of the Node.
#[derive(Clone)]
struct Change {
    rv: u64,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct Inner {
    node: String,
    /// `None`: no such Node.
    labels: Option<BTreeMap<String, String>>,
    rv: u64,
    history: Vec<Change>,
    /// Open connections (shut down by `restart`), and a generation that ends their threads.
    conns: Vec<TcpStream>,
    generation: u64,
    /// Requests seen, `METHOD path?query` (for tests to assert on).
    requests: Vec<String>,
}

struct Shared {
    inner: Mutex<Inner>,
    changed: Condvar,
    /// Pods and their exec subresource (`kube_api_exec`).
    pods: super::kube_api_exec::Pods,
}

/// The stand-in; stops serving when dropped.
pub struct KubeApi {
    shared: Arc<Shared>,
    addr: SocketAddr,
}

impl KubeApi {
    /// Serves Node `node` with `labels` on a free loopback port.
    pub fn start(node: &str, labels: &[(&str, &str)]) -> std::io::Result<KubeApi> {
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                node: node.to_owned(),
                ..Default::default()
            }),
            changed: Condvar::new(),
            pods: Default::default(),
        });
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let api = KubeApi { shared, addr };
        api.record("ADDED", Some(to_map(labels)));
        api.serve(listener);
        Ok(api)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replaces the Node's labels (a `MODIFIED` event to every watch).
    pub fn set_labels(&self, labels: &[(&str, &str)]) {
        let kind = match self.lock().labels {
            Some(_) => "MODIFIED",
            None => "ADDED",
        };
        self.record(kind, Some(to_map(labels)));
    }

    /// Deletes the Node (a `DELETED` event).
    pub fn delete_node(&self) {
        self.record("DELETED", None);
    }

    /// The pods served (`GET …/pods/<name>`, `…/exec`): see `kube_api_exec`.
    pub fn pods(&self) -> &super::kube_api_exec::Pods {
        &self.shared.pods
    }

    /// Every request so far, as `GET /path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    /// How many watch requests were made so far.
    pub fn watches(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.contains("watch=true") || r.contains("watch=1"))
            .count()
    }

    /// Drops every open connection and the listener, stays down for `down`, then serves again
    /// on the same port with the same Node and history.
    pub fn restart(&self, down: Duration) -> std::io::Result<()> {
        self.stop();
        thread::sleep(down);
        // The old listener's port may linger briefly.
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr) {
                Ok(l) => break l,
                Err(_) if tries < 50 => {
                    tries += 1;
                    thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e),
            }
        };
        self.serve(listener);
        Ok(())
    }

    /// Writes a kubeconfig at `path` whose current context is this server (no credentials).
    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    \
             server: {}\ncontexts:\n- name: standin\n  context:\n    cluster: standin\n    \
             user: standin\nusers:\n- name: standin\n  user: {{}}\ncurrent-context: standin\n",
            self.url()
        );
        std::fs::write(path, text)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.shared.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, kind: &'static str, labels: Option<BTreeMap<String, String>>) {
        let mut g = self.lock();
        g.rv += 1;
        g.labels = labels;
        let object = node_json(&g.node, g.rv, g.labels.as_ref());
        let rv = g.rv;
        g.history.push(Change { rv, kind, object });
        drop(g);
        self.shared.changed.notify_all();
    }

    /// Ends every connection and the accept loop of the current generation.
    fn stop(&self) {
        let mut g = self.lock();
        g.generation += 1;
        for c in g.conns.drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        drop(g);
        self.shared.changed.notify_all();
        // Wakes the accept loop so that it sees the new generation and drops the listener.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }

    fn serve(&self, listener: TcpListener) {
        let shared = self.shared.clone();
        let generation = self.lock().generation;
        thread::spawn(move || {
            for stream in listener.incoming() {
                if current(&shared) != generation {
                    return;
                }
                let Ok(stream) = stream else { continue };
                if let Ok(c) = stream.try_clone() {
                    lock(&shared).conns.push(c);
                }
                let shared = shared.clone();
                thread::spawn(move || {
                    let _ = connection(&shared, stream, generation);
                });
            }
        });
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Inner> {
    shared.inner.lock().unwrap_or_else(|e| e.into_inner())
}

fn current(shared: &Shared) -> u64 {
    lock(shared).generation
}

fn to_map(labels: &[(&str, &str)]) -> BTreeMap<String, String> {
    labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn node_json(name: &str, rv: u64, labels: Option<&BTreeMap<String, String>>) -> Value {
    json!({
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "uid": "8f0c4b9e-0000-4000-8000-000000000001",
            "resourceVersion": rv.to_string(),
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": labels.cloned().unwrap_or_default(),
        },
        "spec": {},
        "status": {},
    })
}

/// Serves one keep-alive connection until it closes or the server restarts.
fn connection(shared: &Shared, stream: TcpStream, generation: u64) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
        let mut body_len = 0usize;
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            headers.push(h.to_owned());
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    body_len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; body_len];
        reader.read_exact(&mut body)?;
        lock(shared).requests.push(format!("{method} {target}"));
        let node = lock(shared).node.clone();
        let (status, body) =
            match shared
                .pods
                .route(&node, method, target, &headers, &mut reader)?
            {
                super::kube_api_exec::Route::Upgraded => return Ok(()),
                super::kube_api_exec::Route::Answer(status, body) => (status, body),
                super::kube_api_exec::Route::NotMine => {
                    let (path, query) = target.split_once('?').unwrap_or((target, ""));
                    let query = parse_query(query);
                    if path == "/api/v1/nodes"
                        && query.get("watch").is_some_and(|w| w == "true" || w == "1")
                    {
                        return watch(shared, &mut out, &query, generation);
                    }
                    answer(shared, method, path, &query)
                }
            };
        let body = body.to_string();
        write!(
            out,
            "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            match status {
                200 => "OK",
                400 => "Bad Request",
                404 => "Not Found",
                405 => "Method Not Allowed",
                _ => "Internal Server Error",
            },
            body.len()
        )?;
        out.flush()?;
    }
}

fn parse_query(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), decode(v)))
        .collect()
}

pub(crate) fn decode(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether the request's field selector (if any) selects Node `name`.
fn selects(query: &BTreeMap<String, String>, name: &str) -> bool {
    match query.get("fieldSelector") {
        None => true,
        Some(s) => s
            .split(',')
            .all(|term| term == format!("metadata.name={name}") || term.is_empty()),
    }
}

fn not_found(what: &str) -> (u16, Value) {
    (
        404,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": format!("{what} not found"), "reason": "NotFound", "code": 404}),
    )
}

fn answer(
    shared: &Shared,
    method: &str,
    path: &str,
    query: &BTreeMap<String, String>,
) -> (u16, Value) {
    let g = lock(shared);
    if method != "GET" {
        return not_found(path);
    }
    let node = g.labels.as_ref().map(|l| node_json(&g.node, g.rv, Some(l)));
    match path {
        "/api/v1/nodes" => {
            let items: Vec<Value> = node
                .into_iter()
                .filter(|_| selects(query, &g.node))
                .collect();
            (
                200,
                json!({"kind": "NodeList", "apiVersion": "v1",
                       "metadata": {"resourceVersion": g.rv.to_string()}, "items": items}),
            )
        }
        p if p.strip_prefix("/api/v1/nodes/") == Some(g.node.as_str()) => match node {
            Some(n) => (200, n),
            None => not_found(&format!("nodes \"{}\"", g.node)),
        },
        p => match super::kube_discovery::document(p) {
            Some(doc) => (200, doc),
            None => not_found(p),
        },
    }
}

/// A watch: events after the requested resourceVersion, then new ones, until the client goes or
/// the server restarts.
fn watch(
    shared: &Shared,
    out: &mut TcpStream,
    query: &BTreeMap<String, String>,
    generation: u64,
) -> std::io::Result<()> {
    write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )?;
    let mut after: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let node = lock(shared).node.clone();
    if !selects(query, &node) {
        // Nothing will ever match: keep the stream open and silent.
        after = u64::MAX;
    }
    // A bookmark at the version asked for (never ahead of events still to be replayed).
    if query
        .get("allowWatchBookmarks")
        .is_some_and(|b| b == "true")
        && (1..u64::MAX).contains(&after)
    {
        let bookmark = json!({"type": "BOOKMARK", "object": {"kind": "Node", "apiVersion": "v1",
            "metadata": {"resourceVersion": after.to_string()}}});
        chunk(out, &bookmark)?;
    }
    loop {
        let pending: Vec<Change> = {
            let mut g = lock(shared);
            loop {
                if g.generation != generation {
                    return Ok(());
                }
                let new: Vec<Change> = g.history.iter().filter(|c| c.rv > after).cloned().collect();
                if !new.is_empty() {
                    break new;
                }
                g = shared
                    .changed
                    .wait_timeout(g, Duration::from_secs(1))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        };
        for c in pending {
            after = c.rv;
            chunk(out, &json!({"type": c.kind, "object": c.object}))?;
        }
    }
}

fn chunk(out: &mut TcpStream, event: &Value) -> std::io::Result<()> {
    let line = format!("{event}\n");
    write!(out, "{:x}\r\n{line}\r\n", line.len())?;
    out.flush()
}
