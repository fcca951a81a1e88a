//! A gateway node says so on its Node: the label `sidelane.io/external-network=<network>`,
//! among whose nodes NAT gateways take their gateway chassis (docs/nat.md). Written once the
//! node carries the external network (`--external-nic`).

use k8s_openapi::api::core::v1::Node;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use serde_json::json;
use sidelane_api::annotations::EXTERNAL_NETWORK_LABEL;
use tracing::info;

/// Labels Node `node` as carrying `network`.
///
/// # Errors
/// The API server refuses or cannot be reached.
pub async fn announce(client: Client, node: &str, network: &str) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(client);
    let patch = json!({"metadata": {"labels": {EXTERNAL_NETWORK_LABEL: network}}});
    nodes
        .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    info!(node, network, "labelled this node a gateway node");
    Ok(())
}
