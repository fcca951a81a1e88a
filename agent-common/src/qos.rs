//! QoS ABI: the maps and programs that enforce a pod attachment's `ingress_rate` and
//! `egress_rate`, and the arithmetic they run.
//!
//! Directions are always named from the **pod's** side, as Kube-OVN's annotations are:
//! [`Direction::Ingress`] is traffic entering the pod, [`Direction::Egress`] traffic leaving it.
//! Where a program is hooked depends on the device: on the host end of a veth, traffic into the
//! pod leaves through the TC *egress* hook; on a device inside the pod's namespace (an IPAM-only
//! macvlan), it arrives through the TC *ingress* hook. The program only knows which direction's
//! slot it charges.
//!
//! Each attachment loads its own copy of the object, so every map is a small array indexed by
//! direction: no hash lookup on the packet path, and no key that could collide between network
//! namespaces.
//!
//! ## Rate arithmetic
//! Limits are enforced with GCRA (the "virtual scheduling" form of a token bucket): one 64-bit
//! theoretical arrival time (`tat`) per direction. A packet costs its wire size in nanoseconds at
//! the configured rate. In [`MODE_POLICE`] a packet passes when it *fits*: when
//! `max(tat, now) + cost - now <= tolerance`; it then advances `tat`, and otherwise it is dropped
//! and changes nothing. A packet is never admitted on credit: a bucket in debt would drop the
//! small packets TCP recovers with (a one-segment retransmission, a tail-loss probe) for as long
//! as the debt lasts, and a flow that loses its recovery packets idles until its retransmission
//! timeout (200 ms). The agent therefore never configures a burst smaller than two maximum-size
//! GSO packets, so every packet fits into a full bucket.
//!
//! The bucket's credit after an idle spell is bounded separately ([`QosConfig::idle_credit_ns`]):
//! when a direction has been idle for [`IDLE_RESET_NS`], its credit restarts at that smaller
//! amount and refills at the rate from there. On a pod link TCP cannot slow down by its window
//! alone (two segments per 50 µs round trip is already 460 Mbit/s): below that, a policed flow
//! advances in bursts separated by retransmission timeouts, and the bucket must hold a timeout's
//! worth of tokens or they are lost. A bucket that large would let a fresh flow overshoot by the
//! same amount; the idle reset keeps the first second of a new flow close to the rate while an
//! established flow keeps all of its tokens.
//!
//! In [`MODE_EDT`] the packet is not
//! dropped but stamped with its earliest departure time for an `fq` qdisc to honour, and dropped
//! only beyond the horizon.
//!
//! Sizes are counted as the IP bytes the packet will occupy on the wire: the frame length minus the
//! link-layer header, plus the IP and transport headers of every GSO segment after the first. That
//! makes the limit independent of segmentation offloads.

/// Map of [`QosConfig`] indexed by [`Direction`]; written by the agent only.
pub const CONFIG_MAP: &str = "SL_QOS_CONFIG";
/// Map of [`QosState`] indexed by [`Direction`]; written by the programs only.
pub const STATE_MAP: &str = "SL_QOS_STATE";
/// Per-CPU map of [`QosCounters`] indexed by [`Direction`].
pub const COUNTERS_MAP: &str = "SL_QOS_COUNTERS";
/// Every map of the QoS object, for pinning and adoption.
pub const MAPS: [&str; 3] = [CONFIG_MAP, STATE_MAP, COUNTERS_MAP];

/// The program that charges traffic entering the pod.
pub const PROG_POD_INGRESS: &str = "sl_qos_pod_ingress";
/// The program that charges traffic leaving the pod.
pub const PROG_POD_EGRESS: &str = "sl_qos_pod_egress";

/// Number of directions, and so of entries in every QoS map.
pub const DIRECTIONS: u32 = 2;

