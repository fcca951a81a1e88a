//! CHECK: the attachment is one this node made, the allocation still stands, it agrees with the
//! runtime's `prevResult`, and (OVN-backed) the interface is as allocated.

use std::time::Duration;

use ipnet::IpNet;
use sidelane_api::{
    allocation::{self, Allocation},
    annotations::port_held,
    daemon::CniRequest,
};

use super::{
    AttachError, Attacher, QosPort,
    answer::{apply_selection_default_route, check_request},
    kind::{Attachment as _, Kind},
};
use crate::{
    pods::{Annotations, PodSource, Waited},
    subnets::SubnetSource,
};

impl<P: PodSource + SubnetSource, Q: QosPort> Attacher<P, Q> {
    /// CHECK.
    pub async fn check(&self, req: &CniRequest) -> Result<(), AttachError> {
        check_request(req)?;
        let _serialised = self.in_flight.lock(&req.container_id, &req.if_name).await;
        self.check_netns(req)?;
        let recorded = self
            .records
            .get(&req.container_id, &req.if_name)
            .map_err(|source| AttachError::Record {
                pod: req.pod_key(),
                ifname: req.if_name.clone(),
                source,
            })?;
        if recorded.is_none() {
            return Err(AttachError::UnknownAttachment {
                pod: req.pod_key(),
                ifname: req.if_name.clone(),
                container_id: req.container_id.clone(),
            });
        }
        let provider = req.provider_or_default().to_owned();
        let (prov, ifname) = (provider.clone(), req.if_name.clone());
        let waited = self
            .pods
            .wait_for(
                &req.pod_namespace,
                &req.pod_name,
                move |a| matches!(allocation::read(a, &prov, &ifname), Ok(Some(_))),
                Duration::ZERO,
            )
            .await?;
        let annotations = match waited {
            Waited::Ready(a) | Waited::TimedOut(Some(a)) => a,
            Waited::TimedOut(None) => Annotations::default(),
        };
        let mut alloc = match allocation::read(&annotations, &provider, &req.if_name) {
            Ok(Some(alloc)) => alloc,
            Ok(None) => {
                return Err(AttachError::NotAllocated {
                    pod: req.pod_key(),
                    provider,
                    timeout: Duration::ZERO,
                    missing: "the allocation".to_owned(),
                });
            }
            Err(source) => {
                return Err(AttachError::Annotation {
                    pod: req.pod_key(),
                    source,
                });
            }
        };
        if let Some(why) = port_held(&annotations, &alloc.prefix) {
            return Err(AttachError::PortHeld {
                pod: req.pod_key(),
                ifname: req.if_name.clone(),
                why,
            });
        }
        check_expected(req, &alloc)?;
        apply_selection_default_route(req, &provider, &annotations, &mut alloc)?;
        let differences = match Kind::of(req) {
            Kind::OvnVeth => self.ovn_veth().verify(req, &alloc, self.mtu).await?,
            Kind::IpamOnly => self.ipam_only().verify(req, &alloc, self.mtu).await?,
        };
        check_outcome(req, &differences)
    }
}

/// What the runtime's `prevResult` says (sent by our plugin) against the allocation; the error
/// names every difference. Nothing sent (Kube-OVN's plugin): nothing to compare.
fn check_expected(req: &CniRequest, alloc: &Allocation) -> Result<(), AttachError> {
    let Some(expected) = &req.expected else {
        return Ok(());
    };
    let mut differences = Vec::new();
    let have: std::collections::BTreeSet<String> = alloc
        .ips
        .iter()
        .map(|ip| ip.with_prefix().to_string())
        .collect();
    let want: std::collections::BTreeSet<String> = expected
        .ips
        .iter()
        .map(|ip| {
            ip.parse::<IpNet>()
                .map_or_else(|_| ip.clone(), |n| n.to_string())
        })
        .collect();
    if have != want {
        differences.push(format!(
            "prevResult has addresses {want:?}, the allocation {have:?}"
        ));
    }
    if let Some(mac) = &alloc.mac
        && !expected.mac.is_empty()
        && !expected.mac.eq_ignore_ascii_case(mac)
    {
        differences.push(format!(
            "prevResult has MAC {}, the allocation {mac}",
            expected.mac
        ));
    }
    check_outcome(req, &differences)
}

/// CHECK's answer: success, or every difference found.
fn check_outcome(req: &CniRequest, differences: &[String]) -> Result<(), AttachError> {
    if differences.is_empty() {
        Ok(())
    } else {
        Err(AttachError::CheckFailed {
            pod: req.pod_key(),
            ifname: req.if_name.clone(),
            differences: differences.join("; "),
        })
    }
}
