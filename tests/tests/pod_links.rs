//! The agent's link layer creating OVN-backed pod interfaces (net1, net2) over netlink, in
//! namespaces of the test's own.

use ipnet::IpNet;
use serde_json::Value;
use sidelane_agent::link::{self, LinkError, PodInterfacePlan, parse_mac, veth_name};
use sidelane_tests::{netns::NetNs, primary::PrimaryEth0, privilege};

fn plan(
    ifname: &str,
    mac: &str,
    v4: &str,
    v6: &str,
    routes: &[(&str, Option<&str>)],
) -> PodInterfacePlan {
    PodInterfacePlan {
        ifname: ifname.to_owned(),
        mac: Some(parse_mac(mac).expect("a MAC")),
        mtu: Some(1400),
        addresses: vec![v4.parse().expect("v4"), v6.parse().expect("v6")],
        routes: routes
            .iter()
            .map(|(d, g)| {
                (
                    d.parse::<IpNet>().expect("dst"),
                    g.map(|g| g.parse().expect("gw")),
                )
            })
            .collect(),
    }
}

fn link_json(ns: &NetNs, ifname: &str) -> Value {
    let out = ns
        .exec(&["ip", "-j", "addr", "show", "dev", ifname])
        .expect("ip addr");
    let v: Value = serde_json::from_str(&out).expect("ip's JSON");
    v[0].clone()
}

fn addrs(link: &Value) -> Vec<String> {
    let mut a: Vec<String> = link["addr_info"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["scope"] == "global")
        .map(|a| {
            format!(
                "{}/{}",
                a["local"].as_str().unwrap_or_default(),
                a["prefixlen"]
            )
        })
        .collect();
    a.sort();
    a
}

#[test]
fn net1_and_net2_are_created_as_planned_and_eth0_is_untouched() {
    if !privilege::require_privileges("net1_and_net2_are_created_as_planned_and_eth0_is_untouched")
    {
        return;
    }
    let host = NetNs::new().expect("host namespace");
    let pod = NetNs::new().expect("pod namespace");
    let _primary = PrimaryEth0::give(&pod).expect("eth0 from the primary CNI");
    let before = pod
        .exec(&["ip", "route", "show", "default"])
        .expect("routes");

    let cid = "3f2a9c0d5e7b41aa8c1d";
    let net1 = plan(
        "net1",
        "00:00:00:8a:3c:4f",
        "172.17.0.5/16",
        "fd00:17::5/120",
        &[("10.96.0.0/12", Some("172.17.0.1"))],
    );
    let net2 = plan(
        "net2",
        "00:00:00:8a:3c:50",
        "172.18.0.5/16",
        "fd00:18::5/120",
        &[],
    );
    for p in [&net1, &net2] {
        link::create(
            Some(&host.path()),
            &veth_name(cid, &p.ifname, link::VethEnd::Host).expect("host name"),
            &pod.path(),
            &veth_name(cid, &p.ifname, link::VethEnd::PodTemporary).expect("temp name"),
            p,
        )
        .expect("creating the pod interface");
    }

    let l1 = link_json(&pod, "net1");
    assert_eq!(l1["address"], "00:00:00:8a:3c:4f");
    assert_eq!(l1["mtu"], 1400);
    assert!(
        l1["flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x == "UP")),
        "{l1}"
    );
    assert_eq!(
        addrs(&l1),
        vec!["172.17.0.5/16".to_owned(), "fd00:17::5/120".to_owned()]
    );
    let l2 = link_json(&pod, "net2");
    assert_eq!(
        addrs(&l2),
        vec!["172.18.0.5/16".to_owned(), "fd00:18::5/120".to_owned()]
    );
    let routes = pod
        .exec(&["ip", "route", "show", "dev", "net1"])
        .expect("routes");
    assert!(routes.contains("10.96.0.0/12 via 172.17.0.1"), "{routes}");
    assert_eq!(
        pod.exec(&["ip", "route", "show", "default"])
            .expect("routes"),
        before,
        "eth0's default route stays"
    );
    assert_eq!(
        addrs(&link_json(&pod, "eth0")),
        vec!["10.244.1.5/24".to_owned()]
    );
    let host_end = host
        .exec(&["ip", "-o", "link", "show", "3f2a9c0d_net1_h"])
        .expect("host end");
    assert!(
        host_end.contains("mtu 1400") && host_end.contains("UP"),
        "{host_end}"
    );

    // Traffic crosses: the host end gets an address on net1's subnet and pings the pod.
    host.exec(&[
        "ip",
        "addr",
        "add",
        "172.17.0.1/16",
        "dev",
        "3f2a9c0d_net1_h",
    ])
    .expect("host address");
    host.exec(&["ping", "-c", "1", "-W", "2", "172.17.0.5"])
        .expect("the pod answers on net1");

    assert!(link::delete(Some(&host.path()), "3f2a9c0d_net1_h").expect("deleting"));
    assert!(
        !link::delete(Some(&host.path()), "3f2a9c0d_net1_h").expect("deleting again"),
        "idempotent"
    );
    let links = pod.exec(&["ip", "-o", "link"]).expect("links");
    assert!(
        !links.contains("net1") && links.contains("net2") && links.contains("eth0"),
        "{links}"
    );
}

#[test]
fn a_duplicate_interface_name_is_refused_and_leaves_nothing_behind() {
    if !privilege::require_privileges(
        "a_duplicate_interface_name_is_refused_and_leaves_nothing_behind",
    ) {
        return;
    }
    let host = NetNs::new().expect("host namespace");
    let pod = NetNs::new().expect("pod namespace");
    let cid = "aaaabbbbccccdddd";
    let p = plan(
        "net1",
        "00:00:00:00:00:01",
        "172.17.0.5/16",
        "fd00::5/120",
        &[],
    );
    link::create(
        Some(&host.path()),
        "aaaabbbb_net1_h",
        &pod.path(),
        "aaaabbbb_net1_c",
        &p,
    )
    .expect("the first net1");
    let again = PodInterfacePlan {
        mac: None,
        ..p.clone()
    };
    let err = link::create(
        Some(&host.path()),
        &veth_name(cid, "net9", link::VethEnd::Host).expect("name"),
        &pod.path(),
        "tmp_c",
        &again,
    )
    .expect_err("net1 exists");
    assert!(matches!(err, LinkError::Exists { .. }), "{err}");
    assert!(err.to_string().contains("net1"), "{err}");
    let host_links = host.exec(&["ip", "-o", "link"]).expect("links");
    assert!(!host_links.contains("net9"), "{host_links}");

    // A failure halfway (an address the kernel refuses) removes the pair it created.
    let broken = PodInterfacePlan {
        ifname: "net2".to_owned(),
        addresses: vec![
            "172.17.0.5/16".parse().expect("v4"),
            "172.17.0.5/16".parse().expect("dup"),
        ],
        ..p
    };
    let err = link::create(
        Some(&host.path()),
        "aaaabbbb_net2_h",
        &pod.path(),
        "aaaabbbb_net2_c",
        &broken,
    )
    .expect_err("a duplicate address fails");
    assert!(err.to_string().contains("net2"), "{err}");
    let host_links = host.exec(&["ip", "-o", "link"]).expect("links");
    let pod_links = pod.exec(&["ip", "-o", "link"]).expect("links");
    assert!(!host_links.contains("net2_h"), "{host_links}");
    assert!(
        !pod_links.contains("net2") && !pod_links.contains("_c"),
        "{pod_links}"
    );
}
