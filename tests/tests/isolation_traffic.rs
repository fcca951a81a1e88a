//! Isolation on real OVN (OVS's userspace datapath, a real API server): Kube-OVN's
//! `SecurityGroups`, private Subnets and Subnet ACLs allow and deny what they say, proven by
//! `ovn-trace` and by real packets between pod namespaces; a live change applies to a running
//! flow; what cannot be rendered is refused on the object, naming the field.

use std::time::Duration;

use serde_json::json;
use sidelane_tests::{
    cluster,
    netns::NetNs,
    node_rig::NodeRig,
    ovn, privilege,
    probe_pod::{
        attachnet_rig, events_of, eventually, from_group, from_net, has_condition, ovn_delivers,
        ovn_delivers_tcp, pings, pod, ports, reachable, rule, security_group, serve, tcp_opens,
        udp_arrives,
    },
};

#[test]
fn security_group_rules_allow_and_deny_what_they_say_by_ovn_trace_and_by_packets_traffic() {
    let name =
        "security_group_rules_allow_and_deny_what_they_say_by_ovn_trace_and_by_packets_traffic";
    if !privilege::require_privileges(name) || !ovn::require_installed(name) {
        return;
    }
    let rig = attachnet_rig(1, false);
    // web: drop TCP 8081 from clients (priority 5 beats 10), TCP 8080-8081 from the Subnet,
    // ICMP from clients only, UDP 5353 from the Subnet; anything out to the Subnet.
    let subnet = from_net("172.17.0.0/16");
    rig.api
        .seed(security_group(
            "web",
            false,
            &[
                ports(rule("drop", 5, "tcp", &from_group("client")), 8081, 8081),
                ports(rule("allow", 10, "tcp", &subnet), 8080, 8081),
                rule("allow", 20, "icmp", &from_group("client")),
                ports(rule("allow", 30, "udp", &subnet), 5353, 5353),
            ],
            &[rule("allow", 1, "all", &subnet)],
        ))
        .expect("web");
    // client: out to the Subnet, nothing in.
    rig.api
        .seed(security_group(
            "client",
            false,
            &[],
            &[rule("allow", 1, "all", &subnet)],
        ))
        .expect("client");
    let server = pod(&rig, "server", "web");
    let client = pod(&rig, "client", "client");
    let other = pod(&rig, "other", "");
    let (_tcp8080, _) = serve(&server, 8080);
    let (_tcp8081, _) = serve(&server, 8081);
    let (_tcp9090, _) = serve(&server, 9090);
    let (_, udp5353) = serve(&server, 5353);
    let (_, udp5354) = serve(&server, 5354);
    reachable(&client, &server);
    // Packets.
    assert!(
        tcp_opens(&client, &server, 8080),
        "client → web TCP 8080 is allowed"
    );
    assert!(
        !tcp_opens(&client, &server, 8081),
        "client → web TCP 8081 is dropped by the higher-priority rule"
    );
    assert!(
        !tcp_opens(&client, &server, 9090),
        "client → web TCP 9090 is outside every range"
    );
    assert!(
        tcp_opens(&other, &server, 8081),
        "a pod in no group reaches TCP 8081 by the range rule"
    );
    assert!(
        !pings(&other, &server),
        "ICMP from outside the client group is denied"
    );
    assert!(
        udp_arrives(&other, &server, &udp5353, 5353),
        "UDP 5353 is allowed"
    );
    assert!(
        !udp_arrives(&other, &server, &udp5354, 5354),
        "UDP 5354 is not"
    );
    assert!(!pings(&server, &client), "nothing comes into a client");
    assert!(
        !pings(&other, &client),
        "nothing comes into a client from a pod in no group"
    );
    // ovn-trace agrees.
    assert!(ovn_delivers_tcp(&rig, &client, &server, 8080));
    assert!(!ovn_delivers_tcp(&rig, &client, &server, 8081));
    assert!(!ovn_delivers_tcp(&rig, &client, &server, 9090));
    assert!(ovn_delivers_tcp(&rig, &other, &server, 8081));
    let icmp = "icmp4 && icmp4.type == 8 && icmp4.code == 0";
    assert!(
        ovn_delivers(&rig, &client, &server, icmp),
        "ICMP from a client"
    );
    assert!(
        !ovn_delivers(&rig, &other, &server, icmp),
        "ICMP from outside the client group"
    );
    let udp = |port: u16| format!("udp && udp.dst == {port} && udp.src == 40000");
    assert!(ovn_delivers(&rig, &other, &server, &udp(5353)));
    assert!(!ovn_delivers(&rig, &other, &server, &udp(5354)));
    assert!(
        !ovn_delivers(&rig, &server, &client, icmp),
        "nothing into a client"
    );
}

