//! The "outside world" of NAT gateway tests: a host in its own network namespace, joined to a
//! gateway node's external NIC by a veth, holding the external Subnet's gateway address. It
//! sees what leaves a Vpc (the source address of each connection it accepts) and opens
//! connections to EIPs.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;

use crate::{
    netns::{NetNs, in_netns},
    ovn::Chassis,
};

/// The outside host.
pub struct Outside {
    /// Its namespace.
    pub ns: NetNs,
    /// Its address (the external Subnet's gateway).
    pub ip: String,
}

/// The peers a listener of the outside host accepted, in order.
pub type Peers = Arc<Mutex<Vec<SocketAddr>>>;

impl Outside {
    /// An outside host holding `cidr` (`172.20.0.1/24`) on a bridge that nodes join.
    ///
    /// # Errors
    /// A namespace, link or address cannot be made.
    pub fn start(cidr: &str) -> anyhow::Result<Outside> {
        let ns = NetNs::new()?;
        let ip = cidr.split('/').next().unwrap_or_default().to_owned();
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        ns.exec(&["ip", "link", "add", "br0", "type", "bridge"])?;
        ns.exec(&["ip", "addr", "add", cidr, "dev", "br0"])?;
        ns.exec(&["ip", "link", "set", "br0", "up"])?;
        ns.exec(&["ethtool", "-K", "br0", "tx", "off"])?;
        Ok(Outside { ns, ip })
    }

    /// Joins `chassis` to the outside host's network: a veth whose chassis end is `nic` (the
    /// node's external NIC, for the agent's `--external-nic`).
    ///
    /// # Errors
    /// A link cannot be made.
    pub fn join(&self, chassis: &Chassis, nic: &str) -> anyhow::Result<()> {
        self.join_ns(&chassis.ns, nic)
            .with_context(|| format!("joining the outside host to {}", chassis.name))
    }

    /// Joins namespace `other` to the outside host's network by a veth whose end there is
    /// `nic` (TX checksum offload off on both ends, as the userspace datapath needs).
    ///
    /// # Errors
    /// A link cannot be made.
    pub fn join_ns(&self, other: &NetNs, nic: &str) -> anyhow::Result<()> {
        let here = format!("to-{}", other.name());
        let here: String = here.chars().take(15).collect();
        self.ns.exec(&[
            "ip",
            "link",
            "add",
            &here,
            "type",
            "veth",
            "peer",
            "name",
            nic,
            "netns",
            other.name(),
        ])?;
        self.ns
            .exec(&["ip", "link", "set", &here, "master", "br0", "up"])?;
        other.exec(&["ip", "link", "set", nic, "up"])?;
        self.ns.exec(&["ethtool", "-K", &here, "tx", "off"])?;
        other.exec(&["ethtool", "-K", nic, "tx", "off"])?;
        Ok(())
    }

    /// Listens on TCP `port`; every accepted connection's peer is recorded.
    ///
    /// # Errors
    /// The listener cannot be bound.
    pub fn record_peers(&self, port: u16) -> anyhow::Result<Peers> {
        record_peers_in(&self.ns, port)
    }

    /// Whether a TCP connection from the outside host to `ip:port` is established within
    /// 700 ms.
    ///
    /// # Errors
    /// The probe cannot run.
    pub fn tcp_opens(&self, ip: &str, port: u16) -> anyhow::Result<bool> {
        let addr: SocketAddr = format!("{ip}:{port}").parse()?;
        in_netns(&self.ns.path(), move || {
            Ok(TcpStream::connect_timeout(&addr, Duration::from_millis(700)).is_ok())
        })
    }

    /// Whether the outside host's ping of `ip` is answered within a second.
    pub fn pings(&self, ip: &str) -> bool {
        self.ns.exec(&["ping", "-c", "1", "-W", "1", ip]).is_ok()
    }
}

/// Listens on TCP `port` in `ns`; every accepted connection's peer is recorded.
///
/// # Errors
/// The listener cannot be bound.
pub fn record_peers_in(ns: &NetNs, port: u16) -> anyhow::Result<Peers> {
    let listener = in_netns(&ns.path(), move || {
        Ok(TcpListener::bind(("0.0.0.0", port))?)
    })?;
    let peers: Peers = Arc::default();
    let seen = Arc::clone(&peers);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { break };
            if let (Ok(peer), Ok(mut list)) = (conn.peer_addr(), seen.lock()) {
                list.push(peer);
            }
        }
    });
    Ok(peers)
}

/// The last peer address `peers` recorded.
pub fn last_peer(peers: &Peers) -> Option<String> {
    peers
        .lock()
        .ok()
        .and_then(|p| p.last().map(|a| a.ip().to_string()))
}
