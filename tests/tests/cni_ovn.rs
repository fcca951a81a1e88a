//! OVN-backed attachments (`"type": "kube-ovn"`, the seed's `attachnet` NAD verbatim): our plugin
//! driven as Multus drives it creates net1 and net2 in one pod from the annotations, beside an
//! untouched eth0, with the Subnet's MTU; CHECK finds what was changed by hand; GC removes what
//! the runtime no longer lists; DEL removes and is idempotent.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use serde_json::{Value, json};
use sidelane_agent::{api_server::KubePods, attach::Attacher, cni_server, records::Records};
use sidelane_tests::{
    cluster, control_plane::SidelaneCluster, netns::NetNs, primary::PrimaryEth0, privilege,
    sidelane::NoQos,
};

/// The seed's NAD (manage-multiple-interface.en.txt, "attached NIC is a Kube-OVN type NIC"),
/// verbatim but for the name Multus adds and our socket.
fn attachnet(socket: &std::path::Path) -> String {
    let mut cfg: Value = serde_json::from_str(
        r#"{
"cniVersion": "0.3.0",
"type": "kube-ovn",
"server_socket": "/run/openvswitch/kube-ovn-daemon.sock",
"provider": "attachnet.default.ovn"
}"#,
    )
    .expect("the seed's JSON");
    cfg["name"] = json!("attachnet");
    cfg["server_socket"] = json!(socket);
    cfg.to_string()
}

