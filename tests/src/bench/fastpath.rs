//! `cargo xtask bench fastpath`: the same-node fast path against a bare veth pair (the machine's
//! limit) and against OVS (the same rig, pods on a Subnet with the fast path switched off), in
//! one run.
//!
//! - `veth`: two namespaces joined by one veth pair.
//! - `fastpath`: two pods on the seed's `attachnet` switch, attached through our plugin and
//!   agent on one node of real OVN (userspace datapath), fast path on.
//! - `ovs`: two pods on a second switch whose Subnet says `sidelane.io/fastpath: "false"`, on
//!   the same node: every frame crosses OVS.
//! - `fastpath-sg`: two pods on `fast` in a security group that allows same-group traffic: the
//!   agent proves OVN passes all their traffic, so they keep the fast path.
//! - `routed`: two pods on two Subnets of the Vpc `bench-routed`, each routed to the other
//!   through its gateway: routed on the fast path (one hop, TTL decremented).
//! - `ovs-routed`: the same in the Vpc `bench-routed-ovs`, whose Subnets say
//!   `sidelane.io/fastpath: "false"`: OVN's router in OVS routes every frame.
//!
//! Each case: iperf3 TCP, one stream, receiver's rate (rounds interleaved, median); then ping
//! RTTs on the idle link. And the forwarding program's own cost per packet with
//! `BPF_PROG_TEST_RUN`.

use std::{fmt::Write as _, fs, path::Path, time::Duration};

use anyhow::Context as _;
use serde::Serialize;
use serde_json::json;
use sidelane_agent::dataplane::fastpath::measure_prog_cost;

use crate::{
    cluster,
    iperf::{self, IperfSpec},
    netns::NetNs,
    node_rig::NodeRig,
    ping,
    topology::PodLink,
};

/// One path's figures.
#[derive(Debug, Serialize)]
pub struct Case {
    /// `fastpath`, `fastpath-sg`, `ovs`, `routed`, `ovs-routed` or `veth`.
    pub path: &'static str,
    /// TCP throughput, Gbit/s.
    pub gbps: f64,
    /// Median ping RTT, µs.
    pub rtt_us_p50: f64,
    /// 99th percentile ping RTT, µs.
    pub rtt_us_p99: f64,
}

/// `target/bench/fastpath.json`.
#[derive(Debug, Serialize)]
pub struct FastpathReport {
    /// The three paths.
    pub cases: Vec<Case>,
    /// The forwarding program's cost per packet, ns.
    pub prog_ns_per_packet: f64,
}

struct Options {
    seconds: u64,
    rounds: usize,
    pings: u32,
}

fn throughput(
    path: &'static str,
    sender: &NetNs,
    receiver: &NetNs,
    addr: &str,
    o: &Options,
) -> anyhow::Result<f64> {
    let report = iperf::measure(
        receiver,
        addr,
        sender,
        &IperfSpec::tcp(Duration::from_secs(o.seconds)),
    )
    .with_context(|| format!("iperf3 over {path}"))?;
    Ok(report.receiver_bps / 1e9)
}

