//! `cargo xtask chaos`: pod churn in the lab rig while faults are injected, then an audit of
//! everything that could be lost or left behind.
//!
//! Pods with an OVN attachment (`chaosnet`) and an IPAM-only macvlan attachment (`chaosvlan`),
//! some with static addresses and some with a rate limit, come and go on both nodes through
//! the CNI binary, as Multus would run it. Every few pods one fault, in turn: the leading
//! controller killed (and started again, as its Deployment would), an agent killed and started
//! again (on node1 while a TCP flow runs between two fast-pathed pods there), the Northbound
//! server killed and started again, a pod's Logical_Switch_Port deleted by hand, a pod's host
//! veth deleted by hand. Then, with the survivors running and again after every pod is gone:
//! every live pod's attachment has exactly one address and none is held twice; no IP resource,
//! Logical_Switch_Port, host veth, fast-path map entry, QoS pin or agent record is left
//! without its pod.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde_json::{Value, json};

use super::{Lab, LabPod, check_stop};
use crate::{
    cluster,
    iperf::{self, IperfSpec},
    node_rig::container_id,
};

const OVN_NAD: &str = "chaosnet";
const IPAM_NAD: &str = "chaosvlan";
const OVN_PROVIDER: &str = "chaosnet.default.ovn";
const IPAM_PROVIDER: &str = "chaosvlan.default";

/// What the churn did and what the audits found.
#[derive(Debug, Default)]
pub struct ChaosReport {
    pub pods_churned: usize,
    pub faults: BTreeMap<&'static str, usize>,
    pub add_failures: usize,
    pub duplicates: usize,
    pub leaked: BTreeMap<&'static str, usize>,
    pub missing: BTreeMap<&'static str, usize>,
    pub flows_checked: usize,
    pub flows_broken_by_agent_restart: usize,
    pub problems: Vec<String>,
    pub seconds: f64,
}

impl ChaosReport {
    /// Faults injected, all kinds.
    pub fn faults_injected(&self) -> usize {
        self.faults.values().sum()
    }

    /// The JSON of `target/bench/chaos.json` (without the fuzzing figures, which the caller
    /// adds).
    pub fn to_json(&self) -> Value {
        json!({
            "pods_churned": self.pods_churned,
            "faults_injected": self.faults_injected(),
            "faults": self.faults,
            "add_failures": self.add_failures,
            "duplicates": self.duplicates,
            "leaked": {
                "ips": self.leaked.get("ips").copied().unwrap_or(0),
                "lsps": self.leaked.get("lsps").copied().unwrap_or(0),
                "veths": self.leaked.get("veths").copied().unwrap_or(0),
                "map_entries": self.leaked.get("map_entries").copied().unwrap_or(0),
                "pins": self.leaked.get("pins").copied().unwrap_or(0),
                "records": self.leaked.get("records").copied().unwrap_or(0),
            },
            "missing": self.missing,
            "flows_checked": self.flows_checked,
            "flows_broken_by_agent_restart": self.flows_broken_by_agent_restart,
            "problems": self.problems,
            "seconds": self.seconds,
        })
    }
}

const FAULTS: [&str; 5] = [
    "leader_killed",
    "agent_restarted",
    "northbound_restarted",
    "lsp_deleted_by_hand",
    "veth_deleted_by_hand",
];

fn pod_doc(name: &str, i: usize, node: usize) -> Value {
    let mut annotations = json!({
        "k8s.v1.cni.cncf.io/networks": format!("default/{OVN_NAD}, default/{IPAM_NAD}"),
    });
    // Every fifth pod asks for a static address on each network (unique among live pods).
    if i.is_multiple_of(5) {
        let k = (i / 5) % 200;
        annotations[format!("{OVN_PROVIDER}.kubernetes.io/ip_address")] =
            json!(format!("10.210.200.{}", k + 20));
        annotations[format!("{IPAM_PROVIDER}.kubernetes.io/ip_address")] =
            json!(format!("10.220.200.{}", k + 20));
    }
    // Every seventh pod has a rate limit (QoS programs and pins on both kinds).
    if i.is_multiple_of(7) {
        annotations["ovn.kubernetes.io/ingress_rate"] = json!("100");
    }
    let mut doc = cluster::pod(name, &annotations);
    doc["spec"]["nodeName"] = json!(format!("node{}", node + 1));
    doc
}

