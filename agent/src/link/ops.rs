//! The link layer as the agent's CNI logic sees it: one trait, [`Links`], over the kernel
//! ([`Kernel`]) and over recording fakes in unit tests, so ADD, DEL, GC and recovery are tested
//! without root.

use std::path::Path;

use super::{LinkError, PodInterfacePlan};
use crate::netns;

/// What the CNI logic does to links. Every call is blocking (netlink in a namespace).
pub trait Links: Send + Sync {
    /// Creates the pod's pair: `host` in `host_netns` and the pod end, configured by `plan`,
    /// in `pod_netns` (created as `temp` before it moves). All or nothing.
    fn create(
        &self,
        host_netns: Option<&Path>,
        host: &str,
        pod_netns: &Path,
        temp: &str,
        plan: &PodInterfacePlan,
    ) -> Result<(), LinkError>;
    /// Creates a pair with both ends in `host_netns`, up, with `mtu`.
    fn create_host_pair(
        &self,
        host_netns: Option<&Path>,
        a: &str,
        b: &str,
        mtu: Option<u32>,
    ) -> Result<(), LinkError>;
    /// Turns TX checksum offload off on `ifname` in `netns`.
    fn disable_tx_checksum(&self, netns: Option<&Path>, ifname: &str) -> Result<(), LinkError>;
    /// Deletes `ifname` (and its peer) from `netns`; `false` if it did not exist.
    fn delete(&self, netns: Option<&Path>, ifname: &str) -> Result<bool, LinkError>;
    /// Every difference between the pod end and `plan`.
    fn verify(&self, pod_netns: &Path, plan: &PodInterfacePlan) -> Result<Vec<String>, LinkError>;
    /// Whether `ifname` exists in `netns` (`None`: the agent's own); a namespace that cannot
    /// be entered holds nothing.
    fn exists(&self, netns: Option<&Path>, ifname: &str) -> bool;
    /// Whether `path` is a network namespace.
    fn is_namespace(&self, path: &Path) -> bool;
}

/// The kernel's links, through netlink.
#[derive(Clone, Copy, Debug, Default)]
pub struct Kernel;

impl Links for Kernel {
    fn create(
        &self,
        host_netns: Option<&Path>,
        host: &str,
        pod_netns: &Path,
        temp: &str,
        plan: &PodInterfacePlan,
    ) -> Result<(), LinkError> {
        super::create(host_netns, host, pod_netns, temp, plan)
    }

    fn create_host_pair(
        &self,
        host_netns: Option<&Path>,
        a: &str,
        b: &str,
        mtu: Option<u32>,
    ) -> Result<(), LinkError> {
        super::create_host_pair(host_netns, a, b, mtu)
    }

    fn disable_tx_checksum(&self, netns: Option<&Path>, ifname: &str) -> Result<(), LinkError> {
        super::disable_tx_checksum(netns, ifname)
    }

    fn delete(&self, netns: Option<&Path>, ifname: &str) -> Result<bool, LinkError> {
        super::delete(netns, ifname)
    }

    fn verify(&self, pod_netns: &Path, plan: &PodInterfacePlan) -> Result<Vec<String>, LinkError> {
        super::verify(pod_netns, plan)
    }

    fn exists(&self, netns: Option<&Path>, ifname: &str) -> bool {
        netns::run_in(netns, || nix::net::if_::if_nametoindex(ifname).is_ok()).unwrap_or(false)
    }

    fn is_namespace(&self, path: &Path) -> bool {
        netns::is_network_namespace(path)
    }
}
