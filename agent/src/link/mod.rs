//! A pod's OVN-backed secondary interface: a veth pair whose pod end becomes net1..netN inside
//! the pod's namespace, configured as allocated, and whose host end waits for OVS.
//!
//! Netlink sockets are opened inside each namespace ([`crate::netns::run_in`]), netavark's way.
//! Creation is all-or-nothing: a failure removes the pair. The pod's other interfaces (eth0 of
//! the primary CNI) and its default route are never touched unless the plan asks for a route
//! without destination.

pub mod netlink;
mod ops;

pub use ops::{Kernel, Links};

use std::{
    fs::File,
    io,
    net::IpAddr,
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _},
    path::Path,
};

use ipnet::IpNet;
use thiserror::Error;

use crate::netns::{self, NetnsError};

/// The longest Linux interface name.
pub const IFNAMSIZ_MAX: usize = 15;

/// Creating or removing a pod interface failed.
#[derive(Debug, Error)]
pub enum LinkError {
    /// A name cannot be used.
    #[error("interface name {name:?}: {reason}")]
    BadName {
        /// The name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// The pod already has an interface of that name.
    #[error("the pod namespace {netns} already has an interface {ifname:?}")]
    Exists {
        /// The namespace.
        netns: String,
        /// The name.
        ifname: String,
    },
    /// A MAC does not parse.
    #[error("MAC address {0:?} is not six hex octets")]
    BadMac(String),
    /// A netlink or file operation failed.
    #[error("{op} {object}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// To what.
        object: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A namespace could not be entered.
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

fn io_err(op: &'static str, object: impl Into<String>) -> impl FnOnce(io::Error) -> LinkError {
    let object = object.into();
    move |source| LinkError::Io { op, object, source }
}

/// The ends of an OVN-backed attachment's veth pairs, each named after the container and the
/// interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VethEnd {
    /// The host end of the pod's pair (`_h`): QoS and the fast path sit on it.
    Host,
    /// The pod end's temporary name in the host namespace before it moves (`_c`).
    PodTemporary,
    /// With OVS's userspace datapath and the fast path: where frames for OVS leave (`_o`).
    OvsSide,
    /// ... and its peer, the port OVS reads (`_p`).
    OvsPort,
}

impl VethEnd {
    fn suffix(self) -> char {
        match self {
            VethEnd::Host => 'h',
            VethEnd::PodTemporary => 'c',
            VethEnd::OvsSide => 'o',
            VethEnd::OvsPort => 'p',
        }
    }
}

/// Kube-OVN's host-end name: `<cid[:12]>_h` for eth0, else `<cid[:12-len(if)]>_<if>_h`
/// (at most 15 bytes); the other ends differ in the last letter.
pub fn veth_name(container_id: &str, ifname: &str, end: VethEnd) -> Result<String, LinkError> {
    let suffix = end.suffix();
    let bad = |reason| LinkError::BadName {
        name: ifname.to_owned(),
        reason,
    };
    if ifname.is_empty() || ifname.len() > IFNAMSIZ_MAX || ifname.contains(['/', ' ']) {
        return Err(bad("must be 1 to 15 bytes without '/' or spaces"));
    }
    if container_id.is_empty() || !container_id.is_ascii() {
        return Err(LinkError::BadName {
            name: container_id.to_owned(),
            reason: "the container ID must be non-empty ASCII",
        });
    }
    let name = if ifname == "eth0" {
        format!("{}_{suffix}", &container_id[..container_id.len().min(12)])
    } else {
        let keep = 12usize.saturating_sub(ifname.len());
        if keep == 0 {
            return Err(bad(
                "too long to derive a host-end name from (at most 11 bytes)",
            ));
        }
        format!(
            "{}_{ifname}_{suffix}",
            &container_id[..container_id.len().min(keep)]
        )
    };
    Ok(name)
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(mac: &str) -> Result<[u8; 6], LinkError> {
    sidelane_api::mac::parse(mac).ok_or_else(|| LinkError::BadMac(mac.to_owned()))
}

/// What the pod end should look like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInterfacePlan {
    /// The name inside the pod (`net1`).
    pub ifname: String,
    /// The MAC.
    pub mac: Option<[u8; 6]>,
    /// The MTU (both ends).
    pub mtu: Option<u32>,
    /// Addresses with prefixes.
    pub addresses: Vec<IpNet>,
    /// Routes: destination (`0.0.0.0/0` for a default route) and gateway.
    pub routes: Vec<(IpNet, Option<IpAddr>)>,
}

fn index_of(ifname: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(ifname).ok()
}

/// Creates the pair: `host_name` in `host_netns` (`None`: the agent's own) and the pod end
/// configured by `plan` in `pod_netns`. All or nothing.
pub fn create(
    host_netns: Option<&Path>,
    host_name: &str,
    pod_netns: &Path,
    temp_name: &str,
    plan: &PodInterfacePlan,
) -> Result<(), LinkError> {
    let pod_ns = pod_netns.display().to_string();
    if netns::run_in(Some(pod_netns), || index_of(&plan.ifname))?.is_some() {
        return Err(LinkError::Exists {
            netns: pod_ns,
            ifname: plan.ifname.clone(),
        });
    }
    let pod_file =
        File::open(pod_netns).map_err(io_err("opening the pod namespace", pod_ns.clone()))?;
    netns::run_in(host_netns, || -> Result<(), LinkError> {
        let mut nl =
            Netlink::open().map_err(io_err("opening rtnetlink in", "the host namespace"))?;
        nl.add_veth(host_name, temp_name, pod_file.as_fd())
            .map_err(io_err("creating veth", host_name))?;
        let index = index_of(host_name).ok_or_else(|| LinkError::Io {
            op: "finding",
            object: host_name.to_owned(),
            source: io::Error::from(io::ErrorKind::NotFound),
        })?;
        nl.configure_link(index, None, None, plan.mtu, true)
            .map_err(io_err("bringing up", host_name))
    })??;
    let configured = netns::run_in(Some(pod_netns), || configure_pod_end(temp_name, plan))
        .map_err(LinkError::from)
        .and_then(|r| r);
    if configured.is_err() {
        // All or nothing: removing the host end removes the pod end too.
        let _ = delete(host_netns, host_name);
    }
    configured
}

use netlink::Netlink;

fn configure_pod_end(temp_name: &str, plan: &PodInterfacePlan) -> Result<(), LinkError> {
    let ifname = plan.ifname.as_str();
    let mut nl = Netlink::open().map_err(io_err("opening rtnetlink in", "the pod namespace"))?;
    let index = index_of(temp_name).ok_or_else(|| LinkError::Io {
        op: "finding",
        object: temp_name.to_owned(),
        source: io::Error::from(io::ErrorKind::NotFound),
    })?;
    nl.configure_link(index, Some(ifname), plan.mac, plan.mtu, false)
        .map_err(io_err("naming and configuring", ifname))?;
    if plan.addresses.iter().any(|a| matches!(a, IpNet::V6(_))) {
        // Kube-OVN enables IPv6 in the pod and turns router advertisements off on the NIC.
        for (path, value) in [
            ("/proc/sys/net/ipv6/conf/all/disable_ipv6".to_owned(), "0"),
            (format!("/proc/sys/net/ipv6/conf/{ifname}/accept_ra"), "0"),
        ] {
            std::fs::write(&path, value).map_err(io_err("writing", path.clone()))?;
        }
    }
    for addr in &plan.addresses {
        nl.add_address(index, *addr)
            .map_err(io_err("adding an address to", format!("{ifname} ({addr})")))?;
    }
    nl.configure_link(index, None, None, None, true)
        .map_err(io_err("bringing up", ifname))?;
    for (dst, gw) in &plan.routes {
        nl.replace_route(index, *dst, *gw).map_err(io_err(
            "adding a route on",
            format!("{ifname} ({dst} via {gw:?})"),
        ))?;
    }
    Ok(())
}

/// `SIOCETHTOOL`, and `ETHTOOL_STXCSUM` with its argument (`struct ethtool_value`).
const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_STXCSUM: u32 = 0x17;

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

#[repr(C)]
struct IfreqData {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: *mut EthtoolValue,
    _pad: [u8; 16],
}

/// Turns TX checksum offload off on `ifname` in `netns` (`ethtool -K <if> tx off`): OVS's
/// userspace datapath forwards frames whose checksum a veth left for hardware to fill in.
pub fn disable_tx_checksum(netns: Option<&Path>, ifname: &str) -> Result<(), LinkError> {
    if ifname.len() >= libc::IFNAMSIZ {
        return Err(LinkError::Io {
            op: "turning TX checksum offload off on",
            object: ifname.to_owned(),
            source: io::Error::from(io::ErrorKind::InvalidInput),
        });
    }
    netns::run_in(netns, || -> Result<(), LinkError> {
        let err = |source| LinkError::Io {
            op: "turning TX checksum offload off on",
            object: ifname.to_owned(),
            source,
        };
        // SAFETY: a plain datagram socket; the descriptor is owned right away.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh, valid descriptor nobody else owns.
        let sock = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let mut value = EthtoolValue {
            cmd: ETHTOOL_STXCSUM,
            data: 0,
        };
        let mut req = IfreqData {
            name: [0; libc::IFNAMSIZ],
            data: &raw mut value,
            _pad: [0; 16],
        };
        for (dst, src) in req.name.iter_mut().zip(ifname.bytes()) {
            *dst = libc::c_char::from_ne_bytes([src]);
        }
        // SAFETY: `req` is a valid ifreq whose data points at a live ethtool_value for the
        // duration of the call.
        let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL, &raw mut req) };
        if rc < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        Ok(())
    })?
}

