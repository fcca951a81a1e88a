//! Sidelane's shared API: the types and the one annotation parser that the CNI plugin, the node
//! agent and the controller all use. Pure: no I/O, except [`probes`] (feature `probes`), the
//! one metrics and probe server both binaries run.

pub mod acl;
pub mod allocation;
pub mod annotations;
pub mod cni;
#[cfg(feature = "crd")]
pub mod crd;
pub mod daemon;
#[cfg(feature = "crd")]
pub mod flow_verdict;
pub mod mac;
pub mod nad;
pub mod network_selection;
#[cfg(feature = "probes")]
pub mod probes;
pub mod qos;
#[cfg(feature = "crd")]
pub mod security_group;
