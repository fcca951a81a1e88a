//! The fast-path program's decisions, run with `BPF_PROG_TEST_RUN` on crafted frames: a frame
//! to a local endpoint of the sender's switch from the sender's own MAC and address is
//! redirected and counted as a hit; anything else continues to OVS (or to the configured OVS
//! device), counted as a miss, or as spoofed when it was for a local endpoint but not from the
//! sender's own MAC and address.

use sidelane_agent::dataplane::{
    fastpath::FastpathUnderTest,
    test_run::{self, SkBuffCtx},
};
use sidelane_agent_common::fastpath::{
    ENDPOINT_ISOLATED, ENDPOINT_POLICED, Endpoint, EndpointKey, FastpathCounters, PROG_FORWARD,
    PROG_TO_POD, PairKey, SOURCE_HAS_V4, SOURCE_HAS_V6, SOURCE_ISOLATED, Source,
};
use sidelane_tests::privilege;

const TC_ACT_UNSPEC: i32 = -1;
const TC_ACT_REDIRECT: i32 = 7;
const SWITCH: u32 = 7;
const SENDER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const RECEIVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const SENDER_V6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const RECEIVER_V6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

/// A fast path where the sender is the loopback device (ifindex 1, which a test run's frame
/// arrives on) with `10.0.0.1` and `fd00::1`, and `10.0.0.2` / `fd00::2` belong to a local endpoint.
fn rig(miss_ifindex: u32, receiver_flags: u32) -> FastpathUnderTest {
    rig_with(miss_ifindex, 0, receiver_flags)
}

fn rig_with(miss_ifindex: u32, sender_flags: u32, receiver_flags: u32) -> FastpathUnderTest {
    let mut fp = FastpathUnderTest::load().expect("the fast path loads");
    fp.dataplane
        .put_source(
            1,
            Source {
                switch: SWITCH,
                slot: 3,
                miss_ifindex,
                flags: SOURCE_HAS_V4 | SOURCE_HAS_V6 | sender_flags,
                mac: SENDER_MAC,
                ip4: [10, 0, 0, 1],
                ip6: SENDER_V6,
                ..Source::default()
            },
        )
        .expect("source");
    let ep = Endpoint {
        ifindex: 42,
        flags: receiver_flags,
        mac: RECEIVER_MAC,
        pad: [0; 2],
    };
    fp.dataplane
        .put_endpoint(EndpointKey::v4(SWITCH, [10, 0, 0, 2]), ep)
        .expect("endpoint");
    fp.dataplane
        .put_endpoint(EndpointKey::v6(SWITCH, RECEIVER_V6), ep)
        .expect("endpoint");
    fp
}

fn v4_frame(src_mac: [u8; 6], dst_mac: [u8; 6], src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut f = test_run::ipv4_udp_frame(200);
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    f[26..30].copy_from_slice(&src);
    f[30..34].copy_from_slice(&dst);
    f
}

fn v6_frame(src: [u8; 16], dst: [u8; 16]) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 40 + 8];
    f[0..6].copy_from_slice(&RECEIVER_MAC);
    f[6..12].copy_from_slice(&SENDER_MAC);
    f[12..14].copy_from_slice(&0x86DDu16.to_be_bytes());
    f[14] = 0x60;
    f[18..20].copy_from_slice(&8u16.to_be_bytes());
    f[20] = 17;
    f[21] = 64;
    f[22..38].copy_from_slice(&src);
    f[38..54].copy_from_slice(&dst);
    f
}

fn run(fp: &FastpathUnderTest, frame: &[u8]) -> i32 {
    fp.dataplane
        .test_run(PROG_FORWARD, frame, &SkBuffCtx::default(), 1)
        .expect("test run")
        .verdict
}

fn counters(fp: &FastpathUnderTest) -> FastpathCounters {
    fp.dataplane.slot_counters(3).expect("counters")
}

#[test]
fn a_frame_to_a_local_endpoint_from_the_senders_own_addresses_is_redirected_and_counted() {
    if !privilege::require_privileges(
        "a_frame_to_a_local_endpoint_from_the_senders_own_addresses_is_redirected_and_counted",
    ) {
        return;
    }
    for flags in [0, ENDPOINT_POLICED] {
        let fp = rig(0, flags);
        let frame = v4_frame(SENDER_MAC, RECEIVER_MAC, [10, 0, 0, 1], [10, 0, 0, 2]);
        assert_eq!(run(&fp, &frame), TC_ACT_REDIRECT);
        assert_eq!(run(&fp, &v6_frame(SENDER_V6, RECEIVER_V6)), TC_ACT_REDIRECT);
        let c = counters(&fp);
        assert_eq!((c.hits, c.misses, c.spoofed), (2, 0, 0));
        assert_eq!(c.hit_bytes, 200 + 62);
    }
}

