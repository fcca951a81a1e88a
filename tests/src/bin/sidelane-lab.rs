//! `sidelane-lab`: the one-machine lab (`cargo xtask lab` builds and runs it; needs root).
//! Exits non-zero if anything the seeds promise did not happen; tears everything down on exit
//! or Ctrl-C (`--keep` leaves it running until Ctrl-C).

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::Parser;
use sidelane_tests::{
    lab::{Lab, STOP},
    privilege,
};

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
    report: std::path::PathBuf,
}

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    privilege::check().context("sidelane-lab")?;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let start = Instant::now();
    if let Some(pods) = args.chaos {
        let report = sidelane_tests::lab::chaos::run(pods)?;
        let json = report.to_json();
        if let Some(dir) = args.report.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&args.report, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", args.report.display()))?;
        println!("{}", serde_json::to_string_pretty(&json)?);
        println!("chaos finished in {:.0} s", start.elapsed().as_secs_f64());
        return Ok(());
    }
    let mut lab = Lab::start()?;
    let ok = lab.run_scenarios(args.keep)?;
    println!("\nlab finished in {:.0} s", start.elapsed().as_secs_f64());
    if args.keep && !STOP.load(Ordering::Relaxed) {
        print!("{}", lab.how_to_reach());
        while !STOP.load(Ordering::Relaxed) && lab.healthy() {
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    eprintln!("tearing the lab down");
    drop(lab);
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}
