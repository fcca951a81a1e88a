//! Fast-path ABI: the maps and programs that forward unicast between two pods on the same node
//! straight from one pod's host-side veth into the other pod, past the OVS datapath, with OVN's
//! port security kept: pods of one logical switch as OVN switches them, and pods of two Subnets
//! of one Vpc as its router routes them (TTL or hop limit decremented, the source MAC the
//! router port's on the receiver's switch, the destination MAC the receiver's).
//!
//! One object is loaded per node and its maps are shared by every attachment:
//!
//! - [`SOURCES_MAP`]: by the ifindex of an attachment's host end, what may leave it on the fast
//!   path ([`Source`]: its switch, its own MAC and addresses) and where frames the fast path does
//!   not take go ([`Source::miss_ifindex`]).
//! - [`ENDPOINTS_MAP`]: by ([`EndpointKey`]: switch, IP), the local pod that owns the address
//!   ([`Endpoint`]: its host end's ifindex and MAC).
//! - [`TO_POD_MAP`]: on nodes whose OVS runs the userspace datapath, by the ifindex of the
//!   device OVS writes to, the host end to deliver to.
//! - [`ROUTED_MAP`]: by ([`EndpointKey`]: routing domain, IP), the local pod that owns the
//!   address, for frames a source on a routed Subnet sends to its gateway's MAC.
//! - [`COUNTERS_MAP`]: per-CPU [`FastpathCounters`] by the attachment's slot.
//! - [`PAIRS_MAP`]: the pairs of attachments, one of them in a security group, whose traffic
//!   OVN passes whole both ways ([`PairKey`]); between an isolated attachment and any other,
//!   only these are fast-pathed.
//!
//! Addresses are 16 bytes: IPv6 as is, IPv4 mapped (`::ffff:a.b.c.d`).

/// Hash of [`Source`] by host-end ifindex (`u32`), for ifindexes from [`DIRECT_IFINDEXES`] up.
pub const SOURCES_MAP: &str = "SL_FP_SOURCES";
/// Array of [`Source`] indexed by host-end ifindex below [`DIRECT_IFINDEXES`]: an array lookup
/// costs a few nanoseconds where a hash lookup costs fifteen, and a node's ifindexes stay small
/// until tens of thousands of pods have come and gone. An entry is in use when
/// [`SOURCE_IN_USE`] is set.
pub const SOURCES_DIRECT_MAP: &str = "SL_FP_SOURCES_DIRECT";
/// Hash of [`Endpoint`] by [`EndpointKey`].
pub const ENDPOINTS_MAP: &str = "SL_FP_ENDPOINTS";
/// Hash of [`Endpoint`] by [`EndpointKey`] whose `switch` is a routing domain (a Vpc's
/// number): the endpoints a source on one of the Vpc's routed Subnets reaches through the
/// router.
pub const ROUTED_MAP: &str = "SL_FP_ROUTED";
/// Hash of the host end's ifindex (`u32`) by the ifindex of the device OVS writes to (`u32`).
pub const TO_POD_MAP: &str = "SL_FP_TO_POD";
/// Per-CPU array of [`FastpathCounters`] by slot.
pub const COUNTERS_MAP: &str = "SL_FP_COUNTERS";
/// Hash of `1` by [`PairKey`].
pub const PAIRS_MAP: &str = "SL_FP_PAIRS";
/// Every map of the fast-path object, for pinning.
pub const MAPS: [&str; 7] = [
    SOURCES_MAP,
    SOURCES_DIRECT_MAP,
    ENDPOINTS_MAP,
    ROUTED_MAP,
    TO_POD_MAP,
    COUNTERS_MAP,
    PAIRS_MAP,
];

/// A map's shape as the kernel holds it: what a pinned map must match to be reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapLayout {
    /// The map's name.
    pub name: &'static str,
    /// Key size, bytes.
    pub key_size: u32,
    /// Value size, bytes.
    pub value_size: u32,
    /// Maximum entries.
    pub max_entries: u32,
}

#[expect(
    clippy::cast_possible_truncation,
    reason = "map keys and values are a few dozen bytes"
)]
const fn layout<K, V>(name: &'static str, max_entries: u32) -> MapLayout {
    MapLayout {
        name,
        key_size: size_of::<K>() as u32,
        value_size: size_of::<V>() as u32,
        max_entries,
    }
}

/// Every map of the fast-path object as this version declares it. An agent must not reuse
/// maps pinned by a version whose layouts differ: the programs would read past their values.
pub const LAYOUTS: [MapLayout; 7] = [
    layout::<u32, Source>(SOURCES_MAP, MAX_ATTACHMENTS),
    layout::<u32, Source>(SOURCES_DIRECT_MAP, DIRECT_IFINDEXES),
    layout::<EndpointKey, Endpoint>(ENDPOINTS_MAP, MAX_ENDPOINTS),
    layout::<EndpointKey, Endpoint>(ROUTED_MAP, MAX_ENDPOINTS),
    layout::<u32, u32>(TO_POD_MAP, MAX_ATTACHMENTS),
    layout::<u32, FastpathCounters>(COUNTERS_MAP, MAX_ATTACHMENTS),
    layout::<PairKey, u32>(PAIRS_MAP, MAX_PAIRS),
];

