use std::collections::HashSet;

use proptest::prelude::*;

use super::*;
use crate::subnet::{SubnetConfig, SubnetInput};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

fn subnet(
    name: &str,
    provider: &str,
    cidr: &str,
    exclude: &[&str],
    namespaces: &[&str],
) -> SubnetConfig {
    SubnetConfig::from_input(&SubnetInput {
        name: name.to_owned(),
        cidr_block: cidr.to_owned(),
        exclude_ips: exclude.iter().map(|s| (*s).to_owned()).collect(),
        provider: provider.to_owned(),
        namespaces: namespaces.iter().map(|s| (*s).to_owned()).collect(),
        ..SubnetInput::default()
    })
    .expect("a valid subnet")
}

fn pod(ns: &str, name: &str, uid: &str) -> PodRef {
    PodRef {
        namespace: ns.to_owned(),
        name: name.to_owned(),
        uid: uid.to_owned(),
    }
}

fn request(p: &PodRef, provider: &str) -> Request {
    Request {
        key: AttachmentKey {
            holder: Holder::Pod { uid: p.uid.clone() },
            provider: provider.to_owned(),
            ifname: "net1".to_owned(),
        },
        pod: p.clone(),
        logical_switch: None,
        static_ips: Vec::new(),
        ip_pool: Vec::new(),
        ordinal: None,
        family: None,
        mac: None,
    }
}

/// The seeds' macvlan Subnet.
fn seeded() -> Ipam {
    let mut ipam = Ipam::new();
    ipam.set_subnet(subnet(
        "macvlan",
        "macvlan.default",
        "172.17.0.0/16",
        &["172.17.0.0..172.17.0.10"],
        &[],
    ));
    ipam.set_subnet(subnet(
        "attachnet",
        "attachnet.default.ovn",
        "172.18.0.0/16",
        &["172.18.0.0..172.18.0.10"],
        &[],
    ));
    ipam
}

#[test]
fn the_seeds_macvlan_pod_gets_the_first_address_after_the_excluded_range_and_no_mac() {
    let mut ipam = seeded();
    let got = ipam
        .allocate(&request(
            &pod("default", "samplepod", "u1"),
            "macvlan.default",
        ))
        .expect("allocated");
    assert_eq!(
        got,
        Allocated {
            subnet: "macvlan".to_owned(),
            ips: vec![ip("172.17.0.11")],
            mac: None
        }
    );
}

#[test]
fn an_ovn_attachment_gets_a_stable_locally_administered_mac() {
    let mut ipam = seeded();
    let req = request(&pod("default", "samplepod", "u1"), "attachnet.default.ovn");
    let first = ipam.allocate(&req).expect("allocated");
    let mac = first.mac.expect("a MAC");
    assert_eq!(
        mac[0] & 0x03,
        0x02,
        "locally administered unicast: {}",
        sidelane_api::mac::format(mac)
    );
    assert_eq!(ipam.allocate(&req).expect("again"), first, "idempotent");
}

#[test]
fn a_provider_without_subnet_or_outside_its_namespaces_is_refused_by_name() {
    let mut ipam = seeded();
    ipam.set_subnet(subnet(
        "team",
        "team.default",
        "10.5.0.0/24",
        &[],
        &["team-a"],
    ));
    let err = ipam
        .allocate(&request(&pod("default", "p", "u1"), "nosuch.default"))
        .expect_err("no subnet");
    assert_eq!(
        err.to_string(),
        "provider nosuch.default is not bound to any subnet"
    );
    let err = ipam
        .allocate(&request(&pod("default", "p", "u1"), "team.default"))
        .expect_err("namespace not served");
    assert_eq!(
        err.to_string(),
        "provider team.default is not bound to any subnet that serves namespace default"
    );
    assert!(
        ipam.allocate(&request(&pod("team-a", "p", "u2"), "team.default"))
            .is_ok()
    );
}

#[test]
fn the_logical_switch_annotation_wins_over_the_provider() {
    // The seeds' second case: an `ovn` Subnet picked by `logical_switch`.
    let mut ipam = seeded();
    ipam.set_subnet(subnet("ovnnet", "ovn", "10.16.0.0/16", &[], &[]));
    let mut req = request(&pod("default", "p", "u1"), "macvlan.default");
    req.logical_switch = Some("ovnnet".to_owned());
    let got = ipam.allocate(&req).expect("allocated");
    assert_eq!(got.subnet, "ovnnet");
    assert_eq!(got.ips, [ip("10.16.0.2")]);
    assert!(got.mac.is_some(), "an OVN subnet gives a MAC");
    req.logical_switch = Some("gone".to_owned());
    assert_eq!(
        ipam.allocate(&req),
        Err(AllocError::UnknownSubnet("gone".to_owned()))
    );
}

