//! The one stand-in for the primary CNI's eth0 (Cilium, Calico, Flannel) in a pod namespace a
//! test made by hand: a veth whose pod end is `eth0` with [`ETH0_ADDRESS`] and the default
//! route via [`GATEWAY`], its other end in a namespace of its own. Rigs that go through Multus
//! get eth0 from the primary delegate instead (see [`crate::kubelet_standin`]).

use anyhow::Context as _;

use crate::netns::NetNs;

/// eth0's address.
pub const ETH0_ADDRESS: &str = "10.244.1.5/24";
/// The primary network's gateway: the pod's default route.
pub const GATEWAY: &str = "10.244.1.1";

/// The primary network's side of a pod's eth0; eth0 goes when it drops.
pub struct PrimaryEth0 {
    _network: NetNs,
}

impl PrimaryEth0 {
    /// Gives `pod` eth0 and a default route through it, as the primary CNI leaves them.
    pub fn give(pod: &NetNs) -> anyhow::Result<PrimaryEth0> {
        let network = NetNs::new().context("the primary CNI's namespace")?;
        network.exec(&[
            "ip",
            "link",
            "add",
            "cni0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            pod.name(),
        ])?;
        pod.exec(&["ip", "addr", "add", ETH0_ADDRESS, "dev", "eth0"])?;
        pod.exec(&["ip", "link", "set", "eth0", "up"])?;
        pod.exec(&[
            "ip", "route", "add", "default", "via", GATEWAY, "dev", "eth0",
        ])?;
        Ok(PrimaryEth0 { _network: network })
    }
}