/// Compares the pod end in `pod_netns` with `plan`: every difference found (a missing
/// interface, address or route, a wrong MAC), empty when it is as planned.
pub fn verify(pod_netns: &Path, plan: &PodInterfacePlan) -> Result<Vec<String>, LinkError> {
    netns::run_in(Some(pod_netns), || {
        let ifname = plan.ifname.as_str();
        let Some(index) = index_of(ifname) else {
            return Ok(vec![format!("interface {ifname} is missing")]);
        };
        let mut nl =
            Netlink::open().map_err(io_err("opening rtnetlink in", "the pod namespace"))?;
        let mut differences = Vec::new();
        let present = nl
            .addresses(index)
            .map_err(io_err("listing the addresses of", ifname))?;
        for addr in &plan.addresses {
            if !present.contains(addr) {
                differences.push(format!("address {addr} is missing on {ifname}"));
            }
        }
        let routes = nl
            .routes(index)
            .map_err(io_err("listing the routes of", ifname))?;
        for (dst, gw) in &plan.routes {
            let found = routes
                .iter()
                .any(|(d, g)| d.trunc() == dst.trunc() && g == gw);
            if !found {
                let via = gw.map_or_else(String::new, |g| format!(" via {g}"));
                differences.push(format!("route {dst}{via} dev {ifname} is missing"));
            }
        }
        if let Some(want) = plan.mac {
            let have = nl
                .mac(index)
                .map_err(io_err("reading the MAC of", ifname))?;
            if have.as_deref() != Some(&want[..]) {
                differences.push(format!("{ifname} has MAC {have:02x?}, not {want:02x?}"));
            }
        }
        Ok(differences)
    })?
}

