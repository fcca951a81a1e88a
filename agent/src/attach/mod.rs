//! What the agent does for each CNI call, below the socket: wait for the controller's
//! allocation, make the interface as allocated, and put the attachment's rate limits and
//! fast-path entries on it. One module per verb ([`add`](Attacher::add),
//! [`del`](Attacher::del), [`check`](Attacher::check), [`gc`](Attacher::gc) with recovery,
//! [`status`](Attacher::status)), each over the [`Attachment`](kind::Attachment) of the
//! request's [`Kind`]:
//!
//! - OVN-backed attachments (`"type": "kube-ovn"`): the agent creates the veth pair, configures
//!   the pod end as allocated (MAC, addresses, MTU, routes), plugs the host end into OVS's
//!   integration bridge and waits for ovn-controller to bind it; rate limits and the fast path
//!   sit on the host end.
//! - IPAM-only attachments (`"ipam": {"type": "kube-ovn"}` under macvlan and the like): the
//!   calling plugin has already created the interface in the pod's namespace when it calls IPAM,
//!   so the agent answers with the addresses and attaches the QoS programs to that interface.
//!   Beyond Kube-OVN, which gives these attachments no QoS at all.
//!
//! Every side effect goes through a narrow trait ([`Links`], [`FastpathPorts`], [`PortPlug`],
//! [`QosPort`], the pod and Subnet sources), so the logic is unit-tested with recording fakes.

mod add;
mod answer;
mod check;
mod del;
mod error;
mod gc;
mod ipam_only;
mod kind;
mod ovn_veth;
mod status;
mod timing;
mod undo;

#[cfg(test)]
mod fakes;
#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError, Weak},
    time::Duration,
};

pub use answer::{ipam_response, ovn_plan};
pub use error::AttachError;
pub use gc::SweepReport;
pub use kind::Kind;
pub use status::Readiness;
pub use timing::{AddStep, AddTimes, StepTotals};

pub use crate::dataplane::ports::QosPort;
use crate::{
    dataplane::{fastpath::FastpathDataplane, ports::FastpathPorts},
    link::{Kernel, Links},
    netns::NetnsPolicy,
    ovs::PortPlug,
    records::{AttachmentRecord, Records},
};

/// How long an ADD waits for the controller by default.
pub const DEFAULT_ALLOCATION_TIMEOUT: Duration = Duration::from_secs(30);

/// The MTU of an OVN-backed interface when neither its logical switch's Subnet nor the Subnet
/// serving its provider sets `spec.mtu`: Kube-OVN's default for its Geneve overlay.
pub const DEFAULT_MTU: u32 = 1400;

/// The node's side of an attachment: links, the fast path, OVS, and where host ends live.
#[derive(Clone)]
pub(crate) struct Node {
    pub(crate) links: Arc<dyn Links>,
    pub(crate) fastpath: Option<Arc<dyn FastpathPorts>>,
    pub(crate) ovs: Option<Arc<dyn PortPlug>>,
    pub(crate) host_netns: Option<PathBuf>,
}

/// The agent's CNI logic over a pod source and a QoS port.
pub struct Attacher<P, Q> {
    pods: P,
    pub(crate) qos: Arc<Q>,
    records: Records,
    timeout: Duration,
    mtu: u32,
    pub(crate) node: Node,
    pub(crate) in_flight: AttachmentLocks,
    netns_policy: NetnsPolicy,
    pub(crate) times: Arc<AddTimes>,
}

