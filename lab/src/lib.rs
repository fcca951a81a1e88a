//! Sidelane's one-machine lab behind `cargo xtask lab` and `cargo xtask chaos`: the whole
//! system as plain processes from a temporary directory, the seeds' YAML applied unchanged, and
//! a report a person can read. Product code: what a new user runs first.
//!
//! - [`rig`]: the machinery. A real Kubernetes control plane on loopback (etcd, kube-apiserver
//!   with `Node,RBAC`, kube-controller-manager, kube-scheduler; Sidelane's CRDs and RBAC from
//!   `helm template` of the chart, the controllers and agents under the chart's
//!   ServiceAccounts); OVN central; two nodes, each a network namespace with its own OVS
//!   (`system` datapath where the kernel module exists, else `netdev`), ovn-controller and
//!   `sidelane-agent`. node1 is a real node (kubelet, containerd and runc in a mount namespace
//!   of its own, the agent as the DaemonSet runs it); node2 has the kubelet stand-in, which
//!   makes each bound pod's network namespace. Both run the real Multus thin plugin: eth0 from
//!   the primary network (Debian's `bridge` and `host-local`, standing in for Cilium, Calico or
//!   Flannel), net1..netN delegated to our `kube-ovn` binary and Debian's `macvlan` with the
//!   NAD's configuration unchanged; two `sidelane-controller` replicas electing a leader.
//! - [`outside`]: the outside world (a router and a host) behind the nodes' external network.
//! - [`scenario`]: the scenarios as data (`lab/scenarios.yaml`): seed files, the lab's own
//!   objects, what each must show.
//! - [`run`]: one scenario applied with `kubectl apply --validate=strict`, its pods observed
//!   ([`pod`]), probed ([`probe`]), deleted.
//! - [`check`]: typed checks; [`report`]: the one renderer.
//! - [`chaos`]: pod churn under faults, then an audit.
//!
//! The harness pieces (control plane, OVN, namespaces, the real node, the kubelet stand-in) are the shared test
//! harness's (`sidelane-tests`): the lab, the integration tests and the benchmarks build their
//! rigs from the same parts.

pub mod chaos;
pub mod check;
pub mod interrupt;
pub mod outside;
pub mod phases;
pub mod pod;
pub mod probe;
pub mod report;
pub mod rig;
pub mod run;
pub mod scenario;
