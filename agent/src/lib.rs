//! Sidelane's node agent as a library: the eBPF dataplane and the namespace plumbing that the
//! agent binary (and the tests and benchmarks) drive.

pub mod api_server;
pub mod attach;
pub mod cni_server;
pub mod dataplane;
pub mod follow;
pub mod gateway_node;
pub mod inspect;
pub mod link;
pub mod metrics;
pub mod netns;
pub mod ovs;
pub mod pods;
pub mod records;
pub mod routes;
pub mod security_groups;
pub mod subnets;
pub mod watched;
