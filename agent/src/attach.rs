//! What the agent does for each CNI call, below the socket: wait for the controller's
//! allocation, answer with it, and put the attachment's rate limits on its interface.
//!
//! Today this serves IPAM-only attachments (`"ipam": {"type": "kube-ovn"}` under macvlan and
//! the like): the calling plugin has already created the interface in the pod's namespace when
//! it calls IPAM, so the agent attaches the QoS programs to it there. Beyond Kube-OVN, which
//! gives these attachments no QoS at all. OVN-backed attachments (`"type": "kube-ovn"`), whose
//! interface the agent itself creates, are refused with an error that says so until the link
//! layer lands.

use std::{path::PathBuf, sync::Arc, time::Duration};

use sidelane_api::{
    allocation::{self, Allocation},
    annotations::{AnnotationError, key},
    cni::PLUGIN_TYPES,
    daemon::{CniRequest, CniResponse, GcRequest, Protocol, ResponseIp},
    qos::QosSpec,
};
use thiserror::Error;
use tracing::info;

use crate::{
    dataplane::{
        DataplaneError,
        qos::{Placement, QosDataplane, QosTarget},
    },
    pods::{PodError, PodSource, Waited},
};

/// How long an ADD waits for the controller by default.
pub const DEFAULT_ALLOCATION_TIMEOUT: Duration = Duration::from_secs(30);

/// A CNI call the agent could not serve; [`AttachError::status`] is the HTTP status Kube-OVN
/// answers with.
#[derive(Debug, Error)]
pub enum AttachError {
    /// The request lacks something it must carry.
    #[error("bad request: {field} is {value:?}: {reason}")]
    BadRequest {
        /// The field.
        field: &'static str,
        /// Its value.
        value: String,
        /// Why it cannot be used.
        reason: &'static str,
    },
    /// The controller did not allocate in time.
    #[error(
        "no address allocated to pod {pod} provider {provider} within {timeout:?}: {missing}; \
         see the controller's logs"
    )]
    NotAllocated {
        /// `namespace/name`.
        pod: String,
        /// The provider.
        provider: String,
        /// How long the agent waited.
        timeout: Duration,
        /// What was missing.
        missing: String,
    },
    /// An annotation cannot be used.
    #[error("pod {pod}: {source}")]
    Annotation {
        /// `namespace/name`.
        pod: String,
        /// Which annotation and why.
        #[source]
        source: AnnotationError,
    },
    /// Reading the pod failed.
    #[error(transparent)]
    Pod(#[from] PodError),
    /// Attaching the rate limits failed.
    #[error("pod {pod} interface {ifname}: attaching QoS: {source}")]
    Qos {
        /// `namespace/name`.
        pod: String,
        /// The interface.
        ifname: String,
        /// Why.
        #[source]
        source: Box<DataplaneError>,
    },
    /// The attachment kind is not served yet.
    #[error("pod {pod} provider {provider}: {what}")]
    Unsupported {
        /// `namespace/name`.
        pod: String,
        /// The provider.
        provider: String,
        /// What is not supported.
        what: &'static str,
    },
}

impl AttachError {
    /// The HTTP status for this error (Kube-OVN's: 400 for bad input, 500 otherwise).
    pub fn status(&self) -> u16 {
        match self {
            AttachError::BadRequest { .. } | AttachError::Annotation { .. } => 400,
            _ => 500,
        }
    }
}

/// Puts rate limits on interfaces. [`QosDataplane`] in the agent; fakes in tests.
pub trait QosPort: Send + Sync + 'static {
    /// Attaches or updates `spec` on `target` (unlimited detaches).
    fn apply(&self, target: &QosTarget, spec: &QosSpec) -> Result<(), DataplaneError>;
    /// Removes the limits of `target`, if any.
    fn detach(&self, target: &QosTarget) -> Result<(), DataplaneError>;
}

impl QosPort for QosDataplane {
    fn apply(&self, target: &QosTarget, spec: &QosSpec) -> Result<(), DataplaneError> {
        if spec.is_limited() {
            QosDataplane::apply(self, target, spec).map(drop)
        } else {
            QosDataplane::detach(self, target).map(drop)
        }
    }

    fn detach(&self, target: &QosTarget) -> Result<(), DataplaneError> {
        QosDataplane::detach(self, target).map(drop)
    }
}

/// The agent's CNI logic over a pod source and a QoS port.
pub struct Attacher<P, Q> {
    pods: P,
    qos: Arc<Q>,
    timeout: Duration,
}

impl<P: PodSource, Q: QosPort> Attacher<P, Q> {
    /// Waits up to `timeout` for allocations.
    pub fn new(pods: P, qos: Q, timeout: Duration) -> Attacher<P, Q> {
        Attacher {
            pods,
            qos: Arc::new(qos),
            timeout,
        }
    }

