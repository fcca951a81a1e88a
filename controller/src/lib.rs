//! Sidelane's controller: watches Pods, NetworkAttachmentDefinitions, Subnets and Vpcs;
//! allocates IPs and MACs per provider; writes the allocation annotations and IP resources;
//! builds the OVN logical topology for attachment networks in the Northbound database.
//!
//! Not built yet: the controller and IPAM issues bring it. The crate exists so the workspace has
//! its fixed layout from the start.
