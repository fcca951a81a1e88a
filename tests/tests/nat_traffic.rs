//! NAT gateways on real OVN (OVS's userspace datapath, a real API server and controller): the
//! seed's VpcNatGateway with Kube-OVN's EIP, SNAT, DNAT and FIP resources, proven by what an
//! outside host sees (the source of each connection it accepts), by connections it opens to
//! EIPs, and by `ovn-trace`; rules changed live; an EIP deleted while in use; refusals on the
//! object naming the field; two Vpcs with one CIDR each going out through its own EIP.

use std::time::Duration;

use serde_json::{Value, json};
use sidelane_tests::{
    cluster,
    netns::NetNs,
    node_rig::NodeRig,
    outside::{Outside, Peers, last_peer},
    ovn, privilege,
    probe_pod::{Pod, events_of, eventually, serve},
};

const NAD: &str = "kube-ovn-vpc-network";
const EXTERNAL: &str = "172.20.0.1/24";
const KUBEOVN: &str = "kubeovn.io/v1";

/// A rig of `nodes` nodes, the first `gateways` of them gateway nodes joined to the outside
/// host, with the seed's Vpc and Subnet (but no gateway yet).
fn nat_rig(nodes: usize, gateways: usize) -> (NodeRig, Outside) {
    let rig = NodeRig::start_nodes(nodes, false);
    let outside = Outside::start(EXTERNAL).expect("the outside host");
    for i in 0..nodes {
        let name = format!("node{}", i + 1);
        rig.api
            .seed(json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": {
                    "kubernetes.io/hostname": name,
                    "ovn.kubernetes.io/external-gw": "true",
                }},
            }))
            .expect("the node");
        if i < gateways {
            outside
                .join(&rig.nodes[i].chassis, "eth1")
                .expect("the node's external NIC");
            rig.provide_external_on(i, "eth1");
        }
    }
    for doc in cluster::example("non-primary-vpc.yaml")
        .into_iter()
        .filter(|d| d["kind"] != "Pod")
    {
        rig.api.apply(&[doc]);
    }
    (rig, outside)
}

/// The example's documents of `kinds`.
fn example(kinds: &[&str]) -> Vec<Value> {
    cluster::example("vpc-nat-gateway.yaml")
        .into_iter()
        .filter(|d| kinds.contains(&d["kind"].as_str().unwrap_or_default()))
        .collect()
}

/// Applies the whole example (the seed's gateway verbatim, its EIPs and rules).
fn apply_gateway(rig: &NodeRig) {
    for doc in cluster::example("vpc-nat-gateway.yaml") {
        rig.api.apply(&[doc]);
    }
}

/// A pod of `subnet-secondary` on `node` (at `ip` when given) with a route to the outside
/// through its Vpc.
fn vpc_pod(rig: &NodeRig, node: usize, name: &str, ip: Option<&str>) -> Pod {
    let mut annotations = json!({"k8s.v1.cni.cncf.io/networks": format!("default/{NAD}")});
    if let Some(ip) = ip {
        annotations[format!("{NAD}.default.ovn.kubernetes.io/ip_address")] = json!(ip);
    }
    rig.api
        .seed(cluster::pod_on(
            name,
            &format!("node{}", node + 1),
            &annotations,
        ))
        .expect("the pod is stored");
    let ns = NetNs::new().expect("a netns");
    let ip = rig.attach_on(node, name, &ns, NAD);
    ns.exec(&["ip", "route", "add", "172.20.0.0/24", "via", "10.100.0.1"])
        .expect("a route out");
    Pod {
        ns,
        ip,
        mac: String::new(),
        port: format!("{name}.default.{NAD}.default.ovn"),
        node,
    }
}

/// The status field `field` of `kind`/`name`, once it is set.
fn status_of(rig: &NodeRig, kind: &str, name: &str, field: &str) -> String {
    let mut value = String::new();
    eventually(
        &format!("{kind} {name} shows status.{field}"),
        Duration::from_secs(20),
        || {
            value = rig
                .api
                .get(KUBEOVN, kind, "", name)
                .and_then(|o| o["status"][field].as_str().map(str::to_owned))
                .unwrap_or_default();
            !value.is_empty()
        },
    );
    value
}

fn condition(rig: &NodeRig, kind: &str, name: &str, kind_of: &str) -> Option<(String, String)> {
    let o = rig.api.get(KUBEOVN, kind, "", name)?;
    o["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind_of)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_owned(),
                c["message"].as_str().unwrap_or_default().to_owned(),
            )
        })
}