/// Host-end ifindexes below this are looked up in [`SOURCES_DIRECT_MAP`].
pub const DIRECT_IFINDEXES: u32 = 16384;

/// On the TC ingress hook of an attachment's host end: forward or hand to OVS.
pub const PROG_FORWARD: &str = "sl_fastpath";
/// On the TC ingress hook of the device OVS's userspace datapath writes a pod's frames to:
/// deliver them to the pod's host end.
pub const PROG_TO_POD: &str = "sl_fastpath_to_pod";

/// Attachments a node can hold (sources, and counter slots).
pub const MAX_ATTACHMENTS: u32 = 4096;
/// Addresses a node's endpoints can hold (two per dual-stack attachment).
pub const MAX_ENDPOINTS: u32 = 2 * MAX_ATTACHMENTS;
/// Allowed pairs a node can hold (each direction and family is one entry).
pub const MAX_PAIRS: u32 = 65536;

/// [`Source::flags`]: `ip4` is the attachment's IPv4 address.
pub const SOURCE_HAS_V4: u32 = 1;
/// [`Source::flags`]: `ip6` is the attachment's IPv6 address.
pub const SOURCE_HAS_V6: u32 = 2;
/// [`Source::flags`]: the entry is in use (entries of [`SOURCES_DIRECT_MAP`] start zeroed).
pub const SOURCE_IN_USE: u32 = 4;
/// [`Source::flags`]: the attachment is in a security group: its frames take the fast path
/// only to peers in [`PAIRS_MAP`].
pub const SOURCE_ISOLATED: u32 = 8;
/// [`Endpoint::flags`]: the pod has an `ingress_rate`: deliver through its host end's egress
/// hook (`bpf_redirect`), where its policer runs, rather than straight into the pod
/// (`bpf_redirect_peer`), which would pass it by.
pub const ENDPOINT_POLICED: u32 = 1;
/// [`Endpoint::flags`]: the pod is in a security group: frames reach it on the fast path only
/// from peers in [`PAIRS_MAP`].
pub const ENDPOINT_ISOLATED: u32 = 2;

/// One direction of one family between two attachments, by their host ends' ifindexes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PairKey {
    /// The sender's host end.
    pub src: u32,
    /// The receiver's host end.
    pub dst: u32,
    /// 4 or 6.
    pub family: u32,
}

/// What may leave one attachment on the fast path.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Source {
    /// The logical switch (the agent's number for it).
    pub switch: u32,
    /// The attachment's counter slot.
    pub slot: u32,
    /// Where frames not fast-pathed go (`bpf_redirect` to this device's egress), or 0: on to
    /// OVS (the kernel datapath's rx handler runs after TC ingress).
    pub miss_ifindex: u32,
    /// [`SOURCE_HAS_V4`], [`SOURCE_HAS_V6`].
    pub flags: u32,
    /// The attachment's MAC (port security).
    pub mac: [u8; 6],
    /// Explicit padding.
    pub pad: [u8; 2],
    /// The attachment's IPv4 address (network order).
    pub ip4: [u8; 4],
    /// The attachment's IPv6 address.
    pub ip6: [u8; 16],
    /// Its routing domain (the Vpc's number) when frames it sends to its gateway may be routed
    /// on the fast path, else [`DOMAIN_OFF`].
    pub domain: u32,
    /// Its gateway's MAC: the MAC of the Vpc router's port on its switch.
    pub gw_mac: [u8; 6],
    /// Explicit padding.
    pub pad2: [u8; 2],
}

/// The routing domain that is never an endpoint's: a source in it is never routed.
pub const DOMAIN_OFF: u32 = 0;

/// An address on a logical switch (or, in [`ROUTED_MAP`], in a routing domain).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointKey {
    /// The logical switch.
    pub switch: u32,
    /// The address (IPv4 mapped).
    pub ip: [u8; 16],
}

impl EndpointKey {
    /// The key of an IPv4 address.
    pub const fn v4(switch: u32, ip: [u8; 4]) -> EndpointKey {
        EndpointKey {
            switch,
            ip: [
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, ip[0], ip[1], ip[2], ip[3],
            ],
        }
    }

    /// The key of an IPv6 address.
    pub const fn v6(switch: u32, ip: [u8; 16]) -> EndpointKey {
        EndpointKey { switch, ip }
    }
}

/// The local pod that owns an address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// Its host end's ifindex.
    pub ifindex: u32,
    /// [`ENDPOINT_POLICED`].
    pub flags: u32,
    /// Its MAC: a frame is fast-pathed only if sent to it (on a routed frame, written as the
    /// destination).
    pub mac: [u8; 6],
    /// Explicit padding.
    pub pad: [u8; 2],
    /// The MAC of the Vpc router's port on its switch: a routed frame leaves the router from
    /// there, so it is written as the source ([`ROUTED_MAP`] entries only).
    pub router_mac: [u8; 6],
    /// Explicit padding.
    pub pad2: [u8; 2],
}

