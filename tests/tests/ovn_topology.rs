//! The controller builds OVN's logical topology in a real Northbound database (ovsdb-server,
//! ovn-northd): the seeds' examples checked with `ovn-nbctl`, forwarding decisions checked
//! with `ovn-trace`, drift repaired, rows of other owners left alone, and a Northbound server
//! killed mid-reconcile converged without duplicates.

use std::{
    collections::BTreeSet,
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::DeleteParams};
use serde_json::{Value, json};
use sidelane_controller::{
    metrics::Metrics,
    run::{self, Options},
};
use sidelane_ovsdb::parse_remotes;
use sidelane_tests::{
    cluster,
    control_plane::SidelaneCluster,
    ovn::{self, Central},
};
use tokio::{sync::watch, task::JoinHandle};

struct Controller {
    task: JoinHandle<()>,
    _leading: watch::Sender<bool>,
}

impl Controller {
    fn start(
        api: &SidelaneCluster,
        central: &Central,
        runtime: &tokio::runtime::Runtime,
    ) -> Controller {
        let client = runtime.block_on(api.controller_client());
        let (tx, rx) = watch::channel(true);
        let mut nb =
            sidelane_ovsdb::Options::new(parse_remotes(&central.nb.unix_remote()).expect("remote"));
        nb.backoff_max = Duration::from_millis(500);
        let opts = Options {
            gc_interval: Duration::from_secs(5),
            instance: "test".to_owned(),
            ovn_nb: Some(nb),
            ..Options::default()
        };
        let task = runtime.spawn(run::lead(client, opts, Arc::new(Metrics::new()), rx));
        Controller { task, _leading: tx }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < timeout, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn names(central: &Central, table: &str) -> Vec<String> {
    let out = central
        .nbctl(&["--bare", "--columns=name", "list", table])
        .expect("ovn-nbctl list");
    let mut v: Vec<String> = out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    v.sort();
    v
}

fn get(central: &Central, table: &str, record: &str, column: &str) -> String {
    let out = if column.contains(':') {
        central.nbctl(&["get", table, record, column])
    } else {
        central.nbctl(&[
            "--bare",
            &format!("--columns={column}"),
            "list",
            table,
            record,
        ])
    };
    out.map(|s| s.trim().trim_matches('"').to_owned())
        .unwrap_or_default()
}

fn annotation(api: &SidelaneCluster, pod: &str, key: &str) -> String {
    api.get("v1", "Pod", "default", pod)
        .and_then(|p| {
            p["metadata"]["annotations"][key]
                .as_str()
                .map(str::to_owned)
        })
        .unwrap_or_default()
}

/// The pod's (MAC, IP) on `provider`, once allocated.
fn allocation(api: &SidelaneCluster, pod: &str, provider: &str) -> (String, String) {
    eventually(
        &format!("{pod} allocated on {provider}"),
        Duration::from_secs(20),
        || annotation(api, pod, &format!("{provider}.kubernetes.io/allocated")) == "true",
    );
    (
        annotation(api, pod, &format!("{provider}.kubernetes.io/mac_address")),
        annotation(api, pod, &format!("{provider}.kubernetes.io/ip_address")),
    )
}

/// `ovn-trace` of an ICMP echo from `from`'s port to `to_ip`, sent to `dst_mac`.
fn trace(
    central: &Central,
    switch: &str,
    from: (&str, &str, &str),
    dst_mac: &str,
    to_ip: &str,
) -> String {
    let (port, mac, ip) = from;
    let flow = format!(
        r#"inport == "{port}" && eth.src == {mac} && eth.dst == {dst_mac} && ip4.src == {ip} && ip4.dst == {to_ip} && ip.ttl == 64 && icmp4.type == 8"#
    );
    central.trace(switch, &flow).expect("ovn-trace runs")
}

fn delivered_to(trace: &str, port: &str) -> bool {
    trace.contains(&format!("output(\"{port}\");"))
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario: the seeds' topology, then its traces"
)]
fn the_seed_examples_become_switches_routers_and_ports_that_ovn_trace_forwards_as_promised() {
    if !ovn::require_installed(
        "the_seed_examples_become_switches_routers_and_ports_that_ovn_trace_forwards_as_promised",
    ) {
        return;
    }
    let central = Central::start().expect("OVN central starts");
    let api = SidelaneCluster::with_controllers();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let docs: Vec<Value> = cluster::example("attachnet.yaml")
        .into_iter()
        .chain(cluster::example("non-primary-vpc.yaml"))
        .collect();
    api.apply(&docs);
    api.wait_for_pods("default", cluster::pods_made_by(&docs));
    // A second Subnet in the seed's Vpc, with a pod.
    api.seed(cluster::ovn_nad("vpc-network-2")).expect("nad");
    api.seed(cluster::ovn_subnet(
        "subnet-secondary-2",
        "vpc-network-2",
        "10.101.0.0/16",
        "vpc-secondary",
    ))
    .expect("subnet");
    api.seed(cluster::pod(
        "second-subnet-pod",
        &json!({"k8s.v1.cni.cncf.io/networks": "default/vpc-network-2"}),
    ))
    .expect("pod");
    let _controller = Controller::start(&api, &central, &runtime);

    let sample = "samplepod.default.attachnet.default.ovn";
    let routes = "custom-routes-attach.default.attachnet.default.ovn";
    let multi = "multi-network-pod.default.kube-ovn-vpc-network.default.ovn";
    let second = "second-subnet-pod.default.vpc-network-2.default.ovn";
    eventually(
        "every port in the Northbound database",
        Duration::from_secs(30),
        || {
            let ports = names(&central, "Logical_Switch_Port");
            [sample, routes, multi, second]
                .iter()
                .all(|p| ports.contains(&(*p).to_owned()))
        },
    );
    assert_eq!(
        names(&central, "Logical_Switch"),
        ["attachnet", "subnet-secondary", "subnet-secondary-2"]
    );
    assert_eq!(
        names(&central, "Logical_Router"),
        ["ovn-cluster", "vpc-secondary"]
    );
    assert_eq!(
        names(&central, "Logical_Router_Port"),
        [
            "ovn-cluster-attachnet",
            "vpc-secondary-subnet-secondary",
            "vpc-secondary-subnet-secondary-2"
        ]
    );
    assert_eq!(
        get(
            &central,
            "Logical_Switch",
            "attachnet",
            "other_config:subnet"
        ),
        "172.17.0.0/16"
    );
    assert_eq!(
        get(
            &central,
            "Logical_Switch",
            "attachnet",
            "other_config:exclude_ips"
        ),
        "172.17.0.0..172.17.0.10"
    );
    assert_eq!(
        get(
            &central,
            "Logical_Switch",
            "subnet-secondary",
            "other_config:subnet"
        ),
        "10.100.0.0/16"
    );
    assert_eq!(
        get(
            &central,
            "Logical_Router_Port",
            "vpc-secondary-subnet-secondary",
            "networks"
        ),
        "10.100.0.1/16"
    );
    assert_eq!(
        get(
            &central,
            "Logical_Switch_Port",
            "subnet-secondary-vpc-secondary",
            "type"
        ),
        "router"
    );
    let (mac, ip) = allocation(&api, "samplepod", "attachnet.default.ovn");
    assert_eq!(
        get(&central, "Logical_Switch_Port", sample, "addresses"),
        format!("{mac} {ip}")
    );
    // As Kube-OVN: no port security unless the pod asks for it (link-local IPv6 and
    // neighbour discovery pass).
    assert_eq!(
        get(&central, "Logical_Switch_Port", sample, "port_security"),
        ""
    );
    assert_eq!(
        get(&central, "Logical_Switch_Port", sample, "external_ids:pod"),
        "default/samplepod"
    );
    assert_eq!(
        get(
            &central,
            "Logical_Switch_Port",
            sample,
            "external_ids:\"sidelane.io/owner\""
        ),
        "sidelane-controller"
    );
    let ports_of_attachnet = central.nbctl(&["lsp-list", "attachnet"]).expect("lsp-list");
    assert!(
        ports_of_attachnet.contains(sample) && ports_of_attachnet.contains(routes),
        "{ports_of_attachnet}"
    );

    central.sync().expect("northd catches up");
    // Same switch: delivered.
    let (routes_mac, routes_ip) = allocation(&api, "custom-routes-attach", "attachnet.default.ovn");
    let t = trace(
        &central,
        "attachnet",
        (sample, &mac, &ip),
        &routes_mac,
        &routes_ip,
    );
    assert!(delivered_to(&t, routes), "same switch not delivered:\n{t}");
    // Across the two Subnets of one Vpc: routed (to the gateway's MAC, out of the other switch).
    let (multi_mac, multi_ip) = allocation(
        &api,
        "multi-network-pod",
        "kube-ovn-vpc-network.default.ovn",
    );
    let (_, second_ip) = allocation(&api, "second-subnet-pod", "vpc-network-2.default.ovn");
    let gw_mac = get(
        &central,
        "Logical_Router_Port",
        "vpc-secondary-subnet-secondary",
        "mac",
    );
    let t = trace(
        &central,
        "subnet-secondary",
        (multi, &multi_mac, &multi_ip),
        &gw_mac,
        &second_ip,
    );
    assert!(
        delivered_to(&t, second),
        "across subnets of one vpc not routed:\n{t}"
    );
    assert!(t.contains("ip.ttl--"), "not routed:\n{t}");
    // To the other Vpc: no route, nothing delivered.
    let t = trace(
        &central,
        "subnet-secondary",
        (multi, &multi_mac, &multi_ip),
        &gw_mac,
        &ip,
    );
    assert!(!delivered_to(&t, sample), "another vpc reached:\n{t}");
    // As Kube-OVN, OVN checks sources only for pods that ask for port security (the seeds'
    // do not: link-local IPv6 and neighbour discovery must pass); the fast path checks them
    // always (fastpath_traffic's spoofing test, with a pod that asks).
    let t = trace(
        &central,
        "attachnet",
        (sample, &mac, "172.17.0.250"),
        &routes_mac,
        &routes_ip,
    );
    assert!(
        delivered_to(&t, routes),
        "without port_security a source is not checked by OVN:\n{t}"
    );
}

#[test]
fn drift_is_repaired_a_port_deleted_by_hand_returns_and_a_deleted_pods_port_goes() {
    if !ovn::require_installed(
        "drift_is_repaired_a_port_deleted_by_hand_returns_and_a_deleted_pods_port_goes",
    ) {
        return;
    }
    let central = Central::start().expect("OVN central starts");
    let api = SidelaneCluster::with_controllers();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let docs = cluster::example("attachnet.yaml");
    api.apply(&docs);
    api.wait_for_pods("default", cluster::pods_made_by(&docs));
    let _controller = Controller::start(&api, &central, &runtime);
    let sample = "samplepod.default.attachnet.default.ovn";
    let routes = "custom-routes-attach.default.attachnet.default.ovn";
    eventually("the ports", Duration::from_secs(30), || {
        let p = names(&central, "Logical_Switch_Port");
        p.contains(&sample.to_owned()) && p.contains(&routes.to_owned())
    });
    let addresses = get(&central, "Logical_Switch_Port", sample, "addresses");
    central
        .nbctl(&["lsp-del", sample])
        .expect("deleting by hand");
    eventually("the port comes back", Duration::from_secs(20), || {
        names(&central, "Logical_Switch_Port").contains(&sample.to_owned())
    });
    assert_eq!(
        get(&central, "Logical_Switch_Port", sample, "addresses"),
        addresses
    );
    // A port changed by hand is put back.
    central
        .nbctl(&["lsp-set-addresses", sample, "unknown"])
        .expect("changing by hand");
    eventually(
        "the addresses are restored",
        Duration::from_secs(20),
        || get(&central, "Logical_Switch_Port", sample, "addresses") == addresses,
    );
    // A stale port we own (its pod is gone) is removed.
    central
        .nbctl(&[
            "lsp-add",
            "attachnet",
            "ghost.default.attachnet.default.ovn",
            "--",
            "set",
            "Logical_Switch_Port",
            "ghost.default.attachnet.default.ovn",
            "external_ids:\"sidelane.io/owner\"=sidelane-controller",
        ])
        .expect("adding a stale owned port");
    eventually("the stale port goes", Duration::from_secs(20), || {
        !names(&central, "Logical_Switch_Port")
            .contains(&"ghost.default.attachnet.default.ovn".to_owned())
    });
    // Deleting the pod removes its port.
    runtime.block_on(async {
        Api::<Pod>::namespaced(api.client(), "default")
            .delete("samplepod", &DeleteParams::default().grace_period(0))
            .await
            .expect("deleting the pod");
    });
    eventually(
        "the deleted pod's port goes",
        Duration::from_secs(20),
        || !names(&central, "Logical_Switch_Port").contains(&sample.to_owned()),
    );
    assert!(names(&central, "Logical_Switch_Port").contains(&routes.to_owned()));
}

#[test]
fn rows_without_the_marker_survive_a_full_resync_untouched() {
    if !ovn::require_installed("rows_without_the_marker_survive_a_full_resync_untouched") {
        return;
    }
    let mut central = Central::start().expect("OVN central starts");
    // Another owner's rows: a switch and a router of their own, and on their switch a port
    // named as one of ours would be (a clash).
    central
        .nbctl(&[
            "ls-add",
            "theirs",
            "--",
            "lsp-add",
            "theirs",
            "their-port",
            "--",
            "lr-add",
            "their-router",
            "--",
            "lsp-add",
            "theirs",
            "samplepod.default.attachnet.default.ovn",
        ])
        .expect("another owner's rows");
    let before = central.nbctl(&["show"]).expect("show");
    let api = SidelaneCluster::with_controllers();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let docs = cluster::example("attachnet.yaml");
    api.apply(&docs);
    api.wait_for_pods("default", cluster::pods_made_by(&docs));
    let _controller = Controller::start(&api, &central, &runtime);
    eventually("our port", Duration::from_secs(30), || {
        names(&central, "Logical_Switch_Port")
            .contains(&"custom-routes-attach.default.attachnet.default.ovn".to_owned())
    });
    // The Northbound server restarts: the controller resyncs from a fresh snapshot.
    central.nb.kill();
    std::thread::sleep(Duration::from_millis(300));
    central.nb.start().expect("the Northbound server restarts");
    std::thread::sleep(Duration::from_secs(2));
    let show = central.nbctl(&["show"]).expect("show");
    for line in before.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            show.contains(line.trim()),
            "lost `{}` of another owner:\n{show}",
            line.trim()
        );
    }
    // The clashing port is still theirs, on their switch, and ours was not created beside it.
    assert!(
        central
            .nbctl(&["lsp-get-ls", "samplepod.default.attachnet.default.ovn"])
            .expect("lsp-get-ls")
            .contains("theirs"),
        "the clashing port stays on their switch"
    );
    assert_eq!(
        get(
            &central,
            "Logical_Switch_Port",
            "samplepod.default.attachnet.default.ovn",
            "external_ids"
        ),
        "",
        "their port keeps no marker of ours"
    );
}

