//! DEL: idempotent; removes whatever exists of the attachment (interface, OVS port, fast-path
//! entries, limits), trying every step whatever the others did, then its record. The record
//! stays when a step failed, so GC or the next start tries again.

use sidelane_api::daemon::CniRequest;

use super::{AttachError, Attacher, QosPort, kind::Attachment as _, kind::Kind};

impl<P, Q: QosPort> Attacher<P, Q> {
    /// DEL as the runtime sends it.
    pub async fn del(&self, req: &CniRequest) -> Result<(), AttachError> {
        self.teardown(req, Kind::of(req)).await
    }

    /// Removes the attachment `req` names, of kind `kind`; every failure is reported together.
    pub(crate) async fn teardown(&self, req: &CniRequest, kind: Kind) -> Result<(), AttachError> {
        let _serialised = self.in_flight.lock(&req.container_id, &req.if_name).await;
        let failures = match kind {
            Kind::OvnVeth => self.ovn_veth().remove(req).await,
            Kind::IpamOnly => self.ipam_only().remove(req).await,
        };
        if !failures.is_empty() {
            return Err(AttachError::Teardown {
                pod: req.pod_key(),
                ifname: req.if_name.clone(),
                failures: failures.join("; "),
            });
        }
        if !req.container_id.is_empty() && !req.if_name.is_empty() {
            self.records
                .remove(&req.container_id, &req.if_name)
                .map_err(|source| AttachError::Record {
                    pod: req.pod_key(),
                    ifname: req.if_name.clone(),
                    source,
                })?;
        }
        Ok(())
    }
}