impl Lab {
    fn chaos_setup(&mut self) {
        self.api.apply(&[
            cluster::ovn_nad(OVN_NAD),
            cluster::ovn_subnet(OVN_NAD, OVN_NAD, "10.210.0.0/16", ""),
            json!({
                "apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
                "metadata": {"name": IPAM_NAD, "namespace": "default"},
                "spec": {"config": format!(
                    r#"{{"cniVersion": "0.3.1", "type": "macvlan", "master": "eth0", "mode": "bridge", "ipam": {{"type": "kube-ovn", "server_socket": "/run/openvswitch/kube-ovn-daemon.sock", "provider": "{IPAM_PROVIDER}"}}}}"#
                )}
            }),
            cluster::subnet(IPAM_NAD, IPAM_PROVIDER, "10.220.0.0/16", None),
        ]);
    }

    fn create_pod(&mut self, name: &str, i: usize, node: usize) -> anyhow::Result<LabPod> {
        self.api.seed(pod_doc(name, i, node))?;
        self.start_pod("chaos", name)
    }

    fn remove_pod(&self, pod: &LabPod) {
        self.stop_pod(pod);
    }

    fn leader_index(&self) -> Option<usize> {
        let lease = self.api.get(
            "coordination.k8s.io/v1",
            "Lease",
            "kube-system",
            "sidelane-controller",
        )?;
        let holder = lease["spec"]["holderIdentity"].as_str()?;
        holder
            .strip_prefix("sidelane-controller-")
            .and_then(|n| n.parse::<usize>().ok())
            .map(|n| n - 1)
    }

    fn kill_leader(&mut self) -> anyhow::Result<()> {
        let i = self.leader_index().unwrap_or(0);
        let (process, spawn) = &mut self.controllers[i];
        let _ = process.child_mut().kill();
        let _ = process.child_mut().wait();
        *process = spawn.start()?;
        Ok(())
    }