#[test]
fn deleting_a_subnet_leaves_its_switch_while_another_owners_port_is_on_it() {
    if !ovn::require_installed(
        "deleting_a_subnet_leaves_its_switch_while_another_owners_port_is_on_it",
    ) {
        return;
    }
    let central = Central::start().expect("OVN central starts");
    let api = SidelaneCluster::start();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    api.apply(&cluster::networks_of("attachnet.yaml"));
    let _controller = Controller::start(&api, &central, &runtime);
    let router_port = "ovn-cluster-attachnet".to_owned();
    eventually(
        "the switch and its router port",
        Duration::from_secs(30),
        || {
            names(&central, "Logical_Switch").contains(&"attachnet".to_owned())
                && names(&central, "Logical_Router_Port").contains(&router_port)
        },
    );
    // Another owner plugs a port of theirs into our switch.
    central
        .nbctl(&["lsp-add", "attachnet", "their-port"])
        .expect("their port");
    api.delete("kubeovn.io/v1", "Subnet", "", "attachnet")
        .expect("deleting the Subnet");
    eventually("our router port goes", Duration::from_secs(20), || {
        !names(&central, "Logical_Router_Port").contains(&router_port)
    });
    assert!(
        names(&central, "Logical_Switch").contains(&"attachnet".to_owned()),
        "the switch stays while it holds their port"
    );
    assert_eq!(
        central
            .nbctl(&["lsp-get-ls", "their-port"])
            .expect("lsp-get-ls")
            .split_whitespace()
            .last(),
        Some("(attachnet)"),
        "their port is still on it"
    );
    assert_eq!(
        names(&central, "Logical_Switch_Port"),
        ["their-port"],
        "our own ports on it are gone"
    );
    // The Subnet stays, Terminating, and says why on its status.
    let ready = || {
        api.get("kubeovn.io/v1", "Subnet", "", "attachnet")
            .and_then(|s| {
                s["status"]["conditions"]
                    .as_array()
                    .and_then(|c| c.iter().find(|c| c["type"] == "Ready").cloned())
            })
    };
    eventually(
        "the Subnet says its switch is held",
        Duration::from_secs(20),
        || ready().is_some_and(|c| c["reason"] == "LogicalSwitchHeld"),
    );
    let condition = ready().expect("the Ready condition");
    assert_eq!(condition["status"], "False");
    assert!(
        condition["message"]
            .as_str()
            .is_some_and(|m| m.contains("Logical_Switch_Port their-port")),
        "{condition}"
    );
    assert!(
        api.get("kubeovn.io/v1", "Subnet", "", "attachnet")
            .is_some_and(|s| s["metadata"]["deletionTimestamp"].is_string()),
        "the Subnet is Terminating"
    );
    // Once their port is gone, so are the switch and the Subnet.
    central
        .nbctl(&["lsp-del", "their-port"])
        .expect("their port goes");
    eventually("the empty switch goes", Duration::from_secs(20), || {
        !names(&central, "Logical_Switch").contains(&"attachnet".to_owned())
    });
    eventually("the Subnet goes", Duration::from_secs(20), || {
        api.get("kubeovn.io/v1", "Subnet", "", "attachnet")
            .is_none()
    });
}

