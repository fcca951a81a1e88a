//! Sidelane's fast path: one object per node, its maps shared by every attachment (see
//! `sidelane_agent_common::fastpath`).
//!
//! `sl_fastpath` runs on the TC ingress hook of an OVN-backed attachment's host end, after the
//! sender's egress policer. A unicast IPv4 or IPv6 frame to the MAC and address of a local pod
//! on the same logical switch, from the sender's own MAC and address, goes straight to that pod;
//! everything else goes on to OVS, including frames for a local pod whose source is not the
//! sender's own (OVS's port security drops those), which are counted as spoofed.
//! `sl_fastpath_to_pod` hands frames the userspace datapath writes back to the pod's host end.
#![no_std]
#![no_main]

mod forward;

use aya_ebpf::{macros::classifier, programs::TcContext};

/// Forwards on the fast path or hands to OVS.
#[classifier]
pub fn sl_fastpath(ctx: TcContext) -> i32 {
    forward::forward(&ctx)
}

/// Delivers what OVS's userspace datapath sends towards a pod to the pod's host end.
#[classifier]
pub fn sl_fastpath_to_pod(ctx: TcContext) -> i32 {
    forward::to_pod(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // SAFETY: the verifier rejects any program in which a panic is reachable.
    unsafe { core::hint::unreachable_unchecked() }
}

/// `bpf_redirect_peer` is GPL-only: the object declares a GPL-compatible licence (dual).
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
