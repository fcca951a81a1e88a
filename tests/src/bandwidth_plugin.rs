//! The reference CNI `bandwidth` plugin (Debian's containernetworking-plugins,
//! `/usr/lib/cni/bandwidth`), driven exactly as a container runtime drives it: `CNI_*`
//! environment, a network configuration with a `prevResult` on standard input, run in the
//! namespace that holds the pod's host-side veth.
//!
//! What it does with the limits (plugins/meta/bandwidth in containernetworking/plugins, v1.1):
//! - Rates are in **bits per second** and bursts in **bits**. A rate without a burst is rejected
//!   ("if rate is set, burst must also be set"); the burst must be below 32 GiB (4 GiB in
//!   bytes).
//! - `ingressRate` (into the pod): a `tbf` root qdisc on the host-side veth, with `limit` (the
//!   queue) = 25 ms at the rate + the burst.
//! - `egressRate` (out of the pod): an `ifb` device (`bwp<hash>`), the host veth's ingress
//!   redirected to it (`u32` + `mirred`), and the same `tbf` on the ifb.
//! - It finds the host-side veth by asking the pod-side interface (`CNI_IFNAME` in `CNI_NETNS`)
//!   for its peer's ifindex and matching that to a `prevResult` interface without a sandbox; so
//!   it must run in the host-side veth's namespace.
//!
//! ## The burst used as the comparison baseline
//! Operators do not write these numbers: they set the pod annotations
//! `kubernetes.io/ingress-bandwidth` / `egress-bandwidth` and the runtime fills in
//! `runtimeConfig.bandwidth`. containerd's CRI plugin (`toCNIBandWidth`) and CRI-O set both bursts
//! to `math.MaxUint32` bits (512 MiB), i.e. "no burst limit". That is
//! [`KUBERNETES_DEFAULT_BURST_BITS`], and the benchmark's default: a fresh bucket then passes half
//! a gigabyte at line rate before the rate applies, which is what the QoS issue means by "the
//! reference plugin's huge default burst". A chosen burst can be given instead.

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::{netns::NetNs, process, topology::PodLink, veth};

/// The plugin binary.
pub const PLUGIN: &str = "/usr/lib/cni/bandwidth";
/// Where the runtime says the plugins are (`CNI_PATH`).
pub const CNI_PATH: &str = "/usr/lib/cni";
/// The burst Kubernetes runtimes pass when a pod has a bandwidth annotation: `math.MaxUint32`
/// bits (containerd's CRI plugin, CRI-O).
pub const KUBERNETES_DEFAULT_BURST_BITS: u64 = 4_294_967_295;
/// The network name in the configuration (the ifb device's name hashes it).
pub const NETWORK_NAME: &str = "sidelane-bench";

/// How long one plugin invocation may take.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Rate and burst of one direction, as the plugin takes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shaping {
    /// Bits per second.
    pub rate_bps: u64,
    /// Bits.
    pub burst_bits: u64,
}

impl Shaping {
    /// `rate_mbps` Mbit/s with the Kubernetes runtimes' burst.
    pub const fn kubernetes(rate_mbps: u64) -> Shaping {
        Shaping {
            rate_bps: rate_mbps * 1_000_000,
            burst_bits: KUBERNETES_DEFAULT_BURST_BITS,
        }
    }
}

/// The limits of one pod, by direction from the pod's side; `None` leaves a direction alone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Into the pod (`ingressRate` / `ingressBurst`).
    pub ingress: Option<Shaping>,
    /// Out of the pod (`egressRate` / `egressBurst`).
    pub egress: Option<Shaping>,
}

/// The network configuration a runtime writes to the plugin's standard input: the plugin's own
/// section, flattened, plus the previous plugin's result listing the host-side veth (no
/// sandbox) and the pod-side one (sandbox = the pod's namespace path).
pub fn netconf(
    limits: &Limits,
    host_if: &str,
    host_mac: &str,
    pod_if: &str,
    pod_netns: &str,
    pod_addr_cidr: &str,
) -> Value {
    let mut conf = json!({
        "cniVersion": "1.0.0",
        "name": NETWORK_NAME,
        "type": "bandwidth",
        "prevResult": {
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": host_if, "mac": host_mac},
                {"name": pod_if, "sandbox": pod_netns}
            ],
            "ips": [{"address": pod_addr_cidr, "interface": 1}]
        }
    });
    for (prefix, shaping) in [("ingress", limits.ingress), ("egress", limits.egress)] {
        if let Some(s) = shaping {
            conf[format!("{prefix}Rate")] = json!(s.rate_bps);
            conf[format!("{prefix}Burst")] = json!(s.burst_bits);
        }
    }
    conf
}

