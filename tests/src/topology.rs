//! The standard QoS topology: a "host" and a "pod" namespace joined by one veth pair, as a CNI
//! plugin leaves a pod's secondary interface. Limits go on the host end ([`PodLink::host_if`]).
//!
//! Directions are named from the pod's side, as everywhere in Sidelane: `Ingress` is traffic
//! into the pod (sent from the host namespace), `Egress` traffic out of it.

use std::time::Duration;

use sidelane_api::qos::Direction;

use crate::{
    iperf::{self, IperfReport, IperfSpec},
    netns::NetNs,
    ping::{self, PingReport},
    veth::VethPair,
};

/// The host end of the pod's veth.
pub const HOST_IF: &str = "sl-pod0";
/// The pod's end.
pub const POD_IF: &str = "net1";
/// The host end's address.
pub const HOST_ADDR: &str = "10.213.0.1";
/// The pod's address.
pub const POD_ADDR: &str = "10.213.0.2";
/// The prefix length of both.
pub const PREFIX_LEN: u8 = 24;
/// The host end's IPv6 address (the link is dual-stack).
pub const HOST_ADDR6: &str = "fd00:213::1";
/// The pod's IPv6 address.
pub const POD_ADDR6: &str = "fd00:213::2";

/// Two fresh namespaces and the veth pair between them; all removed on drop.
#[derive(Debug)]
pub struct PodLink {
    // Dropped in this order: the pair, then the namespaces.
    veth: VethPair,
    pod: NetNs,
    host: NetNs,
}

impl PodLink {
    /// Creates the namespaces and the pair, addressed in both families (IPv6 without
    /// duplicate address detection, so usable at once) and up.
    pub fn new() -> anyhow::Result<PodLink> {
        let host = NetNs::new()?;
        let pod = NetNs::new()?;
        let veth = VethPair::create(
            &host,
            HOST_IF,
            &pod,
            POD_IF,
            &format!("{HOST_ADDR}/{PREFIX_LEN}"),
            &format!("{POD_ADDR}/{PREFIX_LEN}"),
        )?;
        for (ns, ifname, addr) in [(&host, HOST_IF, HOST_ADDR6), (&pod, POD_IF, POD_ADDR6)] {
            ns.exec(&[
                "ip",
                "-6",
                "addr",
                "add",
                &format!("{addr}/64"),
                "dev",
                ifname,
                "nodad",
            ])?;
        }
        Ok(PodLink { veth, pod, host })
    }

    /// The host namespace (where the limits and the CNI plugin act).
    pub fn host(&self) -> &NetNs {
        &self.host
    }

    /// The pod namespace.
    pub fn pod(&self) -> &NetNs {
        &self.pod
    }

    /// The veth pair.
    pub fn veth(&self) -> &VethPair {
        &self.veth
    }

    /// The host end's name.
    pub fn host_if(&self) -> &str {
        self.veth.host_if()
    }

    /// The pod end's name.
    pub fn pod_if(&self) -> &str {
        self.veth.pod_if()
    }

    /// The sending namespace, the receiving namespace and the receiver's address for traffic
    /// in `dir`.
    pub fn endpoints(&self, dir: Direction) -> (&NetNs, &NetNs, &'static str) {
        match dir {
            Direction::Ingress => (&self.host, &self.pod, POD_ADDR),
            Direction::Egress => (&self.pod, &self.host, HOST_ADDR),
        }
    }

    /// Measures traffic in `dir`: the iperf3 server on the receiving side, the client on the
    /// sending side.
    pub fn measure(&self, dir: Direction, spec: &IperfSpec) -> anyhow::Result<IperfReport> {
        let (sender, receiver, addr) = self.endpoints(dir);
        iperf::measure(receiver, addr, sender, spec)
    }

    /// [`Self::measure`] over IPv6.
    pub fn measure_v6(&self, dir: Direction, spec: &IperfSpec) -> anyhow::Result<IperfReport> {
        let (sender, receiver, _) = self.endpoints(dir);
        let addr = match dir {
            Direction::Ingress => POD_ADDR6,
            Direction::Egress => HOST_ADDR6,
        };
        iperf::measure(receiver, addr, sender, spec)
    }

    /// Pings across the link so that the echo requests travel in `dir` (from the pod to the host
    /// for `Egress`), `count` times every `interval`, waiting `linger` for late replies.
    pub fn ping(
        &self,
        dir: Direction,
        count: u32,
        interval: Duration,
        linger: Duration,
    ) -> anyhow::Result<PingReport> {
        let (sender, _, addr) = self.endpoints(dir);
        ping::ping(sender, addr, count, interval, linger)
    }
}
