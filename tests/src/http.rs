//! A minimal HTTP/1.0 GET (and an HTTP/1.1 request) for tests (loopback only): enough to scrape enforcerd and ask a
//! Prometheus server's API, without an HTTP client dependency.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

/// GETs `path` (with its query) from `addr`: (status code, body). HTTP/1.0, so the server
/// closes the connection after the body and never uses chunked encoding.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {head:?}")))?;
    Ok((status, body.to_owned()))
}

/// One HTTP/1.1 request (no body) with extra `headers` on a fresh connection to a server that
/// keeps connections open: (status code, body), the body read by its `Content-Length`.
pub fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[&str],
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n");
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    let mut r = std::io::BufReader::new(s);
    let head = read_head(&mut r)?;
    let mut body = vec![0; head.content_length];
    r.read_exact(&mut body)?;
    let status_line = head.lines.first().cloned().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {status_line:?}")))?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// An HTTP message head, read line by line.
pub struct Head {
    /// Its lines without their line ends, the start line first, the blank line left out.
    pub lines: Vec<String>,
    /// Its `Content-Length` (0 when absent).
    pub content_length: usize,
    /// The blank line that ends a head was read (false: the peer closed before it).
    pub complete: bool,
}

/// Reads a message head from `r`, up to its blank line or the end of the stream.
pub fn read_head(r: &mut impl std::io::BufRead) -> std::io::Result<Head> {
    let mut head = Head {
        lines: Vec::new(),
        content_length: 0,
        complete: false,
    };
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(head);
        }
        let line = line.trim_end();
        if line.is_empty() {
            head.complete = true;
            return Ok(head);
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            head.content_length = v.trim().parse().unwrap_or(0);
        }
        head.lines.push(line.to_owned());
    }
}

/// Percent-encodes a query parameter value.
pub fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of the sample `name` with exactly `labels` (e.g. `{reason="logout"}`, or "" for
/// none) in a Prometheus text exposition.
pub fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let key = format!("{name}{labels} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
}