/// A traffic direction, from the pod's point of view.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// Traffic entering the pod (Kube-OVN's `ingress_rate`).
    Ingress = 0,
    /// Traffic leaving the pod (Kube-OVN's `egress_rate`).
    Egress = 1,
}

impl Direction {
    /// Both directions, in map-index order.
    pub const ALL: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    /// The index of this direction in every QoS map.
    pub const fn index(self) -> u32 {
        self as u32
    }

    /// The program that charges this direction.
    pub const fn program(self) -> &'static str {
        match self {
            Direction::Ingress => PROG_POD_INGRESS,
            Direction::Egress => PROG_POD_EGRESS,
        }
    }

    /// `"ingress"` or `"egress"`, as in the annotation keys.
    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// No limit: packets pass uncharged (but counted).
pub const MODE_UNLIMITED: u32 = 0;
/// Token-bucket policing (GCRA): packets over budget are dropped.
pub const MODE_POLICE: u32 = 1;
/// Earliest-departure-time pacing: packets are stamped for an `fq` root qdisc.
pub const MODE_EDT: u32 = 2;

/// A direction idle this long restarts with [`QosConfig::idle_credit_ns`] of credit (1 s:
/// longer than TCP's first retransmission timeouts, so an active flow never loses tokens to it).
pub const IDLE_RESET_NS: u64 = 1_000_000_000;

/// Fixed-point shift of [`QosConfig::byte_cost`].
pub const COST_SHIFT: u32 = 16;
/// Nanoseconds per second times bits per byte.
const NS_BITS_PER_BYTE: u64 = 8 * 1_000_000_000;

/// Configuration of one direction of one attachment.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QosConfig {
    /// The limit in bits per second (informational; the program uses `byte_cost`).
    pub rate_bps: u64,
    /// Nanoseconds one byte takes at `rate_bps`, shifted left by [`COST_SHIFT`].
    pub byte_cost: u64,
    /// GCRA tolerance (police: the bucket size) or pacing horizon (EDT), in nanoseconds.
    pub tolerance_ns: u64,
    /// Police only: the credit a direction restarts with after [`IDLE_RESET_NS`] of idleness,
    /// in nanoseconds; at most `tolerance_ns`.
    pub idle_credit_ns: u64,
    /// [`MODE_UNLIMITED`], [`MODE_POLICE`] or [`MODE_EDT`].
    pub mode: u32,
    /// Explicit padding; always zero.
    pub reserved: u32,
}

impl QosConfig {
    /// No limit.
    pub const UNLIMITED: QosConfig = QosConfig {
        rate_bps: 0,
        byte_cost: 0,
        tolerance_ns: 0,
        idle_credit_ns: 0,
        mode: MODE_UNLIMITED,
        reserved: 0,
    };

    /// A policer at `rate_bps` whose bucket holds `burst_bytes`, starting (and restarting after
    /// idleness) with `idle_credit_bytes` of credit.
    ///
    /// A zero rate means unlimited. Rates below 1 kbit/s are raised to 1 kbit/s (see
    /// [`MAX_BYTE_COST`]); the agent refuses them before they get here.
    pub const fn police(rate_bps: u64, burst_bytes: u64, idle_credit_bytes: u64) -> QosConfig {
        let mut cfg = Self::limited(MODE_POLICE, rate_bps, burst_bytes);
        let credit = duration_ns(idle_credit_bytes, cfg.byte_cost);
        cfg.idle_credit_ns = if credit < cfg.tolerance_ns {
            credit
        } else {
            cfg.tolerance_ns
        };
        cfg
    }

    /// EDT pacing at `rate_bps`; packets due later than `horizon_bytes` worth of time are dropped.
    ///
    /// A zero rate means unlimited.
    pub const fn edt(rate_bps: u64, horizon_bytes: u64) -> QosConfig {
        Self::limited(MODE_EDT, rate_bps, horizon_bytes)
    }

