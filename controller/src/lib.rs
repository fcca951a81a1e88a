//! Sidelane's controller: watches Pods, NetworkAttachmentDefinitions, Subnets and Vpcs;
//! allocates IPs and MACs per provider; writes the allocation annotations and IP resources;
//! builds the OVN logical topology for attachment networks in the Northbound database.
//!
//! - [`ipam`]: the pure IPAM core (address pools per Subnet family).
//! - [`run`]: the leader's work against the API: load, restore, follow.
//! - [`writer`]: the leader's writes, in order per pod, with their error policy.
//! - [`subnet`]: Subnet defaulting and validation as Kube-OVN's.
//! - [`engine`]: the controller's decisions (pure): pods, NADs, Subnets in; annotations, IPs, events out.
//! - [`leader`]: leader election over a Lease.
//! - [`metrics`]: Prometheus metrics and the health and readiness probes.
//! - [`objects`]: Kubernetes objects to and from the engine's types.
//! - [`attachments`]: from a pod to the attachments it asks for, and back to annotations.
//! - [`status`]: the Subnet status, and when it needs writing.
//! - [`seen`]: what was already acted on (specs, refusals), so that repeats are not.
//! - [`held`]: pods whose OVN port name another owner's row holds.
//! - [`ovn`]: the wanted OVN topology, what the Northbound holds, and the diff between them.
//! - [`nb`]: the Northbound reconciler around [`ovn`].
//! - [`nat`]: NAT gateways, EIPs and rules checked and resolved into the topology.
//! - [`switch_finalizer`]: a deleted Subnet stays while its switch holds another owner's rows.

pub mod attachments;
pub mod engine;
pub mod held;
pub mod ipam;
pub mod isolation;
pub mod leader;
pub mod metrics;
pub mod nat;
pub mod nb;
pub mod objects;
pub mod ovn;
pub mod run;
pub mod seen;
pub mod status;
pub mod subnet;
pub mod switch_finalizer;
mod writer;