#[test]
fn a_static_address_held_by_another_pod_is_a_conflict_naming_it_and_changes_nothing() {
    let mut ipam = seeded();
    let mut a = request(&pod("default", "a", "ua"), "macvlan.default");
    a.static_ips = vec![ip("172.17.0.50")];
    ipam.allocate(&a).expect("allocated");
    let mut b = request(&pod("default", "b", "ub"), "macvlan.default");
    b.static_ips = vec![ip("172.17.0.50")];
    assert_eq!(
        ipam.allocate(&b).expect_err("conflict").to_string(),
        "172.17.0.50 in subnet macvlan is already held by pod default/a"
    );
    assert_eq!(ipam.get(&b.key), None);
    b.static_ips = vec![ip("10.9.9.9")];
    assert_eq!(
        ipam.allocate(&b).expect_err("outside").to_string(),
        "10.9.9.9 is not in subnet macvlan (172.17.0.0/16)"
    );
    b.static_ips = vec![ip("172.17.0.1")];
    assert_eq!(
        ipam.allocate(&b).expect_err("gateway").to_string(),
        "172.17.0.1 is the gateway of subnet macvlan"
    );
    assert_eq!(ipam.usage("macvlan").expect("usage").v4_used, 1);
}

#[test]
fn a_static_address_in_the_excluded_range_is_allowed_as_in_kube_ovn() {
    let mut ipam = seeded();
    let mut a = request(&pod("default", "a", "ua"), "macvlan.default");
    a.static_ips = vec![ip("172.17.0.5")];
    assert_eq!(ipam.allocate(&a).expect("allowed").ips, [ip("172.17.0.5")]);
}

#[test]
fn dual_stack_gives_one_address_per_family_and_ip_family_picks_one() {
    let mut ipam = Ipam::new();
    ipam.set_subnet(subnet(
        "dual",
        "dual.default",
        "10.7.0.0/24,fd00:7::/120",
        &[],
        &[],
    ));
    let got = ipam
        .allocate(&request(&pod("default", "a", "ua"), "dual.default"))
        .expect("allocated");
    assert_eq!(got.ips, [ip("10.7.0.2"), ip("fd00:7::2")]);
    let mut only6 = request(&pod("default", "b", "ub"), "dual.default");
    only6.family = Some(Family::V6);
    assert_eq!(
        ipam.allocate(&only6).expect("allocated").ips,
        [ip("fd00:7::3")]
    );
}

#[test]
fn dual_stack_rolls_back_the_first_family_when_the_second_is_full() {
    let mut ipam = Ipam::new();
    ipam.set_subnet(subnet(
        "dual",
        "dual.default",
        "10.7.0.0/24,fd00:7::/126",
        &[],
        &[],
    ));
    // fd00:7::/126 has ::1 (gateway) and ::2 usable.
    ipam.allocate(&request(&pod("default", "a", "ua"), "dual.default"))
        .expect("the only v6 address");
    let err = ipam
        .allocate(&request(&pod("default", "b", "ub"), "dual.default"))
        .expect_err("v6 is full");
    assert_eq!(err.to_string(), "subnet dual has no available IPv6 address");
    let usage = ipam.usage("dual").expect("usage");
    assert_eq!(
        usage.v4_used, 1,
        "the v4 address of the failed request was rolled back"
    );
}

#[test]
fn a_full_subnet_passes_to_the_next_one_of_the_provider() {
    let mut ipam = Ipam::new();
    ipam.set_subnet(subnet("a-small", "p.default", "10.8.0.0/30", &[], &[]));
    ipam.set_subnet(subnet("b-big", "p.default", "10.8.1.0/24", &[], &[]));
    let first = ipam
        .allocate(&request(&pod("default", "a", "ua"), "p.default"))
        .expect("a");
    assert_eq!(first.subnet, "a-small");
    let second = ipam
        .allocate(&request(&pod("default", "b", "ub"), "p.default"))
        .expect("b");
    assert_eq!(
        (second.subnet.as_str(), second.ips[0]),
        ("b-big", ip("10.8.1.2"))
    );
}

