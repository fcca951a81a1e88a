//! `cargo xtask build-ebpf`: builds the eBPF object the way every build does (agent/build.rs,
//! through aya-build: nightly, build-std) and copies the objects to `target/bpf/sidelane-qos.o`
//! and `target/bpf/sidelane-fastpath.o`.

use std::{fs, path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

use crate::cmd::root;

pub fn run() -> anyhow::Result<PathBuf> {
    eprintln!("+ cargo build --locked --package sidelane-agent (builds agent-ebpf with nightly)");
    let out = Command::new("cargo")
        .args([
            "build",
            "--locked",
            "--package",
            "sidelane-agent",
            "--message-format=json-render-diagnostics",
        ])
        .env_remove("AYA_BUILD_SKIP")
        .current_dir(root())
        .output()
        .context("running cargo build")?;
    if !out.status.success() {
        bail!(
            "building the agent and its eBPF object failed (if bpf-linker or nightly rust-src \
             is missing, run `cargo xtask setup`):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out_dir = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| {
            m["reason"] == "build-script-executed"
                && m["package_id"]
                    .as_str()
                    .is_some_and(|id| id.contains("/agent#"))
        })
        .find_map(|m| m["out_dir"].as_str().map(PathBuf::from))
        .context("cargo did not report the agent's build-script output directory")?;
    let dst_dir = root().join("target/bpf");
    fs::create_dir_all(&dst_dir).with_context(|| format!("creating {}", dst_dir.display()))?;
    let mut first = None;
    for name in ["sidelane-qos", "sidelane-fastpath"] {
        let object = out_dir.join(name);
        let len = fs::metadata(&object)
            .with_context(|| format!("reading {}", object.display()))?
            .len();
        if len == 0 {
            bail!(
                "{} is empty: AYA_BUILD_SKIP was set for that build",
                object.display()
            );
        }
        let dst = dst_dir.join(format!("{name}.o"));
        fs::copy(&object, &dst).with_context(|| format!("copying to {}", dst.display()))?;
        eprintln!("build-ebpf: {} ({len} bytes)", dst.display());
        first.get_or_insert(dst);
    }
    first.context("no object built")
}
