//! `cargo xtask test`: what CI runs.

use std::{process::Command, time::Instant};

use crate::{build_ebpf, cmd::exec, setup};

pub fn run(nextest_args: &[String]) -> anyhow::Result<()> {
    let mut timings = Vec::new();
    let mut step = |name: &'static str, f: &mut dyn FnMut() -> anyhow::Result<()>| {
        eprintln!("\n== {name}");
        let start = Instant::now();
        let result = f();
        timings.push((name, start.elapsed()));
        result.map_err(|e| e.context(format!("step `{name}` failed")))
    };
    step("setup", &mut setup::run)?;
    step("build-ebpf", &mut || build_ebpf::run().map(|_| ()))?;
    step("fmt", &mut || {
        exec(Command::new("cargo").args(["fmt", "--all", "--check"]))
    })?;
    step("crds", &mut || {
        crate::crds::run(&crate::workspace_root(), true)
    })?;
    step("manifests", &mut || {
        crate::manifests::lint(&crate::workspace_root())?;
        crate::manifests::run(&crate::workspace_root(), true)?;
        crate::manifests::validate(&crate::workspace_root())
    })?;
    step("clippy", &mut || {
        exec(Command::new("cargo").args([
            "clippy",
            "--locked",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))
    })?;
    // Tests run the workspace's binaries (sidelane-cni, sidelane-agent) as a node runs them.
    step("build", &mut || {
        exec(Command::new("cargo").args(["build", "--locked", "--bins"]))
    })?;
    step("tests", &mut || {
        exec(
            Command::new("cargo")
                .args(["nextest", "run", "--locked", "--no-fail-fast"])
                .args(nextest_args),
        )
    })?;
    step("doc tests", &mut || {
        exec(Command::new("cargo").args([
            "test",
            "--locked",
            "--doc",
            "-p",
            "sidelane-api",
            "-p",
            "sidelane-agent-common",
            "-p",
            "sidelane-agent",
        ]))
    })?;
    eprintln!("\n== summary");
    for (name, t) in timings {
        eprintln!("{name:>12}: {:>6.1} s", t.as_secs_f64());
    }
    Ok(())
}
