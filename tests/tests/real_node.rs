//! A real kubelet with containerd and runc runs a pod of the seeds' kind: the sandbox and the
//! container from the images setup builds, eth0 from the primary network through the real
//! Multus, and the seeds' debug commands (`kubectl exec … ip addr`, the network-status
//! annotation) work against it.

use std::time::Duration;

use serde_json::{Value, json};
use sidelane_tests::{
    control_plane::SidelaneCluster,
    macvlan_node::{Binaries, install_plugins},
    privilege,
    real_node::RealNode,
    tools,
    wait::eventually,
};

#[test]
fn a_real_kubelet_runs_a_busybox_pod_through_multus_and_remakes_a_killed_sandbox_without_a_leak() {
    if !privilege::require_privileges(
        "a_real_kubelet_runs_a_busybox_pod_through_multus_and_remakes_a_killed_sandbox_without_a_leak",
    ) {
        return;
    }
    let api = SidelaneCluster::with_controllers();
    let binaries = Binaries::from_workspace();
    let cni_bin = tempfile::tempdir().expect("a plugin folder");
    install_plugins(cni_bin.path(), &binaries, &[]).expect("the CNI plugins");
    let node = RealNode::start(api.plane(), "real-a", cni_bin.path()).expect("a real node");
    let busybox = tools::image("busybox").expect("the busybox image");
    api.apply(&[json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "shell", "namespace": "default"},
        "spec": {
            "nodeName": node.name(),
            "containers": [{"name": "c", "image": busybox, "command": ["sleep", "3600"]}],
        },
    })]);
    eventually("the pod Running", Duration::from_secs(90), || {
        api.get("v1", "Pod", "default", "shell")
            .filter(|p| p["status"]["phase"] == "Running")
    });
    let addr = api
        .plane()
        .kubectl_run(&["exec", "shell", "--", "ip", "addr", "show", "eth0"], None)
        .unwrap_or_else(|e| panic!("kubectl exec: {e:#}; kubelet: {}", node.tail("kubelet.log")));
    assert!(addr.contains("inet 10.251.0."), "{addr}");
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
    let sandboxes = node.sandboxes().expect("the sandboxes");
    assert_eq!(sandboxes.len(), 1, "{sandboxes:?}");
    let (old, pid) = sandboxes[0].clone();
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("running kill");
    assert!(killed.success(), "killing the pause process {pid}");
    eventually("a new sandbox", Duration::from_secs(90), || {
        node.sandboxes()
            .ok()
            .filter(|s| s.len() == 1 && s[0].0 != old)
    });
    eventually("the pod Running again", Duration::from_secs(90), || {
        api.get("v1", "Pod", "default", "shell")
            .filter(|p| p["status"]["phase"] == "Running")
            .filter(|p| p["status"]["podIP"].is_string())
    });
    let leases = eventually("one primary address", Duration::from_secs(30), || {
        Some(node.primary_leases()).filter(|l| l.len() == 1)
    });
    let again = api
        .plane()
        .kubectl_run(&["exec", "shell", "--", "ip", "addr", "show", "eth0"], None)
        .expect("kubectl exec after the new sandbox");
    assert!(
        again.contains(&format!("inet {}/", leases[0])),
        "{again} vs {leases:?}"
    );
    api.delete_gracefully("v1", "Pod", "default", "shell")
        .expect("deleting the pod");
    eventually("the pod gone", Duration::from_mins(1), || {
        api.get("v1", "Pod", "default", "shell")
            .is_none()
            .then_some(())
    });
}
