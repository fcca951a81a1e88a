//! The IPAM burst end to end on the real control plane, Sidelane beside whereabouts in one run.
//!
//! For each IPAM in turn: a Deployment of N pods (its own namespace), each with one macvlan
//! attachment whose NAD names the IPAM (`"ipam": {"type": "kube-ovn"}`, Sidelane; or
//! `"ipam": {"type": "whereabouts"}`, the real whereabouts with its CRDs and its own RBAC). The
//! real kube-controller-manager makes the pods, the real kube-scheduler binds them to the node,
//! and the kubelet stand-in runs the real Multus, which delegates to macvlan, which calls the
//! IPAM. Measured per pod: from the moment the pod appears in the API (a watch of our own) to the
//! end of its CNI ADD. Then: total time, addresses held twice (read from Multus'
//! `network-status` of every pod), the API requests the IPAM made (kube-apiserver's
//! `apiserver_request_total` over the IPAM's own resources: `kubeovn.io` and pod patches for
//! Sidelane, `whereabouts.cni.cncf.io` for whereabouts, and Leases for both), the CPU seconds of
//! Sidelane's controller and agent, and the CPU seconds of every CNI process (Multus, macvlan,
//! the IPAM plugin) for both.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, runtime::watcher};
use serde::Serialize;
use serde_json::{Value, json};

use crate::{
    control_plane::{self, ControlPlane, SidelaneCluster},
    macvlan_node::{Binaries, MacvlanNode},
    ping::percentile,
    tools,
    usage::children_cpu,
};

/// One IPAM's figures: `real_burst[]` in `target/bench/ipam.json`.
#[derive(Debug, Clone, Serialize)]
pub struct RealBurst {
    /// `sidelane` or `whereabouts`.
    pub ipam: String,
    /// Pods in the Deployment.
    pub pods: usize,
    /// Median from the pod's appearance to its CNI ADD's success, ms.
    pub add_ms_p50: f64,
    /// 99th percentile of the same, ms.
    pub add_ms_p99: f64,
    /// Median of the CNI ADD itself (Multus, macvlan, the IPAM), without the wait for the
    /// node's turn, ms.
    pub cni_add_ms_p50: f64,
    /// 99th percentile of the same, ms.
    pub cni_add_ms_p99: f64,
    /// From the Deployment's creation to the last ADD, s.
    pub total_s: f64,
    /// Pods whose ADD failed every time it was tried.
    pub failed: usize,
    /// ADDs that failed and were tried again (as a kubelet retries a pod sandbox).
    pub retried: u32,
    /// Addresses held by two pods.
    pub duplicates: usize,
    /// Requests the IPAM made to kube-apiserver during the burst.
    pub api_requests: u64,
    /// CPU seconds of Sidelane's controller and agent during the burst (0 for whereabouts,
    /// which runs only inside the CNI calls).
    pub controller_cpu_s: f64,
    /// CPU seconds of every CNI process during the burst (Multus, macvlan, the IPAM plugin).
    pub cni_cpu_s: f64,
}

/// The node and the components both runs share.
struct Rig {
    cluster: SidelaneCluster,
    node: MacvlanNode,
    /// whereabouts' flat configuration file, as its DaemonSet writes it on each node.
    whereabouts_conf: PathBuf,
}

/// whereabouts' CRDs, and its ServiceAccount and ClusterRole as its DaemonSet installs them.
fn install_whereabouts(plane: &ControlPlane) -> anyhow::Result<PathBuf> {
    let crds = control_plane::whereabouts_crds()?;
    plane.apply(&crds).context("installing whereabouts' CRDs")?;
    plane.wait_established(&crds)?;
    let rbac = control_plane::documents_of_kinds(
        &tools::shared("whereabouts", "daemonset-install.yaml")?,
        control_plane::IDENTITY_KINDS,
    )?;
    plane.apply(&rbac).context("installing whereabouts' RBAC")?;
    plane.service_account_kubeconfig("kube-system", "whereabouts")
}

/// whereabouts' flat configuration file, as its DaemonSet writes it on each node.
fn write_whereabouts_conf(dir: &Path, kubeconfig: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join("whereabouts.conf");
    let conf = json!({
        "datastore": "kubernetes",
        "kubernetes": {"kubeconfig": kubeconfig},
        "log_level": "error",
    });
    std::fs::write(&path, conf.to_string()).context("writing whereabouts.conf")?;
    Ok(path)
}

impl Rig {
    fn start() -> anyhow::Result<Rig> {
        let cluster = SidelaneCluster::start_with(control_plane::Options { controllers: true })?;
        let whereabouts_kubeconfig = install_whereabouts(cluster.plane())?;
        let binaries = Binaries {
            agent: crate::process::binary_beside_me("sidelane-agent")?,
            controller: crate::process::binary_beside_me("sidelane-controller")?,
            cni: crate::process::binary_beside_me("sidelane-cni")?,
        };
        let node = MacvlanNode::start(
            &cluster,
            &binaries,
            4,
            &[(tools::binary("whereabouts")?, "whereabouts")],
        )?;
        let whereabouts_conf = write_whereabouts_conf(node.dir(), &whereabouts_kubeconfig)?;
        Ok(Rig {
            cluster,
            node,
            whereabouts_conf,
        })
    }