/// The source the outside host sees for a connection from `pod` (None: it does not get
/// through).
fn seen_from(pod: &Pod, outside: &Outside, peers: &Peers, port: u16) -> Option<String> {
    let before = peers.lock().map(|p| p.len()).unwrap_or_default();
    let addr = format!("{}:{port}", outside.ip);
    let opened = pod
        .ns
        .exec(&[
            "python3",
            "-c",
            &format!(
                "import socket; socket.create_connection(('{}', {port}), 1)",
                outside.ip
            ),
        ])
        .is_ok();
    let _ = addr;
    if !opened {
        return None;
    }
    let mut got = None;
    eventually(
        "the outside host records the peer",
        Duration::from_secs(2),
        || {
            if peers.lock().map(|p| p.len()).unwrap_or_default() > before {
                got = last_peer(peers);
            }
            got.is_some()
        },
    );
    got
}

#[test]
fn snat_dnat_and_fip_work_as_the_outside_host_sees_them_and_follow_live_changes_traffic() {
    let name =
        "snat_dnat_and_fip_work_as_the_outside_host_sees_them_and_follow_live_changes_traffic";
    if !privilege::require_privileges(name) || !ovn::require_installed(name) {
        return;
    }
    let (rig, outside) = nat_rig(1, 1);
    apply_gateway(&rig);
    let eip = status_of(&rig, "IptablesEIP", "eip-secondary", "ip");
    let fip = status_of(&rig, "IptablesEIP", "eip-fip", "ip");
    let gateway_ip = status_of(&rig, "VpcNatGateway", "vpc-nat-gw", "externalIp");
    assert_ne!(eip, fip);
    let client = vpc_pod(&rig, 0, "client", None);
    let web = vpc_pod(&rig, 0, "web", Some("10.100.0.20"));
    let fipped = vpc_pod(&rig, 0, "fipped", Some("10.100.0.30"));
    let (_web80, _) = serve(&web, 80);
    let (_fip7000, _) = serve(&fipped, 7000);
    let peers = outside.record_peers(9000).expect("the outside server");
    eventually(
        "the gateway answers from outside",
        Duration::from_secs(30),
        || outside.pings(&gateway_ip),
    );

    // SNAT: the outside host sees the EIP.
    eventually(
        "SNAT carries the client out",
        Duration::from_secs(20),
        || seen_from(&client, &outside, &peers, 9000).is_some(),
    );
    assert_eq!(
        seen_from(&client, &outside, &peers, 9000),
        Some(eip.clone())
    );
    // DNAT: EIP:8080 is the web pod's TCP 80; no other port of the EIP leads in.
    eventually("DNAT leads in", Duration::from_secs(20), || {
        outside.tcp_opens(&eip, 8080).unwrap_or(false)
    });
    assert!(
        !outside.tcp_opens(&eip, 80).expect("a probe"),
        "only 8080 is forwarded"
    );
    // FIP: both ways, as its own EIP.
    assert!(
        outside.tcp_opens(&fip, 7000).expect("a probe"),
        "the FIP leads in"
    );
    assert_eq!(
        seen_from(&fipped, &outside, &peers, 9000),
        Some(fip.clone())
    );
    // Nothing else: the Vpc's own addresses, even routed to the gateway, stay out of reach.
    outside
        .ns
        .exec(&["ip", "route", "add", "10.100.0.0/16", "via", &gateway_ip])
        .expect("a route to the Vpc");
    assert!(
        !outside.tcp_opens(&web.ip, 80).expect("a probe"),
        "the web pod's own address"
    );
    assert!(!outside.pings(&client.ip), "a pod's own address");
    assert!(!outside.pings("10.100.0.254"), "lanIp");
    traces_show_each_translation(&rig, &eip, &fip, &client, &fipped);

    // Live: the DNAT rule goes, then comes back.
    rig.api
        .delete(KUBEOVN, "IptablesDnatRule", "", "dnat-web")
        .expect("deleting the DNAT");
    eventually("the DNAT stops leading in", Duration::from_secs(20), || {
        !outside.tcp_opens(&eip, 8080).unwrap_or(true)
    });
    rig.api.apply(&example(&["IptablesDnatRule"]));
    eventually("the DNAT leads in again", Duration::from_secs(20), || {
        outside.tcp_opens(&eip, 8080).unwrap_or(false)
    });

    an_eip_in_use_stays_until_its_rules_go(&rig, &outside, &peers, &client, &eip);
    // The FIP was never disturbed.
    assert!(outside.tcp_opens(&fip, 7000).expect("a probe"));
}

