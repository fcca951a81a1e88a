//! The fast-path program's decisions, run with `BPF_PROG_TEST_RUN` on crafted frames: a frame
//! to a local endpoint of the sender's switch from the sender's own MAC and address is
//! redirected and counted as a hit; anything else continues to OVS (or to the configured OVS
//! device), counted as a miss, or as spoofed when it was for a local endpoint but not from the
//! sender's own MAC and address. A frame sent to the gateway's MAC for a local pod of another
//! Subnet of the sender's Vpc is routed: redirected with its TTL (or hop limit) one less, its
//! IPv4 checksum right, its source MAC the router port's on the receiver's switch and its
//! destination MAC the receiver's; a frame whose TTL would expire goes to OVS unchanged.

use std::collections::BTreeMap;

use sidelane_agent::dataplane::{
    fastpath::{FastpathDataplane, FastpathUnderTest, PortRoute, Table},
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
        ..Endpoint::default()
    };
    fp.dataplane
        .put_endpoint(Table::Switched, EndpointKey::v4(SWITCH, [10, 0, 0, 2]), ep)
        .expect("endpoint");
    fp.dataplane
        .put_endpoint(Table::Switched, EndpointKey::v6(SWITCH, RECEIVER_V6), ep)
        .expect("endpoint");
    fp
}

const DOMAIN: u32 = 11;
/// The routed receiver's switch.
const SWITCH_B: u32 = 8;
/// The router port's MAC on the sender's switch: the sender's gateway.
const GATEWAY_A: [u8; 6] = [0x0a, 0, 0, 0, 0, 0xa1];
/// The router port's MAC on the receiver's switch.
const GATEWAY_B: [u8; 6] = [0x0a, 0, 0, 0, 0, 0xb1];
const ROUTED_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x05];
const ROUTED_V4: [u8; 4] = [10, 2, 0, 5];
const ROUTED_V6: [u8; 16] = [0xfd, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5];

/// [`rig`], with the sender's Subnet routed in [`DOMAIN`] behind [`GATEWAY_A`], and a local pod
/// of another Subnet of the Vpc ([`ROUTED_V4`], [`ROUTED_V6`]) behind [`GATEWAY_B`].
fn routed_rig(sender_flags: u32) -> FastpathUnderTest {
    let mut fp = rig_with(0, sender_flags, 0);
    fp.dataplane
        .put_source(
            1,
            Source {
                switch: SWITCH,
                slot: 3,
                flags: SOURCE_HAS_V4 | SOURCE_HAS_V6 | sender_flags,
                mac: SENDER_MAC,
                ip4: [10, 0, 0, 1],
                ip6: SENDER_V6,
                domain: DOMAIN,
                gw_mac: GATEWAY_A,
                ..Source::default()
            },
        )
        .expect("source");
    let ep = Endpoint {
        ifindex: 43,
        mac: ROUTED_MAC,
        router_mac: GATEWAY_B,
        ..Endpoint::default()
    };
    for key in [
        EndpointKey::v4(DOMAIN, ROUTED_V4),
        EndpointKey::v6(DOMAIN, ROUTED_V6),
    ] {
        fp.dataplane
            .put_endpoint(Table::Routed, key, ep)
            .expect("routed endpoint");
    }
    fp
}

/// The IPv4 header checksum of `frame` computed whole (it must come out as 0 over a header
/// that holds a right one).
fn header_sum(frame: &[u8]) -> u16 {
    let mut sum: u32 = frame[14..34]
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).expect("folded to 16 bits")
}

/// An IPv4 frame to the gateway with TTL `ttl` and a right header checksum.
fn v4_to_gateway(ttl: u8, dst: [u8; 4]) -> Vec<u8> {
    let mut f = v4_frame(SENDER_MAC, GATEWAY_A, [10, 0, 0, 1], dst);
    f[22] = ttl;
    f[24..26].copy_from_slice(&[0, 0]);
    let check = header_sum(&f);
    f[24..26].copy_from_slice(&check.to_be_bytes());
    f
}

fn v6_to_gateway(hop_limit: u8, dst: [u8; 16]) -> Vec<u8> {
    let mut f = v6_frame(SENDER_V6, dst);
    f[0..6].copy_from_slice(&GATEWAY_A);
    f[21] = hop_limit;
    f
}

