use std::net::IpAddr;

use super::*;

const MACVLAN: &str = r#"{"cniVersion": "0.3.0", "type": "macvlan", "master": "eth0", "mode": "bridge",
    "ipam": {"type": "kube-ovn", "server_socket": "/run/openvswitch/kube-ovn-daemon.sock",
             "provider": "macvlan.default"}}"#;
const ATTACHNET: &str = r#"{"cniVersion": "0.3.0", "type": "kube-ovn",
    "server_socket": "/run/openvswitch/kube-ovn-daemon.sock", "provider": "attachnet.default.ovn"}"#;

fn subnet(name: &str, provider: &str, cidr: &str, exclude: &[&str]) -> SubnetInput {
    SubnetInput {
        name: name.to_owned(),
        cidr_block: cidr.to_owned(),
        gateway: String::new(),
        exclude_ips: exclude.iter().map(|s| (*s).to_owned()).collect(),
        provider: provider.to_owned(),
        protocol: "IPv4".to_owned(),
        ..SubnetInput::default()
    }
}

/// The seeds' cluster: both NADs and their Subnets.
fn seeded() -> Engine {
    let mut e = Engine::new();
    assert!(e.set_nad("default", "macvlan", Some(MACVLAN)).is_empty());
    assert!(
        e.set_nad("default", "attachnet", Some(ATTACHNET))
            .is_empty()
    );
    for s in [
        subnet(
            "macvlan",
            "macvlan.default",
            "172.17.0.0/16",
            &["172.17.0.1..172.17.0.10"],
        ),
        subnet(
            "attachnet",
            "attachnet.default.ovn",
            "172.18.0.0/16",
            &["172.18.0.0..172.18.0.10"],
        ),
    ] {
        assert!(matches!(e.set_subnet(&s), SubnetOutcome::Valid { .. }));
    }
    e
}

fn pod(name: &str, uid: &str, annotations: &[(&str, &str)]) -> PodView {
    PodView {
        namespace: "default".to_owned(),
        name: name.to_owned(),
        uid: uid.to_owned(),
        annotations: annotations
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        statefulset: None,
    }
}

fn with(mut p: PodView, annotations: &BTreeMap<String, String>) -> PodView {
    p.annotations.extend(annotations.clone());
    p
}

#[test]
fn the_seeds_pod_gets_kube_ovns_annotations_and_ip_resources_once() {
    let mut e = seeded();
    let p = pod(
        "samplepod",
        "u1",
        &[(
            "k8s.v1.cni.cncf.io/networks",
            "default/macvlan, default/attachnet",
        )],
    );
    let out = e.on_pod(&p);
    assert!(out.events.is_empty(), "{:?}", out.events);
    let a = &out.annotations;
    assert_eq!(a["macvlan.default.kubernetes.io/ip_address"], "172.17.0.11");
    assert_eq!(a["macvlan.default.kubernetes.io/cidr"], "172.17.0.0/16");
    assert_eq!(a["macvlan.default.kubernetes.io/gateway"], "172.17.0.1");
    assert_eq!(a["macvlan.default.kubernetes.io/logical_switch"], "macvlan");
    assert_eq!(a["macvlan.default.kubernetes.io/allocated"], "true");
    assert!(
        !a.contains_key("macvlan.default.kubernetes.io/mac_address"),
        "IPAM-only: no MAC"
    );
    assert_eq!(
        a["attachnet.default.ovn.kubernetes.io/ip_address"],
        "172.18.0.11"
    );
    assert!(a.contains_key("attachnet.default.ovn.kubernetes.io/mac_address"));
    let names: Vec<&str> = out.upsert_ips.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "samplepod.default.macvlan.default",
            "samplepod.default.attachnet.default.ovn"
        ]
    );
    assert_eq!(out.upsert_ips[0].ifname, "net1");
    assert_eq!(out.upsert_ips[1].ifname, "net2");

    // The pod as patched: reconciling it again changes nothing.
    let again = e.on_pod(&with(p, &out.annotations));
    assert_eq!(again, PodOutcome::default());
    assert_eq!(e.usage("macvlan").expect("usage").v4_used, 1);
}

