//! A real kubelet with containerd and runc runs a pod of the seeds' kind: the sandbox and the
//! container from the images setup builds, eth0 from the primary network through the real
//! Multus, and the seeds' debug commands (`kubectl exec … ip addr`, the network-status
//! annotation) work against it.

use std::time::Duration;

use serde_json::{Value, json};
use sidelane_tests::{
    cluster,
    control_plane::SidelaneCluster,
    macvlan_node::{Binaries, install_plugins},
    node_rig::NodeRig,
    privilege,
    real_node::RealNode,
    veth,
    wait::eventually,
};

#[test]
fn a_real_kubelet_runs_the_seeds_alpine_pod_through_multus_and_remakes_a_killed_sandbox_without_a_leak()
 {
    if !privilege::require_privileges(
        "a_real_kubelet_runs_the_seeds_alpine_pod_through_multus_and_remakes_a_killed_sandbox_without_a_leak",
    ) {
        return;
    }
    let api = SidelaneCluster::with_controllers();
    let binaries = Binaries::from_workspace();
    let cni_bin = tempfile::tempdir().expect("a plugin folder");
    install_plugins(cni_bin.path(), &binaries, &[]).expect("the CNI plugins");
    let node = RealNode::start(api.plane(), "real-a", cni_bin.path()).expect("a real node");
    // The seeds' pod, image and command as written: `alpine` (untagged, so pulled every
    // time) comes from the node's registry.
    api.apply(&[json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "shell", "namespace": "default"},
        "spec": {
            "nodeName": node.name(),
            "containers": [{
                "name": "c", "image": "alpine",
                "command": ["/bin/ash", "-c", "trap : TERM INT; sleep infinity & wait"],
            }],
        },
    })]);
    eventually("the pod Running", Duration::from_secs(90), || {
        api.get("v1", "Pod", "default", "shell")
            .filter(|p| p["status"]["phase"] == "Running")
    });
    let addr = api
        .plane()
        .exec_until(
            "shell",
            &["ip", "addr", "show", "eth0"],
            Duration::from_secs(30),
            |out| out.contains("inet 10.251.0."),
        )
        .unwrap_or_else(|e| panic!("{e:#}; kubelet: {}", node.tail("kubelet.log")));
    let pod = api.get("v1", "Pod", "default", "shell").expect("the pod");
    let status: Value = serde_json::from_str(
        pod["metadata"]["annotations"]["k8s.v1.cni.cncf.io/network-status"]
            .as_str()
            .unwrap_or("[]"),
    )
    .expect("network-status is JSON");
    assert_eq!(status[0]["interface"], "eth0", "{status}");
    assert!(
        status[0]["ips"][0]
            .as_str()
            .is_some_and(|ip| addr.contains(ip)),
        "{status} vs {addr}"
    );
    // As a user deletes it: the kubelet stops the containers, runs CNI DEL and confirms.
    // The sandbox dies (its pause process killed): the kubelet makes a new one, the runtime
    // runs CNI DEL for the old (its namespace already gone) and ADD for the new; host-local
    // holds one address, not two.
    node.remake_sandbox().expect("a new sandbox");
    eventually("the pod Running again", Duration::from_secs(90), || {
        api.get("v1", "Pod", "default", "shell")
            .filter(|p| p["status"]["phase"] == "Running")
            .filter(|p| p["status"]["podIP"].is_string())
    });
    let leases = eventually("one primary address", Duration::from_secs(30), || {
        Some(node.primary_leases()).filter(|l| l.len() == 1)
    });
    // The container of the new sandbox starts a moment after the sandbox: until then exec
    // finds no container, or the phase still reads Running from before.
    api.plane()
        .exec_until(
            "shell",
            &["ip", "addr", "show", "eth0"],
            Duration::from_mins(1),
            |out| out.contains(&format!("inet {}/", leases[0])),
        )
        .unwrap_or_else(|e| panic!("{e:#}; kubelet: {}", node.tail("kubelet.log")));
    api.delete_gracefully("v1", "Pod", "default", "shell")
        .expect("deleting the pod");
    eventually("the pod gone", Duration::from_mins(1), || {
        api.get("v1", "Pod", "default", "shell")
            .is_none()
            .then_some(())
    });
}