fn vars(command: &str, netns: &str, ifname: &str) -> BTreeMap<String, String> {
    [
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", "5e7b41aa8c1d3f2a9c0d"),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", ifname),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=samplepod",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, asserted step by step")]
fn add_creates_net1_and_net2_check_verifies_them_gc_and_del_remove_them() {
    if !privilege::require_privileges(
        "add_creates_net1_and_net2_check_verifies_them_gc_and_del_remove_them",
    ) {
        return;
    }
    let api = SidelaneCluster::start();
    let p = "attachnet.default.ovn";
    // The seed's Subnet for the attachment network, with an MTU of its own.
    api.seed(cluster::subnet("attachnet", p, "172.17.0.0/16", Some(1300)))
        .expect("seeding the Subnet");
    api.seed(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "samplepod", "namespace": "default", "annotations": {
            "k8s.v1.cni.cncf.io/networks": "default/attachnet@net1, default/attachnet@net2",
            format!("{p}.kubernetes.io/allocated"): "true",
            format!("{p}.kubernetes.io/ip_address"): "172.17.0.11",
            format!("{p}.kubernetes.io/cidr"): "172.17.0.0/16",
            format!("{p}.kubernetes.io/gateway"): "172.17.0.1",
            format!("{p}.kubernetes.io/mac_address"): "00:00:00:11:22:01",
            format!("{p}.kubernetes.io/routes"): r#"[{"dst":"10.10.0.0/16","gw":"172.17.0.1"}]"#,
            format!("{p}.net2.kubernetes.io/allocated"): "true",
            format!("{p}.net2.kubernetes.io/ip_address"): "172.17.0.12",
            format!("{p}.net2.kubernetes.io/cidr"): "172.17.0.0/16",
            format!("{p}.net2.kubernetes.io/gateway"): "172.17.0.1",
            format!("{p}.net2.kubernetes.io/mac_address"): "00:00:00:11:22:02",
            format!("{p}.net2.kubernetes.io/routes"): r#"[{"dst":"10.20.0.0/16","gw":"172.17.0.1"}]"#
        }},
        "spec": {"containers": [{"name": "c", "image": "alpine"}], "nodeName": "node1"}
    }))
    .expect("seeding the pod");

    let node = NetNs::new().expect("node namespace");
    let pod = NetNs::new().expect("pod namespace");
    let _primary = PrimaryEth0::give(&pod).expect("eth0 from the primary CNI");

    let dir = tempfile::tempdir().expect("a temporary directory");
    let socket: PathBuf = dir.path().join("kube-ovn-daemon.sock");
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let client = runtime.block_on(api.agent_client());
    let listener = runtime
        .block_on(async { cni_server::bind(&socket) })
        .expect("binding");
    let records = Records::open(dir.path().join("records")).expect("the record directory");
    let attacher = Attacher::new(
        KubePods::new(client),
        NoQos,
        records,
        Duration::from_secs(10),
    )
    .with_host_netns(node.path());
    runtime.spawn(cni_server::serve(listener, Arc::new(attacher)));

    let cfg = attachnet(&socket);
    let netns = pod.path().display().to_string();
    let mut results = BTreeMap::new();
    for (ifname, ip, mac) in [
        ("net1", "172.17.0.11/16", "00:00:00:11:22:01"),
        ("net2", "172.17.0.12/16", "00:00:00:11:22:02"),
    ] {
        let out = sidelane_cni::run(&vars("ADD", &netns, ifname), cfg.as_bytes());
        assert_eq!(out.exit_code, 0, "{ifname}: {}", out.stdout);
        let result: Value = serde_json::from_str(&out.stdout).expect("a JSON result");
        assert_eq!(result["interfaces"][0]["name"], json!(ifname));
        assert_eq!(result["interfaces"][0]["mac"], json!(mac));
        assert_eq!(result["ips"][0]["address"], json!(ip));
        results.insert(ifname, result);
        let link = pod
            .exec(&["ip", "-o", "addr", "show", "dev", ifname])
            .expect("ip addr");
        assert!(link.contains(ip), "{link}");
        let l2 = pod
            .exec(&["ip", "-o", "link", "show", "dev", ifname])
            .expect("ip link");
        assert!(
            l2.contains(mac) && l2.contains("mtu 1300"),
            "the Subnet's MTU: {l2}"
        );
    }
    let routes = pod.exec(&["ip", "route"]).expect("routes");
    assert!(
        routes.contains("default via 10.244.1.1 dev eth0"),
        "eth0's default route stays: {routes}"
    );
    assert!(
        routes.contains("10.10.0.0/16 via 172.17.0.1 dev net1"),
        "{routes}"
    );
    let host_ends = node.exec(&["ip", "-o", "link"]).expect("node links");
    assert!(
        host_ends.contains("5e7b41aa_net1_h") && host_ends.contains("5e7b41aa_net2_h"),
        "{host_ends}"
    );

    // CHECK (cniVersion 0.4.0 and later) with the ADD's result as prevResult, as a runtime
    // passes it: it passes, then fails naming the address removed by hand.
    let check_with = |prev: &Value| {
        let mut c: Value = serde_json::from_str(&cfg).expect("the config");
        c["cniVersion"] = json!("0.4.0");
        c["prevResult"] = prev.clone();
        c.to_string()
    };
    // A prevResult naming another address fails (the spec's comparison), code 101.
    let mut other = results["net1"].clone();
    other["ips"][0]["address"] = json!("172.17.0.99/16");
    let wrong = sidelane_cni::run(
        &vars("CHECK", &netns, "net1"),
        check_with(&other).as_bytes(),
    );
    assert_eq!(wrong.exit_code, 1, "{}", wrong.stdout);
    assert!(
        wrong.stdout.contains("\"code\":101") && wrong.stdout.contains("172.17.0.99/16"),
        "{}",
        wrong.stdout
    );
    // A container never added fails with code 3.
    let mut unknown = vars("CHECK", &netns, "net1");
    unknown.insert(
        "CNI_CONTAINERID".to_owned(),
        "0000000000000000never".to_owned(),
    );
    let never = sidelane_cni::run(&unknown, check_with(&results["net1"]).as_bytes());
    assert_eq!(never.exit_code, 1, "{}", never.stdout);
    assert!(never.stdout.contains("\"code\":3"), "{}", never.stdout);
    let check_cfg = check_with(&results["net1"]);
    let ok = sidelane_cni::run(&vars("CHECK", &netns, "net1"), check_cfg.as_bytes());
    assert_eq!(ok.exit_code, 0, "{}", ok.stdout);
    pod.exec(&["ip", "addr", "del", "172.17.0.11/16", "dev", "net1"])
        .expect("removing the address by hand");
    let failed = sidelane_cni::run(&vars("CHECK", &netns, "net1"), check_cfg.as_bytes());
    assert_eq!(failed.exit_code, 1, "{}", failed.stdout);
    assert!(
        failed
            .stdout
            .contains("address 172.17.0.11/16 is missing on net1"),
        "{}",
        failed.stdout
    );

    // CHECK also finds a route removed by hand.
    let check_cfg = check_with(&results["net2"]);
    let ok = sidelane_cni::run(&vars("CHECK", &netns, "net2"), check_cfg.as_bytes());
    assert_eq!(ok.exit_code, 0, "{}", ok.stdout);
    pod.exec(&["ip", "route", "del", "10.20.0.0/16", "dev", "net2"])
        .expect("removing the route by hand");
    let failed = sidelane_cni::run(&vars("CHECK", &netns, "net2"), check_cfg.as_bytes());
    assert_eq!(failed.exit_code, 1, "{}", failed.stdout);
    assert!(
        failed
            .stdout
            .contains("route 10.20.0.0/16 via 172.17.0.1 dev net2 is missing"),
        "{}",
        failed.stdout
    );

    // GC (CNI 1.1.0) with only net1 still in use removes net2 and its host end.
    let mut gc_cfg: Value = serde_json::from_str(&cfg).expect("the config");
    gc_cfg["cniVersion"] = json!("1.1.0");
    gc_cfg["cni.dev/valid-attachments"] =
        json!([{"containerID": "5e7b41aa8c1d3f2a9c0d", "ifname": "net1"}]);
    let gc_vars: BTreeMap<String, String> = [("CNI_COMMAND".to_owned(), "GC".to_owned())].into();
    let out = sidelane_cni::run(&gc_vars, gc_cfg.to_string().as_bytes());
    assert_eq!(out.exit_code, 0, "{}", out.stdout);
    let links = pod.exec(&["ip", "-o", "link"]).expect("pod links");
    assert!(links.contains("net1") && !links.contains("net2"), "{links}");
    let host_ends = node.exec(&["ip", "-o", "link"]).expect("node links");
    assert!(
        host_ends.contains("5e7b41aa_net1_h") && !host_ends.contains("5e7b41aa_net2_h"),
        "{host_ends}"
    );

    for ifname in ["net1", "net2"] {
        let out = sidelane_cni::run(&vars("DEL", &netns, ifname), cfg.as_bytes());
        assert_eq!(out.exit_code, 0, "{}", out.stdout);
        let again = sidelane_cni::run(&vars("DEL", &netns, ifname), cfg.as_bytes());
        assert_eq!(again.exit_code, 0, "DEL is idempotent: {}", again.stdout);
    }
    let links = pod.exec(&["ip", "-o", "link"]).expect("pod links");
    assert!(
        !links.contains("net1") && !links.contains("net2") && links.contains("eth0"),
        "{links}"
    );
}

