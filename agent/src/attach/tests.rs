//! The CNI logic over recording fakes, without root: ADD and its rollback at each step (also when
//! abandoned), DEL with every step failing, GC and recovery with one bad attachment among good
//! ones, a repeated ADD, STATUS.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use sidelane_api::{
    cni::ErrorCode,
    daemon::{CniRequest, GcRequest, ValidAttachment},
};

use super::{
    AddStep, AttachError, Attacher, Readiness,
    fakes::{FakeNode, FakePods, FakeQos},
};
use crate::{netns::NetnsPolicy, records::Records, subnets::SubnetInfo};

const PROVIDER: &str = "attachnet.default.ovn";

struct Rig {
    node: Arc<FakeNode>,
    attacher: Attacher<FakePods, FakeQos>,
    _dir: tempfile::TempDir,
}

/// An agent over fakes whose pod `default/web` is allocated 10.30.0.5 on `net1`, with an
/// ingress limit; `ovn`: OVS and the fast path are there too.
fn rig() -> Rig {
    let node = FakeNode::new();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let records = Records::open(dir.path()).expect("a record directory");
    let key = |f: &str| format!("{PROVIDER}.kubernetes.io/{f}");
    let pods = FakePods {
        annotations: std::sync::Mutex::new(
            [
                ("allocated", "true"),
                ("ip_address", "10.30.0.5"),
                ("cidr", "10.30.0.0/24"),
                ("gateway", "10.30.0.1"),
                ("mac_address", "00:00:00:8a:3c:4f"),
                ("logical_switch", "attachnet"),
                ("ingress_rate", "50"),
            ]
            .into_iter()
            .map(|(k, v)| (key(k), v.to_owned()))
            .collect(),
        ),
        subnets: vec![SubnetInfo {
            name: "attachnet".to_owned(),
            provider: PROVIDER.to_owned(),
            mtu: None,
            fastpath: true,
            routing: None,
        }],
    };
    let attacher = Attacher::new(pods, FakeQos(Arc::clone(&node)), records, Duration::ZERO)
        .with_netns_policy(NetnsPolicy::default().accepting_own_namespace())
        .with_links(node.clone())
        .with_fastpath_ports(node.clone())
        .with_ovs(node.clone());
    Rig {
        node,
        attacher,
        _dir: dir,
    }
}

fn request(container_id: &str, cni_type: &str) -> CniRequest {
    CniRequest {
        cni_type: cni_type.to_owned(),
        pod_name: "web".to_owned(),
        pod_namespace: "default".to_owned(),
        container_id: container_id.to_owned(),
        net_ns: "/proc/self/ns/net".to_owned(),
        if_name: "net1".to_owned(),
        provider: PROVIDER.to_owned(),
        ..CniRequest::default()
    }
}

fn ovn(container_id: &str) -> CniRequest {
    request(container_id, "kube-ovn")
}

fn recorded(rig: &Rig) -> usize {
    rig.attacher
        .records()
        .list()
        .expect("records")
        .records
        .len()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test]
async fn an_ovn_add_makes_the_pair_the_fast_path_entry_the_port_and_the_limits() {
    let rig = rig();
    let resp = rig.attacher.add(&ovn("3f2a9c0d5e7b")).await.expect("ADD");
    assert_eq!(resp.ips[0].ip, "10.30.0.5");
    assert_eq!(resp.mac_address, "00:00:00:8a:3c:4f");
    let state = rig.node.state();
    assert_eq!(state["links"], set(&["3f2a9c0d_net1_h"]));
    assert_eq!(state["fastpath"], set(&["3f2a9c0d_net1_h"]));
    assert_eq!(state["ports"], set(&["3f2a9c0d_net1_h"]));
    assert_eq!(state["limited"], set(&["3f2a9c0d_net1_h"]));
    assert_eq!(recorded(&rig), 1);
}

#[tokio::test]
async fn an_ovn_add_charges_each_of_its_steps_once_and_a_failed_one_stops_the_charges() {
    let rig = rig();
    rig.attacher.add(&ovn("3f2a9c0d5e7b")).await.expect("ADD");
    let runs = rig.attacher.add_times().totals().runs;
    for step in AddStep::ALL {
        assert_eq!(runs[&step], 1, "{step:?}");
    }
    let rig = rig_with_failing("ovs.plug");
    let before = rig.attacher.add_times().totals();
    assert!(rig.attacher.add(&ovn("3f2a9c0d5e7b")).await.is_err());
    let runs = rig.attacher.add_times().totals().since(&before).runs;
    assert_eq!(runs[&AddStep::OvsPort], 1, "the failed step is charged");
    assert_eq!(runs[&AddStep::OvnInstalled], 0);
    assert_eq!(runs[&AddStep::Qos], 0);
}