#[test]
fn a_static_address_taken_by_another_pod_is_an_event_and_the_other_attachment_is_served() {
    let mut e = seeded();
    let first = e.on_pod(&pod(
        "a",
        "ua",
        &[
            ("k8s.v1.cni.cncf.io/networks", "default/macvlan"),
            ("macvlan.default.kubernetes.io/ip_address", "172.17.0.100"),
        ],
    ));
    assert_eq!(
        first.annotations["macvlan.default.kubernetes.io/ip_address"],
        "172.17.0.100"
    );
    let out = e.on_pod(&pod(
        "b",
        "ub",
        &[
            (
                "k8s.v1.cni.cncf.io/networks",
                "default/macvlan, default/attachnet",
            ),
            ("macvlan.default.kubernetes.io/ip_address", "172.17.0.100"),
        ],
    ));
    assert_eq!(out.events.len(), 1);
    assert_eq!(out.events[0].reason, "AcquireAddressFailed");
    assert_eq!(
        out.events[0].message,
        "default/macvlan (net1): 172.17.0.100 in subnet macvlan is already held by pod default/a"
    );
    assert!(
        !out.annotations
            .contains_key("macvlan.default.kubernetes.io/allocated")
    );
    assert_eq!(
        out.annotations["attachnet.default.ovn.kubernetes.io/allocated"],
        "true"
    );
}

#[test]
fn deleting_a_pod_or_dropping_a_network_releases_and_deletes_the_ip_resource() {
    let mut e = seeded();
    let p = pod(
        "samplepod",
        "u1",
        &[(
            "k8s.v1.cni.cncf.io/networks",
            "default/macvlan, default/attachnet",
        )],
    );
    let out = e.on_pod(&p);
    let p = with(p, &out.annotations);
    let mut dropped = p.clone();
    dropped.annotations.insert(
        "k8s.v1.cni.cncf.io/networks".to_owned(),
        "default/attachnet@net2".to_owned(),
    );
    let out = e.on_pod(&dropped);
    assert_eq!(out.delete_ips, ["samplepod.default.macvlan.default"]);
    assert_eq!(e.usage("macvlan").expect("usage").v4_used, 0);
    let out = e.on_pod_gone(&dropped);
    assert_eq!(out.delete_ips, ["samplepod.default.attachnet.default.ovn"]);
    assert_eq!(e.usage("attachnet").expect("usage").v4_used, 0);
}

#[test]
fn a_statefulset_pod_keeps_its_address_while_the_statefulset_keeps_its_ordinal() {
    let mut e = seeded();
    e.set_statefulset("default", "db", Some(3));
    let mut p = pod(
        "db-1",
        "old",
        &[("k8s.v1.cni.cncf.io/networks", "default/macvlan")],
    );
    p.statefulset = Some("db".to_owned());
    let out = e.on_pod(&p);
    let ip = out.annotations["macvlan.default.kubernetes.io/ip_address"].clone();
    assert_eq!(out.upsert_ips[0].pod_type, "StatefulSet");
    assert!(e.on_pod_gone(&p).delete_ips.is_empty(), "the slot is kept");
    // Re-created with a new UID (no annotations yet): the same address.
    let mut again = p.clone();
    again.uid = "new".to_owned();
    let out = e.on_pod(&again);
    assert_eq!(
        out.annotations["macvlan.default.kubernetes.io/ip_address"],
        ip
    );
    // Scaled to 1: the pod's deletion now releases the slot.
    e.set_statefulset("default", "db", Some(1));
    assert_eq!(
        e.on_pod_gone(&again).delete_ips,
        ["db-1.default.macvlan.default"]
    );
}