/// `ovn-trace` shows the DNAT, the FIP both ways and the SNAT.
fn traces_show_each_translation(rig: &NodeRig, eip: &str, fip: &str, client: &Pod, fipped: &Pod) {
    // ovn-trace shows each translation (as the gateway chassis would do it).
    let dnat = trace_in(rig, eip, 8080);
    assert!(
        dnat.contains("ct_lb_mark(backends=10.100.0.20:80)"),
        "ovn-trace shows the DNAT: {dnat}"
    );
    let fip_in = trace_in(rig, fip, 7000);
    assert!(
        translates(&fip_in, "dnat", "10.100.0.30"),
        "ovn-trace shows the FIP: {fip_in}"
    );
    let snat = trace_out(rig, "client", client);
    assert!(
        translates(&snat, "snat", eip),
        "ovn-trace shows the SNAT: {snat}"
    );
    let fip_out = trace_out(rig, "fipped", fipped);
    assert!(
        translates(&fip_out, "snat", fip),
        "ovn-trace shows the FIP out: {fip_out}"
    );
}

/// Deleting `eip` (in use by the SNAT and the DNAT) leaves it in force until both go.
fn an_eip_in_use_stays_until_its_rules_go(
    rig: &NodeRig,
    outside: &Outside,
    peers: &Peers,
    client: &Pod,
    eip: &str,
) {
    // An EIP deleted while rules use it stays, in force, until they are gone.
    rig.api
        .delete(KUBEOVN, "IptablesEIP", "", "eip-secondary")
        .expect("deleting the EIP");
    eventually("the EIP says it is kept", Duration::from_secs(20), || {
        condition(rig, "IptablesEIP", "eip-secondary", "Released")
            .is_some_and(|(s, m)| s == "False" && m.contains("IptablesSnatRule/snat-secondary"))
    });
    assert!(
        events_of(rig, "IptablesEIP", "eip-secondary")
            .iter()
            .any(|e| e.starts_with("EipInUse")),
        "an EipInUse event"
    );
    assert_eq!(
        seen_from(client, outside, peers, 9000),
        Some(eip.to_owned())
    );
    for (kind, rule) in [
        ("IptablesSnatRule", "snat-secondary"),
        ("IptablesDnatRule", "dnat-web"),
    ] {
        rig.api
            .delete(KUBEOVN, kind, "", rule)
            .expect("deleting a rule");
    }
    eventually(
        "the EIP goes once no rule uses it",
        Duration::from_secs(20),
        || {
            rig.api
                .get(KUBEOVN, "IptablesEIP", "", "eip-secondary")
                .is_none()
        },
    );
    eventually("SNAT stops", Duration::from_secs(20), || {
        seen_from(client, outside, peers, 9000).is_none()
    });
}

/// Whether an `ovn-trace` shows conntrack `what` (`snat`, `dnat`) to `ip`, in OVN's zone
/// form or not.
fn translates(trace: &str, what: &str, ip: &str) -> bool {
    trace.contains(&format!("ct_{what}({ip})"))
        || trace.contains(&format!("ct_{what}_in_czone({ip})"))
}

/// The MAC of router port `port`.
fn router_mac(rig: &NodeRig, port: &str) -> String {
    rig.central
        .nbctl(&[
            "--bare",
            "--columns=mac",
            "find",
            "Logical_Router_Port",
            &format!("name={port}"),
        ])
        .expect("ovn-nbctl")
        .trim()
        .to_owned()
}

/// `ovn-trace` (new connections) of a TCP SYN from the outside host to `eip:port`.
fn trace_in(rig: &NodeRig, eip: &str, port: u16) -> String {
    let flow = format!(
        r#"inport == "ln-ovn-vpc-external-network" && eth.src == 0a:00:00:00:00:99 && eth.dst == {} && ip4.src == 172.20.0.1 && ip4.dst == {eip} && ip.ttl == 64 && tcp && tcp.dst == {port} && tcp.src == 40000"#,
        router_mac(rig, "vpc-secondary-external")
    );
    rig.central
        .trace_with(
            &["--summary", "--ct=new"],
            "ovn-vpc-external-network",
            &flow,
        )
        .expect("ovn-trace runs")
}

