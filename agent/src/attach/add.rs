//! ADD: wait for the controller's allocation, make the attachment of the request's kind, put its
//! rate limits on, and record it; all or nothing, also when the call is abandoned half-way.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use sidelane_api::{
    allocation::{self, Allocation},
    annotations::{key, port_held},
    daemon::{CniRequest, CniResponse},
    qos::{Direction, QosSpec},
};
use tracing::info;

use super::{
    AttachError, Attacher, QosPort,
    answer::{apply_selection_default_route, check_request},
    kind::{Attachment as _, Creating, FastpathWish, Kind, Made},
    timing::AddStep,
    undo::Undo,
};
use crate::{
    pods::{Annotations, PodSource, Waited},
    records::AttachmentRecord,
    subnets::{self, SubnetInfo, SubnetSource},
};

impl<P: PodSource + SubnetSource, Q: QosPort> Attacher<P, Q> {
    /// The request's `net_ns` must be a pod namespace the policy allows.
    pub(crate) fn check_netns(&self, req: &CniRequest) -> Result<(), AttachError> {
        match self.netns_policy.refusal(Path::new(&req.net_ns)) {
            None => Ok(()),
            Some(reason) => Err(AttachError::BadRequest {
                field: "net_ns",
                value: req.net_ns.clone(),
                reason,
            }),
        }
    }

    /// ADD.
    pub async fn add(&self, req: &CniRequest) -> Result<CniResponse, AttachError> {
        let started = Instant::now();
        check_request(req)?;
        let lock = self.in_flight.lock(&req.container_id, &req.if_name).await;
        self.check_netns(req)?;
        let record_err = |source| AttachError::Record {
            pod: req.pod_key(),
            ifname: req.if_name.clone(),
            source,
        };
        if self
            .records
            .get(&req.container_id, &req.if_name)
            .map_err(record_err)?
            .is_some()
        {
            // The runtime must DEL before it adds again; what is in place stays as it is.
            return Err(AttachError::AlreadyAttached {
                pod: req.pod_key(),
                ifname: req.if_name.clone(),
                container_id: req.container_id.clone(),
            });
        }
        let kind = Kind::of(req);
        let provider = req.provider_or_default().to_owned();
        let ((subnets, serving), (annotations, alloc)) = self
            .times
            .timed(AddStep::Allocation, async {
                let serving = self.serving_subnet(req, &provider).await?;
                Ok::<_, AttachError>((serving, self.wait_for_allocation(req, &provider).await?))
            })
            .await?;
        if kind == Kind::OvnVeth
            && let Some(why) = port_held(&annotations, &alloc.prefix)
        {
            return Err(AttachError::PortHeld {
                pod: req.pod_key(),
                ifname: req.if_name.clone(),
                why,
            });
        }
        let spec = QosSpec::from_annotations(&annotations, &alloc.prefix).map_err(|source| {
            AttachError::Annotation {
                pod: req.pod_key(),
                source,
            }
        })?;
        let mtu = subnets::mtu_for(
            &subnets,
            alloc.logical_switch.as_deref(),
            serving.as_ref(),
            self.mtu,
        );
        let cx = Creating {
            req,
            alloc: &alloc,
            mtu,
            fastpath: fastpath_wish(&subnets, serving.as_ref(), &alloc, &annotations, &spec),
        };
        let mut undo = Undo::new(format!("{}/{}", req.pod_key(), req.if_name), lock);
        match self.attach(&cx, kind, &spec, &mut undo).await {
            Ok(response) => {
                undo.commit();
                self.times.served(started.elapsed());
                info!(pod = %req.pod_key(), provider = %provider, ifname = %req.if_name,
                      qos = %spec, ?kind, mtu, "attachment served");
                Ok(response)
            }
            Err(e) => {
                undo.rollback().await;
                Err(e)
            }
        }
    }

    /// ADD's changes, each registering its undo first: the record, the interface, the limits.
    async fn attach(
        &self,
        cx: &Creating<'_>,
        kind: Kind,
        spec: &QosSpec,
        undo: &mut Undo,
    ) -> Result<CniResponse, AttachError> {
        let req = cx.req;
        let record =
            record_of(req, kind, &cx.fastpath.groups).map_err(|source| AttachError::Link {
                pod: req.pod_key(),
                ifname: req.if_name.clone(),
                source: Box::new(source),
            })?;
        {
            let (records, cid, ifname) = (
                self.records.clone(),
                req.container_id.clone(),
                req.if_name.clone(),
            );
            undo.push_blocking("forgetting the record", move || {
                records
                    .remove(&cid, &ifname)
                    .map(drop)
                    .map_err(|e| e.to_string())
            });
        }
        let put = Instant::now();
        let recorded = self.records.put(&record);
        self.times.spent(AddStep::Record, put.elapsed());
        recorded.map_err(|source| AttachError::Record {
            pod: req.pod_key(),
            ifname: req.if_name.clone(),
            source,
        })?;
        let Made {
            qos_target,
            response,
        } = match kind {
            Kind::OvnVeth => self.ovn_veth().create(cx, undo).await?,
            Kind::IpamOnly => self.ipam_only().create(cx, undo).await?,
        };
        {
            let (qos, target) = (Arc::clone(&self.qos), qos_target.clone());
            undo.push_blocking(
                format!("removing the limits of {}", target.ifname),
                move || qos.detach(&target).map_err(|e| e.to_string()),
            );
        }
        let (qos, spec) = (Arc::clone(&self.qos), *spec);
        self.times
            .timed(
                AddStep::Qos,
                undo.blocking(move || qos.apply(&qos_target, &spec)),
            )
            .await
            .map_err(|source| AttachError::Qos {
                pod: req.pod_key(),
                ifname: req.if_name.clone(),
                source: Box::new(source),
            })?;
        Ok(response)
    }

