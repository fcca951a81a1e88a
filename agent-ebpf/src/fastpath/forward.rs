//! The fast path's decisions, with explicit bounds checks on every header read.

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    helpers::generated::{bpf_redirect, bpf_redirect_peer},
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
    programs::TcContext,
};
use sidelane_agent_common::fastpath::{
    DIRECT_IFINDEXES, DOMAIN_OFF, ENDPOINT_ISOLATED, ENDPOINT_POLICED, Endpoint, EndpointKey,
    FastpathCounters, MAX_ATTACHMENTS, MAX_ENDPOINTS, MAX_PAIRS, PairKey, SOURCE_HAS_V4,
    SOURCE_HAS_V6, SOURCE_IN_USE, SOURCE_ISOLATED, Source, checksum_after_ttl_decrement,
};

#[map(name = "SL_FP_SOURCES")]
static SOURCES: HashMap<u32, Source> = HashMap::pinned(MAX_ATTACHMENTS, 0);

#[map(name = "SL_FP_SOURCES_DIRECT")]
static SOURCES_DIRECT: Array<Source> = Array::pinned(DIRECT_IFINDEXES, 0);

#[map(name = "SL_FP_ENDPOINTS")]
static ENDPOINTS: HashMap<EndpointKey, Endpoint> = HashMap::pinned(MAX_ENDPOINTS, 0);

#[map(name = "SL_FP_ROUTED")]
static ROUTED: HashMap<EndpointKey, Endpoint> = HashMap::pinned(MAX_ENDPOINTS, 0);

#[map(name = "SL_FP_TO_POD")]
static TO_POD: HashMap<u32, u32> = HashMap::pinned(MAX_ATTACHMENTS, 0);

#[map(name = "SL_FP_COUNTERS")]
static COUNTERS: PerCpuArray<FastpathCounters> = PerCpuArray::pinned(MAX_ATTACHMENTS, 0);