/// `ovn-trace` (new connections) of a TCP SYN from pod `name` to the outside host.
fn trace_out(rig: &NodeRig, name: &str, pod: &Pod) -> String {
    let mac = rig
        .api
        .get("v1", "Pod", "default", name)
        .and_then(|p| {
            p["metadata"]["annotations"][format!("{NAD}.default.ovn.kubernetes.io/mac_address")]
                .as_str()
                .map(str::to_owned)
        })
        .expect("the pod's MAC");
    let flow = format!(
        r#"inport == "{}" && eth.src == {mac} && eth.dst == {} && ip4.src == {} && ip4.dst == 172.20.0.1 && ip.ttl == 64 && tcp && tcp.dst == 9000 && tcp.src == 40000"#,
        pod.port,
        router_mac(rig, "vpc-secondary-subnet-secondary"),
        pod.ip
    );
    rig.central
        .trace_with(&["--summary", "--ct=new"], "subnet-secondary", &flow)
        .expect("ovn-trace runs")
}

#[test]
fn bad_nat_input_is_refused_on_the_object_naming_the_field_and_nothing_else_is_disturbed_traffic() {
    let name = "bad_nat_input_is_refused_on_the_object_naming_the_field_and_nothing_else_is_disturbed_traffic";
    if !privilege::require_privileges(name) || !ovn::require_installed(name) {
        return;
    }
    let (rig, outside) = nat_rig(1, 1);
    apply_gateway(&rig);
    let eip = status_of(&rig, "IptablesEIP", "eip-secondary", "ip");
    let client = vpc_pod(&rig, 0, "client", None);
    let peers = outside.record_peers(9000).expect("the outside server");
    eventually(
        "SNAT carries the client out",
        Duration::from_secs(30),
        || seen_from(&client, &outside, &peers, 9000).is_some(),
    );
    // A second Vpc's gateway whose lanIp is outside its Subnet.
    rig.api.apply(&[
        json!({"apiVersion": KUBEOVN, "kind": "Vpc", "metadata": {"name": "vpc-other"},
               "spec": {"namespaces": ["default"]}}),
        json!({"apiVersion": KUBEOVN, "kind": "Subnet", "metadata": {"name": "subnet-other"},
               "spec": {"vpc": "vpc-other", "cidrBlock": "10.101.0.0/16", "provider": "other.default.ovn"}}),
        json!({"apiVersion": KUBEOVN, "kind": "VpcNatGateway", "metadata": {"name": "gw-bad-lan"},
               "spec": {"vpc": "vpc-other", "subnet": "subnet-other", "lanIp": "10.100.0.254"}}),
        json!({"apiVersion": KUBEOVN, "kind": "IptablesEIP", "metadata": {"name": "eip-outside"},
               "spec": {"natGwDp": "vpc-nat-gw", "v4ip": "192.168.50.5"}}),
        json!({"apiVersion": KUBEOVN, "kind": "IptablesSnatRule", "metadata": {"name": "snat-ghost"},
               "spec": {"eip": "no-such-eip", "internalCIDR": "10.100.0.0/16"}}),
    ]);
    for (kind, obj, reason, field) in [
        (
            "VpcNatGateway",
            "gw-bad-lan",
            "InvalidVpcNatGateway",
            "spec.lanIp 10.100.0.254",
        ),
        (
            "IptablesEIP",
            "eip-outside",
            "InvalidIptablesEIP",
            "spec.v4ip 192.168.50.5",
        ),
        (
            "IptablesSnatRule",
            "snat-ghost",
            "InvalidIptablesSnatRule",
            "spec.eip \"no-such-eip\"",
        ),
    ] {
        eventually(
            &format!("{kind} {obj}: Validated=False naming {field}"),
            Duration::from_secs(20),
            || {
                condition(&rig, kind, obj, "Validated")
                    .is_some_and(|(s, m)| s == "False" && m.contains(field))
            },
        );
        eventually(
            &format!("{kind} {obj}: a {reason} event"),
            Duration::from_secs(10),
            || {
                events_of(&rig, kind, obj)
                    .iter()
                    .any(|e| e.starts_with(reason) && e.contains(field))
            },
        );
    }
    // Nothing else was disturbed.
    assert_eq!(seen_from(&client, &outside, &peers, 9000), Some(eip));
    assert_eq!(
        condition(&rig, "VpcNatGateway", "vpc-nat-gw", "Ready").map(|(s, _)| s),
        Some("True".to_owned())
    );
}

