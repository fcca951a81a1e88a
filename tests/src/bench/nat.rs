//! `cargo xtask bench nat`: TCP throughput and connection rate through a Sidelane NAT gateway
//! (the Vpc router's gateway port, real OVN on the userspace datapath), against the same
//! traffic without NAT and against Kube-OVN's way, in one run on one node:
//!
//! - `snat`: a pod of `subnet-secondary` to the outside host, through the example's SNAT.
//! - `dnat`: the outside host to `EIP:5201`, forwarded to a pod.
//! - `no-nat`: a pod to the outside host through the same kind of gateway port on the same
//!   external switch, with no NAT (a router of the benchmark's own, written with ovn-nbctl).
//! - `kube-ovn-gw`: Kube-OVN's gateway pod: the pod's Vpc routes `0.0.0.0/0` to a gateway pod
//!   on its Subnet (through OVS), which masquerades (iptables `MASQUERADE`) onto a veth to the
//!   outside: the same SNAT, one pod hop more.
//!
//! Throughput: iperf3, one TCP stream, the receiver's rate; connection rate: TCP connections
//! opened and closed one after another for the run's length. Rounds are interleaved and each
//! figure is the median of its rounds.

use std::{
    fmt::Write as _,
    fs,
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde::Serialize;
use serde_json::json;

use crate::{
    cluster,
    iperf::{self, IperfSpec},
    netns::{NetNs, in_netns},
    node_rig::NodeRig,
    outside::Outside,
};

/// One path's figures.
#[derive(Debug, Serialize)]
pub struct Case {
    /// `snat`, `dnat`, `no-nat` or `kube-ovn-gw`.
    pub path: &'static str,
    /// TCP throughput, Gbit/s.
    pub gbps: f64,
    /// TCP connections opened and closed per second, one after another.
    pub connections_per_s: f64,
}

/// `target/bench/nat.json`.
#[derive(Debug, Serialize)]
pub struct NatReport {
    /// The four paths.
    pub cases: Vec<Case>,
    /// Seconds per run and rounds.
    pub seconds: u64,
    /// Rounds, interleaved.
    pub rounds: usize,
}

/// One path: who sends, who receives, to which address and port.
struct Path4<'a> {
    name: &'static str,
    sender: &'a NetNs,
    receiver: &'a NetNs,
    addr: String,
    port: u16,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// TCP connections from `sender` to `addr:port` (a listener in `receiver` accepting and
/// dropping them), one after another for `seconds`, per second.
fn connection_rate(p: &Path4<'_>, seconds: u64) -> anyhow::Result<f64> {
    let port = p.port + 1;
    let listener = in_netns(&p.receiver.path(), move || {
        Ok(TcpListener::bind(("0.0.0.0", port))?)
    })?;
    listener.set_nonblocking(false)?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopping = std::sync::Arc::clone(&stop);
    let acceptor = std::thread::spawn(move || {
        for conn in listener.incoming() {
            if stopping.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            drop(conn);
        }
    });
    let addr: SocketAddr = format!("{}:{port}", p.addr).parse()?;
    let opened = in_netns(&p.sender.path(), move || {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < Duration::from_secs(seconds) {
            if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    })?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    // One more connection wakes the acceptor, which then sees `stop`.
    let _ = in_netns(&p.sender.path(), move || {
        Ok(TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok())
    });
    let _ = acceptor.join();
    #[expect(clippy::cast_precision_loss, reason = "a count of connections")]
    Ok(opened as f64 / seconds as f64)
}

fn throughput(p: &Path4<'_>, seconds: u64) -> anyhow::Result<f64> {
    let mut spec = IperfSpec::tcp(Duration::from_secs(seconds));
    spec.port = p.port;
    let report = iperf::measure_via(p.receiver, "0.0.0.0", p.sender, &p.addr, &spec)
        .with_context(|| format!("iperf3 over {}", p.name))?;
    Ok(report.receiver_bps / 1e9)
}

/// A namespace plugged into `rig`'s `br-int` as OVN port `port` (`mac`, `cidr`, default route
/// via `gateway`), TX checksum offload off on both ends.
fn plug(rig: &NodeRig, port: &str, mac: &str, cidr: &str, gateway: &str) -> anyhow::Result<NetNs> {
    let ns = NetNs::new()?;
    let chassis = &rig.nodes[0].chassis;
    let host: String = format!("{port}_h")
        .chars()
        .rev()
        .take(15)
        .collect::<String>()
        .chars()
        .rev()
        .collect();
    chassis.ns.exec(&[
        "ip",
        "link",
        "add",
        &host,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        ns.name(),
    ])?;
    chassis.ns.exec(&["ip", "link", "set", &host, "up"])?;
    chassis.ns.exec(&["ethtool", "-K", &host, "tx", "off"])?;
    ns.exec(&["ip", "link", "set", "eth0", "address", mac, "up"])?;
    ns.exec(&["ip", "addr", "add", cidr, "dev", "eth0"])?;
    ns.exec(&["ip", "route", "add", "default", "via", gateway])?;
    ns.exec(&["ethtool", "-K", "eth0", "tx", "off"])?;
    chassis.vsctl(&[
        "add-port",
        "br-int",
        &host,
        "--",
        "set",
        "Interface",
        &host,
        &format!("external_ids:iface-id={port}"),
    ])?;
    Ok(ns)
}

/// The no-NAT path: a router of the benchmark's own with a gateway port on the external
/// switch (as the NAT gateway's, without NAT rows), and a pod behind it.
fn plain_router(rig: &NodeRig, outside: &Outside) -> anyhow::Result<NetNs> {
    let c = &rig.central;
    let cmds: &[&[&str]] = &[
        &["lr-add", "bench-plain"],
        &["ls-add", "bench-plain-lan"],
        &[
            "lrp-add",
            "bench-plain",
            "bench-plain-lan-lrp",
            "0a:00:00:00:aa:01",
            "10.200.0.1/24",
        ],
        &["lsp-add", "bench-plain-lan", "bench-plain-lan-rp"],
        &["lsp-set-type", "bench-plain-lan-rp", "router"],
        &["lsp-set-addresses", "bench-plain-lan-rp", "router"],
        &[
            "lsp-set-options",
            "bench-plain-lan-rp",
            "router-port=bench-plain-lan-lrp",
        ],
        &["lsp-add", "bench-plain-lan", "bench-plain-pod"],
        &[
            "lsp-set-addresses",
            "bench-plain-pod",
            "0a:00:00:00:aa:10 10.200.0.10",
        ],
        &[
            "lrp-add",
            "bench-plain",
            "bench-plain-ext",
            "0a:00:00:00:aa:02",
            "172.20.0.200/24",
        ],
        &["lrp-set-gateway-chassis", "bench-plain-ext", "node1", "100"],
        &["lsp-add", "ovn-vpc-external-network", "bench-plain-ext-rp"],
        &["lsp-set-type", "bench-plain-ext-rp", "router"],
        &["lsp-set-addresses", "bench-plain-ext-rp", "router"],
        &[
            "lsp-set-options",
            "bench-plain-ext-rp",
            "router-port=bench-plain-ext",
        ],
        &["lr-route-add", "bench-plain", "0.0.0.0/0", "172.20.0.1"],
    ];
    for cmd in cmds {
        c.nbctl(cmd)?;
    }
    let ns = plug(
        rig,
        "bench-plain-pod",
        "0a:00:00:00:aa:10",
        "10.200.0.10/24",
        "10.200.0.1",
    )?;
    outside
        .ns
        .exec(&["ip", "route", "add", "10.200.0.0/24", "via", "172.20.0.200"])?;
    Ok(ns)
}

/// Kube-OVN's gateway pod: Vpc `bench-peer-vpc` routes `0.0.0.0/0` to a pod at `10.102.0.254`,
/// which masquerades onto a veth to the outside host's network (`172.20.0.250`). Returns the
/// client pod's namespace (and the gateway's, kept alive).
fn kube_ovn_gateway(rig: &NodeRig, outside: &Outside) -> anyhow::Result<(NetNs, NetNs)> {
    rig.api.seed(cluster::ovn_nad("bench-peer"))?;
    rig.api.seed(json!({
        "apiVersion": "kubeovn.io/v1", "kind": "Vpc", "metadata": {"name": "bench-peer-vpc"},
        "spec": {"namespaces": ["default"],
                 "staticRoutes": [{"cidr": "0.0.0.0/0", "nextHopIP": "10.102.0.254", "policy": "policyDst"}]},
    }))?;
    rig.api.seed(cluster::ovn_subnet(
        "bench-peer",
        "bench-peer",
        "10.102.0.0/16",
        "bench-peer-vpc",
    ))?;
    let gw = attach(rig, "bench-peer-gw", "bench-peer", Some("10.102.0.254"))?;
    let client = attach(rig, "bench-peer-client", "bench-peer", None)?;
    client.exec(&["ip", "route", "add", "172.20.0.0/24", "via", "10.102.0.1"])?;
    outside.join_ns(&gw, "ext1")?;
    gw.exec(&["ip", "addr", "add", "172.20.0.250/24", "dev", "ext1"])?;
    gw.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    gw.exec(&[
        "iptables",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-s",
        "10.102.0.0/16",
        "-o",
        "ext1",
        "-j",
        "MASQUERADE",
    ])?;
    Ok((client, gw))
}

/// A pod of NAD `nad` attached through the agent (at `ip` when given).
fn attach(rig: &NodeRig, name: &str, nad: &str, ip: Option<&str>) -> anyhow::Result<NetNs> {
    let mut annotations = json!({"k8s.v1.cni.cncf.io/networks": format!("default/{nad}")});
    if let Some(ip) = ip {
        annotations[format!("{nad}.default.ovn.kubernetes.io/ip_address")] = json!(ip);
    }
    rig.api.seed(cluster::pod(name, &annotations))?;
    let ns = NetNs::new()?;
    let _ = rig.attach(name, &ns, nad);
    Ok(ns)
}

/// The EIP's address, once the controller shows it.
fn eip(rig: &NodeRig, name: &str) -> anyhow::Result<String> {
    let start = Instant::now();
    loop {
        if let Some(ip) = rig
            .api
            .get("kubeovn.io/v1", "IptablesEIP", "", name)
            .and_then(|o| o["status"]["ip"].as_str().map(str::to_owned))
        {
            return Ok(ip);
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(30),
            "IptablesEIP {name} shows no address"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs the four paths (`quick`: 3 rounds of 2 s; otherwise 5 rounds of 5 s).
pub fn run(quick: bool) -> anyhow::Result<NatReport> {
    let (seconds, rounds) = if quick { (2, 3) } else { (5, 5) };
    let rig = NodeRig::start(false);
    let outside = Outside::start("172.20.0.1/24")?;
    rig.api.seed(json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": "node1"},
    }))?;
    outside.join(&rig.nodes[0].chassis, "eth1")?;
    rig.provide_external_on(0, "eth1");
    for doc in cluster::example("non-primary-vpc.yaml")
        .into_iter()
        .chain(cluster::example("vpc-nat-gateway.yaml"))
        .filter(|d| d["kind"] != "Pod")
    {
        rig.api.apply(&[doc]);
    }
    rig.api.seed(json!({
        "apiVersion": "kubeovn.io/v1", "kind": "IptablesDnatRule", "metadata": {"name": "bench-dnat"},
        "spec": {"eip": "eip-secondary", "externalPort": "5201", "protocol": "tcp",
                 "internalIp": "10.100.0.20", "internalPort": "5201"},
    }))?;
    rig.api.seed(json!({
        "apiVersion": "kubeovn.io/v1", "kind": "IptablesDnatRule", "metadata": {"name": "bench-dnat-conn"},
        "spec": {"eip": "eip-secondary", "externalPort": "5202", "protocol": "tcp",
                 "internalIp": "10.100.0.20", "internalPort": "5202"},
    }))?;
    let eip = eip(&rig, "eip-secondary")?;
    let client = attach(&rig, "bench-client", "kube-ovn-vpc-network", None)?;
    let web = attach(
        &rig,
        "bench-web",
        "kube-ovn-vpc-network",
        Some("10.100.0.20"),
    )?;
    for ns in [&client, &web] {
        ns.exec(&["ip", "route", "add", "172.20.0.0/24", "via", "10.100.0.1"])?;
    }
    let plain = plain_router(&rig, &outside)?;
    let (peer, _gw) = kube_ovn_gateway(&rig, &outside)?;
    let host = outside.ip.clone();
    let paths = [
        Path4 {
            name: "snat",
            sender: &client,
            receiver: &outside.ns,
            addr: host.clone(),
            port: 5201,
        },
        Path4 {
            name: "dnat",
            sender: &outside.ns,
            receiver: &web,
            addr: eip,
            port: 5201,
        },
        Path4 {
            name: "no-nat",
            sender: &plain,
            receiver: &outside.ns,
            addr: host.clone(),
            port: 5201,
        },
        Path4 {
            name: "kube-ovn-gw",
            sender: &peer,
            receiver: &outside.ns,
            addr: host,
            port: 5201,
        },
    ];
    for p in &paths {
        settle(p)?;
    }
    let mut gbps: [Vec<f64>; 4] = Default::default();
    let mut cps: [Vec<f64>; 4] = Default::default();
    for round in 0..rounds {
        eprintln!("round {} of {rounds}...", round + 1);
        for (i, p) in paths.iter().enumerate() {
            gbps[i].push(throughput(p, seconds)?);
            cps[i].push(connection_rate(p, seconds)?);
        }
    }
    let cases = paths
        .iter()
        .enumerate()
        .map(|(i, p)| Case {
            path: p.name,
            gbps: median(std::mem::take(&mut gbps[i])),
            connections_per_s: median(std::mem::take(&mut cps[i])),
        })
        .collect();
    Ok(NatReport {
        cases,
        seconds,
        rounds,
    })
}

/// Waits until a connection over `p` opens (ARP, flows and NAT in place).
fn settle(p: &Path4<'_>) -> anyhow::Result<()> {
    let port = p.port + 1;
    let _listener = in_netns(&p.receiver.path(), move || {
        Ok(TcpListener::bind(("0.0.0.0", port))?)
    })?;
    let addr: SocketAddr = format!("{}:{port}", p.addr).parse()?;
    let start = Instant::now();
    loop {
        let ok = in_netns(&p.sender.path(), move || {
            Ok(TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok())
        })?;
        if ok {
            return Ok(());
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(30),
            "the {} path does not carry a connection",
            p.name
        );
    }
}

/// Writes the JSON report.
pub fn write_report(report: &NatReport, path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let json = serde_json::to_string_pretty(report).context("serialising the report")?;
    fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))
}

/// The table printed after the run, with the ratios.
pub fn table(r: &NatReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<12} {:>8} {:>14}",
        "path", "Gbit/s", "connections/s"
    );
    for c in &r.cases {
        let _ = writeln!(
            out,
            "{:<12} {:>8.2} {:>14.0}",
            c.path, c.gbps, c.connections_per_s
        );
    }
    let get = |p: &str| r.cases.iter().find(|c| c.path == p);
    if let (Some(s), Some(d), Some(n), Some(k)) =
        (get("snat"), get("dnat"), get("no-nat"), get("kube-ovn-gw"))
    {
        for (what, a, b) in [
            ("snat / no-nat", s, n),
            ("dnat / no-nat", d, n),
            ("snat / kube-ovn-gw", s, k),
        ] {
            let _ = writeln!(
                out,
                "{what:<20} throughput {:>5.2}  connections {:>5.2}",
                a.gbps / b.gbps,
                a.connections_per_s / b.connections_per_s
            );
        }
    }
    out
}
