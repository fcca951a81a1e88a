//! Why a CNI call failed, with the HTTP status and the CNI code each failure answers with.

use std::time::Duration;

use sidelane_api::{annotations::AnnotationError, cni::ErrorCode};
use thiserror::Error;

use crate::{
    dataplane::DataplaneError, link::LinkError, ovs::OvsError, pods::PodError, records::RecordError,
};

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
    /// Putting the interface on the fast path failed.
    #[error("pod {pod} interface {ifname}: putting it on the fast path: {source}")]
    Fastpath {
        /// `namespace/name`.
        pod: String,
        /// The interface.
        ifname: String,
        /// Why.
        #[source]
        source: Box<DataplaneError>,
    },
    /// A route of the NAD or of the pod's `routes` annotation cannot be used.
    #[error("pod {pod} interface {ifname}: route {field} {value:?}: {reason}")]
    Route {
        /// `namespace/name`.
        pod: String,
        /// The interface.
        ifname: String,
        /// `dst` or `gw`.
        field: &'static str,
        /// The value.
        value: String,
        /// Why.
        reason: &'static str,
    },
    /// The attachment's OVN port name is a row of another owner, whose addresses may disagree
    /// with the allocation: the controller marked the pod, and the agent does not plug it.
    #[error("pod {pod} interface {ifname} is not plugged: {why}")]
    PortHeld {
        /// `namespace/name`.
        pod: String,
        /// The interface.
        ifname: String,
        /// The controller's description of the row.
        why: String,
    },
    /// ADD for a container and interface already attached (the runtime must DEL first).
    #[error(
        "pod {pod}: container {container_id} already has interface {ifname} attached; \
         DEL it before adding it again"
    )]
    AlreadyAttached {
        /// `namespace/name`.
        pod: String,
        /// The interface.
        ifname: String,
        /// The container.
        container_id: String,
    },
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
            | AttachError::ProviderNotBound { .. }
            | AttachError::Route { .. }
            | AttachError::AlreadyAttached { .. } => 400,
            AttachError::UnknownAttachment { .. } => 404,
            AttachError::PortHeld { .. } => 409,
            _ => 500,
        }
    }

    /// The CNI spec's code for this error: what can never succeed is not "try again later".
    pub fn cni_code(&self) -> ErrorCode {
        match self {
            // The runtime's variables: CNI_IFNAME, CNI_NETNS, CNI_CONTAINERID.
            // ... and one of them naming an attachment already made.
            AttachError::BadRequest { .. } | AttachError::AlreadyAttached { .. } => {
                ErrorCode::InvalidEnvironment
            }
            AttachError::Annotation { .. }
            | AttachError::Selection { .. }
            | AttachError::ProviderNotBound { .. }
            | AttachError::Route { .. } => ErrorCode::InvalidConfig,
            AttachError::UnknownAttachment { .. } => ErrorCode::UnknownContainer,
            AttachError::CheckFailed { .. } => ErrorCode::CheckFailed,
            _ => ErrorCode::TryAgainLater,
        }
    }
}