    /// The NAD (and, for Sidelane, the Subnet) of `ipam` in `namespace`.
    fn network(&self, ipam: &str, namespace: &str) -> Vec<Value> {
        let config = match ipam {
            "sidelane" => json!({
                "cniVersion": "0.3.1", "type": "macvlan", "master": "eth0", "mode": "bridge",
                "ipam": {"type": "kube-ovn", "server_socket": "/run/openvswitch/kube-ovn-daemon.sock",
                         "provider": format!("burst.{namespace}")}
            }),
            _ => json!({
                "cniVersion": "0.3.1", "type": "macvlan", "master": "eth0", "mode": "bridge",
                "ipam": {"type": "whereabouts", "range": "172.30.0.0/16",
                         "configuration_path": self.whereabouts_conf}
            }),
        };
        let mut docs = vec![json!({
            "apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": "burst", "namespace": namespace},
            "spec": {"config": config.to_string()}
        })];
        if ipam == "sidelane" {
            docs.push(json!({
                "apiVersion": "kubeovn.io/v1", "kind": "Subnet",
                "metadata": {"name": format!("burst-{namespace}")},
                "spec": {"protocol": "IPv4", "provider": format!("burst.{namespace}"),
                         "cidrBlock": "172.29.0.0/16", "namespaces": [namespace]}
            }));
        }
        docs
    }

    fn run(&mut self, ipam: &str, pods: usize) -> anyhow::Result<RealBurst> {
        let namespace = format!("burst-{ipam}");
        self.cluster
            .plane()
            .kubectl_run(&["create", "namespace", &namespace], None)?;
        self.cluster.apply(&self.network(ipam, &namespace));
        let seen = watch_appearances(&self.cluster, &namespace)?;
        let requests_before = ipam_requests(self.cluster.plane(), ipam)?;
        let cpu_before = (self.node.sidelane_cpu_seconds(), children_cpu());
        let started = Instant::now();
        self.cluster.apply(&[json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "burst", "namespace": namespace},
            "spec": {"replicas": pods, "selector": {"matchLabels": {"app": "burst"}},
                     "template": {"metadata": {"labels": {"app": "burst"},
                                               "annotations": {"k8s.v1.cni.cncf.io/networks": "burst"}},
                                  "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}
        })]);
        let deadline = started + Duration::from_secs(120 + 2 * pods as u64);
        let sandboxes = loop {
            let done: Vec<_> = self
                .node
                .kubelet
                .sandboxes()
                .into_iter()
                .filter(|s| s.pod.starts_with(&format!("{namespace}/")))
                .collect();
            if done.len() >= pods {
                break done;
            }
            if Instant::now() > deadline {
                bail!(
                    "{ipam}: {} of {pods} pods set up before the deadline",
                    done.len()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let last = sandboxes
            .iter()
            .map(|s| s.added_at)
            .max()
            .unwrap_or(started);
        let total_s = last.duration_since(started).as_secs_f64();
        let cpu_after = (self.node.sidelane_cpu_seconds(), children_cpu());
        let api_requests = ipam_requests(self.cluster.plane(), ipam)? - requests_before;
        let seen = seen.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let mut add_ms: Vec<f64> = sandboxes
            .iter()
            .filter(|s| s.result.is_ok())
            .filter_map(|s| {
                let appeared = seen.get(&s.pod)?;
                Some(
                    s.added_at
                        .saturating_duration_since(*appeared)
                        .as_secs_f64()
                        * 1e3,
                )
            })
            .collect();
        add_ms.sort_by(f64::total_cmp);
        let mut cni_ms: Vec<f64> = sandboxes
            .iter()
            .filter(|s| s.result.is_ok())
            .map(|s| s.added_at.duration_since(s.add_started).as_secs_f64() * 1e3)
            .collect();
        cni_ms.sort_by(f64::total_cmp);
        let failed = sandboxes.iter().filter(|s| s.result.is_err()).count();
        if let Some(error) = sandboxes.iter().find_map(|s| s.result.as_ref().err()) {
            eprintln!("{ipam}: {failed} ADDs failed, e.g. {error}");
        }
        let duplicates = duplicates(&self.cluster, &namespace);
        // Torn down before the next run (each pod through Multus' DEL), so that neither its
        // pods nor their teardown weigh on the next.
        if let Err(error) = self.cluster.plane().kubectl_run(
            &[
                "delete",
                "namespace",
                &namespace,
                "--wait=true",
                "--timeout=300s",
            ],
            None,
        ) {
            eprintln!("{ipam}: tearing down {namespace}: {error:#}");
        }
        Ok(RealBurst {
            ipam: ipam.to_owned(),
            pods,
            add_ms_p50: round(percentile(&add_ms, 50.0).unwrap_or(f64::NAN)),
            add_ms_p99: round(percentile(&add_ms, 99.0).unwrap_or(f64::NAN)),
            cni_add_ms_p50: round(percentile(&cni_ms, 50.0).unwrap_or(f64::NAN)),
            cni_add_ms_p99: round(percentile(&cni_ms, 99.0).unwrap_or(f64::NAN)),
            total_s: round(total_s),
            failed,
            retried: sandboxes.iter().map(|s| s.attempts - 1).sum(),
            duplicates,
            api_requests,
            controller_cpu_s: round(cpu_after.0 - cpu_before.0),
            cni_cpu_s: round(cpu_after.1 - cpu_before.1),
        })
    }
}

fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Records when each pod of `namespace` first appears in the API.
fn watch_appearances(
    cluster: &SidelaneCluster,
    namespace: &str,
) -> anyhow::Result<Arc<Mutex<HashMap<String, Instant>>>> {
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let pods: Api<Pod> = Api::namespaced(cluster.client(), namespace);
    let record = Arc::clone(&seen);
    let namespace = namespace.to_owned();
    std::thread::Builder::new()
        .name("burst-watch".to_owned())
        .spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let events = watcher(pods, watcher::Config::default());
                futures::pin_mut!(events);
                while let Some(event) = events.next().await {
                    if let Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) = event
                        && let Some(name) = pod.metadata.name
                    {
                        record
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .entry(format!("{namespace}/{name}"))
                            .or_insert_with(Instant::now);
                    }
                }
            });
        })
        .context("starting the burst's watch")?;
    Ok(seen)
}

