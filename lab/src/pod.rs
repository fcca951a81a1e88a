//! A lab pod as its node set it up: found through the scheduler's binding and the node's
//! kubelet (its running sandbox on the real node, the stand-in's record on the other), read
//! back from Multus' `network-status`, the controller's annotations and the pod's own network
//! namespace.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use sidelane_api::network_selection::{self, NetworkSelection};
use sidelane_tests::netns::NetNs;

use crate::{
    check::{CheckKind, Checks},
    interrupt,
    rig::{Kubelet, Rig},
};

/// The namespace the seeds' pods live in.
pub const NAMESPACE: &str = "default";

/// One pod of the lab.
pub struct Pod {
    pub name: String,
    /// Index of its node in the rig.
    pub node: usize,
    pub ns: Arc<NetNs>,
    /// The sandbox's container ID (the agent names host veths from it).
    pub container_id: String,
    /// Whether eth0 is the primary CNI's (not one of our networks).
    pub primary_standin: bool,
    /// The pod's annotations, as the API holds them after the ADD.
    pub annotations: BTreeMap<String, String>,
    pub attachments: Vec<Attachment>,
    /// What Multus reported, interface by interface.
    pub network_status: Vec<Reported>,
}

/// One attachment made.
#[derive(Clone, Debug)]
pub struct Attachment {
    pub nad: String,
    pub ifname: String,
    pub ips: Vec<String>,
    /// The logical switch (the Subnet) the controller chose.
    pub switch: String,
    /// `ovn` or the plugin name.
    pub plugin: String,
    pub provider: String,
}

/// One interface of Multus' `network-status`.
#[derive(Clone, Debug)]
pub struct Reported {
    pub ifname: String,
    pub ips: Vec<String>,
    /// The network's name (`default/attachnet`, or the primary's).
    pub network: String,
}

impl Pod {
    /// The annotation `<provider>.kubernetes.io/<key>` of attachment `a`.
    pub fn key(&self, a: &Attachment, key: &str) -> Option<&String> {
        self.annotations
            .get(&format!("{}.kubernetes.io/{key}", a.provider))
    }

    /// A rate limit of attachment `a` (its provider's key, or the default network's as the
    /// non-primary mode document writes it), in Mbit/s.
    pub fn rate(&self, a: &Attachment, key: &str) -> Option<&String> {
        self.key(a, key)
            .or_else(|| self.annotations.get(&format!("ovn.kubernetes.io/{key}")))
    }

    /// Whether one of the pod's routes annotations covers `ip`.
    pub fn routes_to(&self, ip: &str) -> bool {
        let Ok(ip) = ip.parse::<std::net::IpAddr>() else {
            return false;
        };
        self.annotations
            .iter()
            .filter(|(k, _)| k.ends_with(".kubernetes.io/routes"))
            .filter_map(|(_, v)| serde_json::from_str::<Vec<Value>>(v).ok())
            .flatten()
            .filter_map(|r| r["dst"].as_str()?.parse::<ipnet::IpNet>().ok())
            .any(|net| net.contains(&ip))
    }

    /// The host end of the pod's `net1` veth on its node.
    pub fn host_veth(&self) -> Option<String> {
        sidelane_agent::link::veth_name(
            &self.container_id,
            "net1",
            sidelane_agent::link::VethEnd::Host,
        )
        .ok()
    }

    /// The pod's IPv4 routing table, one route per line (what `ip route` shows).
    pub fn routes(&self) -> String {
        self.ns.exec(&["ip", "route"]).unwrap_or_default()
    }

    /// The pod's IPv4 and IPv6 routing tables, one route per line.
    pub fn routes_of_both_families(&self) -> String {
        let v6 = self.ns.exec(&["ip", "-6", "route"]).unwrap_or_default();
        format!("{}{v6}", self.routes())
    }
}

/// A pod's sandbox as its node set it up.
struct SetUp {
    /// The sandbox's container ID (`CNI_CONTAINERID`).
    container_id: String,
    netns: Arc<NetNs>,
    /// Multus' error when the network was not set up.
    result: Result<(), String>,
}