/// What the fast path did with one attachment's frames (per CPU; the agent sums).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FastpathCounters {
    /// Frames forwarded on the fast path.
    pub hits: u64,
    /// Their bytes.
    pub hit_bytes: u64,
    /// Frames handed to OVS (not for a local endpoint of the switch, or not unicast IP).
    pub misses: u64,
    /// Frames for a local endpoint whose source MAC or IP is not the sender's own: never
    /// fast-pathed, handed to OVS (whose port security drops them).
    pub spoofed: u64,
    /// Frames between an isolated attachment and a local peer whose traffic OVN does not pass
    /// whole: handed to OVS, whose ACLs decide.
    pub isolated: u64,
    /// Of the hits, frames routed between two Subnets of a Vpc.
    pub routed: u64,
    /// Routed frames whose TTL or hop limit would expire at the router: handed to OVS, whose
    /// router answers with ICMP time exceeded.
    pub expired: u64,
}

impl FastpathCounters {
    /// Sums per-CPU values.
    #[must_use]
    pub fn merged(self, other: FastpathCounters) -> FastpathCounters {
        FastpathCounters {
            hits: self.hits + other.hits,
            hit_bytes: self.hit_bytes + other.hit_bytes,
            misses: self.misses + other.misses,
            spoofed: self.spoofed + other.spoofed,
            isolated: self.isolated + other.isolated,
            routed: self.routed + other.routed,
            expired: self.expired + other.expired,
        }
    }
}

/// The IPv4 header checksum after the TTL is decremented by one, as the kernel's
/// `ip_decrease_ttl` updates it (RFC 1624): the TTL is the high byte of its 16-bit word, so the
/// checksum grows by `0x0100` with the carry folded back in. `check` is as the header holds it.
#[must_use]
pub const fn checksum_after_ttl_decrement(check: [u8; 2]) -> [u8; 2] {
    let (sum, carried) = u16::from_be_bytes(check).overflowing_add(0x0100);
    // The carry folds back in; a sum of 0xffff becomes 0, as the kernel writes it.
    let folded = if carried || sum == 0xffff {
        sum.wrapping_add(1)
    } else {
        sum
    };
    folded.to_be_bytes()
}

#[cfg(feature = "user")]
mod user {
    use super::{Endpoint, EndpointKey, FastpathCounters, PairKey, Source};

    // SAFETY: `#[repr(C)]`, `Copy`, only integer fields and explicit padding: every bit pattern
    // is a valid value and there are no implicit padding bytes.
    unsafe impl aya::Pod for Source {}
    // SAFETY: as above.
    unsafe impl aya::Pod for EndpointKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Endpoint {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FastpathCounters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PairKey {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<Source>(), 4 * 4 + 8 + 4 + 16 + 4 + 8);
        assert_eq!(size_of::<EndpointKey>(), 20);
        assert_eq!(size_of::<Endpoint>(), 24);
        assert_eq!(size_of::<FastpathCounters>(), 56);
        assert_eq!(size_of::<PairKey>(), 12);
    }

    /// The IPv4 header checksum computed whole.
    fn checksum(header: &[u8; 20]) -> [u8; 2] {
        let mut sum: u32 = 0;
        for (i, w) in header.chunks(2).enumerate() {
            if i != 5 {
                sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
            }
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        (!u16::try_from(sum).expect("folded to 16 bits")).to_be_bytes()
    }

    #[test]
    fn a_decremented_ttl_leaves_the_same_checksum_as_computing_it_whole() {
        let mut header = [
            0x45, 0, 0, 84, 0x12, 0x34, 0x40, 0, 64, 1, 0, 0, 10, 1, 0, 5, 10, 2, 0, 7,
        ];
        for ttl in [2u8, 17, 64, 128, 255] {
            for id in [0u16, 0x1234, 0xbeef, 0xfeff, 0xffff] {
                header[4..6].copy_from_slice(&id.to_be_bytes());
                header[8] = ttl;
                let before = checksum(&header);
                header[8] = ttl - 1;
                let after = checksum(&header);
                assert_eq!(
                    checksum_after_ttl_decrement(before),
                    after,
                    "ttl {ttl}, id {id:#x}"
                );
            }
        }
    }

    #[test]
    fn every_map_has_a_layout() {
        assert_eq!(LAYOUTS.map(|l| l.name), MAPS);
        assert_eq!(LAYOUTS[0].value_size, 56);
    }

    #[test]
    fn ipv4_keys_are_v4_mapped() {
        let k = EndpointKey::v4(7, [10, 0, 0, 1]);
        assert_eq!(k.ip[10..], [0xff, 0xff, 10, 0, 0, 1]);
        assert_eq!(k.switch, 7);
    }
}
