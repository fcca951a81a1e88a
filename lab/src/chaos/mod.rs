//! `cargo xtask chaos`: pod churn on the lab's rig while faults are injected, then an audit of
//! everything that could be lost or left behind.
//!
//! Pods with an OVN attachment (`chaosnet`) and an IPAM-only macvlan attachment (`chaosvlan`),
//! some with static addresses and some with a rate limit, come and go on both nodes, each set
//! up and torn down through the real Multus by its node's kubelet (node1's real, running the
//! pods' containers; node2's the stand-in). Every few pods one fault, in turn
//! ([`faults::Fault`]): the leading controller killed, an agent restarted (on node1 under a
//! running flow), node1's kubelet restarted, kube-apiserver restarted, the Northbound server
//! restarted, node1's containerd restarted, every connection to kube-apiserver cut, a
//! Logical_Switch_Port deleted by hand, etcd restarted, a host veth deleted by hand. Then, with the survivors running and again after
//! every pod is gone, the [`audit`].

pub mod audit;
pub mod faults;

use std::{collections::BTreeMap, time::Instant};

use anyhow::Context as _;
use serde_json::{Value, json};
use sidelane_tests::cluster;

use crate::{
    chaos::faults::{Fault, OVN_PROVIDER},
    check::Checks,
    interrupt,
    pod::{self, NAMESPACE, Pod},
    rig::Rig,
};

const OVN_NAD: &str = "chaosnet";
const IPAM_NAD: &str = "chaosvlan";
const IPAM_PROVIDER: &str = "chaosvlan.default";

/// A fault every this many pods.
const FAULT_EVERY: usize = 15;

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

    /// The JSON of `target/bench/chaos.json` (without the fuzzing figures, which
    /// `cargo xtask chaos` adds).
    pub fn to_json(&self) -> Value {
        let leaked = |k: &str| self.leaked.get(k).copied().unwrap_or(0);
        json!({
            "pods_churned": self.pods_churned,
            "faults_injected": self.faults_injected(),
            "faults": self.faults,
            "add_failures": self.add_failures,
            "duplicates": self.duplicates,
            "leaked": {
                "ips": leaked("ips"),
                "lsps": leaked("lsps"),
                "veths": leaked("veths"),
                "map_entries": leaked("map_entries"),
                "pins": leaked("pins"),
                "records": leaked("records"),
            },
            "missing": self.missing,
            "flows_checked": self.flows_checked,
            "flows_broken_by_agent_restart": self.flows_broken_by_agent_restart,
            "problems": self.problems,
            "seconds": self.seconds,
        })
    }
}

