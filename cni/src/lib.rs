//! Sidelane's CNI plugin (`"type": "kube-ovn"`): the main plugin that asks the node agent over
//! its socket (`server_socket`) to attach net1..netN, and the IPAM plugin other CNIs call
//! (`"ipam": {"type": "kube-ovn"}`), speaking CNI spec 0.3.0–1.1.0.
//!
//! Not built yet: the CNI issue (issue 3) brings it. The crate exists so the workspace has its
//! fixed layout from the start.