#[test]
fn ip_pool_replicas_take_free_entries_and_statefulset_pods_take_their_ordinal() {
    let mut ipam = seeded();
    let pool = vec![
        vec![ip("172.17.0.100")],
        vec![ip("172.17.0.101")],
        vec![ip("172.17.0.102")],
    ];
    let mut r1 = request(&pod("default", "web-7d9-abc", "u1"), "macvlan.default");
    r1.ip_pool.clone_from(&pool);
    let mut r2 = request(&pod("default", "web-7d9-def", "u2"), "macvlan.default");
    r2.ip_pool.clone_from(&pool);
    assert_eq!(ipam.allocate(&r1).expect("r1").ips, [ip("172.17.0.100")]);
    assert_eq!(ipam.allocate(&r2).expect("r2").ips, [ip("172.17.0.101")]);

    let slot = |name: &str| AttachmentKey {
        holder: Holder::StatefulSetSlot {
            namespace: "default".to_owned(),
            pod: name.to_owned(),
        },
        provider: "macvlan.default".to_owned(),
        ifname: "net1".to_owned(),
    };
    let mut s2 = request(&pod("default", "db-2", "u3"), "macvlan.default");
    s2.key = slot("db-2");
    s2.ip_pool.clone_from(&pool);
    s2.ordinal = Some(2);
    assert_eq!(ipam.allocate(&s2).expect("db-2").ips, [ip("172.17.0.102")]);
    let mut s5 = s2.clone();
    s5.key = slot("db-5");
    s5.ordinal = Some(5);
    assert_eq!(
        ipam.allocate(&s5).expect_err("no entry 5").to_string(),
        "ip_pool has 3 entries; StatefulSet ordinal 5 has none"
    );
    let mut r3 = r1.clone();
    r3.key.holder = Holder::Pod {
        uid: "u4".to_owned(),
    };
    r3.pod = pod("default", "web-7d9-ghi", "u4");
    assert_eq!(
        ipam.allocate(&r3)
            .expect_err("every entry held")
            .to_string(),
        "every ip_pool entry is held by another pod (3 entries)"
    );
}

#[test]
fn a_statefulset_slot_keeps_its_address_across_pod_recreation_and_the_old_pod_cannot_free_it() {
    let mut ipam = seeded();
    let key = AttachmentKey {
        holder: Holder::StatefulSetSlot {
            namespace: "default".to_owned(),
            pod: "db-0".to_owned(),
        },
        provider: "macvlan.default".to_owned(),
        ifname: "net1".to_owned(),
    };
    let mut old = request(&pod("default", "db-0", "old-uid"), "macvlan.default");
    old.key = key.clone();
    let first = ipam.allocate(&old).expect("allocated");
    // The pod is re-created (new UID) before the old one's deletion is processed.
    let mut new = old.clone();
    new.pod = pod("default", "db-0", "new-uid");
    assert_eq!(ipam.allocate(&new).expect("sticky"), first);
    // The StatefulSet was scaled down meanwhile: the old pod's late deletion releases nothing.
    assert!(ipam.release_pod("old-uid", true).is_empty());
    assert_eq!(ipam.get(&key), Some(&first));
    assert_eq!(ipam.release_pod("new-uid", true).len(), 1);
    assert_eq!(ipam.get(&key), None);
}

#[test]
fn released_addresses_come_back_only_after_the_never_used_ones() {
    let mut ipam = seeded();
    let a = request(&pod("default", "a", "ua"), "macvlan.default");
    assert_eq!(ipam.allocate(&a).expect("a").ips, [ip("172.17.0.11")]);
    ipam.release_pod("ua", false);
    let b = request(&pod("default", "b", "ub"), "macvlan.default");
    assert_eq!(ipam.allocate(&b).expect("b").ips, [ip("172.17.0.12")]);
}

#[test]
fn restore_takes_back_exactly_what_the_cluster_records_and_refuses_a_duplicate() {
    let mut ipam = seeded();
    let a = request(&pod("default", "a", "ua"), "attachnet.default.ovn");
    let held = Allocated {
        subnet: "attachnet".to_owned(),
        ips: vec![ip("172.18.0.77")],
        mac: Some([0x02, 0, 0, 0, 0, 0x77]),
    };
    ipam.restore(&a.key, &a.pod, &held).expect("restored");
    assert_eq!(
        ipam.allocate(&a).expect("kept"),
        held,
        "a restart never reassigns"
    );
    let b = request(&pod("default", "b", "ub"), "attachnet.default.ovn");
    let err = ipam.restore(&b.key, &b.pod, &held).expect_err("duplicate");
    assert_eq!(
        err.to_string(),
        "172.18.0.77 in subnet attachnet is already held by pod default/a"
    );
    let c = request(&pod("default", "c", "uc"), "attachnet.default.ovn");
    let mac_dup = Allocated {
        ips: vec![ip("172.18.0.78")],
        ..held.clone()
    };
    let err = ipam
        .restore(&c.key, &c.pod, &mac_dup)
        .expect_err("MAC duplicate");
    assert_eq!(
        err.to_string(),
        "mac 02:00:00:00:00:77 in subnet attachnet is already held by pod default/a"
    );
    assert_eq!(
        ipam.holder_of("attachnet", ip("172.18.0.78")),
        None,
        "rolled back"
    );
}