#[test]
fn after_a_restart_recorded_addresses_are_taken_back_and_never_handed_out_again() {
    let mut before = seeded();
    let p = pod(
        "samplepod",
        "u1",
        &[("k8s.v1.cni.cncf.io/networks", "default/macvlan")],
    );
    let out = before.on_pod(&p);
    let record = out.upsert_ips[0].clone();
    let p = with(p, &out.annotations);

    let mut after = seeded();
    after.restore_ip(&record).expect("restored");
    assert_eq!(
        after.on_pod(&p),
        PodOutcome::default(),
        "nothing changes for the live pod"
    );
    let other = after.on_pod(&pod(
        "other",
        "u2",
        &[("k8s.v1.cni.cncf.io/networks", "default/macvlan")],
    ));
    assert_eq!(
        other.annotations["macvlan.default.kubernetes.io/ip_address"],
        "172.17.0.12"
    );
    // A second record claiming the same address is refused, naming the holder.
    let mut dup = record.clone();
    dup.name = "x.default.macvlan.default".to_owned();
    dup.pod_uid = "u9".to_owned();
    dup.pod_name = "x".to_owned();
    let err = after.restore_ip(&dup).expect_err("a duplicate");
    assert!(
        err.message
            .contains("already held by pod default/samplepod"),
        "{}",
        err.message
    );
}

#[test]
fn an_annotated_allocation_is_taken_back_even_without_its_ip_resource() {
    // The leader died after patching the pod and before creating the IP resource.
    let mut before = seeded();
    let p = pod(
        "samplepod",
        "u1",
        &[("k8s.v1.cni.cncf.io/networks", "default/macvlan")],
    );
    let out = before.on_pod(&p);
    let p = with(p, &out.annotations);
    let mut after = seeded();
    let out = after.on_pod(&p);
    assert!(
        out.annotations.is_empty(),
        "the same address: {:?}",
        out.annotations
    );
    assert_eq!(
        out.upsert_ips.len(),
        1,
        "the missing IP resource is written"
    );
    assert_eq!(
        out.upsert_ips[0].ips,
        ["172.17.0.11".parse::<IpAddr>().expect("ip")]
    );
}

#[test]
fn garbage_collection_releases_allocations_of_pods_that_are_gone() {
    let mut e = seeded();
    e.on_pod(&pod(
        "a",
        "ua",
        &[("k8s.v1.cni.cncf.io/networks", "default/macvlan")],
    ));
    e.on_pod(&pod(
        "b",
        "ub",
        &[("k8s.v1.cni.cncf.io/networks", "default/macvlan")],
    ));
    let live = BTreeSet::from(["ub".to_owned()]);
    let out = e.collect_garbage(&live);
    assert_eq!(out.delete_ips, ["a.default.macvlan.default"]);
    assert_eq!(e.usage("macvlan").expect("usage").v4_used, 1);
}