#[test]
fn members_of_a_group_that_allows_same_group_traffic_reach_each_other_and_no_one_else_traffic() {
    let name = "members_of_a_group_that_allows_same_group_traffic_reach_each_other_and_no_one_else_traffic";
    if !privilege::require_privileges(name) || !ovn::require_installed(name) {
        return;
    }
    let rig = attachnet_rig(1, false);
    rig.api
        .seed(security_group("peers", true, &[], &[]))
        .expect("peers");
    let a = pod(&rig, "peer-a", "peers");
    let b = pod(&rig, "peer-b", "peers");
    let outsider = pod(&rig, "outsider", "");
    reachable(&a, &b);
    assert!(pings(&b, &a), "members reach each other both ways");
    let (_t, _) = serve(&a, 8080);
    assert!(tcp_opens(&b, &a, 8080), "TCP among members");
    assert!(!pings(&outsider, &a), "a pod outside the group is denied");
    assert!(
        !tcp_opens(&outsider, &a, 8080),
        "TCP from outside is denied"
    );
    assert!(
        !pings(&a, &outsider),
        "members cannot leave the group either (no egress rule)"
    );
    assert!(ovn_delivers_tcp(&rig, &b, &a, 8080));
    assert!(!ovn_delivers_tcp(&rig, &outsider, &a, 8080));
}

#[test]
fn a_live_rule_change_applies_to_a_running_flow_without_recreating_pods_traffic() {
    let name = "a_live_rule_change_applies_to_a_running_flow_without_recreating_pods_traffic";
    if !privilege::require_privileges(name) || !ovn::require_installed(name) {
        return;
    }
    let rig = attachnet_rig(1, false);
    let allow_icmp = |on: bool| {
        let ingress = if on {
            vec![rule("allow", 1, "icmp", &from_net("172.17.0.0/16"))]
        } else {
            Vec::new()
        };
        security_group("pingable", false, &ingress, &[])
    };
    rig.api.seed(allow_icmp(true)).expect("the group");
    let target = pod(&rig, "target", "pingable");
    let source = pod(&rig, "source", "");
    reachable(&source, &target);
    // A running flow: pings every 50 ms, each reply stamped (`-D`).
    let mut flow = source
        .ns
        .spawn(&["ping", "-D", "-i", "0.05", &target.ip])
        .expect("ping runs");
    let removed = now_s();
    rig.api.apply(&[allow_icmp(false)]);
    eventually("the flow is cut", Duration::from_secs(10), || {
        !pings(&source, &target)
    });
    let added = now_s();
    rig.api.apply(&[allow_icmp(true)]);
    eventually("the flow is back", Duration::from_secs(10), || {
        pings(&source, &target)
    });
    std::thread::sleep(Duration::from_millis(300));
    let replies = stop_and_read_replies(&mut flow);
    let last_before_cut = replies
        .iter()
        .copied()
        .filter(|t| *t < added)
        .fold(f64::NAN, f64::max);
    let first_after = replies
        .iter()
        .copied()
        .filter(|t| *t > added)
        .fold(f64::NAN, f64::min);
    let (cut, back) = (last_before_cut - removed, first_after - added);
    eprintln!(
        "on a running ping flow (every 50 ms): the last reply came {cut:.3} s after the rule was removed; the first came {back:.3} s after it was added back"
    );
    assert!(cut.is_finite() && back.is_finite(), "{replies:?}");
    assert!(
        cut < 1.0 && back < 1.0,
        "a live change takes effect within a second: cut after {cut:.3} s, back after {back:.3} s"
    );
}

