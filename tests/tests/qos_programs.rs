//! The QoS programs' decisions, run in the kernel with `BPF_PROG_TEST_RUN` on crafted packets.

use sidelane_agent::dataplane::{
    qos::QosProgramsUnderTest,
    test_run::{SkBuffCtx, arp_frame, ipv4_tcp_frame, ipv4_udp_frame},
};
use sidelane_agent_common::qos::{QosConfig, QosCounters};
use sidelane_api::qos::Direction;
use sidelane_tests::privilege;

/// `TC_ACT_UNSPEC`: the packet continues.
const PASS: i32 = -1;
/// `TC_ACT_STOLEN`: the packet is consumed silently.
const DROP: i32 = 4;

fn programs() -> QosProgramsUnderTest {
    QosProgramsUnderTest::load().expect("loading the QoS programs")
}

#[test]
fn a_packet_within_budget_passes_and_one_over_budget_is_dropped_with_exact_counters() {
    if !privilege::require_privileges("a_packet_within_budget_passes...") {
        return;
    }
    for dir in Direction::ALL {
        let mut p = programs();
        // 8 Mbit/s is one byte per microsecond; the bucket holds exactly three 1500-byte packets.
        p.configure(dir, QosConfig::police(8_000_000, 4500, 4500))
            .expect("configuring");
        let frame = ipv4_udp_frame(1514);
        let verdicts: Vec<i32> = (0..4)
            .map(|_| {
                p.run(dir, &frame, &SkBuffCtx::default(), 1)
                    .expect("test run")
                    .verdict
            })
            .collect();
        assert_eq!(verdicts, [PASS, PASS, PASS, DROP], "{dir}");
        assert_eq!(
            p.counters(dir).expect("counters"),
            QosCounters {
                passed_packets: 3,
                passed_bytes: 3 * 1500,
                dropped_packets: 1,
                dropped_bytes: 1500,
            },
            "{dir}"
        );
    }
}

#[test]
fn the_other_direction_is_not_charged() {
    if !privilege::require_privileges("the_other_direction_is_not_charged") {
        return;
    }
    let mut p = programs();
    p.configure(Direction::Ingress, QosConfig::police(8_000_000, 1500, 1500))
        .expect("configuring");
    let frame = ipv4_udp_frame(1514);
    for _ in 0..5 {
        assert_eq!(
            p.run(Direction::Egress, &frame, &SkBuffCtx::default(), 1)
                .expect("test run")
                .verdict,
            PASS
        );
    }
    assert_eq!(
        p.counters(Direction::Ingress).expect("counters"),
        QosCounters::default()
    );
    assert_eq!(
        p.counters(Direction::Egress)
            .expect("counters")
            .passed_packets,
        5
    );
}

#[test]
fn arp_is_never_charged_or_dropped() {
    if !privilege::require_privileges("arp_is_never_charged_or_dropped") {
        return;
    }
    let mut p = programs();
    p.configure(Direction::Ingress, QosConfig::police(1_000_000, 0, 0))
        .expect("configuring");
    let result = p
        .run(Direction::Ingress, &arp_frame(), &SkBuffCtx::default(), 100)
        .expect("test run");
    assert_eq!(result.verdict, PASS);
    let c = p.counters(Direction::Ingress).expect("counters");
    assert_eq!(
        (c.passed_packets, c.passed_bytes, c.dropped_packets),
        (100, 0, 0)
    );
}

#[test]
fn a_gso_packet_is_charged_the_headers_of_every_segment() {
    if !privilege::require_privileges("a_gso_packet_is_charged...") {
        return;
    }
    let p = programs();
    // Two 1448-byte segments of TCP/IPv4 with timestamps (52 header bytes each); a test run
    // takes at most a page of packet data.
    let frame = ipv4_tcp_frame(2 * 1448);
    let ctx = SkBuffCtx {
        gso_segs: 2,
        gso_size: 1448,
        ..SkBuffCtx::default()
    };
    p.run(Direction::Egress, &frame, &ctx, 1).expect("test run");
    assert_eq!(
        p.counters(Direction::Egress)
            .expect("counters")
            .passed_bytes,
        2 * 1500
    );
}

#[test]
fn edt_mode_stamps_departure_times_spaced_by_each_packets_cost() {
    if !privilege::require_privileges("edt_mode_stamps_departure_times...") {
        return;
    }
    let mut p = programs();
    // 8 Mbit/s: a 1500-byte IP packet costs 1.5 ms; horizon 1 s.
    p.configure(Direction::Ingress, QosConfig::edt(8_000_000, 1_000_000))
        .expect("configuring");
    let frame = ipv4_udp_frame(1514);
    let stamps: Vec<u64> = (0..3)
        .map(|_| {
            let r = p
                .run(Direction::Ingress, &frame, &SkBuffCtx::default(), 1)
                .expect("test run");
            assert_eq!(r.verdict, PASS);
            r.ctx.tstamp
        })
        .collect();
    assert!(stamps[0] > 0, "the first packet is stamped");
    // Back-to-back packets depart 1.5 ms apart (test runs take microseconds, far less).
    assert_eq!(stamps[1] - stamps[0], 1_500_000);
    assert_eq!(stamps[2] - stamps[1], 1_500_000);
}

#[test]
fn edt_drops_packets_due_beyond_the_horizon() {
    if !privilege::require_privileges("edt_drops_packets_due_beyond_the_horizon") {
        return;
    }
    let mut p = programs();
    // Horizon of 3000 bytes = 3 ms at 8 Mbit/s: packets due at +0, +1.5, +3 ms go, +4.5 does not.
    p.configure(Direction::Ingress, QosConfig::edt(8_000_000, 3000))
        .expect("configuring");
    let frame = ipv4_udp_frame(1514);
    let verdicts: Vec<i32> = (0..4)
        .map(|_| {
            p.run(Direction::Ingress, &frame, &SkBuffCtx::default(), 1)
                .expect("test run")
                .verdict
        })
        .collect();
    assert_eq!(verdicts, [PASS, PASS, PASS, DROP]);
}
