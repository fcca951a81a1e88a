//! Cluster objects the tests and benchmarks seed into the API double, written as a user writes
//! them (the seeds' shapes), so that the agent and controller read them as they would read a
//! real cluster's.

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