fn now_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Stops `ping -D` and returns the times (UNIX seconds) of its replies.
fn stop_and_read_replies(flow: &mut sidelane_tests::process::Background) -> Vec<f64> {
    use std::io::Read as _;
    let child = flow.child_mut();
    let _ = child.kill();
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = stdout.read_to_string(&mut out);
    }
    out.lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
        .collect()
}

#[test]
fn a_private_subnet_admits_only_itself_and_its_allowed_subnets_traffic() {
    let name = "a_private_subnet_admits_only_itself_and_its_allowed_subnets_traffic";
    if !privilege::require_privileges(name) || !ovn::require_installed(name) {
        return;
    }
    let rig = NodeRig::start(false);
    rig.api
        .seed(json!({"apiVersion": "kubeovn.io/v1", "kind": "Vpc", "metadata": {"name": "vpc-p"}, "spec": {}}))
        .expect("vpc");
    for (nad, cidr) in [
        ("priv", "10.70.0.0/24"),
        ("pub-a", "10.71.0.0/24"),
        ("pub-b", "10.72.0.0/24"),
    ] {
        rig.api.seed(cluster::ovn_nad(nad)).expect("nad");
        let mut s = cluster::ovn_subnet(nad, nad, cidr, "vpc-p");
        if nad == "priv" {
            s["spec"]["private"] = json!(true);
            s["spec"]["allowSubnets"] = json!(["10.71.0.0/24"]);
        }
        rig.api.seed(s).expect("subnet");
    }
    let routed = |name: &str, nad: &str, gw: &str| {
        let routes = format!(r#"[{{"dst":"10.64.0.0/10","gw":"{gw}"}}]"#);
        rig.api
            .seed(cluster::pod(
                name,
                &json!({
                    "k8s.v1.cni.cncf.io/networks": format!("default/{nad}"),
                    format!("{nad}.default.ovn.kubernetes.io/routes"): routes,
                }),
            ))
            .expect("pod");
        let ns = NetNs::new().expect("netns");
        let ip = rig.attach(name, &ns, nad);
        (ns, ip)
    };
    let (p1, ip_p1) = routed("in-priv-1", "priv", "10.70.0.1");
    let (p2, ip_p2) = routed("in-priv-2", "priv", "10.70.0.1");
    let (a, _) = routed("in-pub-a", "pub-a", "10.71.0.1");
    let (b, _) = routed("in-pub-b", "pub-b", "10.72.0.1");
    let ping = |ns: &NetNs, ip: &str| ns.exec(&["ping", "-c", "1", "-W", "1", ip]).is_ok();
    eventually(
        "the private Subnet's own pods reach each other",
        Duration::from_secs(20),
        || ping(&p1, &ip_p2),
    );
    eventually(
        "an allowed Subnet reaches in",
        Duration::from_secs(20),
        || ping(&a, &ip_p1),
    );
    assert!(
        !ping(&b, &ip_p1),
        "a Subnet not in allowSubnets is kept out"
    );
    // Without allowSubnets, the allowed Subnet is kept out too.
    let mut s = cluster::ovn_subnet("priv", "priv", "10.70.0.0/24", "vpc-p");
    s["spec"]["private"] = json!(true);
    s["spec"]["allowSubnets"] = json!([]);
    rig.api.apply(&[s]);
    eventually(
        "allowSubnets removed keeps pub-a out",
        Duration::from_secs(10),
        || !ping(&a, &ip_p1),
    );
    assert!(
        ping(&p2, &ip_p1),
        "the Subnet's own pods still reach each other"
    );
}

#[test]
fn refusals_are_events_and_conditions_naming_the_field_and_the_previous_rules_stay() {
    let name = "refusals_are_events_and_conditions_naming_the_field_and_the_previous_rules_stay";
    if !privilege::require_privileges(name) || !ovn::require_installed(name) {
        return;
    }
    let rig = attachnet_rig(1, false);
    rig.api
        .seed(security_group(
            "guarded",
            false,
            &[rule("allow", 1, "icmp", &from_net("172.17.0.0/16"))],
            &[],
        ))
        .expect("the group");
    // A pod naming a group that does not exist: a Warning, and the port is denied all.
    let lost = pod(&rig, "lost", "no-such-group");
    let guarded = pod(&rig, "guarded", "guarded");
    let probe = pod(&rig, "probe", "");
    reachable(&probe, &guarded);
    eventually(
        "the pod's SecurityGroupNotFound event",
        Duration::from_secs(10),
        || {
            events_of(&rig, "Pod", "lost").iter().any(|e| {
                e.starts_with("SecurityGroupNotFound")
                    && e.contains("attachnet.default.ovn.kubernetes.io/security_groups")
                    && e.contains("no-such-group")
            })
        },
    );
    assert!(
        !pings(&probe, &lost),
        "a port naming a missing group is denied all, in"
    );
    assert!(!pings(&lost, &probe), "and out");
    // A rule that does not check: refused, named, and the rules before stay in force.
    let mut bad = security_group(
        "guarded",
        false,
        &[rule("allow", 1, "icmp", &from_net("172.17.0.0/16"))],
        &[],
    );
    bad["spec"]["ingressRules"][0]["priority"] = json!(500);
    rig.api.apply(&[bad]);
    eventually(
        "the group's InvalidSecurityGroupRule event",
        Duration::from_secs(10),
        || {
            events_of(&rig, "SecurityGroup", "guarded").iter().any(|e| {
                e.contains("ingressRules[0].priority: \"500\" is not in the range of 1 to 200")
            })
        },
    );
    eventually(
        "the group's Validated=False condition",
        Duration::from_secs(10),
        || {
            rig.api
                .get("kubeovn.io/v1", "SecurityGroup", "", "guarded")
                .is_some_and(|g| {
                    has_condition(&g, "Validated", "False", "priority")
                        && g["status"]["portGroup"] == "ovn.sg.guarded"
                })
        },
    );
    assert!(
        pings(&probe, &guarded),
        "the rules accepted before still allow ICMP"
    );
}

/// Whether `object`'s status has condition `kind` at `status` with `message` in its message.

#[test]
fn a_subnet_acl_drops_what_it_says_and_one_that_does_not_parse_is_refused_on_the_subnet_traffic() {
    let name = "a_subnet_acl_drops_what_it_says_and_one_that_does_not_parse_is_refused_on_the_subnet_traffic";
    if !privilege::require_privileges(name) || !ovn::require_installed(name) {
        return;
    }
    let rig = attachnet_rig(1, false);
    let a = pod(&rig, "acl-a", "");
    let b = pod(&rig, "acl-b", "");
    let c = pod(&rig, "acl-c", "");
    reachable(&a, &b);
    reachable(&c, &b);
    // Kube-OVN's documented Subnet ACL: drop one address into another.
    let mut subnet = cluster::example("attachnet.yaml")
        .into_iter()
        .find(|d| d["kind"] == "Subnet")
        .expect("the seed's Subnet");
    let subnet_name = subnet["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let drop_a_to_b = format!("ip4.src == {} && ip4.dst == {}", a.ip, b.ip);
    subnet["spec"]["acls"] = json!([{"action": "drop", "direction": "to-lport", "priority": 1002, "match": drop_a_to_b}]);
    rig.api.apply(&[subnet.clone()]);
    eventually("a no longer reaches b", Duration::from_secs(10), || {
        !pings(&a, &b)
    });
    assert!(pings(&c, &b), "c still reaches b");
    // A Subnet ACL that does not parse: refused on the Subnet, the accepted one stays.
    subnet["spec"]["acls"] = json!([{"action": "drop", "direction": "to-lport", "priority": 1002, "match": "ip4.src == 172.17.0.300"}]);
    rig.api.apply(&[subnet]);
    eventually(
        "the Subnet's IsolationValidated=False condition",
        Duration::from_secs(10),
        || {
            rig.api
                .get("kubeovn.io/v1", "Subnet", "", &subnet_name)
                .is_some_and(|s| {
                    has_condition(&s, "IsolationValidated", "False", "spec.acls[0].match")
                })
        },
    );
    assert!(
        events_of(&rig, "Subnet", &subnet_name)
            .iter()
            .any(|e| e.starts_with("InvalidSubnetACL"))
    );
    assert!(!pings(&a, &b), "the ACL accepted before stays");
    assert!(pings(&c, &b), "nothing else is disturbed");
}