fn run_whole(fp: &FastpathUnderTest, frame: &[u8]) -> test_run::RunResult {
    fp.dataplane
        .test_run(PROG_FORWARD, frame, &SkBuffCtx::default(), 1)
        .expect("test run")
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
fn arp_broadcast_unknown_remote_and_link_local_frames_continue_to_ovs() {
    if !privilege::require_privileges(
        "arp_broadcast_unknown_remote_and_link_local_frames_continue_to_ovs",
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
    // From the sender's link-local address (its global one still tentative): OVN's port
    // security allows it, so it is no spoof; OVS carries it.
    let link_local = v6_frame(
        [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xfe, 0, 0, 1],
        RECEIVER_V6,
    );
    for f in [
        &arp,
        &broadcast,
        &unknown,
        &routed,
        &multicast_v6,
        &link_local,
    ] {
        assert_eq!(run(&fp, f), TC_ACT_UNSPEC);
    }
    let c = counters(&fp);
    assert_eq!((c.hits, c.misses, c.spoofed), (0, 6, 0));
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

#[test]
fn a_frame_to_the_gateway_for_a_local_pod_of_another_subnet_is_routed_as_the_router_would() {
    if !privilege::require_privileges(
        "a_frame_to_the_gateway_for_a_local_pod_of_another_subnet_is_routed_as_the_router_would",
    ) {
        return;
    }
    let fp = routed_rig(0);
    for ttl in [64u8, 2, 255] {
        let sent = v4_to_gateway(ttl, ROUTED_V4);
        let out = run_whole(&fp, &sent);
        assert_eq!(out.verdict, TC_ACT_REDIRECT, "ttl {ttl}");
        assert_eq!(out.data[0..6], ROUTED_MAC, "to the receiver's MAC");
        assert_eq!(
            out.data[6..12],
            GATEWAY_B,
            "from the router port on its switch"
        );
        assert_eq!(out.data[22], ttl - 1, "one routed hop");
        assert_eq!(
            header_sum(&out.data),
            0,
            "the IPv4 header checksum is right"
        );
        assert_eq!(out.data[12..22], sent[12..22], "nothing else changes");
        assert_eq!(out.data[23], sent[23]);
        assert_eq!(out.data[26..], sent[26..]);
    }
    let sent = v6_to_gateway(64, ROUTED_V6);
    let out = run_whole(&fp, &sent);
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    assert_eq!(
        (&out.data[0..6], &out.data[6..12]),
        (&ROUTED_MAC[..], &GATEWAY_B[..])
    );
    assert_eq!(out.data[21], 63, "the hop limit is one less");
    assert_eq!(out.data[22..], sent[22..]);
    let c = counters(&fp);
    assert_eq!((c.hits, c.routed, c.misses, c.expired), (4, 4, 0, 0));
}

#[test]
fn a_routed_frame_whose_ttl_would_expire_goes_to_ovs_unchanged() {
    if !privilege::require_privileges("a_routed_frame_whose_ttl_would_expire_goes_to_ovs_unchanged")
    {
        return;
    }
    let fp = routed_rig(0);
    for sent in [
        v4_to_gateway(1, ROUTED_V4),
        v4_to_gateway(0, ROUTED_V4),
        v6_to_gateway(1, ROUTED_V6),
    ] {
        let out = run_whole(&fp, &sent);
        assert_eq!(
            out.verdict, TC_ACT_UNSPEC,
            "OVN's router answers time exceeded"
        );
        assert_eq!(out.data, sent, "left as sent");
    }
    let c = counters(&fp);
    assert_eq!((c.hits, c.expired), (0, 3));
}

#[test]
fn only_frames_to_the_gateway_from_a_routed_subnet_for_a_routed_local_pod_are_routed() {
    if !privilege::require_privileges(
        "only_frames_to_the_gateway_from_a_routed_subnet_for_a_routed_local_pod_are_routed",
    ) {
        return;
    }
    let fp = routed_rig(0);
    // Not local (or not routed in the domain): OVS routes it.
    let elsewhere = v4_to_gateway(64, [10, 2, 0, 99]);
    // Straight to the receiver's MAC, not through the gateway: not a frame OVN would route.
    let mut unrouted = v4_to_gateway(64, ROUTED_V4);
    unrouted[0..6].copy_from_slice(&ROUTED_MAC);
    // The same-switch endpoint's address, sent to the gateway: routed back onto its switch is
    // what OVN does, but only with the endpoint published in the domain, which it is not here.
    let same_switch = v4_to_gateway(64, [10, 0, 0, 2]);
    for f in [&elsewhere, &unrouted, &same_switch] {
        assert_eq!(run(&fp, f), TC_ACT_UNSPEC);
    }
    // Spoofed: another source address, sent to the gateway.
    let mut spoofed = v4_to_gateway(64, ROUTED_V4);
    spoofed[26..30].copy_from_slice(&[10, 0, 0, 77]);
    assert_eq!(run(&fp, &spoofed), TC_ACT_UNSPEC);
    let c = counters(&fp);
    assert_eq!((c.hits, c.misses, c.spoofed), (0, 3, 1));
    // A sender whose Subnet is not routed: the gateway's MAC is just OVS's.
    let plain = rig(0, 0);
    assert_eq!(
        run(&plain, &v4_to_gateway(64, [10, 0, 0, 2])),
        TC_ACT_UNSPEC
    );
    // An isolated sender has no pair across Subnets: OVS's ACLs decide.
    let isolated = routed_rig(SOURCE_ISOLATED);
    assert_eq!(run(&isolated, &v4_to_gateway(64, ROUTED_V4)), TC_ACT_UNSPEC);
    assert_eq!(counters(&isolated).isolated, 1);
}

#[test]
fn routing_follows_the_table_of_routed_subnets_and_a_withdrawn_subnet_is_switched_only() {
    if !privilege::require_privileges(
        "routing_follows_the_table_of_routed_subnets_and_a_withdrawn_subnet_is_switched_only",
    ) {
        return;
    }
    // The sender on SWITCH and a receiver (ifindex 43) on SWITCH_B, both published on their
    // switches, neither routed yet.
    let mut fp = rig(0, 0);
    fp.dataplane
        .put_source(
            43,
            Source {
                switch: SWITCH_B,
                slot: 4,
                flags: SOURCE_HAS_V4 | SOURCE_HAS_V6,
                mac: ROUTED_MAC,
                ip4: ROUTED_V4,
                ip6: ROUTED_V6,
                ..Source::default()
            },
        )
        .expect("source");
    let receiver = Endpoint {
        ifindex: 43,
        mac: ROUTED_MAC,
        ..Endpoint::default()
    };
    for key in [
        EndpointKey::v4(SWITCH_B, ROUTED_V4),
        EndpointKey::v6(SWITCH_B, ROUTED_V6),
    ] {
        fp.dataplane
            .put_endpoint(Table::Switched, key, receiver)
            .expect("endpoint");
    }
    let to_gateway = |gw: [u8; 6]| {
        let mut f = v4_to_gateway(64, ROUTED_V4);
        f[0..6].copy_from_slice(&gw);
        f
    };
    let route = |gateway_mac| PortRoute {
        domain: DOMAIN,
        gateway_mac,
    };
    fp.dataplane
        .set_routes(BTreeMap::from([
            (SWITCH, route(GATEWAY_A)),
            (SWITCH_B, route(GATEWAY_B)),
        ]))
        .expect("routes");
    let out = run_whole(&fp, &to_gateway(GATEWAY_A));
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    assert_eq!(out.data[6..12], GATEWAY_B);
    let published: Vec<_> = fp
        .dataplane
        .endpoints(Table::Routed)
        .into_iter()
        .filter(|(_, ep)| ep.ifindex == 43)
        .map(|(k, ep)| (k.switch, ep.router_mac))
        .collect();
    assert_eq!(published, [(DOMAIN, GATEWAY_B); 2], "both families");
    // The receiver's Subnet is withdrawn (a static route claims it): routed frames to it go
    // to OVS, and its own frames to the gateway too.
    fp.dataplane
        .set_routes(BTreeMap::from([(SWITCH, route(GATEWAY_A))]))
        .expect("routes");
    assert_eq!(run(&fp, &to_gateway(GATEWAY_A)), TC_ACT_UNSPEC);
    assert!(
        fp.dataplane
            .endpoints(Table::Routed)
            .iter()
            .all(|(_, ep)| ep.ifindex != 43)
    );
    // Same-switch forwarding is untouched.
    let same = v4_frame(SENDER_MAC, RECEIVER_MAC, [10, 0, 0, 1], [10, 0, 0, 2]);
    assert_eq!(run(&fp, &same), TC_ACT_REDIRECT);
    // Nothing routed at all: the gateway's MAC is OVS's again.
    fp.dataplane.set_routes(BTreeMap::new()).expect("routes");
    assert!(fp.dataplane.endpoints(Table::Routed).is_empty());
}

#[test]
fn maps_pinned_by_an_agent_of_another_version_are_refused_naming_what_to_remove() {
    if !privilege::require_privileges(
        "maps_pinned_by_an_agent_of_another_version_are_refused_naming_what_to_remove",
    ) {
        return;
    }
    let root =
        std::path::PathBuf::from(format!("/sys/fs/bpf/sidelane-stale-{}", std::process::id()));
    let dir = root.join("fastpath");
    std::fs::create_dir_all(&dir).expect("a pin directory");
    // SL_FP_SOURCES as the version before routing pinned it: 48-byte sources.
    let pin = dir.join("SL_FP_SOURCES");
    let made = std::process::Command::new("bpftool")
        .args(["map", "create"])
        .arg(&pin)
        .args([
            "type",
            "hash",
            "key",
            "4",
            "value",
            "48",
            "entries",
            "4096",
            "name",
            "SL_FP_SOURCES",
        ])
        .status()
        .expect("running bpftool");
    assert!(made.success(), "bpftool map create");
    let refused = FastpathDataplane::open(&root).err().map(|e| e.to_string());
    let _ = std::fs::remove_file(&pin);
    let opened = FastpathDataplane::open(&root).map(drop);
    let _ = std::fs::remove_dir_all(&root);
    let refused = refused.expect("the stale pin is refused");
    for part in [
        "SL_FP_SOURCES",
        "48-byte values",
        "56-byte values",
        &format!("remove {}", dir.display()),
    ] {
        assert!(refused.contains(part), "{part:?} in: {refused}");
    }
    opened.expect("without the stale pin the fast path opens");
}