    /// Waits (by watch) until the controller's allocation for the request's provider and
    /// interface is on the pod; a malformed one is an error at once.
    async fn wait_for_allocation(
        &self,
        req: &CniRequest,
        provider: &str,
    ) -> Result<(Annotations, Allocation), AttachError> {
        let (prov, ifname) = (provider.to_owned(), req.if_name.clone());
        let waited = self
            .pods
            .wait_for(
                &req.pod_namespace,
                &req.pod_name,
                move |a| matches!(allocation::read(a, &prov, &ifname), Ok(Some(_)) | Err(_)),
                self.timeout,
            )
            .await?;
        let not_allocated = |missing| AttachError::NotAllocated {
            pod: req.pod_key(),
            provider: provider.to_owned(),
            timeout: self.timeout,
            missing,
        };
        let annotations = match waited {
            Waited::Ready(a) => a,
            Waited::TimedOut(None) => {
                return Err(not_allocated("the pod does not exist".to_owned()));
            }
            Waited::TimedOut(Some(a)) => {
                let prefix = allocation::prefix(&a, provider, &req.if_name);
                return Err(not_allocated(format!(
                    "no {} = \"true\" with {}",
                    key(&prefix, "allocated"),
                    key(&prefix, "ip_address")
                )));
            }
        };
        let mut alloc = allocation::read(&annotations, provider, &req.if_name)
            .map_err(|source| AttachError::Annotation {
                pod: req.pod_key(),
                source,
            })?
            .ok_or_else(|| not_allocated("the allocation vanished".to_owned()))?;
        apply_selection_default_route(req, provider, &annotations, &mut alloc)?;
        Ok((annotations, alloc))
    }

    /// Kube-OVN's provider check: a provider other than `ovn` must be some Subnet's (the cache
    /// is asked first, then the API, so a Subnet created a moment ago counts). Returns every
    /// Subnet and the serving one.
    async fn serving_subnet(
        &self,
        req: &CniRequest,
        provider: &str,
    ) -> Result<(Vec<SubnetInfo>, Option<SubnetInfo>), AttachError> {
        let ifname = req.if_name.as_str();
        let mut all = self.pods.subnets(false).await?;
        let mut found = subnets::serving(&all, provider, ifname).map(Option::<&SubnetInfo>::cloned);
        if found == Some(None) {
            all = self.pods.subnets(true).await?;
            found = subnets::serving(&all, provider, ifname).map(Option::<&SubnetInfo>::cloned);
        }
        if found == Some(None) {
            // The seeds also attach through a Subnet of another provider (`ovn`) named by the
            // pod's `<provider>.kubernetes.io/logical_switch`: that Subnet serves it.
            let waited = self
                .pods
                .wait_for(&req.pod_namespace, &req.pod_name, |_| true, Duration::ZERO)
                .await?;
            if let Waited::Ready(a) | Waited::TimedOut(Some(a)) = waited {
                let prefix = allocation::prefix(&a, provider, ifname);
                let named = a.get(&key(&prefix, "logical_switch"));
                if let Some(s) = named.and_then(|ls| all.iter().find(|s| &s.name == ls)) {
                    found = Some(Some(s.clone()));
                }
            }
        }
        match found {
            Some(None) => Err(AttachError::ProviderNotBound {
                provider: provider.to_owned(),
            }),
            Some(serving) => Ok((all, serving)),
            None => Ok((all, None)),
        }
    }
}

/// Whether the attachment takes the fast path (its Subnet allows it), and the security groups
/// that decide which of its peers it reaches there.
fn fastpath_wish(
    subnets: &[SubnetInfo],
    serving: Option<&SubnetInfo>,
    alloc: &Allocation,
    annotations: &Annotations,
    spec: &QosSpec,
) -> FastpathWish {
    let switch = alloc
        .logical_switch
        .clone()
        .or_else(|| serving.map(|s| s.name.clone()))
        .unwrap_or_default();
    let subnet_allows = subnets
        .iter()
        .find(|s| s.name == switch)
        .is_none_or(|s| s.fastpath);
    FastpathWish {
        on: subnet_allows && !switch.is_empty(),
        groups: sidelane_api::security_group::membership(annotations, &alloc.prefix),
        switch,
        policed: spec.get(Direction::Ingress).rate_mbps > 0,
    }
}

/// What the agent records of an attachment it is about to make.
fn record_of(
    req: &CniRequest,
    kind: Kind,
    security_groups: &[String],
) -> Result<AttachmentRecord, crate::link::LinkError> {
    Ok(AttachmentRecord {
        container_id: req.container_id.clone(),
        ifname: req.if_name.clone(),
        netns: req.net_ns.clone().into(),
        pod_namespace: req.pod_namespace.clone(),
        pod_name: req.pod_name.clone(),
        provider: req.provider_or_default().to_owned(),
        kind: kind.recorded(&req.container_id, &req.if_name)?,
        security_groups: security_groups.to_vec(),
    })
}