/// Real OVN, the controller and an agent with the fast path (the node rig), and a real node on
/// the rig's chassis running the pod `web` with the attachnet seed's NAD (its socket the rig's
/// agent's) and a rate limit (so it has QoS pins).
struct OvnPod {
    rig: NodeRig,
    node: RealNode,
    _cni_bin: tempfile::TempDir,
    /// `web`'s allocated address on net1.
    ip: String,
}

/// What a node holds for its attachments.
#[derive(Debug, PartialEq, Eq)]
struct Held {
    /// Ports on `br-int`.
    ports: Vec<String>,
    /// Host ends of pods' net1 veths.
    veths: Vec<String>,
    /// QoS pin folders (one per limited device).
    qos_pins: Vec<String>,
    /// Fast-path endpoint entries (one per address).
    endpoints: usize,
}

impl Held {
    fn nothing() -> Held {
        Held {
            ports: Vec::new(),
            veths: Vec::new(),
            qos_pins: Vec::new(),
            endpoints: 0,
        }
    }
}

impl OvnPod {
    fn start(node_name: &str) -> OvnPod {
        let rig = NodeRig::start(true);
        let mut docs = cluster::networks_of("attachnet.yaml");
        for doc in &mut docs {
            if doc["kind"] == "NetworkAttachmentDefinition" {
                let mut config: Value =
                    serde_json::from_str(doc["spec"]["config"].as_str().expect("the NAD's config"))
                        .expect("JSON");
                config["server_socket"] = json!(rig.socket_on(0));
                doc["spec"]["config"] = json!(config.to_string());
            }
        }
        rig.api.apply(&docs);
        let cni_bin = tempfile::tempdir().expect("a plugin folder");
        install_plugins(cni_bin.path(), &Binaries::from_workspace(), &[]).expect("the CNI plugins");
        let node = RealNode::start_in(
            rig.api.plane(),
            node_name,
            cni_bin.path(),
            Some(&rig.chassis().ns.path()),
        )
        .expect("a real node on the chassis");
        rig.api.apply(&[json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "default",
                         "annotations": {
                             "k8s.v1.cni.cncf.io/networks": "attachnet",
                             "attachnet.default.ovn.kubernetes.io/ingress_rate": "100",
                         }},
            "spec": {
                "nodeName": node.name(),
                "containers": [{
                    "name": "c", "image": "docker.io/library/alpine:edge",
                    "command": ["/bin/ash", "-c", "trap : TERM INT; sleep infinity & wait"],
                }],
            },
        })]);
        eventually("the pod Running", Duration::from_mins(2), || {
            rig.api
                .get("v1", "Pod", "default", "web")
                .filter(|p| p["status"]["phase"] == "Running")
        });
        let ip = allocation(&rig.api).expect("the allocation");
        OvnPod {
            rig,
            node,
            _cni_bin: cni_bin,
            ip,
        }
    }

    /// `ip addr show net1` inside `web`, once it shows the allocated address; the last answer
    /// and the node's logs if it never does.
    fn net1_shows_its_address(&self) -> String {
        self.rig
            .api
            .plane()
            .exec_until(
                "web",
                &["ip", "addr", "show", "net1"],
                Duration::from_mins(2),
                |out| out.contains(&format!("inet {}/", self.ip)),
            )
            .unwrap_or_else(|e| {
                panic!(
                    "net1 never showed {}: {e:#}\nkubelet: {}\ncontainerd: {}",
                    self.ip,
                    self.node.tail("kubelet.log"),
                    self.node.tail("containerd.log"),
                )
            })
    }

    /// `web`'s running sandbox.
    fn sandbox(&self) -> String {
        self.node
            .sandbox_of("default", "web")
            .expect("asking containerd")
            .expect("web's sandbox")
            .0
    }

    /// What the node holds for attachments now.
    fn held(&self) -> Held {
        let veths = veth::links_ending(&self.rig.chassis().ns, "_net1_h");
        let mut qos_pins: Vec<String> = std::fs::read_dir(self.rig.pins_on(0).join("qos"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        qos_pins.sort();
        let endpoints = self
            .rig
            .fastpath()
            .lock()
            .expect("the fast path's lock")
            .endpoints(sidelane_agent::dataplane::fastpath::Table::Switched)
            .len();
        Held {
            ports: self.ports(),
            veths,
            qos_pins,
            endpoints,
        }
    }

    /// Waits until the node holds one attachment, the one of `sandbox`: one port and one host
    /// veth named after it, its QoS pins, one fast-path endpoint (one address); what it holds.
    fn holds_only(&self, sandbox: &str) -> Held {
        let prefix = &sandbox[..8];
        let mut last = Held::nothing();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let held = self.held();
            let only = held.ports.len() == 1
                && held.ports[0].starts_with(prefix)
                && held.veths.len() == 1
                && held.veths[0].starts_with(prefix)
                && !held.qos_pins.is_empty()
                && held.endpoints == 1;
            if only {
                return held;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the node does not hold only {sandbox}'s attachment: {held:?} (before: {last:?})"
            );
            last = held;
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// The ports on the chassis' `br-int`.
    fn ports(&self) -> Vec<String> {
        self.rig
            .chassis()
            .vsctl(&["list-ports", "br-int"])
            .expect("br-int's ports")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Deletes `web` as a user does, and checks nothing is left on `br-int` or in the NB.
    fn delete_and_check_nothing_is_left(&self) {
        self.rig
            .api
            .delete_gracefully("v1", "Pod", "default", "web")
            .expect("deleting the pod");
        eventually("the pod gone", Duration::from_mins(1), || {
            self.rig
                .api
                .get("v1", "Pod", "default", "web")
                .is_none()
                .then_some(())
        });
        eventually("nothing held on the node", Duration::from_secs(30), || {
            (self.held() == Held::nothing()).then_some(())
        });
        eventually("no OVN port", Duration::from_secs(30), || {
            self.rig
                .central
                .nbctl(&[
                    "--bare",
                    "--columns=name",
                    "find",
                    "Logical_Switch_Port",
                    "type=\"\"",
                ])
                .ok()
                .filter(|out| !out.contains("web.default"))
        });
    }
}

fn allocation(api: &SidelaneCluster) -> Option<String> {
    api.get("v1", "Pod", "default", "web").and_then(|p| {
        p["metadata"]["annotations"]["attachnet.default.ovn.kubernetes.io/ip_address"]
            .as_str()
            .map(str::to_owned)
    })
}

fn ovn_ready(test: &str) -> bool {
    privilege::require_privileges(test) && sidelane_tests::ovn::require_installed(test)
}

#[test]
fn a_pods_whole_life_on_a_real_kubelet_moves_its_attachment_to_each_new_sandbox_and_leaves_nothing()
{
    if !ovn_ready(
        "a_pods_whole_life_on_a_real_kubelet_moves_its_attachment_to_each_new_sandbox_and_leaves_nothing",
    ) {
        return;
    }
    let pod = OvnPod::start("real-b");
    pod.net1_shows_its_address();
    let first = pod.sandbox();
    let before = pod.holds_only(&first);
    // A new sandbox: DEL of the old one (its namespace gone) and ADD of the new, same address;
    // the port, the veth, the QoS pins and the fast-path entry are the new sandbox's only.
    let second = pod.node.remake_sandbox().expect("a new sandbox");
    pod.net1_shows_its_address();
    assert_eq!(
        allocation(&pod.rig.api),
        Some(pod.ip.clone()),
        "the allocation stays"
    );
    let after = pod.holds_only(&second);
    assert!(
        after.qos_pins.iter().all(|p| !before.qos_pins.contains(p)),
        "the old sandbox's QoS pins are gone: {before:?} then {after:?}"
    );
    pod.delete_and_check_nothing_is_left();
}

#[test]
fn restarts_of_the_kubelet_containerd_and_the_agent_leave_a_running_pod_its_one_attachment() {
    if !ovn_ready(
        "restarts_of_the_kubelet_containerd_and_the_agent_leave_a_running_pod_its_one_attachment",
    ) {
        return;
    }
    let mut pod = OvnPod::start("real-c");
    pod.net1_shows_its_address();
    let sandbox = pod.sandbox();
    let before = pod.holds_only(&sandbox);
    pod.node
        .restart_kubelet(pod.rig.api.plane())
        .expect("restarting the kubelet");
    pod.node
        .restart_containerd()
        .expect("restarting containerd");
    pod.rig.stop_agent();
    pod.rig.start_agent();
    // The kubelet syncs the pod again (a CNI CHECK or STATUS at most, never a second ADD):
    // the same sandbox, the same attachment.
    pod.net1_shows_its_address();
    let still = pod.sandbox();
    assert_eq!(still, sandbox, "the sandbox survives the restarts");
    assert_eq!(pod.holds_only(&sandbox), before);
    assert_eq!(allocation(&pod.rig.api), Some(pod.ip.clone()));
    pod.delete_and_check_nothing_is_left();
}