/// The sandbox of pod `name` on `kubelet`, once it is set up: on the real node, once the pod
/// runs (its containers started, so its network is up); a name for its network namespace
/// then, which the runtime mounted in the node's own mounts.
fn set_up_on(rig: &Rig, kubelet: &Kubelet, name: &str) -> anyhow::Result<Option<SetUp>> {
    match kubelet {
        Kubelet::Standin(standin) => Ok(standin.sandbox(NAMESPACE, name).map(|s| SetUp {
            container_id: s.container_id.clone(),
            netns: Arc::clone(&s.netns),
            result: s.result.as_ref().map(drop).map_err(Clone::clone),
        })),
        Kubelet::Real(node) => {
            let running = rig
                .api
                .get("v1", "Pod", NAMESPACE, name)
                .is_some_and(|p| p["status"]["phase"] == "Running");
            if !running {
                return Ok(None);
            }
            let Some((container_id, pid)) = node.sandbox_of(NAMESPACE, name)? else {
                return Ok(None);
            };
            Ok(Some(SetUp {
                container_id,
                netns: Arc::new(NetNs::of_process(pid)?),
                result: Ok(()),
            }))
        }
    }
}

/// Why pod `name` is not running: its last Warning event (a failed sandbox shows Multus'
/// error there).
fn why_not_running(rig: &Rig, name: &str) -> String {
    rig.api
        .plane()
        .kubectl_run(
            &[
                "get",
                "events",
                "-n",
                NAMESPACE,
                "--field-selector",
                &format!("involvedObject.name={name},type=Warning"),
                "-o",
                "jsonpath={.items[-1:].message}",
            ],
            None,
        )
        .unwrap_or_default()
}

