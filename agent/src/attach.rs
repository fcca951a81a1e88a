//! What the agent does for each CNI call, below the socket: wait for the controller's
//! allocation, answer with it, and put the attachment's rate limits on its interface.
//!
//! - OVN-backed attachments (`"type": "kube-ovn"`): the agent creates the veth pair, configures
//!   the pod end as allocated (MAC, addresses, MTU, routes) and puts the rate limits on the host
//!   end, which is left ready for OVS (plugging it into `br-int` arrives with the OVN work).
//! - IPAM-only attachments (`"ipam": {"type": "kube-ovn"}` under macvlan and the like): the
//!   calling plugin has already created the interface in the pod's namespace when it calls IPAM,
//!   so the agent answers with the addresses and attaches the QoS programs to that interface.
//!   Beyond Kube-OVN, which gives these attachments no QoS at all.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Weak},
    time::Duration,
};

use sidelane_api::{
    allocation::{self, Allocation},
    annotations::{AnnotationError, key},
    cni::{ErrorCode, PLUGIN_TYPES},
    daemon::{CniRequest, CniResponse, GcRequest, Protocol, ResponseIp, Route},
    network_selection,
    qos::QosSpec,
};
use thiserror::Error;
use tracing::{info, warn};

use ipnet::IpNet;
use std::net::IpAddr;

use crate::{
    dataplane::{
        DataplaneError,
        fastpath::{FastpathDataplane, FastpathPort, SWITCH_OFF, switch_id},
        qos::{Placement, QosDataplane, QosTarget},
    },
    link::{self, LinkError, PodInterfacePlan},
    netns::{self, NetnsPolicy},
    ovs::{OvsError, PortBinding, PortPlug},
    pods::{PodError, PodSource, Waited},
    records::{AttachmentKind, AttachmentRecord, RecordError, Records},
    subnets::{self, SubnetInfo, SubnetSource},
};

/// How long an ADD waits for the controller by default.
pub const DEFAULT_ALLOCATION_TIMEOUT: Duration = Duration::from_secs(30);

/// A CNI call the agent could not serve; [`AttachError::status`] is the HTTP status Kube-OVN
/// answers with.
#[derive(Debug, Error)]
pub enum AttachError {
    /// The pod's network selection cannot be used.
    #[error("pod {pod}: {reason}")]
    Selection {
        /// `namespace/name`.
        pod: String,
        /// What is wrong, naming the annotation and value.
        reason: String,
    },
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
    /// No Subnet serves the request's provider (Kube-OVN's 400).
    #[error("provider {provider} is not bound to any subnet")]
    ProviderNotBound {
        /// The provider.
        provider: String,
    },
    /// The agent's attachment record could not be kept.
    #[error("pod {pod} interface {ifname}: {source}")]
    Record {
        /// `namespace/name`.
        pod: String,
        /// The interface.
        ifname: String,
        /// Why.
        #[source]
        source: RecordError,
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
    /// A teardown (DEL, or GC and recovery over several attachments) went through every step
    /// and some failed; each failure is named.
    #[error("pod {pod} interface {ifname}: tearing down: {failures}")]
    Teardown {
        /// `namespace/name` (or `(several pods)`).
        pod: String,
        /// The interface (or `(several interfaces)`).
        ifname: String,
        /// Every step that failed, `; `-separated.
        failures: String,
    },
    /// CHECK of an attachment this node never made (or already removed).
    #[error(
        "pod {pod} interface {ifname}: container {container_id} has no such attachment on this node"
    )]
    UnknownAttachment {
        /// `namespace/name`.
        pod: String,
        /// The interface.
        ifname: String,
        /// The container.
        container_id: String,
    },
    /// CHECK found the interface not as allocated, or not as `prevResult` says.
    #[error("pod {pod} interface {ifname} is not as expected: {differences}")]
    CheckFailed {
        /// `namespace/name`.
        pod: String,
        /// The interface.
        ifname: String,
        /// Every difference found.
        differences: String,
    },
    /// Creating or removing the interface failed.
    #[error("pod {pod} interface {ifname}: {source}")]
    Link {
        /// `namespace/name`.
        pod: String,
        /// The interface.
        ifname: String,
        /// Why.
        #[source]
        source: Box<LinkError>,
    },
    /// Plugging the interface into OVN (the integration bridge) failed.
    #[error("pod {pod} interface {ifname}: {source}")]
    Ovs {
        /// `namespace/name`.
        pod: String,
        /// The interface.
        ifname: String,
        /// Why.
        #[source]
        source: Box<OvsError>,
    },
}

