//! `sidelane-lab`: the one-machine lab (`cargo xtask lab` builds and runs it; needs root).
//! Exits non-zero if anything the seeds promise did not happen; tears everything down on exit
//! or Ctrl-C (`--keep` leaves it running until Ctrl-C).

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::Parser;
use sidelane_lab::{chaos, interrupt, report, rig::Rig, run, scenario};
use sidelane_tests::privilege;

#[derive(Debug, Parser)]
#[command(about = "Sidelane's one-machine lab (needs root)")]
struct Args {
    /// Leave the lab running after the report, until Ctrl-C.
    #[arg(long)]
    keep: bool,
    /// Instead of the scenarios: churn this many pods while injecting faults, then audit
    /// (`cargo xtask chaos`).
    #[arg(long)]
    chaos: Option<usize>,
    /// Where `--chaos` writes its JSON report.
    #[arg(long, default_value = "target/bench/chaos.json")]
    report: PathBuf,
    /// Only the scenarios whose name contains this (the whole lab otherwise).
    #[arg(long)]
    only: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    privilege::check().context("sidelane-lab")?;
    interrupt::install();
    let start = Instant::now();
    let ok = match args.chaos {
        Some(pods) => {
            run_chaos(pods, &args.report)?;
            true
        }
        None => run_scenarios(args.keep, args.only.as_deref())?,
    };
    println!("\nlab finished in {:.0} s", start.elapsed().as_secs_f64());
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}

fn run_chaos(pods: usize, path: &Path) -> anyhow::Result<()> {
    let json = chaos::run(pods)?.to_json();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("{}", serde_json::to_string_pretty(&json)?);
    Ok(())
}

/// Every scenario on one rig, then the report; `Ok(true)` when every check held. With `keep`,
/// the first (richest) scenario runs last and stays up for the user to explore.
fn run_scenarios(keep: bool, only: Option<&str>) -> anyhow::Result<bool> {
    let mut scenarios = scenario::load()?;
    if let Some(only) = only {
        scenarios.retain(|s| s.name.contains(only));
        anyhow::ensure!(!scenarios.is_empty(), "--only {only:?} names no scenario");
    }
    let mut rig = Rig::start()?;
    if keep {
        scenarios.rotate_left(1);
    }
    let last = scenarios.len().saturating_sub(1);
    let mut reports = Vec::new();
    for (i, sc) in scenarios.iter().enumerate() {
        interrupt::check()?;
        eprintln!("==> scenario: {}", sc.name);
        let report = run::scenario(&rig, sc, keep && i == last)
            .with_context(|| format!("scenario: {}", sc.name))?;
        eprintln!("    done in {:.1} s", report.took.as_secs_f64());
        reports.push(report);
    }
    print!(
        "{}",
        report::render(&report::rig_lines(&rig), &reports, &rig.phases)
    );
    let ok = reports.iter().all(report::ScenarioReport::passed);
    if keep && !interrupt::requested() {
        let pods = reports
            .last()
            .map(|r| {
                r.pods
                    .iter()
                    .map(|p| format!("{} = ip netns exec {}", p.name, p.ns.name()))
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default();
        print!("{}", rig.how_to_reach(&pods));
        while !interrupt::requested() && rig.healthy() {
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    eprintln!("tearing the lab down");
    drop(reports);
    drop(rig);
    Ok(ok)
}