fn count(central: &Central, table: &str) -> usize {
    names(central, table).len()
}

#[test]
fn a_northbound_server_killed_mid_reconcile_is_converged_without_duplicates() {
    if !ovn::require_installed(
        "a_northbound_server_killed_mid_reconcile_is_converged_without_duplicates",
    ) {
        return;
    }
    let mut central = Central::start().expect("OVN central starts");
    let api = SidelaneCluster::start();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    api.seed(cluster::ovn_nad("big")).expect("nad");
    for i in 0..4 {
        api.seed(cluster::ovn_subnet(
            &format!("big{i}"),
            "big",
            &format!("10.{}.0.0/16", 50 + i),
            "",
        ))
        .expect("subnet");
    }
    let pods = 400;
    for i in 0..pods {
        let subnet = format!("big{}", i % 4);
        api.seed(cluster::pod(
            &format!("p{i}"),
            &json!({"k8s.v1.cni.cncf.io/networks": "default/big", "big.default.ovn.kubernetes.io/logical_switch": subnet}),
        ))
        .expect("pod");
    }
    let _controller = Controller::start(&api, &central, &runtime);
    // Kill the server as soon as the first rows land, then bring it back.
    eventually("the first rows", Duration::from_secs(30), || {
        count(&central, "Logical_Switch") > 0
    });
    central.nb.kill();
    std::thread::sleep(Duration::from_secs(1));
    central.nb.start().expect("the Northbound server restarts");
    // 400 pods' ports and one router port per Subnet.
    eventually("convergence", Duration::from_mins(1), || {
        count(&central, "Logical_Switch_Port") == pods + 4
    });
    std::thread::sleep(Duration::from_secs(1));
    let switches = names(&central, "Logical_Switch");
    assert_eq!(
        switches,
        ["big0", "big1", "big2", "big3"],
        "no duplicate switches"
    );
    assert_eq!(
        names(&central, "Logical_Router"),
        ["ovn-cluster"],
        "no duplicate router"
    );
    let ports: BTreeSet<String> = names(&central, "Logical_Switch_Port").into_iter().collect();
    assert_eq!(ports.len(), pods + 4, "no duplicate ports");
}