    const fn limited(mode: u32, rate_bps: u64, burst_bytes: u64) -> QosConfig {
        if rate_bps == 0 {
            return Self::UNLIMITED;
        }
        let rate_bps = if rate_bps < 1_000 { 1_000 } else { rate_bps };
        let byte_cost = byte_cost(rate_bps);
        QosConfig {
            rate_bps,
            byte_cost,
            tolerance_ns: duration_ns(burst_bytes, byte_cost),
            idle_credit_ns: 0,
            mode,
            reserved: 0,
        }
    }
}

/// Mutable state of one direction: the GCRA theoretical arrival time, in `bpf_ktime_get_ns` time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QosState {
    /// When the bucket will be full again; at or before "now" means full.
    pub tat_ns: u64,
}

/// Counters of one direction on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QosCounters {
    /// Packets that passed (IP and non-IP).
    pub passed_packets: u64,
    /// Wire IP bytes of the packets that passed (see the module docs).
    pub passed_bytes: u64,
    /// Packets dropped because they were over the limit.
    pub dropped_packets: u64,
    /// Wire IP bytes of the packets dropped.
    pub dropped_bytes: u64,
}

impl QosCounters {
    /// Adds another CPU's counters to these.
    #[must_use]
    pub const fn merged(self, other: QosCounters) -> QosCounters {
        QosCounters {
            passed_packets: self.passed_packets.wrapping_add(other.passed_packets),
            passed_bytes: self.passed_bytes.wrapping_add(other.passed_bytes),
            dropped_packets: self.dropped_packets.wrapping_add(other.dropped_packets),
            dropped_bytes: self.dropped_bytes.wrapping_add(other.dropped_bytes),
        }
    }
}

/// The fixed-point cost of one byte at `rate_bps` (see [`QosConfig::byte_cost`]).
///
/// `rate_bps` must be non-zero.
pub const fn byte_cost(rate_bps: u64) -> u64 {
    // 8e9 << 16 fits in u64 (5.2e14); the quotient is at least 1 up to 524 Tbit/s.
    let cost = (NS_BITS_PER_BYTE << COST_SHIFT) / rate_bps;
    if cost == 0 { 1 } else { cost }
}

/// The largest packet size [`cost_ns`] distinguishes (16 MiB, far above any GSO packet).
pub const MAX_PACKET_BYTES: u64 = 1 << 24;
/// The largest [`byte_cost`] the agent configures: the cost at 1 kbit/s (`2^39`).
pub const MAX_BYTE_COST: u64 = (NS_BITS_PER_BYTE << COST_SHIFT) / 1_000;

/// The time one packet of `bytes` takes at the rate whose [`byte_cost`] is `byte_cost`, in ns.
///
/// Runs on the packet path, so it uses a single 64-bit multiply (the BPF target has no 128-bit
/// arithmetic): `bytes` is clamped to [`MAX_PACKET_BYTES`] and `byte_cost` must not exceed
/// [`MAX_BYTE_COST`], which keeps the product below `2^63`.
pub const fn cost_ns(bytes: u64, byte_cost: u64) -> u64 {
    let bytes = if bytes > MAX_PACKET_BYTES {
        MAX_PACKET_BYTES
    } else {
        bytes
    };
    bytes.wrapping_mul(byte_cost) >> COST_SHIFT
}

/// The time `bytes` take at the rate whose [`byte_cost`] is `byte_cost`, in ns, for any size:
/// how the agent turns a burst into a tolerance. Saturates at `u64::MAX`.
pub const fn duration_ns(bytes: u64, byte_cost: u64) -> u64 {
    let ns = (bytes as u128 * byte_cost as u128) >> COST_SHIFT;
    if ns > u64::MAX as u128 {
        u64::MAX
    } else {
        #[expect(clippy::cast_possible_truncation, reason = "checked just above")]
        let ns = ns as u64;
        ns
    }
}

