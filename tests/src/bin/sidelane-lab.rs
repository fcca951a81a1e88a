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
