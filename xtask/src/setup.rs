//! `cargo xtask setup`: installs what a fresh machine lacks; changes nothing when all is there.

use std::{fs, path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

use crate::cmd::{exec, output, succeeds};

/// Debian packages the tests and benchmarks use.
const PACKAGES: &[&str] = &[
    "openvswitch-switch",
    // OVS's Python IDL: the fair peer of `cargo xtask bench ovn`.
    "python3-openvswitch",
    "ovn-central",
    "ovn-host",
    "containernetworking-plugins",
    "iperf3",
    "ethtool",
    "iputils-ping",
    "bpftool",
    "iproute2",
    "tcpdump",
    // The real node: the OCI runtime under containerd, and what its pods' images are made of.
    "runc",
    "busybox-static",
];

pub fn run() -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let mut changed = Vec::new();
    packages(&mut changed)?;
    nightly(&mut changed)?;
    bpf_linker(&mut changed)?;
    nextest(&mut changed)?;
    bpffs(&mut changed)?;
    manifest_validators(&mut changed)?;
    crate::go_tools::install(&mut changed)?;
    crate::images::install(&mut changed)?;
    if changed.is_empty() {
        eprintln!("setup: everything is already installed");
    } else {
        eprintln!(
            "setup: installed {} in {:.0} s",
            changed.join(", "),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_some_and(|s| s.trim() == "0")
}

fn need_root(what: &str) -> anyhow::Result<()> {
    if !is_root() {
        bail!("setup needs root to install {what}; run it as root (sudo -E cargo xtask setup)");
    }
    Ok(())
}

fn packages(changed: &mut Vec<String>) -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_some_and(|s| s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    need_root(&missing.join(" "))?;
    eprintln!("setup: installing Debian packages: {}", missing.join(" "));
    exec(Command::new("apt-get").args(["update", "-qq"]))?;
    exec(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    changed.extend(missing.iter().map(|p| (*p).to_owned()));
    Ok(())
}

/// The pinned nightly channel the eBPF object is built with (`agent-ebpf/rust-toolchain.toml`).
pub fn nightly_channel() -> String {
    let path = crate::cmd::root().join("agent-ebpf/rust-toolchain.toml");
    fs::read_to_string(&path)
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.trim().strip_prefix("channel = "))
                .map(|c| c.trim_matches('"').to_owned())
        })
        .unwrap_or_else(|| panic!("{} names no channel", path.display()))
}

/// `+<channel>`, for cargo and rustc command lines.
pub fn nightly_arg() -> String {
    format!("+{}", nightly_channel())
}

/// The pinned nightly with rust-src, installed by rustup when missing.
fn nightly(changed: &mut Vec<String>) -> anyhow::Result<()> {
    let channel = nightly_channel();
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        &channel,
        "--installed",
    ]))
    .unwrap_or_default();
    if installed.contains("rust-src") {
        return Ok(());
    }
    eprintln!("setup: installing the Rust toolchain {channel} with rust-src (the eBPF build)");
    exec(Command::new("rustup").args([
        "toolchain",
        "install",
        &channel,
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]))?;
    changed.push(format!("Rust {channel} with rust-src"));
    Ok(())
}

/// bpf-linker, linked against the nightly toolchain's own libLLVM (no LLVM download needed).
fn bpf_linker(changed: &mut Vec<String>) -> anyhow::Result<()> {
    if succeeds(Command::new("bpf-linker").arg("--version")) {
        return Ok(());
    }
    let sysroot = output(Command::new("rustc").args([&nightly_arg(), "--print", "sysroot"]))
        .context("asking the nightly toolchain for its sysroot")?;
    let lib = PathBuf::from(sysroot.trim()).join("lib");
    let soname = fs::read_dir(&lib)
        .with_context(|| format!("listing {}", lib.display()))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}", lib.display()))?;
    let major = soname
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .unwrap_or_default()
        .to_owned();
    let home = std::env::var("HOME").context("HOME is not set")?;
    let prefix = PathBuf::from(home).join(".local/sidelane-llvm");
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("creating {}", prefix_lib.display()))?;
    for link in ["libLLVM.so".to_owned(), soname.clone()] {
        let dst = prefix_lib.join(&link);
        let _ = fs::remove_file(&dst);
        std::os::unix::fs::symlink(lib.join(&soname), &dst)
            .with_context(|| format!("linking {}", dst.display()))?;
    }
    eprintln!("setup: building bpf-linker against {soname} (about a minute)");
    exec(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--no-default-features",
                "--features",
            ])
            .arg(format!("llvm-{major}"))
            .env("LLVM_PREFIX", &prefix),
    )?;
    changed.push("bpf-linker".to_owned());
    Ok(())
}

fn nextest(changed: &mut Vec<String>) -> anyhow::Result<()> {
    if succeeds(Command::new("cargo").args(["nextest", "--version"])) {
        return Ok(());
    }
    eprintln!("setup: installing cargo-nextest");
    exec(Command::new("cargo").args(["install", "cargo-nextest", "--locked"]))?;
    changed.push("cargo-nextest".to_owned());
    Ok(())
}

fn bpffs(changed: &mut Vec<String>) -> anyhow::Result<()> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "))
    {
        return Ok(());
    }
    need_root("the bpffs mount")?;
    eprintln!("setup: mounting bpffs at /sys/fs/bpf");
    exec(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    changed.push("bpffs".to_owned());
    Ok(())
}

/// Where the offline manifest validators live: a Python virtual environment of their own.
pub fn validators_dir() -> anyhow::Result<PathBuf> {
    let home = std::env::var("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".local/sidelane-validators"))
}

/// The PyPI packages that validate manifests offline, pinned (their schemas are part of what
/// they are).
const VALIDATORS: &[&str] = &["kubernetes-validate==1.37.0", "check-jsonschema==0.39.0"];

/// `kubernetes-validate` (built-in kinds against the Kubernetes schemas) and `check-jsonschema`
/// (custom resources against our CRD schemas), in a virtual environment.
fn manifest_validators(changed: &mut Vec<String>) -> anyhow::Result<()> {
    let dir = validators_dir()?;
    let bin = dir.join("bin");
    if succeeds(Command::new(bin.join("kubernetes-validate")).arg("--version"))
        && succeeds(Command::new(bin.join("check-jsonschema")).arg("--version"))
    {
        return Ok(());
    }
    eprintln!(
        "setup: installing {} into {}",
        VALIDATORS.join(", "),
        dir.display()
    );
    exec(Command::new("python3").args(["-m", "venv"]).arg(&dir))
        .context("creating the validators' Python virtual environment (python3 -m venv)")?;
    exec(
        Command::new(bin.join("pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(VALIDATORS),
    )
    .context("installing the manifest validators from PyPI")?;
    changed.push("kubernetes-validate and check-jsonschema".to_owned());
    Ok(())
}