/// One lock per attachment (container ID and interface): calls for the same attachment (an ADD
/// and the runtime's DEL after a timeout, a GC) run one after the other; calls for different
/// attachments never wait for each other.
#[derive(Default)]
pub(crate) struct AttachmentLocks {
    locks: Mutex<HashMap<AttachmentKey, Weak<tokio::sync::Mutex<()>>>>,
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
            let mut locks = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
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

impl<P, Q: QosPort> Attacher<P, Q> {
    /// Waits up to `timeout` for allocations; keeps its record of attachments in `records`.
    pub fn new(pods: P, qos: Q, records: Records, timeout: Duration) -> Attacher<P, Q> {
        Attacher {
            pods,
            qos: Arc::new(qos),
            records,
            timeout,
            mtu: DEFAULT_MTU,
            node: Node {
                links: Arc::new(Kernel),
                fastpath: None,
                ovs: None,
                host_netns: None,
            },
            in_flight: AttachmentLocks::default(),
            netns_policy: NetnsPolicy::default(),
            times: Arc::default(),
        }
    }

    /// Where ADDs spend their time (the agent's `/metrics` registers them).
    pub fn add_times(&self) -> Arc<AddTimes> {
        Arc::clone(&self.times)
    }

    /// Same-node traffic of OVN-backed attachments takes the eBPF fast path where the
    /// Subnet allows it. With OVS's userspace datapath this also changes how pods are plugged:
    /// OVS reads a second veth pair, so frames the fast path takes never reach it.
    #[must_use]
    pub fn with_fastpath(self, fastpath: Arc<Mutex<FastpathDataplane>>) -> Attacher<P, Q> {
        self.with_fastpath_ports(fastpath)
    }

    /// The fast path through any [`FastpathPorts`] (fakes in tests).
    #[must_use]
    pub fn with_fastpath_ports(mut self, fastpath: Arc<dyn FastpathPorts>) -> Attacher<P, Q> {
        self.node.fastpath = Some(fastpath);
        self
    }

    /// Links through `links` instead of the kernel's (fakes in tests).
    #[must_use]
    pub fn with_links(mut self, links: Arc<dyn Links>) -> Attacher<P, Q> {
        self.node.links = links;
        self
    }

    /// OVN-backed interfaces are plugged into the integration bridge through `ovs`, and an ADD
    /// answers once ovn-controller has bound the port. Without it (tests of the link layer, a
    /// node without OVS) they are created but not plugged.
    #[must_use]
    pub fn with_ovs(mut self, ovs: Arc<dyn PortPlug>) -> Attacher<P, Q> {
        self.node.ovs = Some(ovs);
        self
    }

    /// Host ends of OVN-backed interfaces go into `netns` instead of the agent's own namespace
    /// (tests, and a lab node simulated in a namespace).
    #[must_use]
    pub fn with_host_netns(mut self, netns: PathBuf) -> Attacher<P, Q> {
        self.netns_policy = self.netns_policy.clone().refusing(&netns);
        self.node.host_netns = Some(netns);
        self
    }

    /// Which pod namespace paths calls may name (default: the runtime's directories).
    #[must_use]
    pub fn with_netns_policy(mut self, policy: NetnsPolicy) -> Attacher<P, Q> {
        self.netns_policy = match &self.node.host_netns {
            Some(host) => policy.refusing(host),
            None => policy,
        };
        self
    }

    /// The namespace of OVN-backed host ends (`None`: the agent's own).
    pub fn host_netns(&self) -> Option<&Path> {
        self.node.host_netns.as_deref()
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

/// Runs blocking dataplane or netlink work off the async workers; a panic there stays a panic.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(value) => value,
        Err(join) => std::panic::resume_unwind(join.into_panic()),
    }
}

impl<P, Q: QosPort> Attacher<P, Q> {
    /// The OVN-backed kind on this node.
    pub(crate) fn ovn_veth(&self) -> ovn_veth::OvnVeth<'_, Q> {
        ovn_veth::OvnVeth {
            node: &self.node,
            qos: &self.qos,
            times: &self.times,
        }
    }

    /// The IPAM-only kind on this node.
    pub(crate) fn ipam_only(&self) -> ipam_only::IpamOnly<'_, Q> {
        ipam_only::IpamOnly {
            qos: &self.qos,
            links: &self.node.links,
            netns_policy: &self.netns_policy,
        }
    }
}
