//! Whether a privileged test can run here.
//!
//! Privileged tests skip on a developer's unprivileged machine (with a message), but in CI
//! (`CI=true` or `CI=1`) they **fail**: a CI job that silently skips its dataplane tests proves
//! nothing.

use std::{fs, sync::OnceLock};

use crate::netns::NetNs;

/// `CAP_NET_ADMIN`: namespaces' links, addresses, qdiscs.
const CAP_NET_ADMIN: u32 = 12;
/// `CAP_SYS_ADMIN`: mounts (`ip netns`, bpffs) and, on its own, BPF.
const CAP_SYS_ADMIN: u32 = 21;

/// What a privileged test needs, for messages.
pub const NEEDS: &str = "needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF)";

/// `true` if this process can run privileged tests: effective uid 0, `CAP_NET_ADMIN` and
/// `CAP_SYS_ADMIN` effective, and a network namespace can actually be created. Otherwise prints
/// "skipping `<test>`: needs root ..." and returns `false`, unless running in CI.
///
/// # Panics
/// When the privileges are missing and `CI` is `true` or `1`: privileged tests must fail in CI,
/// never skip.
pub fn require_privileges(test: &str) -> bool {
    match cached_probe() {
        Ok(()) => true,
        Err(why) if in_ci() => {
            panic!("{test} {NEEDS} and runs in CI, where privileged tests never skip: {why}")
        }
        Err(why) => {
            eprintln!("skipping {test}: {NEEDS} ({why})");
            false
        }
    }
}

/// The same check for a binary (the benchmark): an error saying what is missing.
pub fn check() -> anyhow::Result<()> {
    cached_probe()
        .clone()
        .map_err(|why| anyhow::anyhow!("{NEEDS}: {why}"))
}

fn cached_probe() -> &'static Result<(), String> {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    PROBE.get_or_init(probe)
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn probe() -> Result<(), String> {
    let status = fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("reading /proc/self/status: {e}"))?;
    let (euid, caps) = parse_status(&status)?;
    if euid != 0 {
        return Err(format!("effective uid is {euid}"));
    }
    for (cap, name) in [
        (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
    ] {
        if caps & (1 << cap) == 0 {
            return Err(format!("{name} is not effective"));
        }
    }
    NetNs::new()
        .map(drop)
        .map_err(|e| format!("cannot create a network namespace: {e:#}"))
}

/// The effective uid and the effective capability set from `/proc/<pid>/status`.
fn parse_status(status: &str) -> Result<(u32, u64), String> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .ok_or_else(|| format!("no {name} line in /proc/self/status"))
    };
    // "Uid:\treal\teffective\tsaved\tfs"
    let euid = field("Uid:")?
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("unreadable Uid line")?;
    let caps = u64::from_str_radix(field("CapEff:")?, 16).map_err(|e| format!("CapEff: {e}"))?;
    Ok((euid, caps))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_effective_uid_and_capabilities_are_read_from_proc_status() {
        let status = "Name:\tcargo\nUid:\t1000\t0\t0\t0\nGid:\t0\t0\t0\t0\n\
                      CapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        let (euid, caps) = parse_status(status).expect("parses");
        assert_eq!(euid, 0);
        assert_ne!(caps & (1 << CAP_NET_ADMIN), 0);
        assert_ne!(caps & (1 << CAP_SYS_ADMIN), 0);
    }

    #[test]
    fn a_status_without_capabilities_is_an_error() {
        assert!(parse_status("Uid:\t0\t0\t0\t0\n").is_err());
    }
}
