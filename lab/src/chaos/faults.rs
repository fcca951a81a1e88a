//! The faults the chaos run injects, each as a user's cluster would suffer it.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use sidelane_tests::iperf::{self, IperfSpec};

use crate::{
    pod::Pod,
    rig::{Kubelet, Rig},
};

/// The kinds of fault, injected in turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// The controller replica holding the Lease killed, then started again (its Deployment).
    LeaderKilled,
    /// An agent killed and started again (its DaemonSet): on node1 under a running flow
    /// between two fast-pathed pods, on node2 plain, in turn.
    AgentRestarted,
    /// The OVN Northbound server killed and started again.
    NorthboundRestarted,
    /// kube-apiserver killed and started again on the same etcd.
    ApiserverRestarted,
    /// etcd killed and started again on the same data.
    EtcdRestarted,
    /// Every connection to kube-apiserver cut (watches and requests in flight) at the proxy
    /// the controllers, agents and kubelet stand-ins reach it through.
    WatchesCut,
    /// A pod's Logical_Switch_Port deleted by hand.
    LspDeletedByHand,
    /// A pod's host veth deleted by hand.
    VethDeletedByHand,
    /// node1's kubelet killed and started again (as systemd restarts it).
    KubeletRestarted,
    /// node1's containerd killed and started again (the pods' shims and containers stay).
    ContainerdRestarted,
}

impl Fault {
    /// Every kind, in the order they are injected.
    pub const ALL: [Fault; 10] = [
        Fault::LeaderKilled,
        Fault::AgentRestarted,
        Fault::KubeletRestarted,
        Fault::ApiserverRestarted,
        Fault::NorthboundRestarted,
        Fault::ContainerdRestarted,
        Fault::WatchesCut,
        Fault::LspDeletedByHand,
        Fault::EtcdRestarted,
        Fault::VethDeletedByHand,
    ];

    /// The name in `chaos.json`.
    pub fn name(self) -> &'static str {
        match self {
            Fault::LeaderKilled => "leader_killed",
            Fault::AgentRestarted => "agent_restarted",
            Fault::NorthboundRestarted => "northbound_restarted",
            Fault::ApiserverRestarted => "apiserver_restarted",
            Fault::EtcdRestarted => "etcd_restarted",
            Fault::WatchesCut => "watches_cut",
            Fault::LspDeletedByHand => "lsp_deleted_by_hand",
            Fault::VethDeletedByHand => "veth_deleted_by_hand",
            Fault::KubeletRestarted => "kubelet_restarted",
            Fault::ContainerdRestarted => "containerd_restarted",
        }
    }
}

/// The provider of the chaos run's OVN network (the names of its `Logical_Switch_Port`s end with it).
pub const OVN_PROVIDER: &str = "chaosnet.default.ovn";

impl Rig {
    pub fn kill_leader(&mut self) -> anyhow::Result<()> {
        let i = self.leader().unwrap_or(0);
        let (process, spawn) = &mut self.controllers[i];
        let _ = process.child_mut().kill();
        let _ = process.child_mut().wait();
        *process = spawn.start()?;
        Ok(())
    }

    pub fn restart_agent(&mut self, node: usize) -> anyhow::Result<()> {
        let n = &mut self.nodes[node];
        let _ = n.agent.child_mut().kill();
        let _ = n.agent.child_mut().wait();
        // The old socket file stays behind: wait until the new agent answers on it.
        n.agent = n.agent_spawn.start()?;
        std::thread::sleep(Duration::from_millis(100));
        n.wait_for_agent()
    }

    /// Restarts node1's agent while a TCP flow runs between two fast-pathed pods there;
    /// `Ok(false)` when the flow broke.
    pub fn restart_agent_under_flow(&mut self, a: &Pod, b: &Pod) -> anyhow::Result<bool> {
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

    /// The real node's kubelet, killed and started again.
    pub fn restart_kubelet(&mut self) -> anyhow::Result<()> {
        let Kubelet::Real(node) = &mut self.nodes[0].kubelet else {
            bail!("node1 is not a real node");
        };
        node.restart_kubelet(self.api.plane())
    }

    /// The real node's containerd, killed and started again.
    pub fn restart_containerd(&mut self) -> anyhow::Result<()> {
        let Kubelet::Real(node) = &mut self.nodes[0].kubelet else {
            bail!("node1 is not a real node");
        };
        node.restart_containerd()
    }

    pub fn restart_northbound(&mut self) -> anyhow::Result<()> {
        self.central.nb.kill();
        std::thread::sleep(Duration::from_millis(300));
        self.central.nb.start()
    }

    pub fn restart_apiserver(&mut self) -> anyhow::Result<()> {
        self.api
            .plane_mut()
            .restart_apiserver()
            .context("restarting kube-apiserver")
    }

    /// Restarts etcd and waits until kube-apiserver is ready on it again (the lab's own
    /// requests must not be what fails next).
    pub fn restart_etcd(&mut self) -> anyhow::Result<()> {
        self.api
            .plane_mut()
            .restart_etcd()
            .context("restarting etcd")?;
        let start = Instant::now();
        while !self.api.plane().is_ready() {
            if start.elapsed() > Duration::from_mins(1) {
                bail!("kube-apiserver was not ready within a minute of etcd's restart");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }

    /// Cuts every connection to kube-apiserver; returns how many there were.
    pub fn cut_watches(&self) -> usize {
        self.api.plane().cut_connections()
    }

    pub fn delete_lsp_by_hand(&self, pod: &Pod) {
        let _ = self.central.nbctl(&[
            "--if-exists",
            "lsp-del",
            &format!("{}.default.{OVN_PROVIDER}", pod.name),
        ]);
    }

    pub fn delete_veth_by_hand(&self, pod: &Pod) {
        if let Some(host) = pod.host_veth() {
            let _ = self.nodes[pod.node]
                .chassis
                .ns
                .exec(&["ip", "link", "del", &host]);
        }
    }
}