/// Waits until the scheduler has bound pod `name` and its node has set it up; `(node, sandbox)`.
fn sandbox_of(rig: &Rig, name: &str) -> anyhow::Result<(usize, SetUp)> {
    let deadline = Instant::now() + Duration::from_mins(2);
    loop {
        interrupt::check()?;
        let bound = rig
            .api
            .get("v1", "Pod", NAMESPACE, name)
            .and_then(|p| p["spec"]["nodeName"].as_str().map(str::to_owned));
        let node = bound.and_then(|bound| rig.nodes.iter().position(|n| n.name == bound));
        if let Some(node) = node
            && let Some(set_up) = set_up_on(rig, &rig.nodes[node].kubelet, name)?
        {
            return Ok((node, set_up));
        }
        if Instant::now() > deadline {
            bail!(
                "pod {name} was not bound and set up through Multus within 2 minutes: {}",
                why_not_running(rig, name)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The pod as the API holds it once Multus has written `network-status` (right after the ADD),
/// or after 20 s.
fn after_network_status(rig: &Rig, name: &str, sandbox: &SetUp) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let obj = rig
            .api
            .get("v1", "Pod", NAMESPACE, name)
            .with_context(|| format!("pod {name} is gone"))?;
        if obj["metadata"]["annotations"]["k8s.v1.cni.cncf.io/network-status"].is_string()
            || sandbox.result.is_err()
            || Instant::now() > deadline
        {
            return Ok(obj);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip.as_str().map(str::to_owned))
        .collect()
}

/// The pod as its node set it up: every attachment its network selection asks for, checked
/// against what Multus reported in `network-status` and what the pod's namespace holds.
pub fn observe(rig: &Rig, name: &str, checks: &mut Checks) -> anyhow::Result<Pod> {
    let (node, sandbox) = sandbox_of(rig, name)?;
    if let Err(error) = &sandbox.result {
        checks.record(
            CheckKind::SetUp,
            format!("{name} set up through Multus"),
            false,
            error.clone(),
        );
    }
    let obj = after_network_status(rig, name, &sandbox)?;
    let annotations: BTreeMap<String, String> = obj["metadata"]["annotations"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    let network_status: Vec<Reported> = annotations
        .get("k8s.v1.cni.cncf.io/network-status")
        .and_then(|s| serde_json::from_str::<Vec<Value>>(s).ok())
        .unwrap_or_default()
        .iter()
        .map(|e| Reported {
            ifname: e["interface"].as_str().unwrap_or_default().to_owned(),
            ips: strings(&e["ips"]),
            network: e["name"].as_str().unwrap_or_default().to_owned(),
        })
        .collect();
    checks.record(
        CheckKind::NetworkStatus,
        format!("{name} has Multus' network-status"),
        !network_status.is_empty(),
        format!("{} interfaces", network_status.len()),
    );
    // `v1.multus-cni.io/default-network` names the pod's eth0: then ours is the primary.
    let default_net = annotations
        .get("v1.multus-cni.io/default-network")
        .and_then(|v| network_selection::parse(v, NAMESPACE).ok())
        .and_then(|mut v| (!v.is_empty()).then(|| v.remove(0)));
    let mut pod = Pod {
        name: name.to_owned(),
        node,
        ns: Arc::clone(&sandbox.netns),
        container_id: sandbox.container_id.clone(),
        primary_standin: default_net.is_none(),
        annotations,
        attachments: Vec::new(),
        network_status,
    };
    let selection = pod
        .annotations
        .get("k8s.v1.cni.cncf.io/networks")
        .cloned()
        .unwrap_or_default();
    let mut wanted: Vec<(NetworkSelection, String)> = default_net
        .into_iter()
        .map(|s| (s, "eth0".to_owned()))
        .collect();
    wanted.extend(
        network_selection::parse(&selection, NAMESPACE)?
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let ifname = s.interface_or_default(i + 1);
                (s, ifname)
            }),
    );
    for (sel, ifname) in wanted {
        let attachment = attachment(rig, &pod, &sel, &ifname)?;
        checks.record(
            CheckKind::Attached,
            format!("{name} {ifname} attached ({})", sel.name),
            !attachment.ips.is_empty(),
            attachment.ips.join(", "),
        );
        pod.attachments.push(attachment);
    }
    check_network_status(&pod, checks);
    Ok(pod)
}

/// The NAD's configuration, named as Multus names it.
fn nad_config(rig: &Rig, namespace: &str, name: &str) -> anyhow::Result<Value> {
    let nad = rig
        .api
        .get(
            "k8s.cni.cncf.io/v1",
            "NetworkAttachmentDefinition",
            namespace,
            name,
        )
        .with_context(|| format!("NAD {namespace}/{name} not found"))?;
    let mut cfg: Value = serde_json::from_str(nad["spec"]["config"].as_str().unwrap_or("{}"))
        .with_context(|| format!("NAD {namespace}/{name}: config is not JSON"))?;
    if cfg.get("name").is_none() {
        cfg["name"] = json!(name);
    }
    Ok(cfg)
}

/// One attachment as Multus reported it, with what the controller annotated.
fn attachment(
    rig: &Rig,
    pod: &Pod,
    sel: &NetworkSelection,
    ifname: &str,
) -> anyhow::Result<Attachment> {
    let cfg = nad_config(rig, &sel.namespace, &sel.name)?;
    let plugin = cfg["type"].as_str().unwrap_or_default().to_owned();
    let ovn = plugin == "kube-ovn";
    let provider = if ovn {
        format!("{}.{}.ovn", sel.name, sel.namespace)
    } else {
        format!("{}.{}", sel.name, sel.namespace)
    };
    let ips = pod
        .network_status
        .iter()
        .find(|e| e.ifname == ifname)
        .map(|e| e.ips.clone())
        .unwrap_or_default();
    let switch = pod
        .annotations
        .get(&format!("{provider}.kubernetes.io/logical_switch"))
        .cloned()
        .unwrap_or_default();
    Ok(Attachment {
        nad: sel.name.clone(),
        ifname: ifname.to_owned(),
        ips,
        switch,
        plugin: if ovn { "ovn".to_owned() } else { plugin },
        provider,
    })
}

/// Every interface Multus reported is in the pod with the addresses reported.
fn check_network_status(pod: &Pod, checks: &mut Checks) {
    for entry in &pod.network_status {
        let mut reported = entry.ips.clone();
        reported.sort();
        let mut present: Vec<String> = pod
            .ns
            .exec(&["ip", "-j", "addr", "show", "dev", &entry.ifname])
            .ok()
            .and_then(|out| serde_json::from_str::<Value>(&out).ok())
            .map(|v| {
                v[0]["addr_info"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|a| a["scope"] == "global")
                    .filter_map(|a| a["local"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        present.sort();
        checks.record(
            CheckKind::NetworkStatus,
            format!("{} network-status matches {}", pod.name, entry.ifname),
            !reported.is_empty() && reported == present,
            format!("reported {reported:?}, in the pod {present:?}"),
        );
    }
}

/// Deletes the pod and waits until its node has run DEL through Multus and confirmed.
pub fn remove(rig: &Rig, name: &str) {
    let _ = rig.api.delete_gracefully("v1", "Pod", NAMESPACE, name);
    let deadline = Instant::now() + Duration::from_mins(1);
    while rig.api.get("v1", "Pod", NAMESPACE, name).is_some() {
        if Instant::now() > deadline {
            eprintln!("    {name} was not torn down within a minute");
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