#[test]
fn two_vpcs_with_one_cidr_each_go_out_through_their_own_eip_traffic() {
    let name = "two_vpcs_with_one_cidr_each_go_out_through_their_own_eip_traffic";
    if !privilege::require_privileges(name) || !ovn::require_installed(name) {
        return;
    }
    let (rig, outside) = nat_rig(1, 1);
    apply_gateway(&rig);
    // A second Vpc with the same CIDR, its own NAD, gateway, EIP and SNAT.
    rig.api.apply(&[
        json!({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
               "metadata": {"name": "tenant-b", "namespace": "default"},
               "spec": {"config": json!({"cniVersion": "0.3.1", "type": "kube-ovn",
                   "server_socket": "/run/openvswitch/kube-ovn-daemon.sock",
                   "provider": "tenant-b.default.ovn"}).to_string()}}),
        json!({"apiVersion": KUBEOVN, "kind": "Vpc", "metadata": {"name": "vpc-b"},
               "spec": {"namespaces": ["default"]}}),
        json!({"apiVersion": KUBEOVN, "kind": "Subnet", "metadata": {"name": "subnet-b"},
               "spec": {"vpc": "vpc-b", "cidrBlock": "10.100.0.0/16", "gateway": "10.100.0.1",
                        "provider": "tenant-b.default.ovn"}}),
        json!({"apiVersion": KUBEOVN, "kind": "VpcNatGateway", "metadata": {"name": "gw-b"},
               "spec": {"vpc": "vpc-b", "subnet": "subnet-b", "lanIp": "10.100.0.254"}}),
        json!({"apiVersion": KUBEOVN, "kind": "IptablesEIP", "metadata": {"name": "eip-b"},
               "spec": {"natGwDp": "gw-b"}}),
        json!({"apiVersion": KUBEOVN, "kind": "IptablesSnatRule", "metadata": {"name": "snat-b"},
               "spec": {"eip": "eip-b", "internalCIDR": "10.100.0.0/16"}}),
    ]);
    let eip_a = status_of(&rig, "IptablesEIP", "eip-secondary", "ip");
    let eip_b = status_of(&rig, "IptablesEIP", "eip-b", "ip");
    assert_ne!(eip_a, eip_b);
    // One address in both Vpcs.
    let a = vpc_pod(&rig, 0, "pod-a", Some("10.100.0.40"));
    rig.api
        .seed(cluster::pod_on(
            "pod-b",
            "node1",
            &json!({"k8s.v1.cni.cncf.io/networks": "default/tenant-b",
                    "tenant-b.default.ovn.kubernetes.io/ip_address": "10.100.0.40"}),
        ))
        .expect("pod-b");
    let ns = NetNs::new().expect("a netns");
    let ip = rig.attach_on(0, "pod-b", &ns, "tenant-b");
    assert_eq!(ip, "10.100.0.40");
    ns.exec(&["ip", "route", "add", "172.20.0.0/24", "via", "10.100.0.1"])
        .expect("a route out");
    let b = Pod {
        ns,
        ip,
        mac: String::new(),
        port: "pod-b.default.tenant-b.default.ovn".to_owned(),
        node: 0,
    };
    let peers = outside.record_peers(9000).expect("the outside server");
    eventually(
        "both Vpcs reach the outside",
        Duration::from_secs(30),
        || {
            seen_from(&a, &outside, &peers, 9000).is_some()
                && seen_from(&b, &outside, &peers, 9000).is_some()
        },
    );
    assert_eq!(seen_from(&a, &outside, &peers, 9000), Some(eip_a));
    assert_eq!(seen_from(&b, &outside, &peers, 9000), Some(eip_b));
}

