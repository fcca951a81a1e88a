//! The fast path's decisions, with explicit bounds checks on every header read.

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    helpers::generated::{bpf_redirect, bpf_redirect_peer},
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
    programs::TcContext,
};
use sidelane_agent_common::fastpath::{
    DIRECT_IFINDEXES, ENDPOINT_ISOLATED, ENDPOINT_POLICED, Endpoint, EndpointKey, FastpathCounters,
    MAX_ATTACHMENTS, MAX_ENDPOINTS, MAX_PAIRS, PairKey, SOURCE_HAS_V4, SOURCE_HAS_V6,
    SOURCE_IN_USE, SOURCE_ISOLATED, Source,
};

#[map(name = "SL_FP_SOURCES")]
static SOURCES: HashMap<u32, Source> = HashMap::pinned(MAX_ATTACHMENTS, 0);

#[map(name = "SL_FP_SOURCES_DIRECT")]
static SOURCES_DIRECT: Array<Source> = Array::pinned(DIRECT_IFINDEXES, 0);

#[map(name = "SL_FP_ENDPOINTS")]
static ENDPOINTS: HashMap<EndpointKey, Endpoint> = HashMap::pinned(MAX_ENDPOINTS, 0);

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

enum Decision {
    /// For this local endpoint, from the sender's own MAC and address.
    Hit(Endpoint),
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
    // SAFETY: within the Ethernet header checked above.
    let ethertype = u16::from_be(unsafe { core::ptr::read_unaligned((data + 12) as *const u16) });
    let l3 = data + ETH_HLEN;
    let (key, source_ok, family) = match ethertype {
        ETH_P_IP => {
            if l3 + IPV4_MIN_HLEN > end {
                return Decision::Miss;
            }
            // SAFETY: within the IPv4 header checked above.
            let (saddr, daddr) = unsafe {
                (
                    core::ptr::read_unaligned((l3 + 12) as *const [u8; 4]),
                    core::ptr::read_unaligned((l3 + 16) as *const [u8; 4]),
                )
            };
            (
                EndpointKey::v4(src.switch, daddr),
                src.flags & SOURCE_HAS_V4 != 0 && saddr == src.ip4,
                4,
            )
        }
        ETH_P_IPV6 => {
            if l3 + IPV6_HLEN > end {
                return Decision::Miss;
            }
            // SAFETY: within the IPv6 header checked above.
            let (saddr, daddr) = unsafe {
                (
                    core::ptr::read_unaligned((l3 + 8) as *const [u8; 16]),
                    core::ptr::read_unaligned((l3 + 24) as *const [u8; 16]),
                )
            };
            if daddr[0] == 0xff {
                return Decision::Miss;
            }
            (
                EndpointKey::v6(src.switch, daddr),
                src.flags & SOURCE_HAS_V6 != 0 && saddr == src.ip6,
                6,
            )
        }
        // ARP, ND's link layer and everything else: OVS.
        _ => return Decision::Miss,
    };
    // SAFETY: a lookup in a live map; the value is copied out at once.
    let Some(ep) = (unsafe { ENDPOINTS.get(&key) }).copied() else {
        return Decision::Miss;
    };
    if ep.mac != dst_mac || ep.ifindex == ifindex {
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
    Decision::Hit(ep)
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
            // SAFETY: helpers without memory arguments.
            unsafe {
                if ep.flags & ENDPOINT_POLICED != 0 {
                    bpf_redirect(ep.ifindex, 0) as i32
                } else {
                    bpf_redirect_peer(ep.ifindex, 0) as i32
                }
            }
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