impl AttachError {
    /// The HTTP status for this error (Kube-OVN's: 400 for bad input, 500 otherwise).
    pub fn status(&self) -> u16 {
        match self {
            AttachError::BadRequest { .. }
            | AttachError::Annotation { .. }
            | AttachError::Selection { .. }
            | AttachError::ProviderNotBound { .. } => 400,
            AttachError::UnknownAttachment { .. } => 404,
            _ => 500,
        }
    }

    /// The CNI spec's code for this error: what can never succeed is not "try again later".
    pub fn cni_code(&self) -> ErrorCode {
        match self {
            // The runtime's variables: CNI_IFNAME, CNI_NETNS, CNI_CONTAINERID.
            AttachError::BadRequest { .. } => ErrorCode::InvalidEnvironment,
            AttachError::Annotation { .. }
            | AttachError::Selection { .. }
            | AttachError::ProviderNotBound { .. } => ErrorCode::InvalidConfig,
            AttachError::UnknownAttachment { .. } => ErrorCode::UnknownContainer,
            AttachError::CheckFailed { .. } => ErrorCode::CheckFailed,
            _ => ErrorCode::TryAgainLater,
        }
    }
}

/// Puts rate limits on interfaces. [`QosDataplane`] in the agent; fakes in tests.
pub trait QosPort: Send + Sync + 'static {
    /// Attaches or updates `spec` on `target` (unlimited detaches).
    fn apply(&self, target: &QosTarget, spec: &QosSpec) -> Result<(), DataplaneError>;
    /// Removes the limits of `target`, if any.
    fn detach(&self, target: &QosTarget) -> Result<(), DataplaneError>;
    /// Removes the limits of every interface that no longer exists (a namespace deleted before
    /// its attachments were).
    fn sweep(&self) -> Result<(), DataplaneError>;
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

    fn sweep(&self) -> Result<(), DataplaneError> {
        QosDataplane::adopt(self).map(drop)
    }
}

/// The agent's CNI logic over a pod source and a QoS port.
pub struct Attacher<P, Q> {
    pods: P,
    pub(crate) qos: Arc<Q>,
    records: Records,
    timeout: Duration,
    pub(crate) host_netns: Option<PathBuf>,
    mtu: u32,
    pub(crate) in_flight: AttachmentLocks,
    ovs: Option<Arc<dyn PortPlug>>,
    pub(crate) fastpath: Option<Arc<std::sync::Mutex<FastpathDataplane>>>,
    netns_policy: NetnsPolicy,
}

/// One lock per attachment (container ID and interface): calls for the same attachment (an ADD
/// and the runtime's DEL after a timeout, a GC) run one after the other; calls for different
/// attachments never wait for each other.
#[derive(Default)]
pub(crate) struct AttachmentLocks {
    locks: std::sync::Mutex<HashMap<AttachmentKey, Weak<tokio::sync::Mutex<()>>>>,
}

/// Container ID and interface name.
type AttachmentKey = (String, String);

impl AttachmentLocks {
    pub(crate) async fn lock(
        &self,
        container_id: &str,
        ifname: &str,
    ) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self
                .locks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let key = (container_id.to_owned(), ifname.to_owned());
            if let Some(lock) = locks.get(&key).and_then(Weak::upgrade) {
                lock
            } else {
                locks.retain(|_, weak| weak.strong_count() > 0);
                let lock = Arc::new(tokio::sync::Mutex::new(()));
                locks.insert(key, Arc::downgrade(&lock));
                lock
            }
        };
        lock.lock_owned().await
    }
}

/// What the fast path should do for one attachment.
struct FastpathWish {
    /// Its Subnet allows the fast path and the pod has no security groups.
    on: bool,
    /// The logical switch.
    switch: String,
    /// The pod has an ingress limit.
    policed: bool,
}

/// The MTU of OVN-backed interfaces until subnets carry their own: Kube-OVN's default for its
/// Geneve overlay.
pub const DEFAULT_MTU: u32 = 1400;

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

impl<P: PodSource + SubnetSource, Q: QosPort> Attacher<P, Q> {
    /// Waits up to `timeout` for allocations; keeps its record of attachments in `records`.
    pub fn new(pods: P, qos: Q, records: Records, timeout: Duration) -> Attacher<P, Q> {
        Attacher {
            pods,
            qos: Arc::new(qos),
            records,
            timeout,
            host_netns: None,
            mtu: DEFAULT_MTU,
            in_flight: AttachmentLocks::default(),
            ovs: None,
            fastpath: None,
            netns_policy: NetnsPolicy::default(),
        }
    }

