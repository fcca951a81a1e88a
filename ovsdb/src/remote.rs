//! Where an OVSDB server listens: `unix:<path>`, `tcp:<host>:<port>` (IPv6 in brackets),
//! several separated by commas as OVN writes them (a clustered database's members).

use std::{fmt, path::PathBuf, str::FromStr};

use thiserror::Error;

/// One server address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Remote {
    /// A Unix socket.
    Unix(PathBuf),
    /// A TCP host and port.
    Tcp {
        /// Host name or address (without brackets).
        host: String,
        /// Port.
        port: u16,
    },
}

/// A remote that cannot be used.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum RemoteError {
    /// `ssl:` needs TLS, which this client does not speak yet.
    #[error(
        "remote {0:?}: ssl: remotes are not supported yet (TLS is not implemented); use unix: or tcp:"
    )]
    Ssl(String),
    /// Not `unix:` or `tcp:` with a host and port.
    #[error("remote {remote:?}: {reason}")]
    Invalid {
        /// The text given.
        remote: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl FromStr for Remote {
    type Err = RemoteError;

    fn from_str(s: &str) -> Result<Remote, RemoteError> {
        let invalid = |reason| RemoteError::Invalid {
            remote: s.to_owned(),
            reason,
        };
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(invalid("unix: needs a socket path"));
            }
            return Ok(Remote::Unix(PathBuf::from(path)));
        }
        if s.starts_with("ssl:") {
            return Err(RemoteError::Ssl(s.to_owned()));
        }
        let Some(rest) = s.strip_prefix("tcp:") else {
            return Err(invalid("expected unix:<path> or tcp:<host>:<port>"));
        };
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| invalid("an IPv6 host needs a closing ']'"))?;
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| invalid("tcp: needs a port after the host"))?;
            (host, port)
        } else {
            rest.rsplit_once(':')
                .ok_or_else(|| invalid("tcp: needs <host>:<port>"))?
        };
        if host.is_empty() {
            return Err(invalid("tcp: needs a host"));
        }
        let port = port
            .parse()
            .map_err(|_| invalid("the port is not a number from 0 to 65535"))?;
        Ok(Remote::Tcp {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Remote::Unix(p) => write!(f, "unix:{}", p.display()),
            Remote::Tcp { host, port } if host.contains(':') => write!(f, "tcp:[{host}]:{port}"),
            Remote::Tcp { host, port } => write!(f, "tcp:{host}:{port}"),
        }
    }
}

/// Parses a comma-separated list of remotes.
pub fn parse_remotes(s: &str) -> Result<Vec<Remote>, RemoteError> {
    let remotes: Vec<Remote> = s
        .split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    if remotes.is_empty() {
        return Err(RemoteError::Invalid {
            remote: s.to_owned(),
            reason: "no remote given",
        });
    }
    Ok(remotes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_tcp_and_clustered_lists_parse_and_ssl_is_refused_by_name() {
        assert_eq!(
            parse_remotes("tcp:10.0.0.1:6641,tcp:[fd00::2]:6641,unix:/run/ovn/ovnnb_db.sock"),
            Ok(vec![
                Remote::Tcp {
                    host: "10.0.0.1".into(),
                    port: 6641
                },
                Remote::Tcp {
                    host: "fd00::2".into(),
                    port: 6641
                },
                Remote::Unix("/run/ovn/ovnnb_db.sock".into()),
            ])
        );
        let err = parse_remotes("ssl:10.0.0.1:6641").expect_err("ssl is refused");
        assert!(
            err.to_string()
                .contains("ssl: remotes are not supported yet"),
            "{err}"
        );
        assert!(parse_remotes("tcp:host").is_err());
        assert!(parse_remotes("tcp:h:99999").is_err());
        assert!(parse_remotes("").is_err());
        assert_eq!(
            Remote::Tcp {
                host: "fd00::2".into(),
                port: 1
            }
            .to_string(),
            "tcp:[fd00::2]:1"
        );
    }
}
