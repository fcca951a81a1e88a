//! Rate enforcement for one direction of one attachment.

use aya_ebpf::{
    bindings::{TC_ACT_STOLEN, TC_ACT_UNSPEC},
    helpers::generated::{bpf_ktime_get_coarse_ns, bpf_skb_set_tstamp},
    macros::map,
    maps::{Array, PerCpuArray},
    programs::TcContext,
};
use sidelane_agent_common::qos::{
    DIRECTIONS, Direction, MODE_EDT, MODE_POLICE, Paced, Policed, QosConfig, QosCounters, QosState,
    cost_ns, pace, police, wire_ip_bytes,
};

use crate::{
    atomic,
    parse::{ETH_HLEN, PROTO_IPV4, PROTO_IPV6, seg_hdr_len},
};

#[map(name = "SL_QOS_CONFIG")]
static CONFIG: Array<QosConfig> = Array::pinned(DIRECTIONS, 0);

#[map(name = "SL_QOS_STATE")]
static STATE: Array<QosState> = Array::pinned(DIRECTIONS, 0);

#[map(name = "SL_QOS_COUNTERS")]
static COUNTERS: PerCpuArray<QosCounters> = PerCpuArray::pinned(DIRECTIONS, 0);

/// The clock: `bpf_ktime_get_coarse_ns`, `CLOCK_MONOTONIC` as of the last scheduler tick (1 to
/// 10 ms old). Reading the precise clock costs more than the rest of the program together (about
/// 18 ns of 20 in a VM); the agent never configures a bucket shallower than 20 ms of the rate, so
/// a tick's worth of tokens always fits and the long-run rate stays exact.
#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// `BPF_SKB_TSTAMP_DELIVERY_MONO` (uapi `enum bpf_skb_tstamp_type`): the stamp is a departure
/// time in `CLOCK_MONOTONIC`, as `fq` expects. (The generated binding sits in an unnamed enum
/// module whose name is not stable.)
const BPF_SKB_TSTAMP_DELIVERY_MONO: u64 = 1;

/// The verdict for a packet over the limit. Not `TC_ACT_SHOT`: on an egress hook that makes
/// `dev_queue_xmit` report `NET_XMIT_DROP` to a local sender, and TCP treats a local drop as
/// congestion on the host and waits on timers instead of recovering, collapsing to a fraction of
/// the rate. `TC_ACT_STOLEN` consumes the packet and reports success, so the sender sees what a
/// policer in the network would cause: a loss, recovered by fast retransmit.
const DROP: i32 = TC_ACT_STOLEN as i32;

/// Compare-exchange attempts before a contended update falls back to an atomic add.
const CAS_ATTEMPTS: u32 = 4;

/// Charges the packet to `dir`; returns the TC verdict (`TC_ACT_UNSPEC` lets it continue).
#[inline(always)]
pub fn enforce(ctx: &TcContext, dir: Direction) -> i32 {
    let idx = dir.index();
    let Some(counters) = COUNTERS.get_ptr_mut(idx) else {
        return TC_ACT_UNSPEC;
    };
    // SAFETY: per-CPU value of a live map; TC programs do not migrate between CPUs.
    let counters = unsafe { &mut *counters };
    let skb = ctx.skb.skb;
    // SAFETY: the context pointer is valid for the program's run; these fields are readable.
    let (len, protocol, gso_segs) = unsafe { ((*skb).len, (*skb).protocol, (*skb).gso_segs) };

    if protocol != PROTO_IPV4 && protocol != PROTO_IPV6 {
        // ARP and other link-level traffic is never charged: starving it would cut the link.
        counters.passed_packets += 1;
        return TC_ACT_UNSPEC;
    }
    let hdr = if gso_segs > 1 {
        seg_hdr_len(ctx, protocol)
    } else {
        0
    };
    let bytes = wire_ip_bytes(len, ETH_HLEN, gso_segs, hdr);

    let verdict = match CONFIG.get(idx) {
        Some(cfg) if cfg.mode == MODE_POLICE => police_packet(idx, cfg, bytes),
        Some(cfg) if cfg.mode == MODE_EDT => pace_packet(ctx, idx, cfg, bytes),
        _ => TC_ACT_UNSPEC,
    };
    if verdict == DROP {
        counters.dropped_packets += 1;
        counters.dropped_bytes += bytes;
    } else {
        counters.passed_packets += 1;
        counters.passed_bytes += bytes;
    }
    verdict
}

/// The theoretical arrival time of direction `idx`: shared by all CPUs, so only ever
/// accessed through [`atomic`] (the agent never writes STATE).
#[inline(always)]
fn tat_of(idx: u32) -> Option<*mut u64> {
    let state = STATE.get_ptr_mut(idx)?;
    // SAFETY: a pointer into a live array value; no reference is formed.
    Some(unsafe { &raw mut (*state).tat_ns })
}

#[inline(always)]
fn police_packet(idx: u32, cfg: &QosConfig, bytes: u64) -> i32 {
    let Some(tat) = tat_of(idx) else {
        return TC_ACT_UNSPEC;
    };
    let now = now();
    let cost = cost_ns(bytes, cfg.byte_cost);
    // SAFETY (all atomic calls below): `tat` points into a live, aligned map value.
    let mut old = unsafe { atomic::load(tat) };
    for _ in 0..CAS_ATTEMPTS {
        match police(old, now, cost, cfg.tolerance_ns, cfg.idle_credit_ns) {
            Policed::Drop => return DROP,
            Policed::Pass { tat: new } => {
                match unsafe { atomic::compare_exchange(tat, old, new) } {
                    Ok(()) => return TC_ACT_UNSPEC,
                    Err(seen) => old = seen,
                }
            }
        }
    }
    // Still contended: admit and charge, so the long-run rate stays exact.
    unsafe { atomic::add(tat, cost) };
    TC_ACT_UNSPEC
}

#[inline(always)]
fn pace_packet(ctx: &TcContext, idx: u32, cfg: &QosConfig, bytes: u64) -> i32 {
    let Some(tat) = tat_of(idx) else {
        return TC_ACT_UNSPEC;
    };
    let now = now();
    let cost = cost_ns(bytes, cfg.byte_cost);
    // SAFETY (all atomic calls below): `tat` points into a live, aligned map value.
    let mut old = unsafe { atomic::load(tat) };
    for _ in 0..CAS_ATTEMPTS {
        match pace(old, now, cost, cfg.tolerance_ns) {
            Paced::Drop => return DROP,
            Paced::Send {
                departure,
                tat: new,
            } => {
                if let Err(seen) = unsafe { atomic::compare_exchange(tat, old, new) } {
                    old = seen;
                    continue;
                }
                // SAFETY: valid context; the helper only updates the packet's timestamp.
                unsafe {
                    bpf_skb_set_tstamp(ctx.skb.skb, departure, BPF_SKB_TSTAMP_DELIVERY_MONO as _);
                }
                return TC_ACT_UNSPEC;
            }
        }
    }
    unsafe { atomic::add(tat, cost) };
    TC_ACT_UNSPEC
}