    /// Same-node traffic of OVN-backed attachments takes the eBPF fast path where the
    /// Subnet allows it. With OVS's userspace datapath this also changes how pods are plugged:
    /// OVS reads a second veth pair, so frames the fast path takes never reach it.
    #[must_use]
    pub fn with_fastpath(
        mut self,
        fastpath: Arc<std::sync::Mutex<FastpathDataplane>>,
    ) -> Attacher<P, Q> {
        self.fastpath = Some(fastpath);
        self
    }

    /// OVN-backed interfaces are plugged into the integration bridge through `ovs`, and an ADD
    /// answers once ovn-controller has bound the port. Without it (tests of the link layer, a
    /// node without OVS) they are created but not plugged.
    #[must_use]
    pub fn with_ovs(mut self, ovs: Arc<dyn PortPlug>) -> Attacher<P, Q> {
        self.ovs = Some(ovs);
        self
    }

    /// Host ends of OVN-backed interfaces go into `netns` instead of the agent's own namespace
    /// (tests, and a lab node simulated in a namespace).
    #[must_use]
    pub fn with_host_netns(mut self, netns: PathBuf) -> Attacher<P, Q> {
        self.netns_policy = self.netns_policy.clone().refusing(&netns);
        self.host_netns = Some(netns);
        self
    }

    /// Which pod namespace paths calls may name (default: the runtime's directories).
    #[must_use]
    pub fn with_netns_policy(mut self, policy: NetnsPolicy) -> Attacher<P, Q> {
        self.netns_policy = match &self.host_netns {
            Some(host) => policy.refusing(host),
            None => policy,
        };
        self
    }

    /// The request's `net_ns` must be a pod namespace the policy allows.
    fn check_netns(&self, req: &CniRequest) -> Result<(), AttachError> {
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
        check_request(req)?;
        let _serialised = self.in_flight.lock(&req.container_id, &req.if_name).await;
        self.check_netns(req)?;
        let provider = req.provider_or_default().to_owned();
        let ovn = PLUGIN_TYPES.contains(&req.cni_type.as_str());
        let (subnets, serving) = self.serving_subnet(req, &provider).await?;
        let (annotations, alloc) = self.wait_for_allocation(req, &provider).await?;
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
        let record_err = |source| AttachError::Record {
            pod: req.pod_key(),
            ifname: req.if_name.clone(),
            source,
        };
        // A record already there is an attachment in place (a repeated ADD): a failure here
        // must not forget it.
        let recorded = self
            .records
            .get(&req.container_id, &req.if_name)
            .map_err(record_err)?
            .is_some();
        let record = record_of(req, ovn).map_err(|source| AttachError::Link {
            pod: req.pod_key(),
            ifname: req.if_name.clone(),
            source: Box::new(source),
        })?;
        self.records.put(&record).map_err(record_err)?;
        let forget = || {
            if !recorded {
                let _ = self.records.remove(&req.container_id, &req.if_name);
            }
        };
        let created = if ovn {
            let switch = alloc
                .logical_switch
                .clone()
                .or_else(|| serving.as_ref().map(|s| s.name.clone()))
                .unwrap_or_default();
            let subnet_allows = subnets
                .iter()
                .find(|s| s.name == switch)
                .is_none_or(|s| s.fastpath);
            let security_groups = annotations
                .get(&key(&alloc.prefix, "security_groups"))
                .is_some_and(|v| !v.trim().is_empty());
            let wish = FastpathWish {
                on: subnet_allows && !security_groups && !switch.is_empty(),
                switch,
                policed: spec.get(sidelane_api::qos::Direction::Ingress).rate_mbps > 0,
            };
            self.create_interface(req, &alloc, mtu, &wish).await
        } else {
            Ok((pod_device(req), ipam_response(req, &alloc)))
        };
        let (target, response) = match created {
            Ok(done) => done,
            Err(e) => {
                forget();
                return Err(e);
            }
        };
        let qos = Arc::clone(&self.qos);
        let applied = {
            let target = target.clone();
            blocking(move || qos.apply(&target, &spec)).await
        };
        match applied {
            Ok(()) => {}
            Err(source) => {
                if ovn {
                    // All or nothing: the interface goes with the failed ADD.
                    let _ = self.delete_interface(req).await;
                }
                forget();
                return Err(AttachError::Qos {
                    pod: req.pod_key(),
                    ifname: req.if_name.clone(),
                    source: Box::new(source),
                });
            }
        }
        info!(pod = %req.pod_key(), provider = %provider, ifname = %req.if_name,
              qos = %spec, ovn, mtu, "attachment served");
        Ok(response)
    }

