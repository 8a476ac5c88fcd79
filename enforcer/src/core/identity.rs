//! Who and where a login comes from: sshd's `SSH_AUTH_INFO_0` and `SSH_CONNECTION`.

use std::net::{IpAddr, SocketAddr};

use enforcer_proto::AuthIdentity;
use ssh_key::{Certificate, HashAlg, PublicKey};

/// Parses `SSH_AUTH_INFO_0`: one line per completed method, `publickey <type> <base64>` for keys
/// and certificates, the bare method name otherwise. The key fields describe the last
/// `publickey` line; `method` lists every method in order, comma-separated.
pub fn parse_auth_info(info: &str) -> Option<AuthIdentity> {
    let mut id = AuthIdentity::default();
    let mut methods = Vec::new();
    for line in info.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let mut parts = line.splitn(2, ' ');
        let method = parts.next()?;
        methods.push(method.to_owned());
        let Some(key) = parts.next() else { continue };
        if method != "publickey" {
            continue;
        }
        let key_type = key.split(' ').next().unwrap_or_default().to_owned();
        id = AuthIdentity {
            key_type: Some(key_type.clone()),
            ..Default::default()
        };
        if key_type.contains("-cert-v01@openssh.com") {
            match Certificate::from_openssh(key) {
                Ok(cert) => {
                    id.key_fingerprint =
                        Some(cert.public_key().fingerprint(HashAlg::Sha256).to_string());
                    id.cert_key_id = Some(cert.key_id().to_owned());
                    id.cert_serial = Some(cert.serial());
                    id.cert_ca_fingerprint = Some(
                        cert.signature_key()
                            .fingerprint(HashAlg::Sha256)
                            .to_string(),
                    );
                    id.cert_principals = cert.valid_principals().to_vec();
                }
                Err(e) => tracing::warn!(error = %e, "unparseable certificate in SSH_AUTH_INFO_0"),
            }
        } else {
            match PublicKey::from_openssh(key) {
                Ok(k) => id.key_fingerprint = Some(k.fingerprint(HashAlg::Sha256).to_string()),
                Err(e) => tracing::warn!(error = %e, "unparseable key in SSH_AUTH_INFO_0"),
            }
        }
    }
    if methods.is_empty() {
        return None;
    }
    id.method = methods.join(",");
    Some(id)
}

/// Parses `SSH_CONNECTION` ("client_ip client_port server_ip server_port").
pub fn parse_ssh_connection(s: &str) -> Option<(SocketAddr, SocketAddr)> {
    let f: Vec<&str> = s.split_whitespace().collect();
    let [cip, cport, sip, sport] = f.as_slice() else {
        return None;
    };
    let client = SocketAddr::new(cip.parse().ok()?, cport.parse().ok()?);
    let server = SocketAddr::new(sip.parse().ok()?, sport.parse().ok()?);
    Some((client, server))
}