/// The IP bytes a frame occupies on the wire, counting the headers of every GSO segment.
///
/// `frame_len` is the length the program sees (link-layer header included), `l2_len` the
/// link-layer header length, `gso_segs` the number of segments (0 or 1 for a plain packet) and
/// `seg_hdr_len` the IP plus transport header length repeated in each segment.
pub const fn wire_ip_bytes(frame_len: u32, l2_len: u32, gso_segs: u32, seg_hdr_len: u32) -> u64 {
    let ip_len = frame_len.saturating_sub(l2_len) as u64;
    let extra = gso_segs.saturating_sub(1) as u64;
    ip_len + extra * seg_hdr_len as u64
}

/// What the policer decided for one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policed {
    /// The packet conforms; store `tat` as the new theoretical arrival time.
    Pass {
        /// The new theoretical arrival time.
        tat: u64,
    },
    /// The packet is over the limit; state is unchanged.
    Drop,
}

/// Policing of one packet costing `cost` ns at time `now` by a bucket of `tolerance` ns that
/// restarts with `idle_credit` ns of credit after [`IDLE_RESET_NS`] of idleness: it passes only
/// if it fits into what the bucket holds (see the module docs).
pub const fn police(tat: u64, now: u64, cost: u64, tolerance: u64, idle_credit: u64) -> Policed {
    let tat = if now > tat.saturating_add(IDLE_RESET_NS) {
        // Idle (or never used): credit restarts at `idle_credit`, i.e. the bucket is full once
        // `tolerance - idle_credit` more time has passed.
        now + (tolerance - idle_credit)
    } else {
        tat
    };
    let start = if tat > now { tat } else { now };
    let next = start.saturating_add(cost);
    if next - now > tolerance {
        return Policed::Drop;
    }
    Policed::Pass { tat: next }
}

/// What EDT pacing decided for one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Paced {
    /// Send no earlier than `departure`; store `tat` as the new theoretical arrival time.
    Send {
        /// The earliest departure time to stamp on the packet.
        departure: u64,
        /// The new theoretical arrival time.
        tat: u64,
    },
    /// The packet would wait longer than the horizon; state is unchanged.
    Drop,
}

/// EDT pacing of one packet costing `cost` ns at time `now`, dropping beyond `horizon` ns.
pub const fn pace(tat: u64, now: u64, cost: u64, horizon: u64) -> Paced {
    let departure = if tat > now { tat } else { now };
    if departure - now > horizon {
        return Paced::Drop;
    }
    Paced::Send {
        departure,
        tat: departure.saturating_add(cost),
    }
}

#[cfg(feature = "user")]
mod user {
    use super::{QosConfig, QosCounters, QosState};

    // SAFETY: `#[repr(C)]`, `Copy`, only integer fields and explicit padding: every bit pattern
    // is a valid value and there are no implicit padding bytes.
    unsafe impl aya::Pod for QosConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for QosState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for QosCounters {}
}

#[cfg(test)]
mod tests {
    use super::*;

    const MBIT: u64 = 1_000_000;

    #[test]
    fn a_byte_at_ten_megabits_costs_eight_hundred_nanoseconds() {
        let cost = byte_cost(10 * MBIT);
        assert_eq!(cost_ns(1, cost), 800);
        assert_eq!(cost_ns(1500, cost), 1_200_000);
    }

    #[test]
    fn byte_cost_is_accurate_to_a_thousandth_up_to_a_terabit() {
        for rate in [MBIT, 10 * MBIT, 500 * MBIT, 40_000 * MBIT, 1_000_000 * MBIT] {
            let cost = byte_cost(rate);
            #[expect(clippy::cast_precision_loss, reason = "rates are far below 2^52")]
            let (exact, got) = (8e9 * 1e6 / rate as f64, cost_ns(1_000_000, cost) as f64);
            assert!(
                (got - exact).abs() / exact < 1e-3,
                "rate {rate}: {got} vs {exact}"
            );
        }
    }

