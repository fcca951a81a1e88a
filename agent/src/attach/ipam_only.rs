//! The IPAM-only attachment: another plugin (macvlan, ipvlan, ...) made the interface and calls
//! us for its addresses; the agent answers and puts the rate limits on that interface.

use std::{path::Path, sync::Arc};

use sidelane_api::{allocation::Allocation, daemon::CniRequest};

use super::{
    AttachError, QosPort,
    answer::{ipam_response, pod_device},
    blocking,
    kind::{Attachment, Creating, Made},
    undo::Undo,
};
use crate::{
    dataplane::DataplaneError, link::Links, netns::NetnsPolicy, records::AttachmentRecord,
};

/// An IPAM-only attachment, with its rate limits through `qos`.
pub(crate) struct IpamOnly<'a, Q> {
    pub(crate) qos: &'a Arc<Q>,
    pub(crate) links: &'a Arc<dyn Links>,
    pub(crate) netns_policy: &'a NetnsPolicy,
}

impl<Q: QosPort> Attachment for IpamOnly<'_, Q> {
    async fn create(&self, cx: &Creating<'_>, _undo: &mut Undo) -> Result<Made, AttachError> {
        Ok(Made {
            qos_target: pod_device(cx.req),
            response: ipam_response(cx.req, cx.alloc),
        })
    }

    /// Removes the limits of the interface inside the pod; when the namespace is already gone,
    /// sweeps the limits of every vanished interface instead.
    async fn remove(&self, req: &CniRequest) -> Vec<String> {
        let qos = Arc::clone(self.qos);
        // A path the policy refuses is never entered: treated as gone.
        let gone =
            req.net_ns.is_empty() || self.netns_policy.refusal(Path::new(&req.net_ns)).is_some();
        let target = pod_device(req);
        let ifname = target.ifname.clone();
        let result = blocking(move || {
            if gone {
                qos.sweep()
            } else {
                qos.detach(&target)
            }
        })
        .await;
        match result {
            Ok(()) | Err(DataplaneError::NoSuchInterface { .. } | DataplaneError::Netns(_)) => {
                Vec::new()
            }
            Err(e) => vec![format!("removing the limits of {ifname}: {e}")],
        }
    }

    /// The calling plugin checks its interface; the agent checks the allocation (in CHECK).
    async fn verify(
        &self,
        _req: &CniRequest,
        _alloc: &Allocation,
        _mtu: u32,
    ) -> Result<Vec<String>, AttachError> {
        Ok(Vec::new())
    }

    async fn in_place(&self, record: &AttachmentRecord) -> bool {
        let (links, record) = (Arc::clone(self.links), record.clone());
        blocking(move || {
            links.is_namespace(&record.netns) && links.exists(Some(&record.netns), &record.ifname)
        })
        .await
    }
}