fn rtts(path: &'static str, sender: &NetNs, addr: &str, o: &Options) -> anyhow::Result<(f64, f64)> {
    let pings = ping::ping(
        sender,
        addr,
        o.pings,
        Duration::from_millis(10),
        Duration::from_secs(1),
    )
    .with_context(|| format!("ping over {path}"))?;
    let us = |p: f64| pings.percentile(p).map_or(f64::NAN, |ms| ms * 1000.0);
    Ok((us(50.0), us(99.0)))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn pod_pair(
    rig: &NodeRig,
    nad: &str,
    names: (&str, &str),
    group: Option<&str>,
) -> anyhow::Result<(NetNs, NetNs, String)> {
    let mut networks = json!({"k8s.v1.cni.cncf.io/networks": format!("default/{nad}")});
    if let Some(g) = group {
        networks[format!("{nad}.default.ovn.kubernetes.io/security_groups")] = json!(g);
        networks[format!("{nad}.default.ovn.kubernetes.io/port_security")] = json!("true");
    }
    rig.api.seed(cluster::pod(names.0, &networks))?;
    rig.api.seed(cluster::pod(names.1, &networks))?;
    let (a, b) = (NetNs::new()?, NetNs::new()?);
    let _ = rig.attach(names.0, &a, nad);
    let ip_b = rig.attach(names.1, &b, nad);
    Ok((a, b, ip_b))
}

/// Two pods on two new Subnets of a new Vpc `vpc`, each with a route to the other's Subnet
/// through its gateway; the second's address. `fastpath: false` marks the Subnets
/// `sidelane.io/fastpath: "false"`.
fn routed_pair(
    rig: &NodeRig,
    vpc: &str,
    cidrs: [&str; 2],
    fastpath: bool,
) -> anyhow::Result<(NetNs, NetNs, String)> {
    rig.api
        .seed(json!({"apiVersion": "kubeovn.io/v1", "kind": "Vpc",
                        "metadata": {"name": vpc}, "spec": {}}))?;
    let nads = [format!("{vpc}-a"), format!("{vpc}-b")];
    for (nad, cidr) in nads.iter().zip(cidrs) {
        rig.api.seed(cluster::ovn_nad(nad))?;
        let mut subnet = cluster::ovn_subnet(nad, nad, cidr, vpc);
        if !fastpath {
            subnet["metadata"]["annotations"] = json!({"sidelane.io/fastpath": "false"});
        }
        rig.api.seed(subnet)?;
    }
    let gateway = |cidr: &str| cidr.replace(".0/24", ".1");
    let mut ips = Vec::new();
    let mut pods = Vec::new();
    for (i, nad) in nads.iter().enumerate() {
        let (own, other) = (cidrs[i], cidrs[1 - i]);
        let pod = format!("{nad}-pod");
        rig.api.seed(cluster::pod(
            &pod,
            &json!({"k8s.v1.cni.cncf.io/networks": format!("default/{nad}"),
                    format!("{nad}.default.ovn.kubernetes.io/routes"):
                        json!([{"dst": other, "gw": gateway(own)}]).to_string()}),
        ))?;
        let ns = NetNs::new()?;
        ips.push(rig.attach(&pod, &ns, nad));
        pods.push(ns);
    }
    let b = pods.pop().context("two pods")?;
    let a = pods.pop().context("two pods")?;
    Ok((a, b, ips.swap_remove(1)))
}

/// Pings until `pod`'s frames are routed on the fast path (the agent hands the fast path its
/// routing table within the watch's delay), 30 s at most.
fn until_routed(rig: &NodeRig, pod: &str, from: &NetNs, to: &str) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    while rig.counters(pod).routed == 0 {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(30),
            "{pod}'s frames were never routed on the fast path: {:?}",
            rig.counters(pod)
        );
        let _ = ping::ping(
            from,
            to,
            1,
            Duration::from_millis(50),
            Duration::from_secs(1),
        );
    }
    Ok(())
}