#[test]
fn a_pod_whose_port_name_another_owner_holds_is_marked_and_warned_until_the_row_goes() {
    if !ovn::require_installed(
        "a_pod_whose_port_name_another_owner_holds_is_marked_and_warned_until_the_row_goes",
    ) {
        return;
    }
    let central = Central::start().expect("OVN central starts");
    let api = SidelaneCluster::start();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    api.apply(&cluster::networks_of("attachnet.yaml"));
    let _controller = Controller::start(&api, &central, &runtime);
    eventually("the switch", Duration::from_secs(30), || {
        names(&central, "Logical_Switch").contains(&"attachnet".to_owned())
    });
    // Kube-OVN (say) already has the port this pod's attachment would get, with its own address.
    let port = "web.default.attachnet.default.ovn";
    central
        .nbctl(&[
            "lsp-add",
            "attachnet",
            port,
            "--",
            "lsp-set-addresses",
            port,
            "00:00:00:11:22:33 172.17.0.99",
            "--",
            "set",
            "Logical_Switch_Port",
            port,
            "external_ids:vendor=kube-ovn",
        ])
        .expect("their port");
    api.apply(&[cluster::pod(
        "web",
        &json!({"k8s.v1.cni.cncf.io/networks": "attachnet"}),
    )]);
    eventually("the mark", Duration::from_secs(30), || {
        annotation(&api, "web", "sidelane.io/ports-held").contains("kube-ovn")
    });
    let mark: Value =
        serde_json::from_str(&annotation(&api, "web", "sidelane.io/ports-held")).expect("JSON");
    assert!(
        mark["attachnet.default.ovn"]
            .as_str()
            .is_some_and(|why| why.contains(port) && why.contains("172.17.0.99")),
        "{mark}"
    );
    // The allocation was written with it, in the same patch.
    assert!(
        !annotation(
            &api,
            "web",
            "attachnet.default.ovn.kubernetes.io/ip_address"
        )
        .is_empty()
    );
    eventually("a Warning on the pod", Duration::from_secs(20), || {
        api.list("events.k8s.io/v1", "Event", Some("default"))
            .iter()
            .any(|e| e["regarding"]["name"] == "web" && e["reason"] == "OvnPortHeld")
    });
    assert_eq!(
        get(&central, "Logical_Switch_Port", port, "addresses"),
        "00:00:00:11:22:33 172.17.0.99",
        "their row is untouched"
    );
    // Once their row is gone, the port is Sidelane's and the mark goes.
    central.nbctl(&["lsp-del", port]).expect("their port goes");
    eventually("the mark goes", Duration::from_secs(30), || {
        annotation(&api, "web", "sidelane.io/ports-held").is_empty()
    });
    eventually("our port", Duration::from_secs(20), || {
        names(&central, "Logical_Switch_Port").contains(&port.to_owned())
    });
    assert!(
        api.list("events.k8s.io/v1", "Event", Some("default"))
            .iter()
            .any(|e| e["regarding"]["name"] == "web" && e["reason"] == "OvnPortReleased")
    );
}