#[tokio::test]
async fn a_failed_add_leaves_nothing_behind_whichever_step_fails() {
    for step in ["create", "fastpath.attach", "ovs.plug", "qos.apply"] {
        let rig = rig();
        rig.node.fail(step);
        let err = rig
            .attacher
            .add(&ovn("3f2a9c0d5e7b"))
            .await
            .expect_err("ADD fails");
        assert!(rig.node.is_bare(), "{step}: left {:?}", rig.node.state());
        assert_eq!(recorded(&rig), 0, "{step}: the record stayed");
        assert_eq!(err.cni_code(), ErrorCode::TryAgainLater, "{step}: {err}");
    }
}

#[tokio::test]
async fn a_fast_path_failure_is_reported_as_such_not_as_qos() {
    let rig = rig();
    rig.node.fail("fastpath.attach");
    let err = rig
        .attacher
        .add(&ovn("3f2a9c0d5e7b"))
        .await
        .expect_err("ADD fails");
    assert!(matches!(err, AttachError::Fastpath { .. }), "{err:?}");
    assert!(err.to_string().contains("fast path"), "{err}");
}

#[tokio::test]
async fn an_add_abandoned_half_way_is_undone_and_a_following_del_waits_for_it() {
    let rig = rig();
    rig.node.hang_plug();
    let abandoned = tokio::time::timeout(
        Duration::from_millis(50),
        rig.attacher.add(&ovn("3f2a9c0d5e7b")),
    )
    .await;
    assert!(abandoned.is_err(), "the ADD should still be waiting");
    // The runtime's DEL after its timeout runs once the rollback has released the attachment.
    rig.attacher.del(&ovn("3f2a9c0d5e7b")).await.expect("DEL");
    assert!(rig.node.is_bare(), "left {:?}", rig.node.state());
    assert_eq!(recorded(&rig), 0);
    let calls = rig.node.calls();
    let unplugged = calls.iter().position(|c| c == "ovs.unplug 3f2a9c0d_net1_h");
    let deleted = calls.iter().position(|c| c == "delete 3f2a9c0d_net1_h");
    assert!(unplugged.is_some() && deleted.is_some(), "{calls:?}");
}

#[tokio::test]
async fn a_del_tries_every_step_and_names_every_failure_keeping_the_record() {
    let rig = rig();
    rig.attacher.add(&ovn("3f2a9c0d5e7b")).await.expect("ADD");
    for step in ["fastpath.detach", "ovs.unplug", "qos.detach", "delete"] {
        rig.node.fail(step);
    }
    let err = rig
        .attacher
        .del(&ovn("3f2a9c0d5e7b"))
        .await
        .expect_err("DEL fails");
    let text = err.to_string();
    for named in [
        "taking 3f2a9c0d_net1_h off the fast path",
        "unplugging 3f2a9c0d_net1_h from OVS",
        "unplugging 3f2a9c0d_net1_p from OVS",
        "removing the limits of 3f2a9c0d_net1_h",
        "deleting 3f2a9c0d_net1_o",
        "deleting 3f2a9c0d_net1_h",
    ] {
        assert!(text.contains(named), "{named} missing from: {text}");
    }
    assert_eq!(recorded(&rig), 1, "the record must stay for GC");
    rig.node.heal();
    rig.attacher.del(&ovn("3f2a9c0d5e7b")).await.expect("DEL");
    assert!(rig.node.is_bare(), "left {:?}", rig.node.state());
    assert_eq!(recorded(&rig), 0);
}

#[tokio::test]
async fn gc_removes_every_unlisted_attachment_past_one_that_fails() {
    let rig = rig();
    for cid in ["aaaa1111", "bbbb2222", "cccc3333"] {
        rig.attacher.add(&ovn(cid)).await.expect("ADD");
    }
    rig.node.fail("delete aaaa1111_net1_h");
    let gc = GcRequest {
        provider: PROVIDER.to_owned(),
        valid_attachments: vec![ValidAttachment {
            container_id: "cccc3333".to_owned(),
            if_name: "net1".to_owned(),
        }],
    };
    let err = rig.attacher.gc(&gc).await.expect_err("one teardown fails");
    assert!(err.to_string().contains("aaaa1111/net1"), "{err}");
    assert_eq!(
        rig.node.state()["links"],
        set(&["aaaa1111_net1_h", "cccc3333_net1_h"])
    );
    assert_eq!(recorded(&rig), 2, "the failed one keeps its record");
}

