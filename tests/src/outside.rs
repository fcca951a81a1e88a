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
    /// An outside host that will hold `cidr` (`172.20.0.1/24`) once joined to a node.
    ///
    /// # Errors
    /// A link or address cannot be made.
    pub fn start(cidr: &str) -> anyhow::Result<Outside> {
        let ns = NetNs::new()?;
        let ip = cidr.split('/').next().unwrap_or_default().to_owned();
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(Outside { ns, ip })
    }

    /// Joins the outside host to `chassis`: a veth `eth<index>` here, `nic` there (TX
    /// checksum offload off on both ends, as the userspace datapath needs), `cidr` on the
    /// first one only (further ones join the same L2 through a bridge).
    ///
    /// # Errors
    /// A link or address cannot be made.
    pub fn join(&self, chassis: &Chassis, nic: &str, cidr: &str) -> anyhow::Result<()> {
        let exists = self.ns.exec(&["ip", "link", "show", "br0"]).is_ok();
        if !exists {
            self.ns
                .exec(&["ip", "link", "add", "br0", "type", "bridge"])?;
            self.ns.exec(&["ip", "addr", "add", cidr, "dev", "br0"])?;
            self.ns.exec(&["ip", "link", "set", "br0", "up"])?;
        }
        let here = format!("to-{}", chassis.name);
        self.ns
            .exec(&[
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
                chassis.ns.name(),
            ])
            .with_context(|| format!("joining the outside host to {}", chassis.name))?;
        self.ns
            .exec(&["ip", "link", "set", &here, "master", "br0", "up"])?;
        chassis.ns.exec(&["ip", "link", "set", nic, "up"])?;
        for (ns, dev) in [(&self.ns, here.as_str()), (&chassis.ns, nic)] {
            ns.exec(&["ethtool", "-K", dev, "tx", "off"])?;
        }
        self.ns.exec(&["ethtool", "-K", "br0", "tx", "off"])?;
        Ok(())
    }

    /// Listens on TCP `port`; every accepted connection's peer is recorded.
    ///
    /// # Errors
    /// The listener cannot be bound.
    pub fn record_peers(&self, port: u16) -> anyhow::Result<Peers> {
        let listener = in_netns(&self.ns.path(), move || {
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

/// The last peer address `peers` recorded.
pub fn last_peer(peers: &Peers) -> Option<String> {
    peers
        .lock()
        .ok()
        .and_then(|p| p.last().map(|a| a.ip().to_string()))
}
