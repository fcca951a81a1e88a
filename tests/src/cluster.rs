//! Cluster objects the tests and benchmarks create in the control plane, written as a user
//! writes them (the seeds' shapes).

use serde_json::{Value, json};

/// A `kubeovn.io/v1` Subnet serving `provider` over `cidr`, with `spec.mtu` when given.
pub fn subnet(name: &str, provider: &str, cidr: &str, mtu: Option<u32>) -> Value {
    let mut spec = json!({
        "protocol": "IPv4",
        "provider": provider,
        "cidrBlock": cidr,
    });
    if let Some(mtu) = mtu {
        spec["mtu"] = json!(mtu);
    }
    json!({
        "apiVersion": "kubeovn.io/v1",
        "kind": "Subnet",
        "metadata": {"name": name},
        "spec": spec,
    })
}

/// `deploy/examples/<file>`.
pub fn example_path(file: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/examples")
        .join(file)
}

/// The YAML documents of `deploy/examples/<file>`, as JSON.
///
/// # Panics
/// When the file cannot be read or parsed (a broken example is a failed test).
pub fn example(file: &str) -> Vec<Value> {
    let path = example_path(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// A pod in `default` on `node1` with these annotations.
pub fn pod(name: &str, annotations: &Value) -> Value {
    pod_on(name, "node1", annotations)
}

/// A pod in `default` bound to `node` with these annotations.
pub fn pod_on(name: &str, node: &str, annotations: &Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "annotations": annotations},
        "spec": {
            "containers": [{
                "name": "c", "image": "alpine",
                "command": ["/bin/ash", "-c", "trap : TERM INT; sleep infinity & wait"],
            }],
            "nodeName": node,
        }
    })
}

/// A pod's annotations: its network selection `networks` and `extra` besides.
pub fn selecting(networks: &str, extra: &Value) -> Value {
    let mut annotations = json!({"k8s.v1.cni.cncf.io/networks": networks});
    if let (Some(a), Some(e)) = (annotations.as_object_mut(), extra.as_object()) {
        a.extend(e.clone());
    }
    annotations
}

/// The NetworkAttachmentDefinitions and Subnets of `deploy/examples/<file>` (its pods and
/// workloads left out).
pub fn networks_of(file: &str) -> Vec<Value> {
    example(file)
        .into_iter()
        .filter(|d| d["kind"] == "NetworkAttachmentDefinition" || d["kind"] == "Subnet")
        .collect()
}

/// A `kube-ovn` NAD in `default` whose provider is `<name>.default.ovn`, as the seeds write it.
pub fn ovn_nad(name: &str) -> Value {
    json!({
        "apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"config": format!(
            r#"{{"cniVersion": "0.3.1", "type": "kube-ovn", "server_socket": "/run/openvswitch/kube-ovn-daemon.sock", "provider": "{name}.default.ovn"}}"#
        )}
    })
}

/// An OVN Subnet of `vpc` (empty: the default) for the NAD `nad` in `default`.
pub fn ovn_subnet(name: &str, nad: &str, cidr: &str, vpc: &str) -> Value {
    json!({
        "apiVersion": "kubeovn.io/v1", "kind": "Subnet",
        "metadata": {"name": name},
        "spec": {"protocol": "IPv4", "provider": format!("{nad}.default.ovn"), "cidrBlock": cidr, "vpc": vpc}
    })
}

/// How many pods `docs` make: each Pod, and each Deployment's or StatefulSet's replicas.
pub fn pods_made_by(docs: &[Value]) -> usize {
    docs.iter()
        .map(|doc| match doc["kind"].as_str() {
            Some("Pod") => 1,
            Some("Deployment" | "StatefulSet") => {
                usize::try_from(doc["spec"]["replicas"].as_u64().unwrap_or(1)).unwrap_or(1)
            }
            _ => 0,
        })
        .sum()
}
