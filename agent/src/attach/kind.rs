//! The two kinds of attachment and what each verb needs of a kind: the [`Attachment`] trait,
//! implemented by [`OvnVeth`](super::ovn_veth::OvnVeth) and
//! [`IpamOnly`](super::ipam_only::IpamOnly).

use std::future::Future;

use sidelane_api::{allocation::Allocation, cni::PLUGIN_TYPES, daemon::CniRequest};

use super::{AttachError, undo::Undo};
use crate::{
    dataplane::qos::QosTarget,
    link::{LinkError, VethEnd, veth_name},
    records::{AttachmentKind, AttachmentRecord},
};

/// What an attachment is, decided once from the request (or the record) and typed from then on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `"type": "kube-ovn"`: the agent makes a veth pair and plugs it into OVN.
    OvnVeth,
    /// `"ipam": {"type": "kube-ovn"}` under another plugin, which made the interface.
    IpamOnly,
}

impl Kind {
    /// The kind a request asks for: our plugin's own types are OVN-backed, any other calling
    /// plugin (macvlan, ipvlan, ...) used us as its IPAM.
    pub fn of(req: &CniRequest) -> Kind {
        if PLUGIN_TYPES.contains(&req.cni_type.as_str()) {
            Kind::OvnVeth
        } else {
            Kind::IpamOnly
        }
    }

    /// The kind a record describes.
    pub fn of_record(record: &AttachmentRecord) -> Kind {
        match record.kind {
            AttachmentKind::Ovn { .. } => Kind::OvnVeth,
            AttachmentKind::Ipam => Kind::IpamOnly,
        }
    }

    /// What the record of an attachment of this kind keeps.
    pub(crate) fn recorded(
        self,
        container_id: &str,
        ifname: &str,
    ) -> Result<AttachmentKind, LinkError> {
        Ok(match self {
            Kind::OvnVeth => AttachmentKind::Ovn {
                host_ifname: veth_name(container_id, ifname, VethEnd::Host)?,
            },
            Kind::IpamOnly => AttachmentKind::Ipam,
        })
    }
}

/// What the fast path should do for one attachment.
pub(crate) struct FastpathWish {
    /// Its Subnet allows the fast path.
    pub(crate) on: bool,
    /// The security groups it joins (the fast path carries only what OVN passes whole).
    pub(crate) groups: Vec<String>,
    /// The logical switch.
    pub(crate) switch: String,
    /// The pod has an ingress limit.
    pub(crate) policed: bool,
}

/// What ADD hands a kind to create.
pub(crate) struct Creating<'a> {
    pub(crate) req: &'a CniRequest,
    pub(crate) alloc: &'a Allocation,
    pub(crate) mtu: u32,
    pub(crate) fastpath: FastpathWish,
}

/// What a kind made: where the rate limits go, and the answer.
pub(crate) struct Made {
    pub(crate) qos_target: QosTarget,
    pub(crate) response: sidelane_api::daemon::CniResponse,
}

/// What each verb needs of a kind of attachment.
pub(crate) trait Attachment: Sync {
    /// Makes the interface; each change registers its undo on `undo` before it is made.
    fn create(
        &self,
        made: &Creating<'_>,
        undo: &mut Undo,
    ) -> impl Future<Output = Result<Made, AttachError>> + Send;

    /// Removes whatever exists of the attachment (its rate limits included), trying every step
    /// whatever the others did; every failure, named.
    fn remove(&self, req: &CniRequest) -> impl Future<Output = Vec<String>> + Send;

    /// CHECK: every difference between the interface and the allocation.
    fn verify(
        &self,
        req: &CniRequest,
        alloc: &Allocation,
        mtu: u32,
    ) -> impl Future<Output = Result<Vec<String>, AttachError>> + Send;

    /// Whether the recorded attachment's interface is still in place.
    fn in_place(&self, record: &AttachmentRecord) -> impl Future<Output = bool> + Send;
}