/// Echoes every byte it reads, on each connection `listener` accepts.
fn echo(listener: std::net::TcpListener) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while let Ok(n) = std::io::Read::read(&mut conn, &mut buf) {
                    if n == 0 || std::io::Write::write_all(&mut conn, &buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// Which chassis holds the gateway port now (by name), per the Southbound database.
fn active_gateway(rig: &NodeRig) -> String {
    let uuid = rig
        .central
        .sbctl(&[
            "--bare",
            "--columns=chassis",
            "find",
            "Port_Binding",
            "logical_port=cr-vpc-secondary-external",
        ])
        .unwrap_or_default();
    let uuid = uuid.trim();
    if uuid.is_empty() {
        return String::new();
    }
    rig.central
        .sbctl(&["--bare", "--columns=name", "list", "Chassis", uuid])
        .unwrap_or_default()
        .trim()
        .to_owned()
}

#[test]
fn the_gateway_fails_over_to_the_next_chassis_when_its_node_goes_under_a_running_dnat_flow_traffic()
{
    let name = "the_gateway_fails_over_to_the_next_chassis_when_its_node_goes_under_a_running_dnat_flow_traffic";
    if !privilege::require_privileges(name) || !ovn::require_installed(name) {
        return;
    }
    // Three nodes: two gateway nodes, and node3 with the pod. A standby takes over only when
    // it still reaches some chassis (BFD) and not the active one: with two nodes alone it
    // could not tell a dead peer from its own isolation.
    let (mut rig, outside) = nat_rig(3, 2);
    apply_gateway(&rig);
    let eip = status_of(&rig, "IptablesEIP", "eip-secondary", "ip");
    eventually(
        "the gateway on node1 (priority 100), node2 standing by",
        Duration::from_secs(30),
        || active_gateway(&rig) == "node1",
    );
    assert_eq!(
        rig.api
            .get(KUBEOVN, "VpcNatGateway", "", "vpc-nat-gw")
            .map(|g| g["status"]["chassis"].clone()),
        Some(json!(["node1", "node2"]))
    );
    let web = vpc_pod(&rig, 2, "web", Some("10.100.0.20"));
    let (listener, _) = serve(&web, 80);
    echo(listener);
    eventually("DNAT leads in", Duration::from_secs(30), || {
        outside.tcp_opens(&eip, 8080).unwrap_or(false)
    });
    // A running flow: one connection, a byte each way every 20 ms.
    let addr: std::net::SocketAddr = format!("{eip}:8080").parse().expect("an address");
    let mut flow = sidelane_tests::netns::in_netns(&outside.ns.path(), move || {
        Ok(std::net::TcpStream::connect_timeout(
            &addr,
            Duration::from_secs(1),
        )?)
    })
    .expect("the flow opens");
    flow.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("a timeout");
    let round_trip = |flow: &mut std::net::TcpStream| {
        let mut b = [0u8; 1];
        std::io::Write::write_all(flow, b"x").is_ok()
            && std::io::Read::read_exact(flow, &mut b).is_ok()
    };
    for _ in 0..10 {
        assert!(round_trip(&mut flow), "the flow runs before the failure");
    }
    let failed = std::time::Instant::now();
    rig.nodes[0].chassis.power_off();
    // New connections through DNAT come back once node2 takes the gateway port over.
    let mut recovered = None;
    while failed.elapsed() < Duration::from_mins(1) {
        if outside.tcp_opens(&eip, 8080).unwrap_or(false) {
            recovered = Some(failed.elapsed());
            break;
        }
    }
    if recovered.is_none() {
        eprintln!("active: {:?}", active_gateway(&rig));
        eprintln!("bfd: {:?}", rig.nodes[1].chassis.appctl(&["bfd/show"]));
        eprintln!(
            "ifaces: {:?}",
            rig.nodes[1].chassis.vsctl(&[
                "--columns=name,type,options,bfd,bfd_status",
                "list",
                "Interface"
            ])
        );
        eprintln!("ha: {:?}", rig.central.sbctl(&["list", "HA_Chassis_Group"]));
        eprintln!("ha: {:?}", rig.central.sbctl(&["list", "HA_Chassis"]));
    }
    let recovered = recovered.expect("DNAT recovers on node2 within 60 s");
    let mut flow_back = None;
    let flow_start = std::time::Instant::now();
    while flow_start.elapsed() < Duration::from_secs(5) {
        if round_trip(&mut flow) {
            flow_back = Some(failed.elapsed());
            break;
        }
    }
    println!(
        "gateway failover: new DNAT connections after {:.2} s; the running connection {}",
        recovered.as_secs_f64(),
        flow_back.map_or_else(
            || "was lost (its conntrack state stayed on node1)".to_owned(),
            |t| format!("resumed after {:.2} s", t.as_secs_f64())
        )
    );
    assert_eq!(active_gateway(&rig), "node2");
    assert!(outside.tcp_opens(&eip, 8080).expect("a probe"));
}
