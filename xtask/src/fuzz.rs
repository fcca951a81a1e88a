//! `cargo xtask fuzz [--seconds N] [--target T]`: runs the libFuzzer targets of
//! `tests/fuzz/` (every parser of outside input) one after another, with overflow checks and
//! AddressSanitizer, growing the committed corpora. A crash, a timeout (10 s for one input) or
//! an input that takes more than 2 GB fails the run; its input is copied into
//! `tests/fuzz/regressions/<target>/`, which the normal test run replays (as it replays the
//! corpora). Writes `target/bench/fuzz.json` (executions and crashes per target) and prints a
//! table; `cargo xtask chaos` reports its totals.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};
use serde_json::json;

use crate::cmd::{exec, succeeds};

/// The targets: the files of `tests/fuzz/fuzz_targets/` (each runs the body of the same name in
/// `tests/fuzz/src/harness.rs`).
fn targets(root: &Path) -> anyhow::Result<Vec<String>> {
    let dir = fuzz_dir(root).join("fuzz_targets");
    let mut names: Vec<String> = fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(Result::ok)
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".rs"))
                .map(str::to_owned)
        })
        .collect();
    names.sort();
    Ok(names)
}

fn fuzz_dir(root: &Path) -> PathBuf {
    root.join("tests/fuzz")
}

fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    if succeeds(Command::new("cargo").args(["fuzz", "--version"])) {
        return Ok(());
    }
    eprintln!("fuzz: installing cargo-fuzz (about a minute)");
    exec(Command::new("cargo").args(["install", "--locked", "cargo-fuzz"]))
        .context("installing cargo-fuzz")
}

/// One target's run.
struct Run {
    target: String,
    execs: u64,
    crashed: bool,
    corpus: usize,
    seconds: f64,
}

fn count_files(dir: &Path) -> usize {
    fs::read_dir(dir).map_or(0, |d| d.filter_map(Result::ok).count())
}

fn run_target(root: &Path, target: &str, seconds: u64) -> anyhow::Result<Run> {
    let dir = fuzz_dir(root);
    let corpus = dir.join("corpus").join(target);
    let seeds = dir.join("seeds").join(target);
    let artifacts = dir.join("artifacts").join(target);
    for d in [&corpus, &artifacts] {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let _ = fs::remove_dir_all(&artifacts);
    fs::create_dir_all(&artifacts).with_context(|| format!("creating {}", artifacts.display()))?;
    let start = Instant::now();
    let out = Command::new("cargo")
        .current_dir(root)
        .args([
            &crate::setup::nightly_arg(),
            "fuzz",
            "run",
            "--fuzz-dir",
            "tests/fuzz",
            "-O",
            "-a",
            target,
        ])
        .arg(&corpus)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .args([
            "-rss_limit_mb=2048",
            "-malloc_limit_mb=2048",
            "-timeout=10",
            "-max_len=65536",
            "-print_final_stats=1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("running the fuzz target {target}"))?;
    let log = String::from_utf8_lossy(&out.stderr);
    let execs = log
        .lines()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let crashed = !out.status.success();
    if crashed {
        let regressions = dir.join("regressions").join(target);
        fs::create_dir_all(&regressions)
            .with_context(|| format!("creating {}", regressions.display()))?;
        for e in fs::read_dir(&artifacts)
            .with_context(|| format!("listing {}", artifacts.display()))?
            .filter_map(Result::ok)
        {
            let to = regressions.join(e.file_name());
            fs::copy(e.path(), &to).with_context(|| format!("copying to {}", to.display()))?;
            eprintln!(
                "fuzz: {target} failed on {} (kept as {})",
                e.path().display(),
                to.display()
            );
        }
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        eprintln!(
            "fuzz: {target} output (last lines):\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(Run {
        target: target.to_owned(),
        execs,
        crashed,
        corpus: count_files(&corpus),
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Merges each corpus into its minimal form (the inputs that keep its coverage), so what is
/// committed stays small.
fn minimise(root: &Path, target: &str) -> anyhow::Result<()> {
    exec(
        Command::new("cargo")
            .current_dir(root)
            .args([
                &crate::setup::nightly_arg(),
                "fuzz",
                "cmin",
                "--fuzz-dir",
                "tests/fuzz",
                "-O",
                "-a",
                target,
            ])
            .arg(fuzz_dir(root).join("corpus").join(target))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .with_context(|| format!("minimising the corpus of {target}"))
}

pub fn run(root: &Path, seconds: u64, only: Option<&str>) -> anyhow::Result<()> {
    ensure_cargo_fuzz()?;
    let all = targets(root)?;
    let targets: Vec<String> = match only {
        Some(t) if all.iter().any(|x| x == t) => vec![t.to_owned()],
        Some(t) => bail!("no fuzz target {t}; the targets: {}", all.join(", ")),
        None => all,
    };
    exec(Command::new("cargo").current_dir(root).args([
        &crate::setup::nightly_arg(),
        "fuzz",
        "build",
        "--fuzz-dir",
        "tests/fuzz",
        "-O",
        "-a",
    ]))
    .context("building the fuzz targets")?;
    let mut runs = Vec::new();
    for target in &targets {
        eprintln!("fuzz: {target} for {seconds} s");
        let r = run_target(root, target, seconds)?;
        if !r.crashed {
            minimise(root, target)?;
        }
        runs.push(Run {
            corpus: count_files(&fuzz_dir(root).join("corpus").join(target)),
            ..r
        });
    }
    let execs: u64 = runs.iter().map(|r| r.execs).sum();
    let crashes = runs.iter().filter(|r| r.crashed).count();
    println!(
        "\n{:<20} {:>12} {:>10} {:>8} {:>8}",
        "target", "executions", "exec/s", "corpus", "crashed"
    );
    for r in &runs {
        #[expect(clippy::cast_precision_loss, reason = "a rate for display")]
        let rate = r.execs as f64 / r.seconds.max(0.001);
        println!(
            "{:<20} {:>12} {:>10.0} {:>8} {:>8}",
            r.target,
            r.execs,
            rate,
            r.corpus,
            if r.crashed { "yes" } else { "no" }
        );
    }
    println!("{:<20} {:>12}", "total", execs);
    let report = json!({
        "seconds_per_target": seconds,
        "targets": runs.iter().map(|r| (r.target.clone(), json!({
            "execs": r.execs, "crashed": r.crashed, "corpus": r.corpus, "seconds": r.seconds,
        }))).collect::<serde_json::Map<_, _>>(),
        "fuzz_execs": execs,
        "fuzz_crashes": crashes,
    });
    let out = root.join("target/bench/fuzz.json");
    if let Some(dir) = out.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(&out, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", out.display()))?;
    eprintln!("fuzz: wrote {}", out.display());
    if crashes > 0 {
        bail!(
            "{crashes} fuzz target(s) failed; their inputs are in tests/fuzz/regressions/: fix the parser, keep the input, commit"
        );
    }
    Ok(())
}
