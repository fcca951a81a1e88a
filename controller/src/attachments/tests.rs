use sidelane_api::nad;

use super::*;

fn seeds_lookup(ns: &str, name: &str) -> NadLookup {
    let config = match (ns, name) {
        ("default", "attachnet") => {
            r#"{"cniVersion": "0.3.0", "type": "kube-ovn",
            "server_socket": "/run/openvswitch/kube-ovn-daemon.sock", "provider": "attachnet.default.ovn"}"#
        }
        ("default", "macvlan") => {
            r#"{"cniVersion": "0.3.0", "type": "macvlan", "master": "eth0",
            "mode": "bridge", "ipam": {"type": "kube-ovn",
            "server_socket": "/run/openvswitch/kube-ovn-daemon.sock", "provider": "macvlan.default"}}"#
        }
        ("default", "bridge") => r#"{"type": "bridge", "ipam": {"type": "host-local"}}"#,
        ("default", "empty") => "",
        _ => return NadLookup::Missing,
    };
    match nad::parse(ns, name, config) {
        Ok(Some(c)) => NadLookup::Ours(c),
        Ok(None) => NadLookup::Foreign,
        Err(e) => NadLookup::Invalid(e),
    }
}

fn pod(annotations: &[(&str, &str)]) -> PodView {
    PodView {
        namespace: "default".to_owned(),
        name: "samplepod".to_owned(),
        uid: "uid-1".to_owned(),
        annotations: annotations
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        statefulset: None,
    }
}

#[test]
fn the_seeds_static_pod_asks_for_its_address_and_mac() {
    let p = pod(&[
        ("k8s.v1.cni.cncf.io/networks", "default/macvlan"),
        ("macvlan.default.kubernetes.io/ip_address", "172.17.0.100"),
        (
            "macvlan.default.kubernetes.io/mac_address",
            "00:00:00:8A:3C:4F",
        ),
    ]);
    let plan = asked_by(&p, &seeds_lookup);
    assert!(plan.refused.is_empty(), "{:?}", plan.refused);
    let w = &plan.wanted[0];
    assert_eq!(w.prefix, "macvlan.default");
    assert_eq!(w.request.key.ifname, "net1");
    assert_eq!(
        w.request.static_ips,
        ["172.17.0.100".parse::<IpAddr>().expect("ip")]
    );
    assert_eq!(w.request.mac, Some([0, 0, 0, 0x8a, 0x3c, 0x4f]));
    assert!(!w.already_allocated);
}

#[test]
fn a_nad_listed_twice_gets_per_interface_prefixes_and_foreign_nads_are_skipped() {
    let p = pod(&[(
        "k8s.v1.cni.cncf.io/networks",
        "default/attachnet@net1, default/bridge, default/attachnet@net3",
    )]);
    let plan = asked_by(&p, &seeds_lookup);
    let prefixes: Vec<&str> = plan.wanted.iter().map(|w| w.prefix.as_str()).collect();
    assert_eq!(
        prefixes,
        ["attachnet.default.ovn.net1", "attachnet.default.ovn.net3"]
    );
    assert_eq!(plan.wanted[1].request.key.ifname, "net3");
    assert_eq!(plan.wanted[1].request.key.provider, "attachnet.default.ovn");
}

#[test]
fn a_bad_attachment_is_refused_naming_it_and_the_others_are_still_planned() {
    let p = pod(&[
        (
            "k8s.v1.cni.cncf.io/networks",
            "default/macvlan, default/empty, default/gone, default/attachnet",
        ),
        ("macvlan.default.kubernetes.io/ip_address", "172.17.0.300"),
    ]);
    let plan = asked_by(&p, &seeds_lookup);
    let refused: Vec<(&str, &str)> = plan
        .refused
        .iter()
        .map(|r| (r.subject.as_str(), r.reason.as_str()))
        .collect();
    assert_eq!(refused.len(), 3, "{refused:?}");
    assert_eq!(refused[0].0, "macvlan.default.kubernetes.io/ip_address");
    assert!(refused[0].1.contains("172.17.0.300"), "{}", refused[0].1);
    assert!(
        refused[1].1.contains("empty spec.config"),
        "{}",
        refused[1].1
    );
    assert_eq!(
        refused[2].1,
        "NetworkAttachmentDefinition default/gone not found"
    );
    assert_eq!(plan.wanted.len(), 1);
    assert_eq!(plan.wanted[0].prefix, "attachnet.default.ovn");
}

#[test]
fn the_json_selection_gives_static_ips_and_mac_and_a_statefulset_pod_its_slot_and_ordinal() {
    let mut p = pod(&[(
        "k8s.v1.cni.cncf.io/networks",
        r#"[{"name": "macvlan", "ips": ["172.17.0.50/16"], "mac": "02:00:00:00:00:50"}]"#,
    )]);
    p.name = "db-2".to_owned();
    p.statefulset = Some("db".to_owned());
    let plan = asked_by(&p, &seeds_lookup);
    let r = &plan.wanted[0].request;
    assert_eq!(r.static_ips, ["172.17.0.50".parse::<IpAddr>().expect("ip")]);
    assert_eq!(r.mac, Some([2, 0, 0, 0, 0, 0x50]));
    assert_eq!(r.ordinal, Some(2));
    assert_eq!(
        r.key.holder,
        Holder::StatefulSetSlot {
            namespace: "default".to_owned(),
            pod: "db-2".to_owned()
        }
    );
}