/// Deletes the host end `host_name` (and so the pod end). `false` if it did not exist.
/// Creates a veth pair with both ends in `host_netns` (`None`: the agent's own), both up with
/// `mtu`: the device pair through which OVS's userspace datapath reads a pod (see the fast
/// path). A pair already there (a repeated ADD) is left as it is.
pub fn create_host_pair(
    host_netns: Option<&Path>,
    a: &str,
    b: &str,
    mtu: Option<u32>,
) -> Result<(), LinkError> {
    netns::run_in(host_netns, || -> Result<(), LinkError> {
        if index_of(a).is_some() && index_of(b).is_some() {
            return Ok(());
        }
        let mut nl =
            Netlink::open().map_err(io_err("opening rtnetlink in", "the host namespace"))?;
        let here = File::open("/proc/thread-self/ns/net")
            .map_err(io_err("opening", "the host namespace"))?;
        nl.add_veth(a, b, here.as_fd())
            .map_err(io_err("creating veth", a))?;
        for name in [a, b] {
            let index = index_of(name).ok_or_else(|| LinkError::Io {
                op: "finding",
                object: name.to_owned(),
                source: io::Error::from(io::ErrorKind::NotFound),
            })?;
            nl.configure_link(index, None, None, mtu, true)
                .map_err(io_err("bringing up", name))?;
        }
        Ok(())
    })?
}

pub fn delete(host_netns: Option<&Path>, host_name: &str) -> Result<bool, LinkError> {
    netns::run_in(host_netns, || {
        let Some(index) = index_of(host_name) else {
            return Ok(false);
        };
        let mut nl =
            Netlink::open().map_err(io_err("opening rtnetlink in", "the host namespace"))?;
        match nl.delete_link(index) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(io_err("deleting", host_name)(e)),
        }
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_end_names_follow_kube_ovn_and_fit_fifteen_bytes() {
        let cid = "3f2a9c0d5e7b41aa8c1d";
        assert_eq!(
            veth_name(cid, "eth0", VethEnd::Host).expect("valid"),
            "3f2a9c0d5e7b_h"
        );
        assert_eq!(
            veth_name(cid, "net1", VethEnd::Host).expect("valid"),
            "3f2a9c0d_net1_h"
        );
        assert_eq!(
            veth_name(cid, "net1", VethEnd::PodTemporary).expect("valid"),
            "3f2a9c0d_net1_c"
        );
        assert_eq!(
            veth_name(cid, "storage0", VethEnd::Host).expect("valid"),
            "3f2a_storage0_h"
        );
        for ifname in ["net1", "eth0", "abcdefghijk"] {
            assert!(veth_name(cid, ifname, VethEnd::Host).expect("valid").len() <= IFNAMSIZ_MAX);
        }
        assert!(veth_name(cid, "abcdefghijkl", VethEnd::Host).is_err());
        assert!(veth_name(cid, "a/b", VethEnd::Host).is_err());
    }

    #[test]
    fn macs_parse_and_bad_ones_are_named() {
        assert_eq!(
            parse_mac("00:00:00:8a:3c:4f").expect("valid"),
            [0, 0, 0, 0x8a, 0x3c, 0x4f]
        );
        let err = parse_mac("00:00:00:8a:3c").expect_err("short");
        assert!(err.to_string().contains("00:00:00:8a:3c"), "{err}");
        assert!(parse_mac("00:00:00:8a:3c:4f:00").is_err());
    }
}
