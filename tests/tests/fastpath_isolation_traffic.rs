//! The fast path honours isolation, on real OVN with two nodes and the fast path on: traffic a
//! security group forbids never arrives, on the same node (where the fast path could carry it)
//! or across nodes; traffic the groups pass whole keeps the fast path; traffic OVN passes only
//! in part (one port, say) goes through OVS, whose ACLs decide; a live change moves a pair off
//! the fast path at once.

use std::time::Duration;

use sidelane_tests::{
    ovn, privilege,
    probe_pod::{
        attachnet_rig, eventually, from_net, pings, pod_on, ports, reachable, rule, security_group,
        serve, tcp_opens, udp_arrives,
    },
};

#[test]
fn forbidden_traffic_never_arrives_on_or_across_nodes_and_allowed_traffic_keeps_the_fast_path_traffic()
 {
    let name = "forbidden_traffic_never_arrives_on_or_across_nodes_and_allowed_traffic_keeps_the_fast_path_traffic";
    if !privilege::require_privileges(name) || !ovn::require_installed(name) {
        return;
    }
    let rig = attachnet_rig(2, true);
    let subnet = from_net("172.17.0.0/16");
    rig.api
        .seed(security_group("peers", true, &[], &[]))
        .expect("peers");
    rig.api
        .seed(security_group(
            "web",
            false,
            &[ports(rule("allow", 10, "tcp", &subnet), 8080, 8080)],
            &[rule("allow", 1, "all", &subnet)],
        ))
        .expect("web");
    let p1 = pod_on(&rig, 0, "peer-1", "peers");
    let p2 = pod_on(&rig, 0, "peer-2", "peers");
    let p3 = pod_on(&rig, 1, "peer-3", "peers");
    let p4 = pod_on(&rig, 0, "peer-4", "peers");
    let web = pod_on(&rig, 0, "web", "web");
    let open = pod_on(&rig, 0, "open", "");
    let remote = pod_on(&rig, 1, "remote", "");
    let (_, udp_p1) = serve(&p1, 5000);
    let (_tcp, udp_web) = serve(&web, 8080);
    // Members of one group reach each other on the same node on the fast path...
    reachable(&p1, &p2);
    let before = rig.counters_on(0, "peer-1");
    for _ in 0..5 {
        assert!(pings(&p1, &p2), "peer-1 → peer-2");
    }
    let after = rig.counters_on(0, "peer-1");
    assert!(
        after.hits >= before.hits + 5,
        "allowed same-node traffic takes the fast path: {before:?} → {after:?}"
    );
    // ...and across nodes through OVN.
    reachable(&p3, &p1);
    // Forbidden: from a pod in no group, on the same node and from the other node.
    let open_before = rig.counters_on(0, "open");
    for _ in 0..3 {
        assert!(
            !udp_arrives(&open, &p1, &udp_p1, 5000),
            "same node, fast path on: a pod outside the group never reaches a member"
        );
        assert!(
            !udp_arrives(&remote, &p1, &udp_p1, 5000),
            "across nodes: a pod outside the group never reaches a member"
        );
    }
    let open_after = rig.counters_on(0, "open");
    assert_eq!(
        open_after.hits, open_before.hits,
        "nothing from outside the group was fast-pathed"
    );
    assert!(open_after.isolated > open_before.isolated, "{open_after:?}");
    // Allowed in part (TCP 8080 only): not fast-pathed, but OVS passes what OVN allows.
    assert!(tcp_opens(&open, &web, 8080), "TCP 8080 is allowed");
    assert!(!tcp_opens(&open, &web, 9090), "TCP 9090 is not");
    assert!(!udp_arrives(&open, &web, &udp_web, 8080), "UDP 8080 is not");
    assert!(!pings(&open, &web), "ICMP is not");
    // A pod leaves the group by its annotation, live: its pairs go at once, and OVN keeps it
    // out of the group's members.
    reachable(&p4, &p1);
    rig.api
        .plane()
        .kubectl_run(
            &[
                "annotate",
                "pod",
                "peer-2",
                "attachnet.default.ovn.kubernetes.io/security_groups-",
            ],
            None,
        )
        .expect("the annotation is removed");
    eventually(
        "peer-2, out of the group, no longer reaches peer-1",
        Duration::from_secs(10),
        || !udp_arrives(&p2, &p1, &udp_p1, 5000),
    );
    let hits = rig.counters_on(0, "peer-2").hits;
    assert!(!pings(&p2, &p1));
    assert_eq!(
        rig.counters_on(0, "peer-2").hits,
        hits,
        "a pod that left the group is not fast-pathed to its members"
    );
    // A live change of the group: it stops allowing its members; the pair leaves the fast
    // path and OVN drops it.
    assert!(pings(&p4, &p1), "peer-4 still reaches peer-1");
    rig.api.apply(&[security_group("peers", false, &[], &[])]);
    eventually(
        "peer-4 no longer reaches peer-1",
        Duration::from_secs(10),
        || !udp_arrives(&p4, &p1, &udp_p1, 5000),
    );
    let hits = rig.counters_on(0, "peer-4").hits;
    assert!(!pings(&p4, &p1));
    assert_eq!(
        rig.counters_on(0, "peer-4").hits,
        hits,
        "a pair the groups no longer pass is not fast-pathed"
    );
}

#[test]
fn after_an_agent_restart_members_keep_the_fast_path_and_outsiders_stay_out_traffic() {
    let name = "after_an_agent_restart_members_keep_the_fast_path_and_outsiders_stay_out_traffic";
    if !privilege::require_privileges(name) || !ovn::require_installed(name) {
        return;
    }
    let mut rig = attachnet_rig(1, true);
    rig.api
        .seed(security_group("peers", true, &[], &[]))
        .expect("peers");
    let p1 = pod_on(&rig, 0, "peer-1", "peers");
    let p2 = pod_on(&rig, 0, "peer-2", "peers");
    let open = pod_on(&rig, 0, "open", "");
    let (_, udp_p1) = serve(&p1, 5000);
    reachable(&p2, &p1);
    rig.stop_agent();
    rig.start_agent();
    // The restarted agent finds its attachments in the pinned maps, their groups in its
    // records and the groups' rules over the API: the pair is fast-pathed again.
    eventually(
        "peer-2's frames to peer-1 are fast-pathed again",
        Duration::from_secs(10),
        || {
            let before = rig.counters_on(0, "peer-2").hits;
            pings(&p2, &p1) && rig.counters_on(0, "peer-2").hits > before
        },
    );
    for _ in 0..3 {
        assert!(
            !udp_arrives(&open, &p1, &udp_p1, 5000),
            "a pod outside the group never reaches a member after the restart"
        );
    }
}