/// The plugin's limits on one pod: added on creation, deleted (`DEL`) on drop.
#[derive(Debug)]
pub struct BandwidthPlugin {
    host_ns: String,
    pod_netns: PathBuf,
    pod_if: String,
    container_id: String,
    conf: Value,
    deleted: bool,
}

impl BandwidthPlugin {
    /// Runs `ADD` for the pod end of `link` with `limits`, as its runtime would after the plugin
    /// that created the veth. Returns the plugin's result.
    pub fn add(link: &PodLink, limits: &Limits) -> anyhow::Result<(BandwidthPlugin, Value)> {
        let host_mac = veth::link_info(link.host(), link.host_if())?.address;
        let conf = netconf(
            limits,
            link.host_if(),
            &host_mac,
            link.pod_if(),
            &link.pod().path().to_string_lossy(),
            &format!(
                "{}/{}",
                crate::topology::POD_ADDR,
                crate::topology::PREFIX_LEN
            ),
        );
        let mut plugin = BandwidthPlugin {
            host_ns: link.host().name().to_owned(),
            pod_netns: link.pod().path(),
            pod_if: link.pod_if().to_owned(),
            container_id: format!("sidelane-{}", link.pod().name()),
            conf,
            deleted: true,
        };
        let out = plugin.invoke("ADD")?;
        plugin.deleted = false;
        let result = serde_json::from_str(&out)
            .with_context(|| format!("parsing the bandwidth plugin's result: {out}"))?;
        Ok((plugin, result))
    }

    /// Runs `DEL`: the plugin removes its ifb device. (The tbf on the host veth goes with the
    /// veth, which the runtime deletes next; [`Self::remove_qdiscs`] does it for a veth that
    /// stays.)
    pub fn del(mut self) -> anyhow::Result<()> {
        self.deleted = true;
        self.invoke("DEL").map(drop)
    }

    /// Removes the root and ingress qdiscs the plugin put on the host veth.
    pub fn remove_qdiscs(host: &NetNs, host_if: &str) -> anyhow::Result<()> {
        for parent in ["root", "ingress"] {
            let finished = process::run(
                &mut host.command(&["tc", "qdisc", "del", "dev", host_if, parent]),
                None,
                PLUGIN_TIMEOUT,
            )?;
            // "Cannot find specified qdisc" / "No such file": already gone.
            if !finished.status.success()
                && !finished.stderr.contains("Cannot find")
                && !finished.stderr.contains("No such file")
                && !finished.stderr.contains("Invalid handle")
            {
                finished.checked()?;
            }
        }
        Ok(())
    }

    /// The configuration passed on standard input to `ADD` and `DEL`.
    pub fn conf(&self) -> &Value {
        &self.conf
    }

    fn invoke(&self, verb: &str) -> anyhow::Result<String> {
        let stdin = serde_json::to_vec(&self.conf).context("serialising the netconf")?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.host_ns, PLUGIN])
            .env("CNI_COMMAND", verb)
            .env("CNI_CONTAINERID", &self.container_id)
            .env("CNI_NETNS", &self.pod_netns)
            .env("CNI_IFNAME", &self.pod_if)
            .env("CNI_PATH", CNI_PATH);
        let finished = process::run(&mut cmd, Some(&stdin), PLUGIN_TIMEOUT)?;
        if !finished.status.success() {
            // The plugin prints its error as JSON ({"code", "msg"}) on standard output.
            bail!(
                "bandwidth plugin {verb} failed ({}): {} {}",
                finished.status,
                finished.stdout.trim(),
                finished.stderr.trim()
            );
        }
        Ok(finished.stdout)
    }
}

impl Drop for BandwidthPlugin {
    fn drop(&mut self) {
        if !self.deleted
            && let Err(e) = self.invoke("DEL")
        {
            eprintln!("warning: {e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_netconf_carries_rates_in_bits_and_the_previous_result() {
        let conf = netconf(
            &Limits {
                ingress: Some(Shaping::kubernetes(100)),
                egress: None,
            },
            "veth0",
            "aa:bb:cc:dd:ee:ff",
            "net1",
            "/run/netns/pod",
            "10.0.0.2/24",
        );
        assert_eq!(conf["cniVersion"], "1.0.0");
        assert_eq!(conf["type"], "bandwidth");
        assert_eq!(conf["ingressRate"], 100_000_000);
        assert_eq!(conf["ingressBurst"], 4_294_967_295_u64);
        assert!(conf.get("egressRate").is_none());
        let interfaces = &conf["prevResult"]["interfaces"];
        assert_eq!(interfaces[0]["name"], "veth0");
        assert!(interfaces[0].get("sandbox").is_none());
        assert_eq!(interfaces[1]["sandbox"], "/run/netns/pod");
    }
}