    /// ADD.
    pub async fn add(&self, req: &CniRequest) -> Result<CniResponse, AttachError> {
        check_request(req)?;
        let provider = req.provider_or_default().to_owned();
        if PLUGIN_TYPES.contains(&req.cni_type.as_str()) {
            return Err(AttachError::Unsupported {
                pod: req.pod_key(),
                provider,
                what: "OVN-backed attachments (\"type\": \"kube-ovn\") are not served by this \
                       agent build yet; IPAM-only attachments are",
            });
        }
        let (prov, ifname) = (provider.clone(), req.if_name.clone());
        let waited = self
            .pods
            .wait_for(
                &req.pod_namespace,
                &req.pod_name,
                move |a| matches!(allocation::read(a, &prov, &ifname), Ok(Some(_)) | Err(_)),
                self.timeout,
            )
            .await?;
        let annotations = match waited {
            Waited::Ready(a) => a,
            Waited::TimedOut(last) => {
                return Err(AttachError::NotAllocated {
                    pod: req.pod_key(),
                    provider: provider.clone(),
                    timeout: self.timeout,
                    missing: match last {
                        None => "the pod does not exist".to_owned(),
                        Some(a) => {
                            let prefix = allocation::prefix(&a, &provider, &req.if_name);
                            format!(
                                "no {} = \"true\" with {}",
                                key(&prefix, "allocated"),
                                key(&prefix, "ip_address")
                            )
                        }
                    },
                });
            }
        };
        let annotation_err = |source| AttachError::Annotation {
            pod: req.pod_key(),
            source,
        };
        let alloc = allocation::read(&annotations, &provider, &req.if_name)
            .map_err(annotation_err)?
            .ok_or_else(|| AttachError::NotAllocated {
                pod: req.pod_key(),
                provider: provider.clone(),
                timeout: self.timeout,
                missing: "the allocation vanished".to_owned(),
            })?;
        let spec =
            QosSpec::from_annotations(&annotations, &alloc.prefix).map_err(annotation_err)?;
        let target = pod_device(req);
        let qos = Arc::clone(&self.qos);
        let applied = {
            let target = target.clone();
            tokio::task::spawn_blocking(move || qos.apply(&target, &spec)).await
        };
        match applied {
            Ok(Ok(())) => {}
            Ok(Err(source)) => {
                return Err(AttachError::Qos {
                    pod: req.pod_key(),
                    ifname: req.if_name.clone(),
                    source: Box::new(source),
                });
            }
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        }
        info!(pod = %req.pod_key(), provider = %provider, ifname = %req.if_name,
              qos = %spec, "served IPAM-only attachment");
        Ok(ipam_response(req, &alloc))
    }

    /// DEL: idempotent; removes the interface's limits if the namespace still exists.
    pub async fn del(&self, req: &CniRequest) -> Result<(), AttachError> {
        if req.net_ns.is_empty() || !std::path::Path::new(&req.net_ns).exists() {
            return Ok(());
        }
        let target = pod_device(req);
        let qos = Arc::clone(&self.qos);
        let result = tokio::task::spawn_blocking(move || qos.detach(&target)).await;
        match result {
            Ok(Ok(()) | Err(DataplaneError::NoSuchInterface { .. } | DataplaneError::Netns(_))) => {
                Ok(())
            }
            Ok(Err(source)) => Err(AttachError::Qos {
                pod: req.pod_key(),
                ifname: req.if_name.clone(),
                source: Box::new(source),
            }),
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        }
    }

    /// CHECK: for IPAM-only attachments the calling plugin checks its interface; the agent
    /// checks that the allocation still stands.
    pub async fn check(&self, req: &CniRequest) -> Result<(), AttachError> {
        check_request(req)?;
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
            Waited::TimedOut(None) => crate::pods::Annotations::default(),
        };
        match allocation::read(&annotations, &provider, &req.if_name) {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(AttachError::NotAllocated {
                pod: req.pod_key(),
                provider,
                timeout: Duration::ZERO,
                missing: "the allocation".to_owned(),
            }),
            Err(source) => Err(AttachError::Annotation {
                pod: req.pod_key(),
                source,
            }),
        }
    }

    /// GC: nothing of IPAM-only attachments outlives their namespace (the limits go with the
    /// interface), so there is nothing to collect yet.
    pub fn gc(&self, _req: &GcRequest) {}
}

fn check_request(req: &CniRequest) -> Result<(), AttachError> {
    for (field, value) in [
        ("pod_name", &req.pod_name),
        ("pod_namespace", &req.pod_namespace),
        ("if_name", &req.if_name),
        ("net_ns", &req.net_ns),
    ] {
        if value.is_empty() {
            return Err(AttachError::BadRequest {
                field,
                value: value.clone(),
                reason: "required",
            });
        }
    }
    if req.if_name.len() > 15 || req.if_name.contains(['/', ' ']) {
        return Err(AttachError::BadRequest {
            field: "if_name",
            value: req.if_name.clone(),
            reason: "not a valid interface name (1 to 15 bytes, no '/' or spaces)",
        });
    }
    Ok(())
}

/// The interface the calling plugin created inside the pod.
fn pod_device(req: &CniRequest) -> QosTarget {
    QosTarget {
        netns: Some(PathBuf::from(&req.net_ns)),
        ifname: req.if_name.clone(),
        placement: Placement::PodDevice,
    }
}

/// Kube-OVN's IPAM-only answer: the addresses (with a gateway only on eth0), the NAD's routes
/// and the annotation's routes; no MAC, no interface work.
pub fn ipam_response(req: &CniRequest, alloc: &Allocation) -> CniResponse {
    let ips = alloc
        .ips
        .iter()
        .map(|ip| ResponseIp {
            protocol: if ip.address.is_ipv4() {
                Protocol::IPv4
            } else {
                Protocol::IPv6
            },
            ip: ip.address.to_string(),
            cidr: ip.subnet.to_string(),
            gateway: match ip.gateway {
                Some(gw) if req.if_name == "eth0" || alloc.default_route => gw.to_string(),
                _ => String::new(),
            },
        })
        .collect();
    let mut routes = req.routes.clone();
    routes.extend(alloc.routes.iter().cloned());
    CniResponse {
        ips,
        routes,
        nicname: req.if_name.clone(),
        dns: req.dns.clone(),
        ..CniResponse::default()
    }
}