    #[test]
    fn zero_rate_means_unlimited() {
        assert_eq!(QosConfig::police(0, 1000, 1000), QosConfig::UNLIMITED);
        assert_eq!(QosConfig::edt(0, 1000).mode, MODE_UNLIMITED);
    }

    #[test]
    fn a_full_bucket_passes_a_burst_then_drops() {
        let cfg = QosConfig::police(8 * MBIT, 3000, 3000); // 1 byte per µs, 3 ms bucket
        let cost = cost_ns(1000, cfg.byte_cost);
        assert_eq!(cost, 1_000_000);
        let now = 10_000_000_000;
        let mut tat = 0;
        let mut passed = 0;
        for _ in 0..10 {
            if let Policed::Pass { tat: t } =
                police(tat, now, cost, cfg.tolerance_ns, cfg.idle_credit_ns)
            {
                tat = t;
                passed += 1;
            }
        }
        // A full 3 ms bucket holds exactly three 1 ms packets.
        assert_eq!(passed, 3);
        assert_eq!(tat, now + 3_000_000);
    }

    #[test]
    fn a_small_packet_still_fits_where_a_large_one_does_not() {
        let cfg = QosConfig::police(8 * MBIT, 10_000, 10_000); // 10 ms bucket
        let now = 5_000_000_000;
        let tat = now + 9_000_000; // 1 ms of room left
        let (tol, idle) = (cfg.tolerance_ns, cfg.idle_credit_ns);
        assert_eq!(
            police(tat, now, cost_ns(65_000, cfg.byte_cost), tol, idle),
            Policed::Drop
        );
        assert_eq!(
            police(tat, now, cost_ns(100, cfg.byte_cost), tol, idle),
            Policed::Pass { tat: tat + 100_000 }
        );
    }

    #[test]
    fn a_packet_larger_than_the_whole_bucket_never_passes() {
        let cfg = QosConfig::police(10 * MBIT, 1500, 1500);
        let cost = cost_ns(65_000, cfg.byte_cost);
        let verdict = police(0, 5_000_000_000, cost, cfg.tolerance_ns, cfg.idle_credit_ns);
        assert_eq!(verdict, Policed::Drop);
    }

    #[test]
    fn after_a_second_of_idleness_credit_restarts_small_then_refills_at_the_rate() {
        // 8 Mbit/s: 1 byte per µs. Bucket 300 ms, idle credit 20 ms.
        let cfg = QosConfig::police(8 * MBIT, 300_000, 20_000);
        let (tol, idle) = (cfg.tolerance_ns, cfg.idle_credit_ns);
        let ms = 1_000_000;
        let now = 50_000 * ms;
        // A fresh bucket (never used) holds 20 ms: a 20 ms packet fits, a 21 ms one does not.
        assert_eq!(police(0, now, 21 * ms, tol, idle), Policed::Drop);
        assert_eq!(
            police(0, now, 20 * ms, tol, idle),
            Policed::Pass {
                tat: now + 300 * ms
            }
        );
        // While traffic flows, the whole 300 ms are usable: 250 ms after emptying it, 250 ms fit.
        let tat = now + 300 * ms;
        assert!(matches!(
            police(tat, now + 250 * ms, 250 * ms, tol, idle),
            Policed::Pass { .. }
        ));
        // Idle for more than a second: back to 20 ms.
        let later = tat + IDLE_RESET_NS + ms;
        assert_eq!(police(tat, later, 21 * ms, tol, idle), Policed::Drop);
    }

    #[test]
    fn idle_credit_never_exceeds_the_bucket() {
        let cfg = QosConfig::police(8 * MBIT, 1000, 5000);
        assert_eq!(cfg.idle_credit_ns, cfg.tolerance_ns);
    }