/// Runs the cases, interleaved over several rounds so that the machine's background
/// load falls on all of them alike; each figure is the median of its rounds (`quick`: 3 rounds
/// of 2 s and 100 pings; otherwise 5 rounds of 5 s and 1,000 pings).
pub fn run(quick: bool) -> anyhow::Result<FastpathReport> {
    let o = if quick {
        Options {
            seconds: 2,
            rounds: 3,
            pings: 100,
        }
    } else {
        Options {
            seconds: 5,
            rounds: 5,
            pings: 1000,
        }
    };
    let link = PodLink::new()?;
    let (veth_tx, veth_rx, veth_ip) = link.endpoints(sidelane_api::qos::Direction::Ingress);
    let rig = NodeRig::start(true);
    rig.api.seed(cluster::ovn_nad("fast"))?;
    rig.api
        .seed(cluster::ovn_subnet("fast", "fast", "10.80.0.0/24", ""))?;
    rig.api.seed(cluster::ovn_nad("slow"))?;
    let mut slow = cluster::ovn_subnet("slow", "slow", "10.81.0.0/24", "");
    slow["metadata"]["annotations"] = json!({"sidelane.io/fastpath": "false"});
    rig.api.seed(slow)?;
    rig.api.seed(json!({
        "apiVersion": "kubeovn.io/v1", "kind": "SecurityGroup", "metadata": {"name": "bench-peers"},
        "spec": {"allowSameGroupTraffic": true},
    }))?;
    let (fa, fb, fast_ip) = pod_pair(&rig, "fast", ("bench-fa", "bench-fb"), None)?;
    let (ga, gb, sg_ip) = pod_pair(&rig, "fast", ("bench-ga", "bench-gb"), Some("bench-peers"))?;
    let (sa, sb, slow_ip) = pod_pair(&rig, "slow", ("bench-sa", "bench-sb"), None)?;
    let (ra, rb, routed_ip) =
        routed_pair(&rig, "bench-routed", ["10.82.0.0/24", "10.83.0.0/24"], true)?;
    let (oa, ob, ovs_routed_ip) = routed_pair(
        &rig,
        "bench-routed-ovs",
        ["10.84.0.0/24", "10.85.0.0/24"],
        false,
    )?;
    until_routed(&rig, "bench-routed-a-pod", &ra, &routed_ip)?;
    let paths: [(&'static str, &NetNs, &NetNs, &str); 6] = [
        ("fastpath", &fa, &fb, fast_ip.as_str()),
        ("fastpath-sg", &ga, &gb, sg_ip.as_str()),
        ("ovs", &sa, &sb, slow_ip.as_str()),
        ("routed", &ra, &rb, routed_ip.as_str()),
        ("ovs-routed", &oa, &ob, ovs_routed_ip.as_str()),
        ("veth", veth_tx, veth_rx, veth_ip),
    ];
    for (_, tx, _, ip) in &paths {
        // ARP and OVN's flows in place before anything is timed.
        let _ = ping::ping(tx, ip, 3, Duration::from_millis(50), Duration::from_secs(2));
    }
    let mut gbps: [Vec<f64>; 6] = Default::default();
    for round in 0..o.rounds {
        eprintln!("round {} of {}...", round + 1, o.rounds);
        for (i, (path, tx, rx, ip)) in paths.iter().enumerate() {
            gbps[i].push(throughput(path, tx, rx, ip, &o)?);
        }
    }
    let mut cases = Vec::new();
    for (i, (path, tx, _, ip)) in paths.iter().enumerate() {
        let (p50, p99) = rtts(path, tx, ip, &o)?;
        cases.push(Case {
            path,
            gbps: median(std::mem::take(&mut gbps[i])),
            rtt_us_p50: p50,
            rtt_us_p99: p99,
        });
    }
    let hits = rig.counters("bench-fa").hits;
    anyhow::ensure!(
        hits > 1000,
        "the fast-path case took the fast path ({hits} hits)"
    );
    let sg_hits = rig.counters("bench-ga").hits;
    anyhow::ensure!(
        sg_hits > 1000,
        "the security-group case took the fast path ({sg_hits} hits)"
    );
    for pod in ["bench-sa", "bench-routed-ovs-a-pod"] {
        let hits = rig.counters(pod).hits;
        anyhow::ensure!(hits == 0, "{pod} never took the fast path ({hits} hits)");
    }
    let routed = rig.counters("bench-routed-a-pod").routed;
    anyhow::ensure!(
        routed > 1000,
        "the routed case was routed on the fast path ({routed} routed hits)"
    );
    eprintln!("program cost...");
    let prog_ns_per_packet = measure_prog_cost().context("measuring the program's cost")?;
    Ok(FastpathReport {
        cases,
        prog_ns_per_packet,
    })
}

/// Writes the JSON report.
pub fn write_report(report: &FastpathReport, path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let json = serde_json::to_string_pretty(report).context("serialising the report")?;
    fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))
}

/// The table printed after the run, with the acceptance ratios.
pub fn table(r: &FastpathReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<12} {:>8} {:>12} {:>12}",
        "path", "Gbit/s", "RTT p50 µs", "RTT p99 µs"
    );
    for c in &r.cases {
        let _ = writeln!(
            out,
            "{:<12} {:>8.2} {:>12.1} {:>12.1}",
            c.path, c.gbps, c.rtt_us_p50, c.rtt_us_p99
        );
    }
    let get = |p: &str| r.cases.iter().find(|c| c.path == p);
    if let (Some(f), Some(o), Some(v)) = (get("fastpath"), get("ovs"), get("veth")) {
        let _ = writeln!(
            out,
            "\nfastpath / veth throughput   {:>6.2}  (>= 0.85)",
            f.gbps / v.gbps
        );
        let _ = writeln!(
            out,
            "fastpath / ovs throughput    {:>6.1}  (>= 10)",
            f.gbps / o.gbps
        );
        let _ = writeln!(
            out,
            "fastpath / veth RTT p50      {:>6.2}  (<= 1.3)",
            f.rtt_us_p50 / v.rtt_us_p50
        );
        if let (Some(r), Some(ro)) = (get("routed"), get("ovs-routed")) {
            let _ = writeln!(
                out,
                "routed / veth throughput     {:>6.2}  (routed on the fast path)",
                r.gbps / v.gbps
            );
            let _ = writeln!(
                out,
                "routed / ovs-routed          {:>6.1}",
                r.gbps / ro.gbps
            );
        }
        if let Some(g) = get("fastpath-sg") {
            let _ = writeln!(
                out,
                "fastpath-sg / fastpath       {:>6.2}  (>= 0.9: isolation keeps the fast path)",
                g.gbps / f.gbps
            );
        }
    }
    let _ = writeln!(
        out,
        "program ns per packet        {:>6.1}  (<= 60)",
        r.prog_ns_per_packet
    );
    out
}
