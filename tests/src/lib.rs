//! Sidelane's test and benchmark harness: test infrastructure, not product code. The lab
//! (`lab/`), the integration tests and the benchmarks build their rigs from it.
//!
//! - [`privilege`]: privileged tests fail under CI and skip (with a message) elsewhere.
//! - [`process`]: child processes with captured output, killed on drop.
//! - [`netns`]: named network namespaces and commands run inside them.
//! - [`veth`]: veth pairs between namespaces.
//! - [`topology`]: the standard pod link (host namespace ↔ pod namespace over one veth pair).
//! - [`sidelane`]: Sidelane's QoS dataplane on a pod link, with a private pin root.
//! - [`iperf`]: iperf3 runs between namespaces, measured at the receiver.
//! - [`ping`]: RTT samples and percentiles.
//! - [`usage`]: CPU time and resident memory by process, for what a benchmark costs each part.
//! - [`bandwidth_plugin`]: Debian's reference `bandwidth` CNI plugin, driven as a runtime does.
//! - [`bench`]: the benchmarks behind `cargo xtask bench <name>`.
//! - [`control_plane`]: a real Kubernetes control plane (etcd, kube-apiserver, controllers) on
//!   loopback, with the chart's RBAC and kubeconfigs per identity.
//! - [`tools`]: where the Go components `cargo xtask setup` builds are.
//! - [`cluster`]: the cluster objects (Subnets...) tests seed into it.
//! - [`kubelet_standin`]: plays a node's kubelet for the network: registers the Node, runs the
//!   real Multus for the pods bound to it, reports them Running, tears them down on deletion.
//! - [`macvlan_node`]: a node for IPAM-only attachments on the real control plane: its agent,
//!   the controller, and the kubelet stand-in running Multus.
//! - [`ovn`]: real OVN central and chassis processes (userspace datapath) from a temporary directory.
//! - [`wait`]: waiting on a condition, never on a fixed sleep.
//! - [`node_rig`]: one node of real OVN with the controller and the agent, pods attached through our plugin.

pub mod bandwidth_plugin;
pub mod bench;
pub mod cluster;
pub mod control_plane;
pub mod iperf;
pub mod kubelet_standin;
pub mod macvlan_node;
pub mod netns;
pub mod node_rig;
pub mod outside;
pub mod ovn;
pub mod ping;
pub mod primary;
pub mod privilege;
pub mod probe_pod;
pub mod process;
pub mod real_node;
pub mod registry;
pub mod sidelane;
pub mod tools;
pub mod topology;
pub mod usage;
pub mod veth;
pub mod wait;
