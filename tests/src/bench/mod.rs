//! The benchmarks behind `cargo xtask bench <name>` (binary `sidelane-bench`).
//!
//! - [`qos`]: rate-limit accuracy, first-second overshoot and latency under load, Sidelane
//!   against the reference CNI `bandwidth` plugin; per-packet program cost.
//! - [`cni`]: CNI ADD/DEL latency against the reference bridge + host-local; with
//!   [`cni_whole`], the whole OVN-backed ADD on real OVN, sequential and 50 at once.
//! - [`ipam`]: the IPAM core's allocation rate, latency and memory per address; a burst against
//!   the controller binary.
//! - [`real_burst`]: pods created to CNI ADD through the real Multus, Sidelane's IPAM beside
//!   whereabouts.
//! - [`fastpath`]: the same-node fast path against a bare veth pair and against OVS.
//! - [`ovn`]: Northbound programming, Sidelane's reconciler against batched ovn-nbctl and OVS's
//!   Python IDL.
//! - [`nat`]: TCP throughput and connection rate through SNAT and DNAT, against no NAT and
//!   Kube-OVN's gateway pod (iptables MASQUERADE).
//! - [`scale`]: how cost grows (IPAM, Northbound, the agent's ADD and memory, QoS accuracy),
//!   as JSON and SVG plots drawn by [`plot`].
//! - [`memory`]: live heap bytes, counted by the benchmark binary's allocator.
//!
//! Reports go to `target/bench/<name>.json` under the workspace root, and a table to stdout.

pub mod cni;
pub mod cni_whole;
pub mod fastpath;
pub mod ipam;
pub mod memory;
pub mod nat;
pub mod ovn;
pub mod plot;
pub mod qos;
pub mod real_burst;
pub mod scale;

use std::path::{Path, PathBuf};

/// The workspace root (this crate's parent directory, fixed at compile time).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map_or_else(|| manifest_dir.to_owned(), Path::to_owned)
}

/// `target/bench/<name>.json` under the workspace root.
pub fn default_report_path(name: &str) -> PathBuf {
    workspace_root()
        .join("target")
        .join("bench")
        .join(format!("{name}.json"))
}