/// Requests to the IPAM's own resources so far.
fn ipam_requests(plane: &ControlPlane, ipam: &str) -> anyhow::Result<u64> {
    let leases = plane.request_count(&["resource=\"leases\""])?;
    Ok(leases
        + match ipam {
            "sidelane" => {
                plane.request_count(&["group=\"kubeovn.io\""])?
                    + plane.request_count(&[
                        "resource=\"pods\"",
                        "subresource=\"\"",
                        "verb=\"PATCH\"",
                    ])?
            }
            _ => plane.request_count(&["group=\"whereabouts.cni.cncf.io\""])?,
        })
}

/// net1 addresses held by more than one pod of `namespace`, from Multus' network-status.
fn duplicates(cluster: &SidelaneCluster, namespace: &str) -> usize {
    let mut holders: BTreeMap<String, usize> = BTreeMap::new();
    for pod in cluster.list("v1", "Pod", Some(namespace)) {
        let status: Value = pod["metadata"]["annotations"]["k8s.v1.cni.cncf.io/network-status"]
            .as_str()
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or(Value::Null);
        for entry in status.as_array().into_iter().flatten() {
            if entry["interface"] == "net1" {
                for ip in entry["ips"].as_array().into_iter().flatten() {
                    *holders
                        .entry(ip.as_str().unwrap_or_default().to_owned())
                        .or_default() += 1;
                }
            }
        }
    }
    holders.values().filter(|n| **n > 1).map(|n| n - 1).sum()
}

/// CPU seconds of this process' finished children (every CNI call and what it ran).
/// Both runs, Sidelane first, in one control plane and on one node.
pub fn run(pods: usize) -> anyhow::Result<Vec<RealBurst>> {
    let mut rig = Rig::start()?;
    eprintln!("burst rig ready in {}", rig.node.dir().display());
    let sidelane = rig.run("sidelane", pods)?;
    // Sidelane's controller stops: its Lease renewals are not whereabouts' requests.
    rig.node.stop_controller();
    let whereabouts = rig.run("whereabouts", pods)?;
    Ok(vec![sidelane, whereabouts])
}

/// The table of both runs.
pub fn table(runs: &[RealBurst]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if runs.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "\nburst through Multus, one node setting up 4 sandboxes at once \
         (add: pod created to CNI ADD success; cni: the ADD itself):"
    );
    let _ = writeln!(
        out,
        "{:<12} {:>5} {:>10} {:>10} {:>10} {:>10} {:>8} {:>6} {:>7} {:>5} {:>9} {:>9} {:>9}",
        "ipam",
        "pods",
        "add_p50_ms",
        "add_p99_ms",
        "cni_p50_ms",
        "cni_p99_ms",
        "total_s",
        "failed",
        "retried",
        "dups",
        "api_reqs",
        "ctl_cpu_s",
        "cni_cpu_s"
    );
    for b in runs {
        let _ = writeln!(
            out,
            "{:<12} {:>5} {:>10.0} {:>10.0} {:>10.0} {:>10.0} {:>8.1} {:>6} {:>7} {:>5} {:>9} {:>9.2} {:>9.2}",
            b.ipam,
            b.pods,
            b.add_ms_p50,
            b.add_ms_p99,
            b.cni_add_ms_p50,
            b.cni_add_ms_p99,
            b.total_s,
            b.failed,
            b.retried,
            b.duplicates,
            b.api_requests,
            b.controller_cpu_s,
            b.cni_cpu_s
        );
    }
    out
}