/// An IPv4-mapped IPv6 peer counts as its IPv4 address (one source, one limit).
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Generated with ssh-keygen; fingerprints checked with `ssh-keygen -lf`.
    const ED25519: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAII+mZwm24lpLZHgf4arlwQtEdLoqKBhBdkkGj3QzHj0h";

    #[test]
    fn publickey_line_gives_type_and_fingerprint() {
        let id = parse_auth_info(&format!("publickey {ED25519}\n")).unwrap();
        assert_eq!(id.method, "publickey");
        assert_eq!(id.key_type.as_deref(), Some("ssh-ed25519"));
        // As `ssh-keygen -lf` prints it.
        assert_eq!(
            id.key_fingerprint.as_deref(),
            Some("SHA256:kKWJrdWT5NaTTSXTCMXG03/NacEPao2gPJ7KT8onMow")
        );
        assert!(id.cert_key_id.is_none());
    }

    /// `ssh-keygen -s ca -I "alice@corp ticket-7" -n alice,deploy -z 4242 u2.pub`
    const CERT: &str = "ssh-ed25519-cert-v01@openssh.com AAAAIHNzaC1lZDI1NTE5LWNlcnQtdjAxQG9wZW5zc2guY29tAAAAIM4pQNMyVG3txN3gfvOWlHfm1enC8cG3OrHOU59+LbWyAAAAIK7gg6wGK0O0Cek2UW7Jbva0UCjgPvTNXku8ty88ZaAkAAAAAAAAEJIAAAABAAAAE2FsaWNlQGNvcnAgdGlja2V0LTcAAAATAAAABWFsaWNlAAAABmRlcGxveQAAAAAAAAAA//////////8AAAAAAAAAggAAABVwZXJtaXQtWDExLWZvcndhcmRpbmcAAAAAAAAAF3Blcm1pdC1hZ2VudC1mb3J3YXJkaW5nAAAAAAAAABZwZXJtaXQtcG9ydC1mb3J3YXJkaW5nAAAAAAAAAApwZXJtaXQtcHR5AAAAAAAAAA5wZXJtaXQtdXNlci1yYwAAAAAAAAAAAAAAMwAAAAtzc2gtZWQyNTUxOQAAACBdzKMS6wZhCttOZQZc8T767CeR9Uk9L9qZBLBqbgvNHQAAAFMAAAALc3NoLWVkMjU1MTkAAABAxnsUYv3E6JIMijZ/pU3SRlOSdv/lzcQkMbSxN3FIIBROjgK4IvUP7RVv23I1yGcB6zp6VupJoFoGSZUTiMG1Bg==";

    #[test]
    fn certificate_gives_key_id_serial_ca_and_principals() {
        let id = parse_auth_info(&format!("publickey {CERT}\n")).unwrap();
        assert_eq!(
            id.key_type.as_deref(),
            Some("ssh-ed25519-cert-v01@openssh.com")
        );
        assert_eq!(id.cert_key_id.as_deref(), Some("alice@corp ticket-7"));
        assert_eq!(id.cert_serial, Some(4242));
        assert_eq!(
            id.key_fingerprint.as_deref(),
            Some("SHA256:aRTvII9WjcEuJDEYqd5JfYDzEz3atAlu8twdWtylgoE")
        );
        assert_eq!(
            id.cert_ca_fingerprint.as_deref(),
            Some("SHA256:dKg+X2Xc5qpnovrDolPBzT9c9MRCCmVa5SSOHABh5jY")
        );
        assert_eq!(id.cert_principals, ["alice", "deploy"]);
    }

    #[test]
    fn several_methods_are_listed_in_order() {
        let id = parse_auth_info(&format!("publickey {ED25519}\nkeyboard-interactive\n")).unwrap();
        assert_eq!(id.method, "publickey,keyboard-interactive");
        assert!(id.key_fingerprint.is_some());
    }

    #[test]
    fn password_only_has_no_key() {
        let id = parse_auth_info("password\n").unwrap();
        assert_eq!(id.method, "password");
        assert!(id.key_type.is_none());
    }

    #[test]
    fn empty_info_is_none() {
        assert!(parse_auth_info("").is_none());
        assert!(parse_auth_info("\n").is_none());
    }

    #[test]
    fn garbage_key_keeps_method_and_type() {
        let id = parse_auth_info("publickey ssh-ed25519 !!!notbase64\n").unwrap();
        assert_eq!(id.key_type.as_deref(), Some("ssh-ed25519"));
        assert!(id.key_fingerprint.is_none());
    }

    #[test]
    fn ssh_connection_v4_and_v6() {
        let (c, s) = parse_ssh_connection("127.0.0.1 40658 127.0.0.1 2299").unwrap();
        assert_eq!(c, "127.0.0.1:40658".parse().unwrap());
        assert_eq!(s.port(), 2299);
        let (c, _) = parse_ssh_connection("::1 5 ::1 22").unwrap();
        assert!(c.is_ipv6());
        assert!(parse_ssh_connection("127.0.0.1 x 127.0.0.1 22").is_none());
        assert!(parse_ssh_connection("").is_none());
    }

    #[test]
    fn mapped_v6_is_its_v4() {
        assert_eq!(
            canonical_ip("::ffff:10.1.2.3".parse().unwrap()),
            "10.1.2.3".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            canonical_ip("::1".parse().unwrap()),
            "::1".parse::<IpAddr>().unwrap()
        );
    }
}