    fn restart_agent(&mut self, node: usize) -> anyhow::Result<()> {
        let n = &mut self.nodes[node];
        let _ = n.agent.child_mut().kill();
        let _ = n.agent.child_mut().wait();
        n.agent = n.agent_spawn.start()?;
        let socket = n.run_dir.join("kube-ovn-daemon.sock");
        let start = Instant::now();
        // The new agent serves once it has taken back every attachment.
        loop {
            if std::os::unix::net::UnixStream::connect(&socket).is_ok()
                && start.elapsed() > Duration::from_millis(100)
            {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(30) {
                anyhow::bail!("{}'s agent did not serve again within 30 s", n.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Restarts node1's agent while a TCP flow runs between two fast-pathed pods there;
    /// `Ok(false)` when the flow broke.
    fn restart_agent_under_flow(&mut self, a: &LabPod, b: &LabPod) -> anyhow::Result<bool> {
        let server_ip = b.attachments[0].ips[0].clone();
        std::thread::scope(|scope| {
            let flow = scope.spawn(|| {
                iperf::measure(
                    &b.ns,
                    &server_ip,
                    &a.ns,
                    &IperfSpec::tcp(Duration::from_secs(4)).interval(Duration::from_millis(500)),
                )
            });
            std::thread::sleep(Duration::from_millis(1200));
            self.restart_agent(0)?;
            let report = flow
                .join()
                .map_err(|_| anyhow::anyhow!("the flow's thread panicked"))?;
            Ok(match report {
                // Broken: an interval in which nothing arrived.
                Ok(r) => r
                    .receiver_intervals
                    .iter()
                    .all(|i| i.bytes > 0 || i.end - i.start < 0.4),
                Err(_) => false,
            })
        })
    }

    fn restart_northbound(&mut self) -> anyhow::Result<()> {
        self.central.nb.kill();
        std::thread::sleep(Duration::from_millis(300));
        self.central.nb.start()
    }

    fn delete_lsp_by_hand(&self, pod: &LabPod) {
        let _ = self.central.nbctl(&[
            "--if-exists",
            "lsp-del",
            &format!("{}.default.{OVN_PROVIDER}", pod.name),
        ]);
    }

    fn delete_veth_by_hand(&self, pod: &LabPod) {
        let host = sidelane_agent::link::veth_name(&container_id(&pod.name), "net1", 'h');
        if let Ok(host) = host {
            let _ = self.nodes[pod.node]
                .chassis
                .ns
                .exec(&["ip", "link", "del", &host]);
        }
    }

    /// Runs the churn and the audits.
    pub fn chaos(&mut self, pods: usize) -> anyhow::Result<ChaosReport> {
        let start = Instant::now();
        let mut report = ChaosReport::default();
        self.chaos_setup();
        // Two long-lived pods on node1, on one switch: the flow across agent restarts.
        let flow_a = self.create_pod("flow-a", 1, 0)?;
        let flow_b = self.create_pod("flow-b", 2, 0)?;
        anyhow::ensure!(
            !flow_a.attachments.is_empty() && !flow_b.attachments.is_empty(),
            "the flow pods were not attached: {:?}",
            self.checks.iter().filter(|c| !c.ok).collect::<Vec<_>>()
        );
        let mut live: Vec<LabPod> = Vec::new();
        let fault_every = 15;
        let mut fault_turn = 0usize;
        for i in 0..pods {
            check_stop()?;
            let name = format!("churn-{i}");
            let node = i % 2;
            let failed_before = self.checks.iter().filter(|c| !c.ok).count();
            match self.create_pod(&name, i, node) {
                Ok(p) => live.push(p),
                Err(e) => report.problems.push(format!("{name}: {e:#}")),
            }
            let failed_after = self.checks.iter().filter(|c| !c.ok).count();
            report.add_failures += failed_after - failed_before;
            report.pods_churned += 1;
            // Keep 20 to 30 pods alive: delete the oldest ones in turn.
            if live.len() > 30 {
                for _ in 0..10 {
                    let p = live.remove(0);
                    self.remove_pod(&p);
                }
            }
            if (i + 1) % fault_every == 0 {
                let kind = FAULTS[fault_turn % FAULTS.len()];
                fault_turn += 1;
                let victim = live.last();
                match kind {
                    "leader_killed" => self.kill_leader()?,
                    "agent_restarted" => {
                        // node1 under a running flow, node2 plain, in turn.
                        if (fault_turn / FAULTS.len()).is_multiple_of(2) {
                            report.flows_checked += 1;
                            if !self.restart_agent_under_flow(&flow_a, &flow_b)? {
                                report.flows_broken_by_agent_restart += 1;
                            }
                        } else {
                            self.restart_agent(1)?;
                        }
                    }
                    "northbound_restarted" => self.restart_northbound()?,
                    "lsp_deleted_by_hand" => {
                        if let Some(v) = victim {
                            self.delete_lsp_by_hand(v);
                        }
                    }
                    _ => {
                        if let Some(v) = victim {
                            self.delete_veth_by_hand(v);
                        }
                    }
                }
                *report.faults.entry(kind).or_default() += 1;
                eprintln!(
                    "    {} pods churned, {} faults (last: {kind})",
                    report.pods_churned,
                    report.faults_injected()
                );
            }
        }
        // The survivors and the flow pods, audited once the cluster has settled.
        let mut everyone: Vec<&LabPod> = live.iter().collect();
        everyone.push(&flow_a);
        everyone.push(&flow_b);
        self.audit_until_settled(&everyone, &mut report, "with the survivors running");
        for p in live.drain(..).chain([flow_a, flow_b]) {
            self.remove_pod(&p);
        }
        self.audit_until_settled(&[], &mut report, "after every pod is gone");
        report.seconds = start.elapsed().as_secs_f64();
        Ok(report)
    }

    /// Audits until nothing is off, or for 90 s; the last findings go into the report.
    fn audit_until_settled(&self, live: &[&LabPod], report: &mut ChaosReport, when: &str) {
        let start = Instant::now();
        loop {
            let found = self.audit(live);
            let clean = found.duplicates == 0
                && found.leaked.values().all(|n| *n == 0)
                && found.missing.values().all(|n| *n == 0);
            if clean || start.elapsed() > Duration::from_secs(90) {
                report.duplicates += found.duplicates;
                for (k, v) in found.leaked {
                    *report.leaked.entry(k).or_default() += v;
                }
                for (k, v) in found.missing {
                    *report.missing.entry(k).or_default() += v;
                }
                report
                    .problems
                    .extend(found.problems.into_iter().map(|p| format!("{when}: {p}")));
                eprintln!(
                    "    audit {when}: {} after {:.1} s",
                    if clean { "clean" } else { "NOT clean" },
                    start.elapsed().as_secs_f64()
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    #[expect(
        clippy::too_many_lines,
        reason = "one audit, one kind of leftover after another"
    )]
    fn audit(&self, live: &[&LabPod]) -> Audit {
        let mut a = Audit::default();
        // Addresses: one per attachment, none twice.
        let mut held: BTreeMap<String, String> = BTreeMap::new();
        for pod in live {
            let Some(obj) = self.api.get("v1", "Pod", "default", &pod.name) else {
                a.problems
                    .push(format!("{} is missing from the API", pod.name));
                continue;
            };
            let ann = &obj["metadata"]["annotations"];
            for p in [OVN_PROVIDER, IPAM_PROVIDER] {
                let ip = ann[format!("{p}.kubernetes.io/ip_address")]
                    .as_str()
                    .unwrap_or_default();
                if ip.is_empty() {
                    *a.missing.entry("allocations").or_default() += 1;
                    continue;
                }
                if let Some(other) = held.insert(format!("{p} {ip}"), pod.name.clone()) {
                    a.duplicates += 1;
                    a.problems
                        .push(format!("{ip} ({p}) is held by {} and {other}", pod.name));
                }
            }
        }
        // IP resources.
        let expected_ips: BTreeSet<String> = live
            .iter()
            .flat_map(|p| {
                [OVN_PROVIDER, IPAM_PROVIDER].map(|prov| format!("{}.default.{prov}", p.name))
            })
            .collect();
        let ips: BTreeSet<String> = self
            .api
            .list("kubeovn.io/v1", "IP", None)
            .iter()
            .filter_map(|ip| ip["metadata"]["name"].as_str().map(str::to_owned))
            .filter(|n| n.ends_with(OVN_PROVIDER) || n.ends_with(IPAM_PROVIDER))
            .collect();
        let mut diff = |kind: &'static str, have: &BTreeSet<String>, want: &BTreeSet<String>| {
            let leaked: Vec<&String> = have.difference(want).collect();
            let missing: Vec<&String> = want.difference(have).collect();
            let (k, l, m, what) = (
                kind,
                leaked.len(),
                missing.len(),
                format!(
                    "{kind}: {} leaked (e.g. {:?}), {} missing (e.g. {:?})",
                    leaked.len(),
                    leaked.iter().take(3).collect::<Vec<_>>(),
                    missing.len(),
                    missing.iter().take(3).collect::<Vec<_>>()
                ),
            );
            if l > 0 || m > 0 {
                a.problems.push(what);
            }
            *a.leaked.entry(k).or_default() += l;
            *a.missing.entry(k).or_default() += m;
        };
        diff("ips", &ips, &expected_ips);
        // Logical_Switch_Ports of attachments (not the router's).
        let expected_lsps: BTreeSet<String> = live
            .iter()
            .map(|p| format!("{}.default.{OVN_PROVIDER}", p.name))
            .collect();
        let lsps: BTreeSet<String> = self
            .central
            .nbctl(&["--bare", "--columns=name", "list", "Logical_Switch_Port"])
            .unwrap_or_default()
            .lines()
            .map(str::trim)
            .filter(|l| l.ends_with(OVN_PROVIDER))
            .map(str::to_owned)
            .collect();
        diff("lsps", &lsps, &expected_lsps);
        // Per node: host veths, fast-path endpoints, QoS pins, agent records.
        for (i, n) in self.nodes.iter().enumerate() {
            let on_node: Vec<&&LabPod> = live.iter().filter(|p| p.node == i).collect();
            let expected_veths: BTreeSet<String> = on_node
                .iter()
                .filter_map(|p| {
                    sidelane_agent::link::veth_name(&container_id(&p.name), "net1", 'h').ok()
                })
                .collect();
            let veths: BTreeSet<String> = n
                .chassis
                .ns
                .exec(&["ip", "-o", "link", "show"])
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.split(": ").nth(1))
                .map(|name| name.split('@').next().unwrap_or(name).to_owned())
                .filter(|name| name.ends_with("_net1_h"))
                .collect();
            // A veth deleted by hand is gone with its pod's interface: only leftovers count.
            let leaked_veths: BTreeSet<String> =
                veths.difference(&expected_veths).cloned().collect();
            *a.leaked.entry("veths").or_default() += leaked_veths.len();
            if !leaked_veths.is_empty() {
                a.problems
                    .push(format!("{}: veths without a pod: {leaked_veths:?}", n.name));
            }
            let pin = n.pins.path().join("fastpath/SL_FP_ENDPOINTS");
            let Some(endpoints) = map_entries(&pin) else {
                a.problems
                    .push(format!("{}: cannot read {}", n.name, pin.display()));
                *a.missing.entry("map_reads").or_default() += 1;
                continue;
            };
            // One endpoint per live OVN attachment whose interface still exists.
            let want_endpoints = on_node
                .iter()
                .filter(|p| {
                    sidelane_agent::link::veth_name(&container_id(&p.name), "net1", 'h')
                        .is_ok_and(|v| veths.contains(&v))
                })
                .count();
            if endpoints > want_endpoints {
                *a.leaked.entry("map_entries").or_default() += endpoints - want_endpoints;
                a.problems.push(format!(
                    "{}: {endpoints} fast-path endpoints for {want_endpoints} attachments",
                    n.name
                ));
            }
            let pins = std::fs::read_dir(n.pins.path().join("qos"))
                .map_or(0, |d| d.filter_map(Result::ok).count());
            let want_pins = on_node
                .iter()
                .filter(|p| p.annotations.contains_key("ovn.kubernetes.io/ingress_rate"))
                .count()
                * 2;
            if pins > want_pins {
                *a.leaked.entry("pins").or_default() += pins - want_pins;
                a.problems.push(format!(
                    "{}: {pins} QoS pins for {want_pins} limited attachments",
                    n.name
                ));
            }
            let records = std::fs::read_dir(n.node_dir.join("records")).map_or(0, |d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                    .count()
            });
            let want_records = on_node.len() * 2;
            if records > want_records {
                *a.leaked.entry("records").or_default() += records - want_records;
                a.problems.push(format!(
                    "{}: {records} attachment records for {want_records} attachments",
                    n.name
                ));
            }
        }
        a
    }
}

/// Entries of a pinned hash map (`bpftool map dump`); `None` when it cannot be read.
fn map_entries(pin: &std::path::Path) -> Option<usize> {
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(pin)
        .output()
        .ok()?;
    serde_json::from_slice::<Value>(&out.stdout)
        .ok()
        .and_then(|v| v.as_array().map(Vec::len))
}

/// One audit's findings.
#[derive(Debug, Default)]
struct Audit {
    duplicates: usize,
    leaked: BTreeMap<&'static str, usize>,
    missing: BTreeMap<&'static str, usize>,
    problems: Vec<String>,
}

/// Runs the churn in a fresh lab and writes nothing; the caller reports.
///
/// # Errors
/// When the lab cannot start or a fault cannot be injected.
pub fn run(pods: usize) -> anyhow::Result<ChaosReport> {
    let mut lab = Lab::start().context("starting the lab rig")?;
    lab.chaos(pods)
}
