//! Sidelane's TC programs.
//!
//! `sl_qos_pod_ingress` and `sl_qos_pod_egress` enforce one attachment's rate limits; each
//! charges one direction (named from the pod's side) of the maps in this object, and the agent
//! loads one copy of the object per attachment. See `sidelane_agent_common::qos` for the ABI and
//! the arithmetic.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "BPF atomics need the intrinsics; see atomic.rs"
)]

mod atomic;
mod parse;
mod qos;

use aya_ebpf::{macros::classifier, programs::TcContext};
use sidelane_agent_common::qos::Direction;

/// Charges traffic entering the pod.
#[classifier]
pub fn sl_qos_pod_ingress(ctx: TcContext) -> i32 {
    qos::enforce(&ctx, Direction::Ingress)
}

/// Charges traffic leaving the pod.
#[classifier]
pub fn sl_qos_pod_egress(ctx: TcContext) -> i32 {
    qos::enforce(&ctx, Direction::Egress)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // SAFETY: the verifier rejects any program in which a panic is reachable.
    unsafe { core::hint::unreachable_unchecked() }
}

/// The kernel requires a licence string; none of the helpers these programs call is GPL-only.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 11] = *b"Apache-2.0\0";
