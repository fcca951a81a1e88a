//! Pods on the seed's `attachnet` Subnet through a [`NodeRig`], in security groups or not, and
//! probes of what reaches them (ICMP, TCP, UDP, `ovn-trace`): the isolation tests' vocabulary.

use std::{
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{
    cluster,
    netns::{NetNs, in_netns},
    node_rig::NodeRig,
};

pub const PROVIDER: &str = "attachnet.default.ovn";

/// Waits until `check` holds.
///
/// # Panics
/// When it does not within `timeout`.
pub fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < timeout, "{what} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One pod: its namespace, address, MAC and OVN port.
pub struct Pod {
    /// Its network namespace.
    pub ns: NetNs,
    /// Its address.
    pub ip: String,
    /// Its MAC.
    pub mac: String,
    /// Its OVN port.
    pub port: String,
    /// The node it is on.
    pub node: usize,
}

/// A rule of `policy`, `priority` and `protocol` about `remote` (IPv4).
pub fn rule(policy: &str, priority: u32, protocol: &str, remote: &Value) -> Value {
    let mut r =
        json!({"ipVersion": "ipv4", "policy": policy, "priority": priority, "protocol": protocol});
    for (k, v) in remote.as_object().into_iter().flatten() {
        r[k] = v.clone();
    }
    r
}

/// A remote of the group `g`.
pub fn from_group(g: &str) -> Value {
    json!({"remoteType": "securityGroup", "remoteSecurityGroup": g})
}

/// A remote of the addresses `n`.
pub fn from_net(n: &str) -> Value {
    json!({"remoteType": "address", "remoteAddress": n})
}

/// `r` for ports `min` to `max`.
pub fn ports(mut r: Value, min: u16, max: u16) -> Value {
    r["portRangeMin"] = json!(min);
    r["portRangeMax"] = json!(max);
    r
}

/// A `SecurityGroup` object.
pub fn security_group(name: &str, same: bool, ingress: &[Value], egress: &[Value]) -> Value {
    json!({
        "apiVersion": "kubeovn.io/v1", "kind": "SecurityGroup", "metadata": {"name": name},
        "spec": {"allowSameGroupTraffic": same, "ingressRules": ingress, "egressRules": egress},
    })
}

/// A rig of `nodes` nodes (fast path on or off) serving the seed's `attachnet`.
///
/// # Panics
/// When the rig does not start.
pub fn attachnet_rig(nodes: usize, fastpath: bool) -> NodeRig {
    let rig = NodeRig::start_nodes(nodes, fastpath);
    for doc in cluster::example("attachnet.yaml")
        .into_iter()
        .filter(|d| d["kind"] != "Deployment" && d["kind"] != "Pod")
    {
        rig.api.apply(&[doc]);
    }
    rig
}

/// Pod `name` on node `node`, in `groups` (a comma list; empty: none, without port security).
///
/// # Panics
/// When it cannot be stored or attached.
pub fn pod_on(rig: &NodeRig, node: usize, name: &str, groups: &str) -> Pod {
    let mut annotations = json!({"k8s.v1.cni.cncf.io/networks": "default/attachnet"});
    if !groups.is_empty() {
        annotations[format!("{PROVIDER}.kubernetes.io/security_groups")] = json!(groups);
        annotations[format!("{PROVIDER}.kubernetes.io/port_security")] = json!("true");
    }
    rig.api
        .seed(cluster::pod_on(
            name,
            &format!("node{}", node + 1),
            &annotations,
        ))
        .expect("the pod is stored");
    let ns = NetNs::new().expect("a netns");
    let ip = rig.attach_on(node, name, &ns, "attachnet");
    let stored = rig.api.get("v1", "Pod", "default", name).expect("the pod");
    let mac = stored["metadata"]["annotations"][format!("{PROVIDER}.kubernetes.io/mac_address")]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    Pod {
        ns,
        ip,
        mac,
        port: format!("{name}.default.{PROVIDER}"),
        node,
    }
}

/// Pod `name` on the first node.
///
/// # Panics
/// As [`pod_on`].
pub fn pod(rig: &NodeRig, name: &str, groups: &str) -> Pod {
    pod_on(rig, 0, name, groups)
}

/// Listens on TCP and UDP `port` in `p`'s namespace (the kernel answers a SYN without
/// `accept`).
///
/// # Panics
/// When the probe cannot run.
pub fn serve(p: &Pod, port: u16) -> (TcpListener, UdpSocket) {
    in_netns(&p.ns.path(), move || {
        Ok((
            TcpListener::bind(("0.0.0.0", port))?,
            UdpSocket::bind(("0.0.0.0", port))?,
        ))
    })
    .expect("listening")
}

/// Whether a TCP connection from `from` to `to:port` is established within 700 ms.
///
/// # Panics
/// When the probe cannot run.
pub fn tcp_opens(from: &Pod, to: &Pod, port: u16) -> bool {
    let addr: SocketAddr = format!("{}:{port}", to.ip).parse().expect("an address");
    in_netns(&from.ns.path(), move || {
        Ok(TcpStream::connect_timeout(&addr, Duration::from_millis(700)).is_ok())
    })
    .expect("connecting")
}

/// Whether a UDP datagram from `from` reaches `server` (bound in `to`) within 700 ms.
///
/// # Panics
/// When the probe cannot run.
pub fn udp_arrives(from: &Pod, to: &Pod, server: &UdpSocket, port: u16) -> bool {
    let addr: SocketAddr = format!("{}:{port}", to.ip).parse().expect("an address");
    let sent = in_netns(&from.ns.path(), move || {
        let s = UdpSocket::bind(("0.0.0.0", 0))?;
        s.send_to(b"probe", addr)?;
        Ok(())
    });
    sent.expect("sending");
    server
        .set_read_timeout(Some(Duration::from_millis(700)))
        .expect("a timeout");
    let mut buf = [0u8; 16];
    server.recv_from(&mut buf).is_ok()
}

///
/// # Panics
/// When the probe cannot run.
pub fn pings(from: &Pod, to: &Pod) -> bool {
    from.ns
        .exec(&["ping", "-c", "1", "-W", "1", &to.ip])
        .is_ok()
}

/// `ovn-trace` of a TCP SYN from `from` to `to:port`: whether OVN delivers it.
///
/// # Panics
/// When the probe cannot run.
pub fn ovn_delivers_tcp(rig: &NodeRig, from: &Pod, to: &Pod, port: u16) -> bool {
    ovn_delivers(
        rig,
        from,
        to,
        &format!("tcp && tcp.dst == {port} && tcp.src == 40000"),
    )
}

/// `ovn-trace` of an IPv4 packet from `from` to `to` matching `l4` (`udp && udp.dst == 53`,
/// `icmp4 && icmp4.type == 8`): whether OVN delivers it.
///
/// # Panics
/// When `ovn-trace` cannot run.
pub fn ovn_delivers(rig: &NodeRig, from: &Pod, to: &Pod, l4: &str) -> bool {
    let flow = format!(
        r#"inport == "{}" && eth.src == {} && eth.dst == {} && ip4.src == {} && ip4.dst == {} && ip.ttl == 64 && {l4}"#,
        from.port, from.mac, to.mac, from.ip, to.ip
    );
    let trace = rig
        .central
        .trace("attachnet", &flow)
        .expect("ovn-trace runs");
    trace.contains(&format!("output(\"{}\");", to.port))
}

/// Pings until the first reply: ports are bound and flows installed.
///
/// # Panics
/// When the probe cannot run.
pub fn reachable(from: &Pod, to: &Pod) {
    eventually(
        &format!("{} answers {}", to.ip, from.ip),
        Duration::from_secs(20),
        || pings(from, to),
    );
}

/// Events about `kind`/`name`, each as "reason note".
pub fn events_of(rig: &NodeRig, kind: &str, name: &str) -> Vec<String> {
    rig.api
        .list("events.k8s.io/v1", "Event", None)
        .iter()
        .filter(|e| e["regarding"]["kind"] == kind && e["regarding"]["name"] == name)
        .map(|e| {
            format!(
                "{} {}",
                e["reason"].as_str().unwrap_or_default(),
                e["note"].as_str().unwrap_or_default()
            )
        })
        .collect()
}

/// Whether `object` has condition `kind` with `status` whose message contains `message`.
pub fn has_condition(object: &Value, kind: &str, status: &str, message: &str) -> bool {
    object["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter().any(|c| {
            c["type"] == kind
                && c["status"] == status
                && c["message"].as_str().is_some_and(|m| m.contains(message))
        })
    })
}