fn pod_doc(name: &str, i: usize, node: usize) -> Value {
    let mut annotations = json!({
        "k8s.v1.cni.cncf.io/networks": format!("{NAMESPACE}/{OVN_NAD}, {NAMESPACE}/{IPAM_NAD}"),
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

fn networks(rig: &Rig) {
    rig.api.apply(&[
        cluster::ovn_nad(OVN_NAD),
        cluster::ovn_subnet(OVN_NAD, OVN_NAD, "10.210.0.0/16", ""),
        json!({
            "apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": IPAM_NAD, "namespace": NAMESPACE},
            "spec": {"config": format!(
                r#"{{"cniVersion": "0.3.1", "type": "macvlan", "master": "eth0", "mode": "bridge", "ipam": {{"type": "kube-ovn", "server_socket": "/run/openvswitch/kube-ovn-daemon.sock", "provider": "{IPAM_PROVIDER}"}}}}"#
            )}
        }),
        cluster::subnet(IPAM_NAD, IPAM_PROVIDER, "10.220.0.0/16", None),
    ]);
}

/// Creates the pod on `node` and observes it as the lab does; failed checks count as failed
/// ADDs.
fn create_pod(
    rig: &Rig,
    name: &str,
    i: usize,
    node: usize,
    report: &mut ChaosReport,
) -> anyhow::Result<Pod> {
    rig.api.seed(pod_doc(name, i, node))?;
    let mut checks = Checks::default();
    let pod = pod::observe(rig, name, &mut checks)?;
    report.add_failures += checks.failed().count();
    Ok(pod)
}

/// Injects the `turn`th fault; `victim` is the newest live pod.
fn inject(
    rig: &mut Rig,
    turn: usize,
    victim: Option<&Pod>,
    flow: (&Pod, &Pod),
    report: &mut ChaosReport,
) -> anyhow::Result<Fault> {
    let fault = Fault::ALL[turn % Fault::ALL.len()];
    match fault {
        Fault::LeaderKilled => rig.kill_leader()?,
        // node1 under a running flow, node2 plain, in turn.
        Fault::AgentRestarted if (turn / Fault::ALL.len()).is_multiple_of(2) => {
            report.flows_checked += 1;
            if !rig.restart_agent_under_flow(flow.0, flow.1)? {
                report.flows_broken_by_agent_restart += 1;
            }
        }
        Fault::AgentRestarted => rig.restart_agent(1)?,
        Fault::KubeletRestarted => rig.restart_kubelet()?,
        Fault::ContainerdRestarted => rig.restart_containerd()?,
        Fault::NorthboundRestarted => rig.restart_northbound()?,
        Fault::ApiserverRestarted => rig.restart_apiserver()?,
        Fault::EtcdRestarted => rig.restart_etcd()?,
        Fault::WatchesCut => {
            let cut = rig.cut_watches();
            eprintln!("    cut {cut} connections to kube-apiserver");
        }
        Fault::LspDeletedByHand => {
            if let Some(v) = victim {
                rig.delete_lsp_by_hand(v);
            }
        }
        Fault::VethDeletedByHand => {
            if let Some(v) = victim {
                rig.delete_veth_by_hand(v);
            }
        }
    }
    *report.faults.entry(fault.name()).or_default() += 1;
    Ok(fault)
}

/// Runs the churn of `pods` pods and the audits on a rig of its own.
pub fn run(pods: usize) -> anyhow::Result<ChaosReport> {
    let mut rig = Rig::start().context("starting the lab's rig")?;
    let start = Instant::now();
    let mut report = ChaosReport::default();
    networks(&rig);
    // Two long-lived pods on node1, on one switch: the flow across agent restarts.
    let flow_a = create_pod(&rig, "flow-a", 1, 0, &mut report)?;
    let flow_b = create_pod(&rig, "flow-b", 2, 0, &mut report)?;
    anyhow::ensure!(
        report.add_failures == 0
            && !flow_a.attachments.is_empty()
            && !flow_b.attachments.is_empty(),
        "the flow pods were not attached"
    );
    let mut live: Vec<Pod> = Vec::new();
    let mut turn = 0usize;
    for i in 0..pods {
        interrupt::check()?;
        let name = format!("churn-{i}");
        match create_pod(&rig, &name, i, i % 2, &mut report) {
            Ok(p) => live.push(p),
            Err(e) => report.problems.push(format!("{name}: {e:#}")),
        }
        report.pods_churned += 1;
        // Keep 20 to 30 pods alive: delete the oldest ones in turn.
        if live.len() > 30 {
            for p in live.drain(..10) {
                pod::remove(&rig, &p.name);
            }
        }
        if (i + 1).is_multiple_of(FAULT_EVERY) {
            let fault = inject(&mut rig, turn, live.last(), (&flow_a, &flow_b), &mut report)?;
            turn += 1;
            eprintln!(
                "    {} pods churned, {} faults (last: {})",
                report.pods_churned,
                report.faults_injected(),
                fault.name()
            );
        }
    }
    // The survivors and the flow pods, audited once the cluster has settled.
    let mut everyone: Vec<&Pod> = live.iter().collect();
    everyone.extend([&flow_a, &flow_b]);
    audit::until_settled(&rig, &everyone, &mut report, "with the survivors running");
    for p in live.iter().chain([&flow_a, &flow_b]) {
        pod::remove(&rig, &p.name);
    }
    audit::until_settled(&rig, &[], &mut report, "after every pod is gone");
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}