#[map(name = "SL_FP_PAIRS")]
static PAIRS: HashMap<PairKey, u32> = HashMap::pinned(MAX_PAIRS, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IPV4_MIN_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;

/// Offsets within the IPv4 and IPv6 headers.
const IPV4_TTL: usize = 8;
const IPV4_CHECK: usize = 10;
const IPV6_HOP_LIMIT: usize = 7;

enum Decision {
    /// For this local endpoint, from the sender's own MAC and address.
    Hit(Endpoint),
    /// For this local endpoint on another Subnet of the sender's Vpc, sent to the gateway by the
    /// sender from its own MAC and address, with a TTL (or hop limit) the router decrements
    /// without expiring; family 4 or 6.
    Routed(Endpoint, u32),
    /// Routed, but the TTL or hop limit would expire at the router.
    Expired,
    /// Not for a local endpoint of the switch (or not unicast IP).
    Miss,
    /// For a local endpoint, but not from the sender's own MAC and address.
    Spoofed,
    /// Between an isolated attachment and a local peer OVN does not pass whole.
    Isolated,
}

#[inline(always)]
fn mac_at(p: usize) -> [u8; 6] {
    // SAFETY: the caller checked that 6 bytes at `p` lie within the packet.
    unsafe { core::ptr::read_unaligned(p as *const [u8; 6]) }
}

#[inline(always)]
fn decide(ctx: &TcContext, src: &Source, ifindex: u32) -> Decision {
    let data = ctx.data();
    let end = ctx.data_end();
    if data + ETH_HLEN > end {
        return Decision::Miss;
    }
    let dst_mac = mac_at(data);
    if dst_mac[0] & 1 != 0 {
        // Broadcast and multicast: OVS floods or drops them as OVN says.
        return Decision::Miss;
    }
    let src_mac = mac_at(data + 6);
    // Sent to the gateway: the Vpc's router would route it.
    let routed = src.domain != DOMAIN_OFF && dst_mac == src.gw_mac;
    let scope = if routed { src.domain } else { src.switch };
    // SAFETY: within the Ethernet header checked above.
    let ethertype = u16::from_be(unsafe { core::ptr::read_unaligned((data + 12) as *const u16) });
    let l3 = data + ETH_HLEN;
    let (key, source_ok, family, hops) = match ethertype {
        ETH_P_IP => {
            if l3 + IPV4_MIN_HLEN > end {
                return Decision::Miss;
            }
            // SAFETY: within the IPv4 header checked above.
            let (saddr, daddr, ttl) = unsafe {
                (
                    core::ptr::read_unaligned((l3 + 12) as *const [u8; 4]),
                    core::ptr::read_unaligned((l3 + 16) as *const [u8; 4]),
                    *((l3 + IPV4_TTL) as *const u8),
                )
            };
            (
                EndpointKey::v4(scope, daddr),
                src.flags & SOURCE_HAS_V4 != 0 && saddr == src.ip4,
                4,
                ttl,
            )
        }
        ETH_P_IPV6 => {
            if l3 + IPV6_HLEN > end {
                return Decision::Miss;
            }
            // SAFETY: within the IPv6 header checked above.
            let (saddr, daddr, hop_limit) = unsafe {
                (
                    core::ptr::read_unaligned((l3 + 8) as *const [u8; 16]),
                    core::ptr::read_unaligned((l3 + 24) as *const [u8; 16]),
                    *((l3 + IPV6_HOP_LIMIT) as *const u8),
                )
            };
            // Multicast destinations, and link-local sources (a pod whose global address is
            // still tentative; OVN's port security allows them): OVS.
            if daddr[0] == 0xff || (saddr[0] == 0xfe && saddr[1] & 0xc0 == 0x80) {
                return Decision::Miss;
            }
            (
                EndpointKey::v6(scope, daddr),
                src.flags & SOURCE_HAS_V6 != 0 && saddr == src.ip6,
                6,
                hop_limit,
            )
        }
        // ARP, ND's link layer and everything else: OVS.
        _ => return Decision::Miss,
    };
    // SAFETY (both): a lookup in a live map; the value is copied out at once.
    let found = if routed {
        unsafe { ROUTED.get(&key) }.copied()
    } else {
        unsafe { ENDPOINTS.get(&key) }.copied()
    };
    let Some(ep) = found else {
        return Decision::Miss;
    };
    if (!routed && ep.mac != dst_mac) || ep.ifindex == ifindex {
        return Decision::Miss;
    }
    if src_mac != src.mac || !source_ok {
        return Decision::Spoofed;
    }
    if (src.flags & SOURCE_ISOLATED != 0 || ep.flags & ENDPOINT_ISOLATED != 0) && {
        let pair = PairKey {
            src: ifindex,
            dst: ep.ifindex,
            family,
        };
        // SAFETY: a lookup in a live map; only presence is read.
        unsafe { PAIRS.get(&pair) }.is_none()
    } {
        return Decision::Isolated;
    }
    if !routed {
        Decision::Hit(ep)
    } else if hops <= 1 {
        Decision::Expired
    } else {
        Decision::Routed(ep, family)
    }
}

/// Does what the router does to a routed frame: the TTL (IPv4, with its checksum) or hop limit
/// (IPv6) one less, the source MAC the router port's on the receiver's switch, the destination
/// MAC the receiver's. `false` if the headers are not there (they were when decided).
#[inline(always)]
fn route(ctx: &TcContext, ep: &Endpoint, family: u32) -> bool {
    let data = ctx.data();
    let end = ctx.data_end();
    let l3 = data + ETH_HLEN;
    if family == 4 {
        if l3 + IPV4_MIN_HLEN > end {
            return false;
        }
        // SAFETY: within the IPv4 header checked above; the program may write the packet
        // (cls_bpf makes a cloned skb private before a program that writes runs).
        unsafe {
            let ttl = (l3 + IPV4_TTL) as *mut u8;
            let check = (l3 + IPV4_CHECK) as *mut [u8; 2];
            core::ptr::write_unaligned(
                check,
                checksum_after_ttl_decrement(core::ptr::read_unaligned(check)),
            );
            *ttl -= 1;
        }
    } else {
        if l3 + IPV6_HLEN > end {
            return false;
        }
        // SAFETY: within the IPv6 header checked above.
        unsafe { *((l3 + IPV6_HOP_LIMIT) as *mut u8) -= 1 };
    }
    // SAFETY: within the Ethernet header, which precedes the checked L3 header.
    unsafe {
        core::ptr::write_unaligned(data as *mut [u8; 6], ep.mac);
        core::ptr::write_unaligned((data + 6) as *mut [u8; 6], ep.router_mac);
    }
    true
}

/// Sends a decided frame to `ep`: through its host end's egress hook where its ingress policer
/// runs, else straight into its namespace.
#[inline(always)]
fn deliver(ep: &Endpoint) -> i32 {
    // SAFETY: helpers without memory arguments.
    unsafe {
        if ep.flags & ENDPOINT_POLICED != 0 {
            bpf_redirect(ep.ifindex, 0) as i32
        } else {
            bpf_redirect_peer(ep.ifindex, 0) as i32
        }
    }
}

#[inline(always)]
fn hand_to_ovs(src: &Source) -> i32 {
    if src.miss_ifindex == 0 {
        TC_ACT_UNSPEC
    } else {
        // SAFETY: helper without memory arguments.
        unsafe { bpf_redirect(src.miss_ifindex, 0) as i32 }
    }
}

/// `sl_fastpath`.
#[inline(always)]
pub fn forward(ctx: &TcContext) -> i32 {
    // SAFETY: the context pointer is valid for the program's run.
    let (ifindex, len) = unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).len) };
    let src = if ifindex < DIRECT_IFINDEXES {
        SOURCES_DIRECT.get(ifindex).copied()
    } else {
        // SAFETY: a lookup in a live map; the value is copied out at once.
        unsafe { SOURCES.get(&ifindex) }.copied()
    };
    let Some(src) = src.filter(|s| s.flags & SOURCE_IN_USE != 0) else {
        return TC_ACT_UNSPEC;
    };
    let decision = decide(ctx, &src, ifindex);
    let counters = COUNTERS.get_ptr_mut(src.slot);
    match decision {
        Decision::Hit(ep) => {
            if let Some(c) = counters {
                // SAFETY: per-CPU value of a live map; TC programs do not migrate between CPUs.
                unsafe {
                    (*c).hits += 1;
                    (*c).hit_bytes += u64::from(len);
                }
            }
            deliver(&ep)
        }
        Decision::Routed(ep, family) => {
            if !route(ctx, &ep, family) {
                return hand_to_ovs(&src);
            }
            if let Some(c) = counters {
                // SAFETY: per-CPU value of a live map; TC programs do not migrate between CPUs.
                unsafe {
                    (*c).hits += 1;
                    (*c).routed += 1;
                    (*c).hit_bytes += u64::from(len);
                }
            }
            deliver(&ep)
        }
        Decision::Expired => {
            if let Some(c) = counters {
                // SAFETY: as above.
                unsafe { (*c).expired += 1 };
            }
            hand_to_ovs(&src)
        }
        Decision::Miss => {
            if let Some(c) = counters {
                // SAFETY: as above.
                unsafe { (*c).misses += 1 };
            }
            hand_to_ovs(&src)
        }
        Decision::Spoofed => {
            if let Some(c) = counters {
                // SAFETY: as above.
                unsafe { (*c).spoofed += 1 };
            }
            hand_to_ovs(&src)
        }
        Decision::Isolated => {
            if let Some(c) = counters {
                // SAFETY: as above.
                unsafe { (*c).isolated += 1 };
            }
            hand_to_ovs(&src)
        }
    }
}

/// `sl_fastpath_to_pod`.
#[inline(always)]
pub fn to_pod(ctx: &TcContext) -> i32 {
    // SAFETY: the context pointer is valid for the program's run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: a lookup in a live map; the value is copied out at once.
    match unsafe { TO_POD.get(&ifindex) }.copied() {
        // SAFETY: helper without memory arguments.
        Some(host_end) => unsafe { bpf_redirect(host_end, 0) as i32 },
        None => TC_ACT_UNSPEC,
    }
}