#[test]
fn an_empty_nad_and_a_disagreeing_provider_field_are_reported() {
    let mut e = seeded();
    let events = e.set_nad("default", "empty", None);
    assert_eq!(events[0].reason, "InvalidNetworkAttachmentDefinition");
    let events = e.set_nad(
        "default",
        "attach2",
        Some(r#"{"type": "kube-ovn", "provider": "attachnet.default.ovn"}"#),
    );
    assert_eq!(events[0].reason, "ProviderMismatch");
}

#[test]
fn an_invalid_subnet_is_refused_and_keeps_what_was_allocated() {
    let mut e = seeded();
    e.on_pod(&pod(
        "a",
        "ua",
        &[("k8s.v1.cni.cncf.io/networks", "default/macvlan")],
    ));
    let bad = subnet(
        "macvlan",
        "macvlan.default",
        "172.17.0.0/16",
        &["not-an-ip"],
    );
    match e.set_subnet(&bad) {
        SubnetOutcome::Invalid(err) => {
            assert_eq!(
                err.to_string(),
                "ip not-an-ip in excludeIps is not a valid address"
            );
        }
        SubnetOutcome::Valid { .. } => panic!("accepted a bad excludeIps"),
    }
    assert_eq!(e.usage("macvlan").expect("usage").v4_used, 1);
}

#[test]
fn overlapping_ovn_subnets_of_one_vpc_are_refused_but_ipam_only_ones_may_overlap() {
    let mut e = seeded();
    // attachnet (OVN, 172.18.0.0/16) exists: another OVN Subnet over it is refused.
    let clash = subnet("clash", "other.default.ovn", "172.18.5.0/24", &[]);
    match e.set_subnet(&clash) {
        SubnetOutcome::Invalid(err) => assert_eq!(
            err.to_string(),
            "subnet clash cidr 172.18.5.0/24 is conflict with subnet attachnet cidr 172.18.0.0/16"
        ),
        SubnetOutcome::Valid { .. } => panic!("an overlapping OVN subnet was accepted"),
    }
    // Another macvlan network over the macvlan Subnet's range is a separate network.
    let twin = subnet("macvlan2", "macvlan2.default", "172.17.0.0/16", &[]);
    assert!(matches!(e.set_subnet(&twin), SubnetOutcome::Valid { .. }));
    // In another VPC the same range is fine.
    let mut elsewhere = subnet("vpc2-net", "other.default.ovn", "172.18.5.0/24", &[]);
    elsewhere.vpc = "vpc2".to_owned();
    assert!(matches!(
        e.set_subnet(&elsewhere),
        SubnetOutcome::Valid { .. }
    ));
}

fn foreign(name: &str, pod_name: &str, uid: &str, ip: &str) -> IpRecord {
    IpRecord {
        name: name.to_owned(),
        pod_name: pod_name.to_owned(),
        namespace: "default".to_owned(),
        pod_uid: uid.to_owned(),
        subnet: "macvlan".to_owned(),
        ips: vec![ip.parse().expect("an address")],
        mac: None,
        provider: "macvlan.default".to_owned(),
        ifname: String::new(),
        pod_type: String::new(),
    }
}

#[test]
fn a_foreign_ip_resource_holds_its_address_until_its_pod_is_gone_and_is_never_deleted() {
    let mut e = seeded();
    e.restore_foreign_ip(&foreign(
        "legacy.default.macvlan.default",
        "legacy",
        "u-legacy",
        "172.17.0.11",
    ))
    .expect("held");
    // The pod of the record has no attachment of ours: reconciling it keeps the hold.
    assert!(
        e.on_pod(&pod("legacy", "u-legacy", &[]))
            .delete_ips
            .is_empty()
    );
    let other = e.on_pod(&pod(
        "other",
        "u-other",
        &[("k8s.v1.cni.cncf.io/networks", "default/macvlan")],
    ));
    assert_eq!(
        other.annotations["macvlan.default.kubernetes.io/ip_address"],
        "172.17.0.12"
    );
    let gone = e.collect_garbage(&BTreeSet::from(["u-other".to_owned()]));
    assert!(
        gone.delete_ips.is_empty(),
        "never deletes a resource it did not write"
    );
    let again = e.on_pod(&pod(
        "third",
        "u-third",
        &[
            ("k8s.v1.cni.cncf.io/networks", "default/macvlan"),
            ("macvlan.default.kubernetes.io/ip_address", "172.17.0.11"),
        ],
    ));
    assert!(
        again.events.is_empty(),
        "released once its pod is gone: {:?}",
        again.events
    );
    assert_eq!(
        again.annotations["macvlan.default.kubernetes.io/ip_address"],
        "172.17.0.11"
    );
}

#[test]
fn the_pods_own_attachment_of_the_provider_takes_a_foreign_hold_over() {
    let mut e = seeded();
    e.restore_foreign_ip(&foreign(
        "mig.default.macvlan.default",
        "mig",
        "u-mig",
        "172.17.0.40",
    ))
    .expect("held");
    // Migrated from Kube-OVN: the pod's annotations name the address it has.
    let out = e.on_pod(&pod(
        "mig",
        "u-mig",
        &[
            ("k8s.v1.cni.cncf.io/networks", "default/macvlan"),
            ("macvlan.default.kubernetes.io/ip_address", "172.17.0.40"),
        ],
    ));
    assert!(out.events.is_empty(), "{:?}", out.events);
    assert_eq!(out.upsert_ips.len(), 1);
    assert_eq!(out.upsert_ips[0].name, "mig.default.macvlan.default");
    assert_eq!(
        out.upsert_ips[0].ips,
        ["172.17.0.40".parse::<IpAddr>().expect("ip")]
    );
    // A later collection does not hold it a second time for the foreign record.
    e.restore_foreign_ip(&foreign(
        "mig.default.macvlan.default",
        "mig",
        "u-mig",
        "172.17.0.40",
    ))
    .expect("taken over: nothing to hold");
    let released = e.on_pod_gone(&pod("mig", "u-mig", &[]));
    assert_eq!(released.delete_ips, ["mig.default.macvlan.default"]);
}

#[test]
fn a_malformed_rate_is_refused_before_anything_is_allocated_naming_key_and_value() {
    let mut e = seeded();
    for (key, value) in [
        ("attachnet.default.ovn.kubernetes.io/ingress_rate", "a3"),
        ("attachnet.default.ovn.kubernetes.io/egress_rate", "10m"),
        ("attachnet.default.ovn.kubernetes.io/egress_burst", "-1"),
        ("ovn.kubernetes.io/ingress_rate", "10M"),
    ] {
        let out = e.on_pod(&pod(
            "qos",
            "u-qos",
            &[
                ("k8s.v1.cni.cncf.io/networks", "default/attachnet"),
                (key, value),
            ],
        ));
        assert!(
            out.annotations.is_empty(),
            "{key}={value}: {:?}",
            out.annotations
        );
        assert!(
            out.upsert_ips.is_empty(),
            "{key}={value}: nothing allocated"
        );
        assert_eq!(out.new_allocations, 0);
        assert_eq!(out.events.len(), 1, "{key}={value}: {:?}", out.events);
        let event = &out.events[0];
        assert!(event.warning);
        assert_eq!(event.reason, "AcquireAddressFailed");
        assert_eq!(
            event.message,
            format!(
                "default/attachnet: {value:?} is not a valid {key}: expected a non-negative integer"
            )
        );
    }
    assert_eq!(e.usage("attachnet").map(|u| u.v4_used), Some(0));
}

#[test]
fn an_address_a_nat_object_holds_is_never_handed_to_a_pod_and_the_refusal_names_it() {
    use crate::nat::Addresses as _;
    let mut e = seeded();
    let eip: IpAddr = "172.17.0.100".parse().expect("an address");
    assert_eq!(e.hold("IptablesEIP/eip-out", "macvlan", Some(eip)), Ok(eip));
    // Held again: the same answer, nothing moves.
    assert_eq!(e.hold("IptablesEIP/eip-out", "macvlan", None), Ok(eip));
    let out = e.on_pod(&pod(
        "b",
        "ub",
        &[
            ("k8s.v1.cni.cncf.io/networks", "default/macvlan"),
            ("macvlan.default.kubernetes.io/ip_address", "172.17.0.100"),
        ],
    ));
    assert_eq!(
        out.events[0].message,
        "default/macvlan (net1): 172.17.0.100 in subnet macvlan is already held by IptablesEIP/eip-out"
    );
    // A NAT object's address is not a pod's: collection keeps it, and it has no OVN port.
    e.collect_garbage(&BTreeSet::new());
    assert_eq!(e.hold("IptablesEIP/eip-out", "macvlan", None), Ok(eip));
    assert_eq!(e.ports().count(), 0);
    // Released when nothing wants it; then a pod may have it.
    e.release_others(&BTreeSet::new());
    let out = e.on_pod(&pod(
        "c",
        "uc",
        &[
            ("k8s.v1.cni.cncf.io/networks", "default/macvlan"),
            ("macvlan.default.kubernetes.io/ip_address", "172.17.0.100"),
        ],
    ));
    assert!(out.events.is_empty(), "{:?}", out.events);
}
