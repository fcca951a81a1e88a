//! GC (CNI 1.1.0), recovery after a restart, and the periodic sweep: each goes through every
//! attachment, carries on past one that fails, and reports every failure together.

use std::sync::Arc;

use sidelane_api::daemon::{CniRequest, GcRequest};
use tracing::{info, warn};

use super::{AttachError, Attacher, QosPort, blocking, kind::Attachment as _, kind::Kind};
use crate::records::AttachmentRecord;

/// What GC or a restart found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Attachments kept (`<container_id>/<ifname>`).
    pub kept: Vec<String>,
    /// Attachments removed.
    pub removed: Vec<String>,
    /// Record files that could not be read (left in place), with the reason.
    pub unreadable: Vec<String>,
    /// Attachments whose teardown failed (their record stays for the next pass), with why.
    pub failed: Vec<String>,
}

impl SweepReport {
    /// The report, or an error naming every attachment whose teardown failed.
    pub fn into_result(self) -> Result<SweepReport, AttachError> {
        if self.failed.is_empty() {
            Ok(self)
        } else {
            Err(AttachError::Teardown {
                pod: "(several pods)".to_owned(),
                ifname: format!("{} interfaces", self.failed.len()),
                failures: self.failed.join("; "),
            })
        }
    }
}

impl<P, Q: QosPort> Attacher<P, Q> {
    /// GC: removes every recorded attachment of the request's provider that the runtime no
    /// longer lists, exactly as DEL would.
    pub async fn gc(&self, req: &GcRequest) -> Result<SweepReport, AttachError> {
        let provider = if req.provider.is_empty() {
            sidelane_api::annotations::DEFAULT_PROVIDER
        } else {
            req.provider.as_str()
        };
        let (records, unreadable) = self.list_records()?;
        let mut report = SweepReport {
            unreadable,
            ..SweepReport::default()
        };
        for record in records.iter().filter(|r| r.provider == provider) {
            let id = format!("{}/{}", record.container_id, record.ifname);
            let valid = req
                .valid_attachments
                .iter()
                .any(|v| v.container_id == record.container_id && v.if_name == record.ifname);
            if valid {
                report.kept.push(id);
                continue;
            }
            match self.remove_recorded(record).await {
                Ok(()) => {
                    info!(pod = %record.pod_key(), provider = %record.provider, ifname = %record.ifname,
                          container_id = %record.container_id, "collected an attachment the runtime no longer lists");
                    report.removed.push(id);
                }
                Err(e) => report.failed.push(format!("{id}: {e}")),
            }
        }
        report.into_result()
    }

    /// After a restart: takes back every recorded attachment whose interface is still in place
    /// and cleans up after those whose interface or namespace went away while the agent was
    /// down. Interfaces in place are not touched.
    pub async fn recover(&self) -> Result<SweepReport, AttachError> {
        let (records, unreadable) = self.list_records()?;
        let mut report = SweepReport {
            unreadable,
            ..SweepReport::default()
        };
        for record in &records {
            let id = format!("{}/{}", record.container_id, record.ifname);
            let in_place = match Kind::of_record(record) {
                Kind::OvnVeth => self.ovn_veth().in_place(record).await,
                Kind::IpamOnly => self.ipam_only().in_place(record).await,
            };
            if in_place {
                self.rejoin_groups(record).await;
                report.kept.push(id);
                continue;
            }
            match self.remove_recorded(record).await {
                Ok(()) => {
                    info!(pod = %record.pod_key(), provider = %record.provider, ifname = %record.ifname,
                          "removed an attachment whose interface went away while the agent was down");
                    report.removed.push(id);
                }
                Err(e) => {
                    warn!(pod = %record.pod_key(), ifname = %record.ifname, error = %e,
                          "removing an attachment whose interface went away; the next start tries again");
                    report.failed.push(format!("{id}: {e}"));
                }
            }
        }
        Ok(report)
    }

    /// Tells the fast path the security groups of a recorded attachment still in place (its
    /// entries survived the restart in pinned maps; its groups live only in the record). A
    /// failure leaves its isolated pairs on OVS, which is safe, and is logged.
    async fn rejoin_groups(&self, record: &AttachmentRecord) {
        let (Some(fastpath), crate::records::AttachmentKind::Ovn { host_ifname }) =
            (self.node.fastpath.clone(), &record.kind)
        else {
            return;
        };
        if record.security_groups.is_empty() {
            return;
        }
        let (host, ifname, groups) = (
            self.node.host_netns.clone(),
            host_ifname.clone(),
            record.security_groups.clone(),
        );
        if let Err(e) =
            blocking(move || fastpath.set_member_groups(host.as_deref(), &ifname, groups)).await
        {
            warn!(pod = %record.pod_key(), ifname = %record.ifname, error = %e,
                  "restoring the security groups of a fast-path attachment; its isolated traffic stays on OVS");
        }
    }

    /// Removes the fast-path entries and QoS programs of interfaces that vanished without a
    /// DEL (deleted by hand, or their namespace torn down): run periodically, so that nothing
    /// points at a device that is gone. Errors are logged; the next pass tries again.
    pub async fn sweep_vanished(&self) {
        if let Some(fastpath) = self.node.fastpath.clone() {
            let host = self.node.host_netns.clone();
            if let Err(e) = blocking(move || fastpath.sweep(host.as_deref())).await {
                warn!(error = %e, "sweeping fast-path entries of vanished interfaces");
            }
        }
        let qos = Arc::clone(&self.qos);
        if let Err(e) = blocking(move || qos.sweep()).await {
            warn!(error = %e, "sweeping QoS programs of vanished interfaces");
        }
    }

    /// Removes a recorded attachment as the DEL the runtime would send for it.
    async fn remove_recorded(&self, record: &AttachmentRecord) -> Result<(), AttachError> {
        let req = CniRequest {
            pod_name: record.pod_name.clone(),
            pod_namespace: record.pod_namespace.clone(),
            container_id: record.container_id.clone(),
            net_ns: record.netns.display().to_string(),
            if_name: record.ifname.clone(),
            provider: record.provider.clone(),
            ..CniRequest::default()
        };
        self.teardown(&req, Kind::of_record(record)).await
    }
}
