//! Forwarding channels of a connection (`ssh -L`, `-R`, `-D`, `-W`/ProxyJump, agent, X11): the
//! sockets sshd connects or accepts for them. Named as the SSH protocol names the channel.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// What kind of forward a socket carries, as the server can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForwardKind {
    /// sshd connected to a host:port for the client: `ssh -L`, `-D` and `-W`/ProxyJump.
    DirectTcpip,
    /// sshd connected to a unix socket for the client (`ssh -L` with a socket path).
    DirectStreamlocal,
    /// sshd accepted a TCP connection on a listener it opened for the client: `ssh -R`, and
    /// X11 displays (`ssh -X`).
    ForwardedTcpip,
    /// sshd accepted a connection on a unix socket it opened for the client: `ssh -R` with a
    /// socket path.
    ForwardedStreamlocal,
    /// sshd accepted a connection on the forwarded agent's socket (`ssh -A`).
    Agent,
}

impl ForwardKind {
    pub fn name(self) -> &'static str {
        match self {
            ForwardKind::DirectTcpip => "direct_tcpip",
            ForwardKind::DirectStreamlocal => "direct_streamlocal",
            ForwardKind::ForwardedTcpip => "forwarded_tcpip",
            ForwardKind::ForwardedStreamlocal => "forwarded_streamlocal",
            ForwardKind::Agent => "agent",
        }
    }
}

/// One live forward.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forward {
    pub kind: ForwardKind,
    /// Where sshd connected (host:port or socket path), or the listener it accepted on.
    pub target: String,
    #[serde(with = "time::serde::rfc3339")]
    pub opened_at: OffsetDateTime,
    /// Last byte either way (`opened_at` until then).
    #[serde(with = "time::serde::rfc3339")]
    pub last_activity: OffsetDateTime,
    /// Bytes from the client into the socket, and from the socket to the client.
    pub bytes_in: u64,
    pub bytes_out: u64,
}

const AF_UNIX: u16 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// Kind and target of a socket sshd connected, from the `struct sockaddr` it passed.
pub fn connected(addr: &[u8]) -> (ForwardKind, String) {
    let family = addr.get(..2).map(|b| u16::from_ne_bytes([b[0], b[1]]));
    let port = || addr.get(2..4).map(|b| u16::from_be_bytes([b[0], b[1]]));
    match family {
        Some(AF_INET) => {
            let target = match (port(), addr.get(4..8)) {
                (Some(port), Some(ip)) => {
                    SocketAddr::from((Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]), port)).to_string()
                }
                _ => "?".into(),
            };
            (ForwardKind::DirectTcpip, target)
        }
        Some(AF_INET6) => {
            let target = match (port(), addr.get(8..24)) {
                (Some(port), Some(ip)) => {
                    let ip: [u8; 16] = ip.try_into().unwrap_or([0; 16]);
                    SocketAddr::from((Ipv6Addr::from(ip), port)).to_string()
                }
                _ => "?".into(),
            };
            (ForwardKind::DirectTcpip, target)
        }
        Some(AF_UNIX) => (ForwardKind::DirectStreamlocal, unix_path(&addr[2..])),
        _ => (ForwardKind::DirectTcpip, "?".into()),
    }
}

/// A unix socket path from `sun_path` bytes (abstract names start with '@').
fn unix_path(path: &[u8]) -> String {
    match path.split_first() {
        Some((0, name)) => {
            let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
            format!("@{}", String::from_utf8_lossy(&name[..end]))
        }
        _ => {
            let end = path.iter().position(|&c| c == 0).unwrap_or(path.len());
            String::from_utf8_lossy(&path[..end]).into_owned()
        }
    }
}

/// Where an accepted socket lives, from /proc/net.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Local {
    Tcp(SocketAddr),
    Unix(String),
}

/// Kind and target of a socket sshd accepted, from its local address.
pub fn accepted(local: Option<Local>) -> (ForwardKind, String) {
    match local {
        Some(Local::Tcp(addr)) => (ForwardKind::ForwardedTcpip, addr.to_string()),
        // OpenSSH puts a forwarded agent at $TMPDIR/ssh-XXXXXXXXXX/agent.<pid>.
        Some(Local::Unix(path)) if is_agent_socket(&path) => (ForwardKind::Agent, path),
        Some(Local::Unix(path)) => (ForwardKind::ForwardedStreamlocal, path),
        None => (ForwardKind::ForwardedTcpip, "?".into()),
    }
}

fn is_agent_socket(path: &str) -> bool {
    let mut parts = path.rsplit('/');
    let (Some(file), Some(dir)) = (parts.next(), parts.next()) else {
        return false;
    };
    file.starts_with("agent.") && dir.starts_with("ssh-")
}

