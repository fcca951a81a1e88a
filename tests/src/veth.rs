//! A veth pair with one end in each of two namespaces, addressed and up.
//!
//! The default offloads stay on (TSO, GSO, checksum): that is what a pod's veth looks like, and
//! a limiter must cope with the 64 KiB GSO packets it brings.

use anyhow::{Context as _, bail};
use serde::Deserialize;

use crate::netns::NetNs;

/// A veth pair: `host_if` in one namespace, `pod_if` in another. The host end is deleted
/// (taking the pod end with it) on drop, best effort.
#[derive(Debug)]
pub struct VethPair {
    host_ns: String,
    host_if: String,
    pod_if: String,
}

impl VethPair {
    /// Creates the pair, moves `pod_if` into `pod`, sets the addresses (`10.0.0.1/24` form) and
    /// brings both ends up.
    pub fn create(
        host: &NetNs,
        host_if: &str,
        pod: &NetNs,
        pod_if: &str,
        host_addr_cidr: &str,
        pod_addr_cidr: &str,
    ) -> anyhow::Result<VethPair> {
        for name in [host_if, pod_if] {
            if name.is_empty() || name.len() > 15 {
                bail!("interface name {name:?} must be 1 to 15 bytes long");
            }
        }
        host.exec(&[
            "ip",
            "link",
            "add",
            host_if,
            "type",
            "veth",
            "peer",
            "name",
            pod_if,
            "netns",
            pod.name(),
        ])
        .with_context(|| format!("creating veth {host_if} <-> {pod_if}"))?;
        let pair = VethPair {
            host_ns: host.name().to_owned(),
            host_if: host_if.to_owned(),
            pod_if: pod_if.to_owned(),
        };
        for (ns, ifname, cidr) in [
            (host, host_if, host_addr_cidr),
            (pod, pod_if, pod_addr_cidr),
        ] {
            ns.exec(&["ip", "addr", "add", cidr, "dev", ifname])?;
            ns.exec(&["ip", "link", "set", ifname, "up"])?;
        }
        Ok(pair)
    }

    /// The end in the host namespace.
    pub fn host_if(&self) -> &str {
        &self.host_if
    }

    /// The end in the pod namespace.
    pub fn pod_if(&self) -> &str {
        &self.pod_if
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        // Quiet: if the namespace is already gone, so is the pair.
        let _ = std::process::Command::new("ip")
            .args(["-n", &self.host_ns, "link", "del", &self.host_if])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// What `ip -j link show` says about a device.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct LinkInfo {
    /// The interface index in its namespace.
    pub ifindex: u32,
    /// The name.
    pub ifname: String,
    /// The MAC address.
    #[serde(default)]
    pub address: String,
    /// The root qdisc kind (`noqueue`, `tbf`, ...).
    #[serde(default)]
    pub qdisc: String,
}

/// Looks up `ifname` in `ns`.
pub fn link_info(ns: &NetNs, ifname: &str) -> anyhow::Result<LinkInfo> {
    let out = ns.exec(&["ip", "-j", "link", "show", "dev", ifname])?;
    let mut links: Vec<LinkInfo> =
        serde_json::from_str(&out).with_context(|| format!("parsing `ip -j link`: {out}"))?;
    links
        .pop()
        .with_context(|| format!("no device {ifname} in {}", ns.name()))
}

/// The interface index of `ifname` in `ns`.
pub fn ifindex(ns: &NetNs, ifname: &str) -> anyhow::Result<u32> {
    Ok(link_info(ns, ifname)?.ifindex)
}

/// The names of the links in `ns` ending with `suffix` (pods' host ends end with `_net1_h`),
/// without their `@peer`; empty when `ns` cannot be read.
pub fn links_ending(ns: &NetNs, suffix: &str) -> Vec<String> {
    ns.exec(&["ip", "-o", "link", "show"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_owned())
        .filter(|name| name.ends_with(suffix))
        .collect()
}
