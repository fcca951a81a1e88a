//! `cargo xtask bench <name>`: runs the benchmark driver in `tests/` (release build).

use std::process::Command;

use clap::ValueEnum;

use crate::cmd::exec;

/// The benchmarks.
#[derive(Clone, Copy, ValueEnum)]
pub enum Name {
    /// QoS dataplane vs the reference bandwidth plugin.
    Qos,
    /// CNI ADD/DEL latency (CNI/agent issue).
    Cni,
    /// Controller IPAM (controller issue).
    Ipam,
    /// OVN NB programming (OVN issue).
    Ovn,
    /// eBPF fast path (fast-path issue).
    Fastpath,
    /// NAT gateways: SNAT and DNAT against no NAT and Kube-OVN's gateway pod.
    Nat,
    /// How cost grows: IPAM, Northbound, the agent's ADD and memory, QoS accuracy (JSON and
    /// SVG plots).
    Scale,
}

pub fn run(name: Name, quick: bool) -> anyhow::Result<()> {
    let arg = match name {
        Name::Qos => "qos",
        Name::Cni | Name::Scale => {
            // The benchmark runs the plugin and (for the whole ADD) the agent binaries, which
            // must sit beside it.
            exec(Command::new("cargo").args([
                "build",
                "--locked",
                "--release",
                "--bin",
                "sidelane-cni",
                "--bin",
                "sidelane-agent",
            ]))?;
            if matches!(name, Name::Scale) {
                "scale"
            } else {
                "cni"
            }
        }
        Name::Ipam => {
            // The bursts run the controller, the agent and the CNI plugin binaries, which must
            // sit beside the benchmark.
            exec(Command::new("cargo").args([
                "build",
                "--locked",
                "--release",
                "--bin",
                "sidelane-controller",
                "--bin",
                "sidelane-agent",
                "--bin",
                "sidelane-cni",
            ]))?;
            "ipam"
        }
        Name::Ovn => "ovn",
        Name::Fastpath => "fastpath",
        Name::Nat => "nat",
    };
    let mut cmd = Command::new("cargo");
    cmd.args([
        "run",
        "--locked",
        "--release",
        "--package",
        "sidelane-tests",
        "--bin",
        "sidelane-bench",
        "--",
        arg,
    ]);
    if quick {
        cmd.arg("--quick");
    }
    exec(&mut cmd)
}