    #[test]
    fn edt_spaces_departures_by_cost_and_drops_beyond_the_horizon() {
        let now = 1_000;
        assert_eq!(
            pace(0, now, 10, 25),
            Paced::Send {
                departure: now,
                tat: now + 10
            }
        );
        assert_eq!(
            pace(now + 10, now, 10, 25),
            Paced::Send {
                departure: now + 10,
                tat: now + 20
            }
        );
        assert_eq!(pace(now + 26, now, 10, 25), Paced::Drop);
    }

    #[test]
    fn gso_segments_are_charged_their_repeated_headers() {
        // A 10-segment TCP/IPv4 super-packet with timestamps: 52 header bytes per segment.
        let frame = 14 + 52 + 10 * 1448;
        assert_eq!(wire_ip_bytes(frame, 14, 10, 52), 10 * 1500);
        assert_eq!(wire_ip_bytes(1514, 14, 0, 0), 1500);
        assert_eq!(wire_ip_bytes(1514, 14, 1, 52), 1500);
        assert_eq!(wire_ip_bytes(10, 14, 0, 0), 0);
    }

    #[test]
    fn counters_merge_by_field() {
        let a = QosCounters {
            passed_packets: 1,
            passed_bytes: 2,
            dropped_packets: 3,
            dropped_bytes: 4,
        };
        assert_eq!(
            a.merged(a),
            QosCounters {
                passed_packets: 2,
                passed_bytes: 4,
                dropped_packets: 6,
                dropped_bytes: 8
            }
        );
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        proptest! {
            /// Over any arrival pattern, the policer admits no more than rate * time + burst.
            #[test]
            fn policed_bytes_never_exceed_rate_times_time_plus_burst(
                rate_mbit in 1u64..=1000,
                burst in 0u64..=1_000_000,
                packets in proptest::collection::vec((1u64..=65_000, 0u64..=2_000_000), 1..400),
            ) {
                let cfg = QosConfig::police(rate_mbit * 1_000_000, burst, burst);
                let start = 1_000_000_000u64;
                let mut now = start;
                let mut tat = 0;
                let mut admitted = 0u64;
                let mut largest = 0u64;
                for (len, gap) in packets {
                    now += gap;
                    let cost = cost_ns(len, cfg.byte_cost);
                    if let Policed::Pass { tat: t } =
                        police(tat, now, cost, cfg.tolerance_ns, cfg.idle_credit_ns)
                    {
                        tat = t;
                        admitted += len;
                        largest = largest.max(len);
                    }
                }
                let elapsed = now - start;
                let _ = largest;
                let allowed = (rate_mbit * 1_000_000 * elapsed) / 8_000_000_000 + burst + 1;
                prop_assert!(admitted <= allowed, "admitted {admitted} > allowed {allowed}");
            }

            /// Offered more than the rate, a policer whose bucket holds two packets admits at
            /// least rate * time (no starvation).
            #[test]
            fn a_saturating_sender_gets_at_least_the_rate(
                rate_mbit in 1u64..=1000,
                len in 64u64..=65_000,
            ) {
                // A bucket of two packets, the agent's minimum: with less, the time between
                // `tat` and the next arrival is lost at every packet.
                let cfg = QosConfig::police(rate_mbit * 1_000_000, 2 * len, 2 * len);
                let cost = cost_ns(len, cfg.byte_cost);
                // Offer twice the rate for one simulated second.
                let gap = (cost / 2).max(1);
                let mut now = 1_000_000_000u64;
                let end = now + 1_000_000_000;
                let mut tat = 0;
                let mut admitted = 0u64;
                while now < end {
                    if let Policed::Pass { tat: t } =
                        police(tat, now, cost, cfg.tolerance_ns, cfg.idle_credit_ns)
                    {
                        tat = t;
                        admitted += len;
                    }
                    now += gap;
                }
                let rate_bytes = rate_mbit * 1_000_000 / 8;
                prop_assert!(admitted + len >= rate_bytes, "admitted {admitted} < {rate_bytes}");
            }
        }
    }
}
