//! `cargo xtask lab`: the whole system on one machine (the `sidelane-lab` crate in `lab/`):
//! makes sure the machine has what it needs (`setup`), builds the binaries, then runs
//! `sidelane-lab`, whose exit status it passes on.

use std::process::Command;

use crate::cmd::{exec, root};

pub fn run(keep: bool) -> anyhow::Result<()> {
    crate::setup::run()?;
    exec(Command::new("cargo").args(["build", "--locked", "--bins"]))?;
    let mut cmd = Command::new(root().join("target/debug/sidelane-lab"));
    if keep {
        cmd.arg("--keep");
    }
    exec(&mut cmd)
}

/// `cargo xtask chaos [--quick]`: the lab rig under pod churn and faults (see
/// `lab/src/chaos`), then `target/bench/chaos.json` with the fuzzing totals of
/// `target/bench/fuzz.json` (from `cargo xtask fuzz`) added, and a table.
pub fn chaos(quick: bool) -> anyhow::Result<()> {
    use anyhow::Context as _;
    crate::setup::run()?;
    exec(Command::new("cargo").args(["build", "--locked", "--bins"]))?;
    let report = root().join("target/bench/chaos.json");
    let pods = if quick { 200 } else { 1000 };
    exec(
        Command::new(root().join("target/debug/sidelane-lab"))
            .arg("--chaos")
            .arg(pods.to_string())
            .arg("--report")
            .arg(&report),
    )?;
    let mut chaos: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&report)
            .with_context(|| format!("reading {}", report.display()))?,
    )?;
    let fuzz = std::fs::read_to_string(root().join("target/bench/fuzz.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
    if let Some(f) = &fuzz {
        chaos["fuzz_execs"] = f["fuzz_execs"].clone();
        chaos["fuzz_crashes"] = f["fuzz_crashes"].clone();
    } else {
        eprintln!(
            "chaos: no target/bench/fuzz.json; run `cargo xtask fuzz` for the fuzzing figures"
        );
        chaos["fuzz_execs"] = serde_json::Value::Null;
        chaos["fuzz_crashes"] = serde_json::Value::Null;
    }
    std::fs::write(&report, serde_json::to_string_pretty(&chaos)?)
        .with_context(|| format!("writing {}", report.display()))?;
    println!("\n{:<34} {:>10}", "figure", "value");
    for (k, v) in [
        ("pods churned", chaos["pods_churned"].clone()),
        ("faults injected", chaos["faults_injected"].clone()),
        ("CNI ADDs that failed", chaos["add_failures"].clone()),
        ("addresses held twice", chaos["duplicates"].clone()),
        ("leaked IP resources", chaos["leaked"]["ips"].clone()),
        (
            "leaked Logical_Switch_Ports",
            chaos["leaked"]["lsps"].clone(),
        ),
        ("leaked host veths", chaos["leaked"]["veths"].clone()),
        (
            "leaked fast-path map entries",
            chaos["leaked"]["map_entries"].clone(),
        ),
        ("leaked QoS pins", chaos["leaked"]["pins"].clone()),
        ("leaked agent records", chaos["leaked"]["records"].clone()),
        (
            "flows broken by agent restarts",
            chaos["flows_broken_by_agent_restart"].clone(),
        ),
        ("fuzz executions", chaos["fuzz_execs"].clone()),
        ("fuzz crashes", chaos["fuzz_crashes"].clone()),
    ] {
        println!("{k:<34} {v:>10}");
    }
    println!("wrote {}", report.display());
    let zero = |v: &serde_json::Value| v.as_u64() == Some(0);
    let clean = zero(&chaos["duplicates"])
        && chaos["leaked"]
            .as_object()
            .is_some_and(|m| m.values().all(zero))
        && zero(&chaos["flows_broken_by_agent_restart"]);
    if !clean {
        anyhow::bail!(
            "chaos found duplicates, leaks or broken flows: see {}",
            report.display()
        );
    }
    Ok(())
}