#[test]
fn ip_pool_values_parse_as_kube_ovn_splits_them() {
    let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
    assert_eq!(
        parse_ip_pool("10.0.0.5,10.0.0.6"),
        PoolSpec::Entries(vec![vec![ip("10.0.0.5")], vec![ip("10.0.0.6")]])
    );
    assert_eq!(
        parse_ip_pool("10.0.0.5,fd00::5;10.0.0.6,fd00::6"),
        PoolSpec::Entries(vec![
            vec![ip("10.0.0.5"), ip("fd00::5")],
            vec![ip("10.0.0.6"), ip("fd00::6")]
        ])
    );
    assert_eq!(
        parse_ip_pool("10.0.0.5,fd00::5,10.0.0.6,fd00::6"),
        PoolSpec::Entries(vec![
            vec![ip("10.0.0.5"), ip("fd00::5")],
            vec![ip("10.0.0.6"), ip("fd00::6")]
        ])
    );
    assert_eq!(
        parse_ip_pool("pool-a"),
        PoolSpec::Named(vec!["pool-a".to_owned()])
    );
}

#[test]
fn an_allocation_is_written_as_kube_ovn_writes_it() {
    let subnet = SubnetConfig::from_input(&crate::subnet::SubnetInput {
        name: "dual".to_owned(),
        cidr_block: "10.7.0.0/24,fd00:7::/120".to_owned(),
        provider: "attachnet.default.ovn".to_owned(),
        ..crate::subnet::SubnetInput::default()
    })
    .expect("valid");
    let alloc = Allocated {
        subnet: "dual".to_owned(),
        ips: vec![
            "10.7.0.2".parse().expect("ip"),
            "fd00:7::2".parse().expect("ip"),
        ],
        mac: Some([2, 0, 0, 0, 0, 9]),
    };
    let a = annotations_for("attachnet.default.ovn", &alloc, &subnet);
    let get = |f: &str| a[&format!("attachnet.default.ovn.kubernetes.io/{f}")].as_str();
    assert_eq!(get("ip_address"), "10.7.0.2,fd00:7::2");
    assert_eq!(get("cidr"), "10.7.0.0/24,fd00:7::/120");
    assert_eq!(get("gateway"), "10.7.0.1,fd00:7::1");
    assert_eq!(get("mac_address"), "02:00:00:00:00:09");
    assert_eq!(get("logical_switch"), "dual");
    assert_eq!(get("allocated"), "true");
    // The agent reads back exactly this.
    let read = sidelane_api::allocation::read(&a, "attachnet.default.ovn", "net1")
        .expect("valid")
        .expect("allocated");
    assert_eq!(read.ips.len(), 2);
    assert_eq!(read.mac.as_deref(), Some("02:00:00:00:00:09"));
}

#[test]
fn the_default_network_annotation_asks_for_eth0_and_the_others_keep_their_numbers() {
    let p = pod(&[
        ("v1.multus-cni.io/default-network", "default/macvlan"),
        ("k8s.v1.cni.cncf.io/networks", "default/attachnet"),
    ]);
    let plan = asked_by(&p, &seeds_lookup);
    let got: Vec<(&str, &str)> = plan
        .wanted
        .iter()
        .map(|w| (w.prefix.as_str(), w.request.key.ifname.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("macvlan.default", "eth0"),
            ("attachnet.default.ovn", "net1")
        ]
    );
}

#[test]
fn ip_family_takes_exactly_kube_ovns_values() {
    let family = |value: &str| {
        let p = pod(&[
            ("k8s.v1.cni.cncf.io/networks", "default/macvlan"),
            ("macvlan.default.kubernetes.io/ip_family", value),
        ]);
        let plan = asked_by(&p, &seeds_lookup);
        match (plan.wanted.first(), plan.refused.first()) {
            (Some(w), None) => Ok(w.request.family),
            (_, Some(r)) => Err(r.reason.clone()),
            (None, None) => Err("nothing planned".to_owned()),
        }
    };
    assert_eq!(family("ipv4"), Ok(Some(Family::V4)));
    assert_eq!(family("ipv6"), Ok(Some(Family::V6)));
    assert_eq!(family(""), Ok(None));
    for wrong in ["IPv4", "IPV6", "dual", "Dual"] {
        assert_eq!(
            family(wrong),
            Err(format!(
                "{wrong:?} is not a valid macvlan.default.kubernetes.io/ip_family: expected ipv4 or ipv6"
            ))
        );
    }
}
