//! Sidelane's controller: watches Pods, NetworkAttachmentDefinitions, Subnets and Vpcs;
//! allocates IPs and MACs per provider; writes the allocation annotations and IP resources;
//! builds the OVN logical topology for attachment networks in the Northbound database.
//!
//! - [`ipam`]: the pure IPAM core (address pools per Subnet family).
//! - [`subnet`]: Subnet defaulting and validation as Kube-OVN's.

pub mod ipam;
pub mod subnet;
