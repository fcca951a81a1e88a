//! STATUS (CNI 1.1.0): whether the agent can serve an ADD now. Not ready when the QoS pins'
//! bpffs is gone or the node's Open_vSwitch database does not answer; each reason is named.

use std::sync::Arc;

use super::{Attacher, QosPort, blocking};

/// What STATUS found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// An ADD can be served.
    Ready,
    /// It cannot; every reason.
    NotReady(Vec<String>),
}

impl<P, Q: QosPort> Attacher<P, Q> {
    /// STATUS.
    pub async fn status(&self) -> Readiness {
        let mut reasons = Vec::new();
        let qos = Arc::clone(&self.qos);
        if let Err(why) = blocking(move || qos.ready()).await {
            reasons.push(why);
        }
        if let Some(ovs) = &self.node.ovs
            && let Err(why) = ovs.ready().await
        {
            reasons.push(why);
        }
        if reasons.is_empty() {
            Readiness::Ready
        } else {
            Readiness::NotReady(reasons)
        }
    }
}