    /// Waits (by watch) until the controller's allocation for the request's provider and
    /// interface is on the pod; a malformed one is an error at once.
    async fn wait_for_allocation(
        &self,
        req: &CniRequest,
        provider: &str,
    ) -> Result<(crate::pods::Annotations, Allocation), AttachError> {
        let provider = provider.to_owned();
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
        let mut alloc = allocation::read(&annotations, &provider, &req.if_name)
            .map_err(|source| AttachError::Annotation {
                pod: req.pod_key(),
                source,
            })?
            .ok_or_else(|| AttachError::NotAllocated {
                pod: req.pod_key(),
                provider: provider.clone(),
                timeout: self.timeout,
                missing: "the allocation vanished".to_owned(),
            })?;
        apply_selection_default_route(req, &provider, &annotations, &mut alloc)?;
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
        let mut found = subnets::serving(&all, provider, ifname);
        if found == Some(None) {
            all = self.pods.subnets(true).await?;
            found = subnets::serving(&all, provider, ifname);
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
                    found = Some(Some(s));
                }
            }
        }
        match found {
            Some(None) => Err(AttachError::ProviderNotBound {
                provider: provider.to_owned(),
            }),
            Some(Some(s)) => {
                let s = s.clone();
                Ok((all, Some(s)))
            }
            None => Ok((all, None)),
        }
    }

    /// Creates the veth pair of an OVN-backed attachment; returns the QoS target (the host
    /// end) and the answer.
    #[expect(
        clippy::too_many_lines,
        reason = "one ADD: links, fast path, OVS, each undone on failure"
    )]
    async fn create_interface(
        &self,
        req: &CniRequest,
        alloc: &Allocation,
        mtu: u32,
        wish: &FastpathWish,
    ) -> Result<(QosTarget, CniResponse), AttachError> {
        let link_err = |source| AttachError::Link {
            pod: req.pod_key(),
            ifname: req.if_name.clone(),
            source: Box::new(source),
        };
        let mac_key = key(&alloc.prefix, "mac_address");
        let mac_text = alloc.mac.clone().ok_or_else(|| AttachError::Annotation {
            pod: req.pod_key(),
            source: AnnotationError::Invalid {
                key: mac_key.clone(),
                value: String::new(),
                reason: "an OVN-backed attachment needs the MAC its logical port has".to_owned(),
            },
        })?;
        let plan = ovn_plan(req, alloc, Some(&mac_text), mtu).map_err(link_err)?;
        let host = link::veth_name(&req.container_id, &req.if_name, 'h').map_err(link_err)?;
        let temp = link::veth_name(&req.container_id, &req.if_name, 'c').map_err(link_err)?;
        let host_netns = self.host_netns.clone();
        let pod_netns = PathBuf::from(&req.net_ns);
        let netdev = self
            .ovs
            .as_ref()
            .is_some_and(|o| o.datapath().needs_tx_checksum_off());
        // With the userspace datapath and the fast path, OVS reads a pair of its own.
        let split = netdev && self.fastpath.is_some();
        let ovs_end = link::veth_name(&req.container_id, &req.if_name, 'o').map_err(link_err)?;
        let ovs_port = link::veth_name(&req.container_id, &req.if_name, 'p').map_err(link_err)?;
        {
            let (host, plan) = (host.clone(), plan.clone());
            let (ovs_end, ovs_port) = (ovs_end.clone(), ovs_port.clone());
            let host_netns = host_netns.clone();
            blocking(move || {
                let ns = host_netns.as_deref();
                link::create(ns, &host, &pod_netns, &temp, &plan)?;
                let extra = if split {
                    // Frames for OVS are checksummed (and segmented) in software as they are
                    // redirected out of this end: the userspace datapath needs them whole.
                    link::create_host_pair(ns, &ovs_end, &ovs_port, plan.mtu)
                        .and_then(|()| link::disable_tx_checksum(ns, &ovs_end))
                } else if netdev {
                    link::disable_tx_checksum(ns, &host)
                        .and_then(|()| link::disable_tx_checksum(Some(&pod_netns), &plan.ifname))
                } else {
                    Ok(())
                };
                if let Err(e) = extra {
                    let _ = link::delete(ns, &host);
                    let _ = link::delete(ns, &ovs_end);
                    return Err(e);
                }
                Ok(())
            })
            .await
            .map_err(link_err)?;
        }
        if let Some(fastpath) = &self.fastpath
            && (split || wish.on)
        {
            let port = FastpathPort {
                netns: host_netns.clone(),
                host_ifname: host.clone(),
                ovs_ifname: split.then(|| ovs_end.clone()),
                switch: if wish.on {
                    switch_id(&wish.switch)
                } else {
                    SWITCH_OFF
                },
                mac: link::parse_mac(&mac_text).map_err(link_err)?,
                ips: alloc.ips.iter().map(|ip| ip.address).collect(),
                policed: wish.policed,
                published: wish.on,
            };
            let fastpath = Arc::clone(fastpath);
            let attached = blocking(move || {
                fastpath
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .attach(&port)
            })
            .await;
            if let Err(e) = attached {
                let (host_netns, host, ovs_end) =
                    (host_netns.clone(), host.clone(), ovs_end.clone());
                let _ = blocking(move || {
                    let _ = link::delete(host_netns.as_deref(), &ovs_end);
                    link::delete(host_netns.as_deref(), &host)
                })
                .await;
                return Err(AttachError::Qos {
                    pod: req.pod_key(),
                    ifname: req.if_name.clone(),
                    source: Box::new(e),
                });
            }
        }
        if let Some(ovs) = &self.ovs {
            let binding = PortBinding {
                port: if split {
                    ovs_port.clone()
                } else {
                    host.clone()
                },
                iface_id: format!("{}.{}.{}", req.pod_name, req.pod_namespace, alloc.prefix),
                pod_name: req.pod_name.clone(),
                pod_namespace: req.pod_namespace.clone(),
                pod_netns: req.net_ns.clone(),
                ip: alloc
                    .ips
                    .iter()
                    .map(|ip| ip.address.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            };
            if let Err(e) = ovs.plug(&binding).await {
                // All or nothing: no half-plugged port, no interface without its port.
                let _ = ovs.unplug(&binding.port).await;
                self.forget_fastpath(&host).await;
                let (host_netns, host) = (host_netns.clone(), host.clone());
                let ovs_end = ovs_end.clone();
                let _ = blocking(move || {
                    let _ = link::delete(host_netns.as_deref(), &ovs_end);
                    link::delete(host_netns.as_deref(), &host)
                })
                .await;
                return Err(AttachError::Ovs {
                    pod: req.pod_key(),
                    ifname: req.if_name.clone(),
                    source: Box::new(e),
                });
            }
        }
        let target = QosTarget {
            netns: host_netns,
            ifname: host,
            placement: Placement::HostPeer,
        };
        let response = CniResponse {
            ips: response_ips(req, alloc),
            mac_address: mac_text,
            routes: plan
                .routes
                .iter()
                .map(|(dst, gw)| Route {
                    destination: dst.to_string(),
                    gateway: gw.map(|g| g.to_string()).unwrap_or_default(),
                })
                .collect(),
            mtu,
            nicname: req.if_name.clone(),
            dns: req.dns.clone(),
            ..CniResponse::default()
        };
        Ok((target, response))
    }

    /// Takes the host end `host` off the fast path (its endpoints first); a failure is logged:
    /// the entries of a vanished interface are swept on the next start or DEL.
    async fn forget_fastpath(&self, host: &str) {
        let Some(fastpath) = &self.fastpath else {
            return;
        };
        let (fastpath, host_netns, host) = (
            Arc::clone(fastpath),
            self.host_netns.clone(),
            host.to_owned(),
        );
        let result = blocking(move || {
            fastpath
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .detach(host_netns.as_deref(), &host)
        })
        .await;
        if let Err(e) = result {
            warn!(error = %e, "taking an attachment off the fast path");
        }
    }

    /// DEL: idempotent; removes what exists of the attachment (interface, limits, record).
    pub async fn del(&self, req: &CniRequest) -> Result<(), AttachError> {
        let _serialised = self.in_flight.lock(&req.container_id, &req.if_name).await;
        if PLUGIN_TYPES.contains(&req.cni_type.as_str()) {
            self.delete_interface(req).await?;
        } else {
            self.detach_pod_device(req).await?;
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

    /// Removes the limits of an IPAM-only attachment's interface inside the pod; when the
    /// namespace is already gone, sweeps the limits of every vanished interface instead.
    async fn detach_pod_device(&self, req: &CniRequest) -> Result<(), AttachError> {
        let qos = Arc::clone(&self.qos);
        // A path the policy refuses is never entered: treated as gone.
        let gone =
            req.net_ns.is_empty() || self.netns_policy.refusal(Path::new(&req.net_ns)).is_some();
        let target = pod_device(req);
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
                Ok(())
            }
            Err(source) => Err(AttachError::Qos {
                pod: req.pod_key(),
                ifname: req.if_name.clone(),
                source: Box::new(source),
            }),
        }
    }

    /// Removes an OVN-backed attachment's limits and veth pair; whatever is already gone is
    /// success. Every step is tried whatever the others did (a failed OVS unplug does not keep
    /// the veth), and every failure is reported together.
    async fn delete_interface(&self, req: &CniRequest) -> Result<(), AttachError> {
        let link_err = |source| AttachError::Link {
            pod: req.pod_key(),
            ifname: req.if_name.clone(),
            source: Box::new(source),
        };
        let host = link::veth_name(&req.container_id, &req.if_name, 'h').map_err(link_err)?;
        let ovs_end = link::veth_name(&req.container_id, &req.if_name, 'o').map_err(link_err)?;
        let ovs_port = link::veth_name(&req.container_id, &req.if_name, 'p').map_err(link_err)?;
        // Off the fast path first: nothing is redirected to it once DEL returns.
        self.forget_fastpath(&host).await;
        let mut failures = Vec::new();
        if let Some(ovs) = &self.ovs {
            for port in [&host, &ovs_port] {
                if let Err(e) = ovs.unplug(port).await {
                    failures.push(format!("unplugging {port} from OVS: {e}"));
                }
            }
        }
        let host_netns = self.host_netns.clone();
        let target = QosTarget {
            netns: self.host_netns.clone(),
            ifname: host.clone(),
            placement: Placement::HostPeer,
        };
        let qos = Arc::clone(&self.qos);
        let (ovs_deleted, detached, deleted) = blocking(move || {
            let ovs_deleted = link::delete(host_netns.as_deref(), &ovs_end)
                .map(drop)
                .map_err(|e| format!("deleting {ovs_end}: {e}"));
            let detached = match qos.detach(&target) {
                Ok(()) | Err(DataplaneError::NoSuchInterface { .. }) => Ok(()),
                Err(e) => Err(format!("removing the limits of {}: {e}", target.ifname)),
            };
            let deleted = link::delete(host_netns.as_deref(), &target.ifname)
                .map(drop)
                .map_err(|e| format!("deleting {}: {e}", target.ifname));
            (ovs_deleted, detached, deleted)
        })
        .await;
        failures.extend(
            [ovs_deleted, detached, deleted]
                .into_iter()
                .filter_map(Result::err),
        );
        if failures.is_empty() {
            Ok(())
        } else {
            Err(AttachError::Teardown {
                pod: req.pod_key(),
                ifname: req.if_name.clone(),
                failures: failures.join("; "),
            })
        }
    }

    /// CHECK: for IPAM-only attachments the calling plugin checks its interface; the agent
    /// checks that the allocation still stands.
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
            Waited::TimedOut(None) => crate::pods::Annotations::default(),
        };
        match allocation::read(&annotations, &provider, &req.if_name) {
            Ok(Some(mut alloc)) if PLUGIN_TYPES.contains(&req.cni_type.as_str()) => {
                check_expected(req, &alloc)?;
                apply_selection_default_route(req, &provider, &annotations, &mut alloc)?;
                self.check_interface(req, &alloc).await
            }
            Ok(Some(alloc)) => check_expected(req, &alloc),
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

    /// CHECK of an OVN-backed interface: it exists with the allocated addresses and MAC.
    async fn check_interface(
        &self,
        req: &CniRequest,
        alloc: &Allocation,
    ) -> Result<(), AttachError> {
        let link_err = |source| AttachError::Link {
            pod: req.pod_key(),
            ifname: req.if_name.clone(),
            source: Box::new(source),
        };
        let plan = ovn_plan(req, alloc, alloc.mac.as_deref(), self.mtu).map_err(link_err)?;
        let pod_netns = PathBuf::from(&req.net_ns);
        let differences = blocking(move || link::verify(&pod_netns, &plan))
            .await
            .map_err(link_err)?;
        check_outcome(req, &differences)
    }

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
        for record in records {
            let id = format!("{}/{}", record.container_id, record.ifname);
            if record.provider != provider {
                continue;
            }
            let valid = req
                .valid_attachments
                .iter()
                .any(|v| v.container_id == record.container_id && v.if_name == record.ifname);
            if valid {
                report.kept.push(id);
                continue;
            }
            match self.del(&request_of(&record)).await {
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

    /// Removes the fast-path entries and QoS programs of interfaces that vanished without a
    /// DEL (deleted by hand, or their namespace torn down): run periodically, so that nothing
    /// points at a device that is gone. Errors are logged; the next pass tries again.
    pub async fn sweep_vanished(&self) {
        if let Some(fp) = self.fastpath.clone() {
            let host = self.host_netns.clone();
            let result = blocking(move || {
                fp.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .sweep(host.as_deref())
            })
            .await;
            if let Err(e) = result {
                warn!(error = %e, "sweeping fast-path entries of vanished interfaces");
            }
        }
        let qos = Arc::clone(&self.qos);
        if let Err(e) = blocking(move || qos.sweep()).await {
            warn!(error = %e, "sweeping QoS programs of vanished interfaces");
        }
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
        for record in records {
            let id = format!("{}/{}", record.container_id, record.ifname);
            let host_netns = self.host_netns.clone();
            let probe = record.clone();
            let in_place =
                blocking(move || interface_in_place(host_netns.as_deref(), &probe)).await;
            if in_place {
                report.kept.push(id);
            } else {
                match self.del(&request_of(&record)).await {
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
        }
        Ok(report)
    }

    /// The attachments recorded now.
    pub fn records(&self) -> &Records {
        &self.records
    }

    pub(crate) fn list_records(&self) -> Result<(Vec<AttachmentRecord>, Vec<String>), AttachError> {
        let listing = self.records.list().map_err(|source| AttachError::Record {
            pod: "(all pods)".to_owned(),
            ifname: "(all interfaces)".to_owned(),
            source,
        })?;
        Ok((
            listing.records,
            listing
                .unreadable
                .into_iter()
                .map(|(path, why)| format!("{}: {why}", path.display()))
                .collect(),
        ))
    }
}

/// What the agent records of an attachment it is about to make.
fn record_of(req: &CniRequest, ovn: bool) -> Result<AttachmentRecord, LinkError> {
    Ok(AttachmentRecord {
        container_id: req.container_id.clone(),
        ifname: req.if_name.clone(),
        netns: PathBuf::from(&req.net_ns),
        pod_namespace: req.pod_namespace.clone(),
        pod_name: req.pod_name.clone(),
        provider: req.provider_or_default().to_owned(),
        kind: if ovn {
            AttachmentKind::Ovn {
                host_ifname: link::veth_name(&req.container_id, &req.if_name, 'h')?,
            }
        } else {
            AttachmentKind::Ipam
        },
    })
}

/// Whether a recorded attachment's interface still exists: the host end of an OVN-backed one,
/// the pod's interface of an IPAM-only one.
fn interface_in_place(host_netns: Option<&Path>, record: &AttachmentRecord) -> bool {
    let exists = |ns: Option<&Path>, ifname: &str| {
        netns::run_in(ns, || nix::net::if_::if_nametoindex(ifname).is_ok()).unwrap_or(false)
    };
    match &record.kind {
        AttachmentKind::Ovn { host_ifname } => exists(host_netns, host_ifname),
        AttachmentKind::Ipam => {
            netns::is_network_namespace(&record.netns)
                && exists(Some(&record.netns), &record.ifname)
        }
    }
}

/// The DEL a runtime would send for a recorded attachment.
fn request_of(record: &AttachmentRecord) -> CniRequest {
    CniRequest {
        cni_type: match record.kind {
            AttachmentKind::Ovn { .. } => PLUGIN_TYPES[0].to_owned(),
            AttachmentKind::Ipam => "ipam".to_owned(),
        },
        pod_name: record.pod_name.clone(),
        pod_namespace: record.pod_namespace.clone(),
        container_id: record.container_id.clone(),
        net_ns: record.netns.display().to_string(),
        if_name: record.ifname.clone(),
        provider: record.provider.clone(),
        ..CniRequest::default()
    }
}

/// Runs blocking dataplane or netlink work off the async workers; a panic there stays a panic.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(value) => value,
        Err(join) => std::panic::resume_unwind(join.into_panic()),
    }
}

/// CHECK: what the runtime's `prevResult` says (sent by our plugin) against the allocation;
/// the error names every difference. Nothing sent (Kube-OVN's plugin): nothing to compare.
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

/// `default-route` in the pod's network selection: the attachment carries the pod's default
/// route through those gateways (one per family), as `default_route: "true"` with the subnet's
/// gateway does.
fn apply_selection_default_route(
    req: &CniRequest,
    provider: &str,
    annotations: &crate::pods::Annotations,
    alloc: &mut Allocation,
) -> Result<(), AttachError> {
    let Some(value) = annotations.get(network_selection::NETWORKS_ANNOTATION) else {
        return Ok(());
    };
    let selection_err = |reason: String| AttachError::Selection {
        pod: req.pod_key(),
        reason,
    };
    let selections = network_selection::parse(value, &req.pod_namespace)
        .map_err(|e| selection_err(e.to_string()))?;
    for gw in network_selection::default_route_of(&selections, provider, &req.if_name) {
        let gw: IpAddr = gw.parse().map_err(|_| {
            selection_err(format!(
                "{}: default-route {gw:?} is not an IP address",
                network_selection::NETWORKS_ANNOTATION
            ))
        })?;
        let ip = alloc
            .ips
            .iter_mut()
            .find(|ip| ip.address.is_ipv4() == gw.is_ipv4())
            .ok_or_else(|| {
                selection_err(format!(
                    "{}: default-route {gw} has no allocated address of its family on {}",
                    network_selection::NETWORKS_ANNOTATION,
                    req.if_name
                ))
            })?;
        ip.gateway = Some(gw);
        alloc.default_route = true;
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
    let mut routes = req.routes.clone();
    routes.extend(alloc.routes.iter().cloned());
    CniResponse {
        ips: response_ips(req, alloc),
        routes,
        nicname: req.if_name.clone(),
        dns: req.dns.clone(),
        ..CniResponse::default()
    }
}

/// The addresses, with a gateway only where the pod's default route goes (eth0, or
/// `default_route: "true"`), as Kube-OVN answers.
fn response_ips(req: &CniRequest, alloc: &Allocation) -> Vec<ResponseIp> {
    alloc
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
        .collect()
}

/// The pod end of an OVN-backed attachment: the allocated MAC and addresses, the NAD's and the
/// annotation's routes (route-replace: one without `dst` replaces the default route), and a
/// default route through the subnet's gateway only when `default_route` asks for it.
pub fn ovn_plan(
    req: &CniRequest,
    alloc: &Allocation,
    mac: Option<&str>,
    mtu: u32,
) -> Result<PodInterfacePlan, LinkError> {
    let mut routes = Vec::new();
    if alloc.default_route {
        for ip in &alloc.ips {
            if let Some(gw) = ip.gateway {
                routes.push((default_dst(gw), Some(gw)));
            }
        }
    }
    for r in req.routes.iter().chain(&alloc.routes) {
        let gw: Option<IpAddr> = if r.gateway.is_empty() {
            None
        } else {
            Some(r.gateway.parse().map_err(|_| LinkError::BadName {
                name: r.gateway.clone(),
                reason: "a route's gw is not an IP address",
            })?)
        };
        let dst: IpNet = if r.destination.is_empty() {
            default_dst(
                gw.unwrap_or(
                    alloc
                        .ips
                        .first()
                        .map_or(IpAddr::from([0, 0, 0, 0]), |i| i.address),
                ),
            )
        } else {
            r.destination.parse().map_err(|_| LinkError::BadName {
                name: r.destination.clone(),
                reason: "a route's dst is not a CIDR block",
            })?
        };
        routes.push((dst, gw));
    }
    Ok(PodInterfacePlan {
        ifname: req.if_name.clone(),
        mac: mac.map(link::parse_mac).transpose()?,
        mtu: Some(mtu),
        addresses: alloc
            .ips
            .iter()
            .map(allocation::AllocatedIp::with_prefix)
            .collect(),
        routes,
    })
}

fn default_dst(family_of: IpAddr) -> IpNet {
    let any = if family_of.is_ipv4() {
        IpAddr::from([0u8; 4])
    } else {
        IpAddr::from([0u16; 8])
    };
    // A zero prefix is valid for either family.
    IpNet::new(any, 0).unwrap_or(IpNet::from(any))
}