#[test]
fn default_route_in_the_network_selection_moves_the_pods_default_route_to_the_attachment() {
    if !privilege::require_privileges(
        "default_route_in_the_network_selection_moves_the_pods_default_route_to_the_attachment",
    ) {
        return;
    }
    let api = SidelaneCluster::start();
    let p = "attachnet.default.ovn";
    api.seed(cluster::subnet("attachnet", p, "172.17.0.0/16", None))
        .expect("seeding the Subnet");
    api.seed(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "samplepod", "namespace": "default", "annotations": {
            "k8s.v1.cni.cncf.io/networks":
                r#"[{"name": "attachnet", "interface": "net1", "default-route": ["172.17.0.1"]}]"#,
            format!("{p}.kubernetes.io/allocated"): "true",
            format!("{p}.kubernetes.io/ip_address"): "172.17.0.31",
            format!("{p}.kubernetes.io/cidr"): "172.17.0.0/16",
            format!("{p}.kubernetes.io/gateway"): "172.17.0.1",
            format!("{p}.kubernetes.io/mac_address"): "00:00:00:11:22:31"
        }},
        "spec": {"containers": [{"name": "c", "image": "alpine"}], "nodeName": "node1"}
    }))
    .expect("seeding the pod");
    let node = NetNs::new().expect("node namespace");
    let pod = NetNs::new().expect("pod namespace");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let socket: PathBuf = dir.path().join("kube-ovn-daemon.sock");
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let client = runtime.block_on(api.agent_client());
    let listener = runtime
        .block_on(async { cni_server::bind(&socket) })
        .expect("binding");
    let records = Records::open(dir.path().join("records")).expect("the record directory");
    let attacher = Attacher::new(
        KubePods::new(client),
        NoQos,
        records,
        Duration::from_secs(10),
    )
    .with_host_netns(node.path());
    runtime.spawn(cni_server::serve(listener, Arc::new(attacher)));

    let netns = pod.path().display().to_string();
    let out = sidelane_cni::run(&vars("ADD", &netns, "net1"), attachnet(&socket).as_bytes());
    assert_eq!(out.exit_code, 0, "{}", out.stdout);
    let result: Value = serde_json::from_str(&out.stdout).expect("a JSON result");
    assert_eq!(result["ips"][0]["gateway"], json!("172.17.0.1"));
    let routes = pod.exec(&["ip", "route"]).expect("routes");
    assert!(
        routes.contains("default via 172.17.0.1 dev net1"),
        "{routes}"
    );
}