#[test]
fn narrowing_a_subnet_displaces_only_the_allocations_that_no_longer_fit() {
    let mut ipam = Ipam::new();
    ipam.set_subnet(subnet("s", "s.default", "10.3.0.0/16", &[], &[]));
    let mut a = request(&pod("default", "a", "ua"), "s.default");
    a.static_ips = vec![ip("10.3.0.5")];
    let mut b = request(&pod("default", "b", "ub"), "s.default");
    b.static_ips = vec![ip("10.3.9.5")];
    ipam.allocate(&a).expect("a");
    ipam.allocate(&b).expect("b");
    let displaced = ipam.set_subnet(subnet("s", "s.default", "10.3.0.0/24", &[], &[]));
    assert_eq!(displaced.len(), 1);
    assert_eq!(displaced[0].key, b.key);
    assert_eq!(ipam.get(&a.key).expect("kept").ips, [ip("10.3.0.5")]);
    assert_eq!(ipam.usage("s").expect("usage").v4_used, 1);
}

#[derive(Clone, Debug)]
enum Op {
    Add { pod: u8, statik: Option<u8> },
    Delete { pod: u8 },
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Pod churn with random and static addresses in two Subnets of one provider: no address
    /// or MAC is ever held twice, usage always equals what the attachments hold, and a
    /// refusal disturbs nothing.
    #[test]
    fn churn_never_holds_an_address_or_mac_twice(
        ops in proptest::collection::vec(
            prop_oneof![
                3 => (0u8..24, proptest::option::of(0u8..16)).prop_map(|(pod, statik)| Op::Add { pod, statik }),
                2 => (0u8..24).prop_map(|pod| Op::Delete { pod }),
            ],
            1..150,
        ),
    ) {
        let mut ipam = Ipam::new();
        ipam.set_subnet(subnet("a", "p.default.ovn", "10.4.0.0/28", &["10.4.0.2..10.4.0.3"], &[]));
        ipam.set_subnet(subnet("b", "p.default.ovn", "10.4.1.0/29", &[], &[]));
        for op in ops {
            match op {
                Op::Add { pod: n, statik } => {
                    let p = pod("default", &format!("p{n}"), &format!("u{n}"));
                    let mut req = request(&p, "p.default.ovn");
                    req.static_ips = statik.map(|s| IpAddr::from([10, 4, 0, s])).into_iter().collect();
                    let before: Vec<_> = ipam.attachments().map(|(k, _, a)| (k.clone(), a.clone())).collect();
                    if ipam.allocate(&req).is_err() {
                        let after: Vec<_> = ipam.attachments().map(|(k, _, a)| (k.clone(), a.clone())).collect();
                        let others = |v: &[(AttachmentKey, Allocated)]| {
                            v.iter().filter(|(k, _)| *k != req.key).cloned().collect::<Vec<_>>()
                        };
                        prop_assert_eq!(others(&before), others(&after));
                    }
                }
                Op::Delete { pod: n } => {
                    ipam.release_pod(&format!("u{n}"), false);
                }
            }
            let mut ips = HashSet::new();
            let mut macs = HashSet::new();
            let mut used = 0u64;
            for (_, _, held) in ipam.attachments() {
                for ip in &held.ips {
                    prop_assert!(ips.insert(*ip), "{} held twice", ip);
                    used += 1;
                }
                prop_assert!(macs.insert(held.mac), "{:?} held twice", held.mac);
            }
            let total: u64 = ["a", "b"].iter().map(|s| ipam.usage(s).expect("usage").v4_used).sum();
            prop_assert_eq!(total, used);
        }
    }
}

#[test]
fn re_reading_an_unchanged_subnet_keeps_the_release_order() {
    let mut ipam = seeded();
    let a = request(&pod("default", "a", "ua"), "macvlan.default");
    ipam.allocate(&a).expect("a");
    ipam.release_pod("ua", false);
    ipam.set_subnet(subnet(
        "macvlan",
        "macvlan.default",
        "172.17.0.0/16",
        &["172.17.0.0..172.17.0.10"],
        &[],
    ));
    let b = request(&pod("default", "b", "ub"), "macvlan.default");
    assert_eq!(ipam.allocate(&b).expect("b").ips, [ip("172.17.0.12")]);
}