#[test]
fn a_spoofed_source_ip_or_mac_is_never_fast_pathed_and_is_counted() {
    if !privilege::require_privileges(
        "a_spoofed_source_ip_or_mac_is_never_fast_pathed_and_is_counted",
    ) {
        return;
    }
    let fp = rig(0, 0);
    let spoofed_ip = v4_frame(SENDER_MAC, RECEIVER_MAC, [10, 0, 0, 99], [10, 0, 0, 2]);
    let spoofed_mac = v4_frame(
        [0x02, 0, 0, 0, 0, 0x66],
        RECEIVER_MAC,
        [10, 0, 0, 1],
        [10, 0, 0, 2],
    );
    let spoofed_v6 = v6_frame(RECEIVER_V6, RECEIVER_V6);
    for f in [&spoofed_ip, &spoofed_mac, &spoofed_v6] {
        assert_eq!(
            run(&fp, f),
            TC_ACT_UNSPEC,
            "handed to OVS, whose port security drops it"
        );
    }
    let c = counters(&fp);
    assert_eq!((c.hits, c.spoofed), (0, 3));
}

#[test]
fn arp_broadcast_unknown_and_remote_destinations_continue_to_ovs() {
    if !privilege::require_privileges(
        "arp_broadcast_unknown_and_remote_destinations_continue_to_ovs",
    ) {
        return;
    }
    let fp = rig(0, 0);
    let arp = test_run::arp_frame();
    let broadcast = v4_frame(SENDER_MAC, [0xff; 6], [10, 0, 0, 1], [10, 0, 0, 255]);
    let unknown = v4_frame(SENDER_MAC, RECEIVER_MAC, [10, 0, 0, 1], [10, 0, 0, 3]);
    // To the endpoint's address but another MAC (the router's): not a same-switch frame.
    let routed = v4_frame(
        SENDER_MAC,
        [0x0a, 1, 2, 3, 4, 5],
        [10, 0, 0, 1],
        [10, 0, 0, 2],
    );
    let multicast_v6 = v6_frame(
        SENDER_V6,
        [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
    );
    for f in [&arp, &broadcast, &unknown, &routed, &multicast_v6] {
        assert_eq!(run(&fp, f), TC_ACT_UNSPEC);
    }
    let c = counters(&fp);
    assert_eq!((c.hits, c.misses, c.spoofed), (0, 5, 0));
}

#[test]
fn with_a_userspace_datapath_misses_are_redirected_to_the_device_ovs_reads() {
    if !privilege::require_privileges(
        "with_a_userspace_datapath_misses_are_redirected_to_the_device_ovs_reads",
    ) {
        return;
    }
    let fp = rig(9, 0);
    assert_eq!(run(&fp, &test_run::arp_frame()), TC_ACT_REDIRECT);
    assert_eq!(counters(&fp).misses, 1);
    // An interface the fast path does not know is left alone, by both programs.
    let other = SkBuffCtx {
        ifindex: 0,
        ..SkBuffCtx::default()
    };
    let fresh = FastpathUnderTest::load().expect("loads");
    let verdict = fresh
        .dataplane
        .test_run(PROG_FORWARD, &test_run::arp_frame(), &other, 1)
        .expect("run")
        .verdict;
    assert_eq!(verdict, TC_ACT_UNSPEC);
    let verdict = fresh
        .dataplane
        .test_run(PROG_TO_POD, &test_run::arp_frame(), &other, 1)
        .expect("run")
        .verdict;
    assert_eq!(verdict, TC_ACT_UNSPEC);
}

#[test]
fn between_isolated_pods_only_an_allowed_pair_of_its_family_is_fast_pathed() {
    if !privilege::require_privileges(
        "between_isolated_pods_only_an_allowed_pair_of_its_family_is_fast_pathed",
    ) {
        return;
    }
    let v4 = v4_frame(SENDER_MAC, RECEIVER_MAC, [10, 0, 0, 1], [10, 0, 0, 2]);
    let v6 = v6_frame(SENDER_V6, RECEIVER_V6);
    // Either end isolated, no pair: both families go to OVS, counted as isolated.
    for (sender, receiver) in [(SOURCE_ISOLATED, 0), (0, ENDPOINT_ISOLATED)] {
        let fp = rig_with(0, sender, receiver);
        assert_eq!(run(&fp, &v4), TC_ACT_UNSPEC);
        assert_eq!(run(&fp, &v6), TC_ACT_UNSPEC);
        let c = counters(&fp);
        assert_eq!((c.hits, c.misses, c.spoofed, c.isolated), (0, 0, 0, 2));
    }
    // The IPv4 pair allowed: IPv4 is fast-pathed, IPv6 still goes to OVS.
    let mut fp = rig_with(0, SOURCE_ISOLATED, ENDPOINT_ISOLATED);
    fp.dataplane
        .put_pair(PairKey {
            src: 1,
            dst: 42,
            family: 4,
        })
        .expect("pair");
    assert_eq!(run(&fp, &v4), TC_ACT_REDIRECT);
    assert_eq!(run(&fp, &v6), TC_ACT_UNSPEC);
    // The reverse direction is its own entry.
    assert!(fp.dataplane.pairs().iter().all(|p| p.src == 1));
    let c = counters(&fp);
    assert_eq!((c.hits, c.isolated), (1, 1));
    // A spoofed frame between isolated pods is spoofed first, never fast-pathed.
    let spoofed = v4_frame(SENDER_MAC, RECEIVER_MAC, [10, 0, 0, 9], [10, 0, 0, 2]);
    assert_eq!(run(&fp, &spoofed), TC_ACT_UNSPEC);
    assert_eq!(counters(&fp).spoofed, 1);
}