#[tokio::test]
async fn recovery_keeps_what_is_in_place_and_cleans_up_the_rest_past_one_that_fails() {
    let rig = rig();
    for cid in ["aaaa1111", "bbbb2222", "cccc3333"] {
        rig.attacher.add(&ovn(cid)).await.expect("ADD");
    }
    rig.node.remove_link("aaaa1111_net1_h");
    rig.node.remove_link("bbbb2222_net1_h");
    rig.node.fail("qos.detach aaaa1111_net1_h");
    let report = rig.attacher.recover().await.expect("a report");
    assert_eq!(report.kept, vec!["cccc3333/net1".to_owned()]);
    assert_eq!(report.removed, vec!["bbbb2222/net1".to_owned()]);
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert!(report.failed[0].starts_with("aaaa1111/net1"), "{report:?}");
    assert_eq!(recorded(&rig), 2);
}

#[tokio::test]
async fn a_second_add_for_one_attachment_is_refused_as_invalid_and_touches_nothing() {
    let rig = rig();
    rig.attacher.add(&ovn("3f2a9c0d5e7b")).await.expect("ADD");
    let before = rig.node.calls().len();
    let err = rig
        .attacher
        .add(&ovn("3f2a9c0d5e7b"))
        .await
        .expect_err("a second ADD");
    assert_eq!(err.cni_code(), ErrorCode::InvalidEnvironment, "{err}");
    assert!(err.to_string().contains("DEL it before"), "{err}");
    assert_eq!(rig.node.calls().len(), before);
    assert_eq!(rig.node.state()["links"], set(&["3f2a9c0d_net1_h"]));
    assert_eq!(recorded(&rig), 1);
}

#[tokio::test]
async fn an_ipam_only_add_limits_the_callers_interface_and_undoes_nothing_it_did_not_make() {
    let rig = rig();
    rig.node.add_link("net1");
    rig.attacher
        .add(&request("3f2a9c0d5e7b", "macvlan"))
        .await
        .expect("ADD");
    assert_eq!(rig.node.state()["limited"], set(&["net1"]));
    let rig = rig_with_failing("qos.apply");
    rig.node.add_link("net1");
    rig.attacher
        .add(&request("3f2a9c0d5e7b", "macvlan"))
        .await
        .expect_err("ADD fails");
    assert_eq!(
        rig.node.state()["links"],
        set(&["net1"]),
        "the caller's interface stays"
    );
    assert_eq!(recorded(&rig), 0);
}

fn rig_with_failing(step: &str) -> Rig {
    let rig = rig();
    rig.node.fail(step);
    rig
}

#[tokio::test]
async fn status_is_ready_until_bpffs_or_ovs_is_gone_and_then_names_both() {
    let rig = rig();
    assert_eq!(rig.attacher.status().await, Readiness::Ready);
    rig.node.fail("qos.ready");
    rig.node.fail("ovs.ready");
    let Readiness::NotReady(reasons) = rig.attacher.status().await else {
        panic!("ready without bpffs and OVS");
    };
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons[0].contains("bpffs") && reasons[1].contains("Open_vSwitch"));
}

#[tokio::test]
async fn a_route_that_does_not_parse_is_named_as_a_route() {
    let rig = rig();
    let mut req = ovn("3f2a9c0d5e7b");
    req.routes = vec![sidelane_api::daemon::Route {
        destination: "10.40.0.0/16".to_owned(),
        gateway: "not-an-address".to_owned(),
    }];
    let err = rig.attacher.add(&req).await.expect_err("a bad gw");
    assert!(
        matches!(err, AttachError::Route { field: "gw", .. }),
        "{err:?}"
    );
    assert_eq!(err.cni_code(), ErrorCode::InvalidConfig);
    assert!(rig.node.is_bare());
}

#[tokio::test]
async fn an_attachment_whose_ovn_port_another_owner_holds_is_not_plugged() {
    let rig = rig();
    rig.attacher
        .pods
        .annotations
        .lock()
        .expect("annotations")
        .insert(
            sidelane_api::annotations::PORTS_HELD_ANNOTATION.to_owned(),
            format!(r#"{{"{PROVIDER}":"Logical_Switch_Port web.default.{PROVIDER} belongs to kube-ovn"}}"#),
        );
    let err = rig
        .attacher
        .add(&ovn("3f2a9c0d5e7b"))
        .await
        .expect_err("a held port");
    assert!(matches!(err, AttachError::PortHeld { .. }), "{err:?}");
    assert!(err.to_string().contains("belongs to kube-ovn"), "{err}");
    assert_eq!(err.cni_code(), ErrorCode::TryAgainLater);
    assert!(rig.node.is_bare());
    assert_eq!(recorded(&rig), 0);
}