/// The local address of socket `ino` in /proc/net/tcp or tcp6 text.
pub fn tcp_local(text: &str, ino: u64, v6: bool) -> Option<SocketAddr> {
    text.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.get(9)?.parse::<u64>().ok()? != ino {
            return None;
        }
        let (ip, port) = f.get(1)?.split_once(':')?;
        let port = u16::from_str_radix(port, 16).ok()?;
        // The kernel prints each 32-bit word of the address in host (little-endian) order.
        let words: Vec<u32> = (0..ip.len() / 8)
            .map(|i| u32::from_str_radix(&ip[i * 8..i * 8 + 8], 16).map(u32::from_be))
            .collect::<Result<_, _>>()
            .ok()?;
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
        let ip = match (v6, bytes.len()) {
            (false, 4) => std::net::IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?),
            (true, 16) => std::net::IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?),
            _ => return None,
        };
        Some(SocketAddr::new(ip, port))
    })
}

/// The path of unix socket `ino` in /proc/net/unix text (an accepted socket shows its
/// listener's path).
pub fn unix_local(text: &str, ino: u64) -> Option<String> {
    text.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.get(6)?.parse::<u64>().ok()? == ino).then(|| f.get(7).map(|p| (*p).to_owned()))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sockaddr_in(ip: [u8; 4], port: u16) -> Vec<u8> {
        let mut v = AF_INET.to_ne_bytes().to_vec();
        v.extend(port.to_be_bytes());
        v.extend(ip);
        v.extend([0; 8]);
        v
    }

    #[test]
    fn a_connected_ipv4_socket_is_direct_tcpip_to_host_and_port() {
        assert_eq!(
            connected(&sockaddr_in([127, 0, 0, 1], 8080)),
            (ForwardKind::DirectTcpip, "127.0.0.1:8080".into())
        );
    }

    #[test]
    fn a_connected_ipv6_socket_shows_brackets() {
        let mut v = AF_INET6.to_ne_bytes().to_vec();
        v.extend(443u16.to_be_bytes());
        v.extend([0; 4]);
        v.extend(Ipv6Addr::LOCALHOST.octets());
        v.extend([0; 4]);
        assert_eq!(connected(&v).1, "[::1]:443");
    }

    #[test]
    fn a_connected_unix_socket_is_streamlocal_with_its_path() {
        let mut v = AF_UNIX.to_ne_bytes().to_vec();
        v.extend(b"/run/app.sock\0\0\0");
        assert_eq!(
            connected(&v),
            (ForwardKind::DirectStreamlocal, "/run/app.sock".into())
        );
        let mut v = AF_UNIX.to_ne_bytes().to_vec();
        v.extend(b"\0abstract");
        assert_eq!(connected(&v).1, "@abstract");
    }

    #[test]
    fn short_or_unknown_addresses_do_not_panic() {
        assert_eq!(connected(&[]).1, "?");
        assert_eq!(connected(&[2, 0, 1]).1, "?");
        assert_eq!(connected(&[99, 0, 0, 0]).1, "?");
    }

    #[test]
    fn accepted_sockets_are_told_apart_by_their_listener() {
        let tcp: SocketAddr = "127.0.0.1:2222".parse().unwrap();
        assert_eq!(
            accepted(Some(Local::Tcp(tcp))).0,
            ForwardKind::ForwardedTcpip
        );
        assert_eq!(
            accepted(Some(Local::Unix("/tmp/ssh-AbCdEf1234/agent.4242".into()))).0,
            ForwardKind::Agent
        );
        assert_eq!(
            accepted(Some(Local::Unix("/home/u/app.sock".into()))).0,
            ForwardKind::ForwardedStreamlocal
        );
        assert_eq!(accepted(None).1, "?");
    }

    #[test]
    fn proc_net_tcp_gives_the_local_address_of_an_inode() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 0100007F:D6A2 01 00000000:00000000 00:00000000 00000000  1000        0 424242 1 0000000000000000 20 4 30 10 -1\n";
        assert_eq!(
            tcp_local(text, 424242, false),
            Some("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(tcp_local(text, 1, false), None);
        let v6 = "header\n   0: 00000000000000000000000001000000:01BB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1\n";
        assert_eq!(tcp_local(v6, 77, true), Some("[::1]:443".parse().unwrap()));
    }

    #[test]
    fn proc_net_unix_gives_the_path_of_an_inode() {
        let text = "Num       RefCount Protocol Flags    Type St Inode Path\n0000000000000000: 00000003 00000000 00000000 0001 03 9911 /tmp/ssh-XyZ/agent.77\n0000000000000000: 00000003 00000000 00000000 0001 03 9912\n";
        assert_eq!(
            unix_local(text, 9911).as_deref(),
            Some("/tmp/ssh-XyZ/agent.77")
        );
        assert_eq!(unix_local(text, 9912), None);
    }
}
