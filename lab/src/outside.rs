//! The lab's outside world: a router and a host, each a network namespace, reachable only
//! through the external network of the gateway nodes. The router holds the external Subnet's
//! gateway (`172.20.0.1/24`, on a bridge every gateway node's `eth1` joins) and routes to the
//! host's network (`198.51.100.0/24`); the host is `198.51.100.10`. Nothing of the router
//! knows the Vpcs' own CIDRs but what the check adds to show they stay out of reach.

use sidelane_tests::netns::NetNs;

/// The external Subnet's gateway, on the router.
pub const ROUTER_EXTERNAL: &str = "172.20.0.1/24";
/// The outside host's address.
pub const HOST: &str = "198.51.100.10";

/// The router and the host.
pub struct OutsideWorld {
    /// The router: the external network's bridge `ext`, and `to-host`.
    pub router: NetNs,
    /// The host: `eth0`, its default route through the router.
    pub host: NetNs,
}

/// TX checksum offload off (the userspace datapath forwards what veths hand it as is).
fn no_tx_offload(ns: &NetNs, dev: &str) -> anyhow::Result<()> {
    ns.exec(&["ethtool", "-K", dev, "tx", "off"]).map(drop)
}

impl OutsideWorld {
    /// The router and the host, joined.
    ///
    /// # Errors
    /// A namespace, link or address cannot be made.
    pub fn start() -> anyhow::Result<OutsideWorld> {
        let router = NetNs::new()?;
        let host = NetNs::new()?;
        for ns in [&router, &host] {
            ns.exec(&["ip", "link", "set", "lo", "up"])?;
        }
        router.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        router.exec(&["ip", "link", "add", "ext", "type", "bridge"])?;
        router.exec(&["ip", "addr", "add", ROUTER_EXTERNAL, "dev", "ext"])?;
        router.exec(&["ip", "link", "set", "ext", "up"])?;
        no_tx_offload(&router, "ext")?;
        router.veth_to("to-host", &host, "eth0")?;
        router.exec(&["ip", "addr", "add", "198.51.100.1/24", "dev", "to-host"])?;
        host.exec(&["ip", "addr", "add", &format!("{HOST}/24"), "dev", "eth0"])?;
        host.exec(&["ip", "link", "set", "eth0", "up"])?;
        host.exec(&["ip", "route", "add", "default", "via", "198.51.100.1"])?;
        no_tx_offload(&router, "to-host")?;
        no_tx_offload(&host, "eth0")?;
        Ok(OutsideWorld { router, host })
    }

    /// Joins node `index`'s namespace `node` to the external network: its `eth1` (the
    /// agent's `--external-nic`) is a veth to the router's bridge.
    ///
    /// # Errors
    /// A link cannot be made.
    pub fn join(&self, node: &NetNs, index: usize) -> anyhow::Result<()> {
        let port = format!("ext{index}");
        self.router.veth_to(&port, node, "eth1")?;
        self.router
            .exec(&["ip", "link", "set", &port, "master", "ext", "up"])?;
        node.exec(&["ip", "link", "set", "eth1", "up"])?;
        no_tx_offload(&self.router, &port)?;
        no_tx_offload(node, "eth1")
    }
}
