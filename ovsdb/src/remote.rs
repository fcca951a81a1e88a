//! Where an OVSDB server listens: `unix:<path>`, `tcp:<host>:<port>`, `ssl:<host>:<port>`
//! (IPv6 in brackets), several separated by commas as OVN writes them (a clustered database's
//! members). An `ssl:` remote needs the client's TLS files ([`crate::tls`]).

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
    /// A TCP host and port spoken to over TLS.
    Ssl {
        /// Host name or address (without brackets).
        host: String,
        /// Port.
        port: u16,
    },
}

/// A remote that cannot be used.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum RemoteError {
    /// Not `unix:`, or `tcp:` or `ssl:` with a host and port.
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
        let (tls, rest) = match (s.strip_prefix("tcp:"), s.strip_prefix("ssl:")) {
            (Some(rest), _) => (false, rest),
            (_, Some(rest)) => (true, rest),
            _ => {
                return Err(invalid(
                    "expected unix:<path>, tcp:<host>:<port> or ssl:<host>:<port>",
                ));
            }
        };
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| invalid("an IPv6 host needs a closing ']'"))?;
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| invalid("a port must follow the host"))?;
            (host, port)
        } else {
            rest.rsplit_once(':')
                .ok_or_else(|| invalid("expected <host>:<port>"))?
        };
        if host.is_empty() {
            return Err(invalid("the host is empty"));
        }
        let port = port
            .parse()
            .map_err(|_| invalid("the port is not a number from 0 to 65535"))?;
        let host = host.to_owned();
        Ok(if tls {
            Remote::Ssl { host, port }
        } else {
            Remote::Tcp { host, port }
        })
    }
}

impl Remote {
    /// Whether the remote is spoken to over TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, Remote::Ssl { .. })
    }
}

impl fmt::Display for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Remote::Unix(p) => write!(f, "unix:{}", p.display()),
            Remote::Tcp { host, port } if host.contains(':') => write!(f, "tcp:[{host}]:{port}"),
            Remote::Tcp { host, port } => write!(f, "tcp:{host}:{port}"),
            Remote::Ssl { host, port } if host.contains(':') => write!(f, "ssl:[{host}]:{port}"),
            Remote::Ssl { host, port } => write!(f, "ssl:{host}:{port}"),
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
    fn unix_tcp_ssl_and_clustered_lists_parse() {
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
        assert_eq!(
            parse_remotes("ssl:10.0.0.1:6641,ssl:[fd00::3]:6641"),
            Ok(vec![
                Remote::Ssl {
                    host: "10.0.0.1".into(),
                    port: 6641
                },
                Remote::Ssl {
                    host: "fd00::3".into(),
                    port: 6641
                },
            ])
        );
        assert_eq!(
            Remote::Ssl {
                host: "fd00::3".into(),
                port: 6641
            }
            .to_string(),
            "ssl:[fd00::3]:6641"
        );
        let err = parse_remotes("ssl:10.0.0.1").expect_err("a port is needed");
        assert!(err.to_string().contains("ssl:10.0.0.1"), "{err}");
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
