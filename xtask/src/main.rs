//! `cargo xtask <command>`: Sidelane's developer commands (see README.md).

mod bench;
mod build_ebpf;
mod cmd;
mod crds;
mod fuzz;
mod go_tools;
mod images;
mod lab;
mod manifests;
mod setup;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Sidelane's developer commands")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install, idempotently, what a fresh machine lacks (Debian packages, the pinned nightly
    /// with rust-src, bpf-linker, bpffs, and the Go components: Kubernetes, etcd, Multus,
    /// whereabouts, Helm).
    Setup,
    /// Build the eBPF object from `agent-ebpf` (the same build agent/build.rs runs).
    BuildEbpf,
    /// setup, build-ebpf, fmt --check, clippy -D warnings, then every test.
    Test {
        /// Extra arguments for `cargo nextest run`.
        #[arg(last = true)]
        nextest_args: Vec<String>,
    },
    /// The whole system on one machine: API double, OVN, two nodes, agents, controllers, the
    /// seeds' YAML, and a report.
    Lab {
        /// Leave it running after the report (Ctrl-C tears it down).
        #[arg(long)]
        keep: bool,
    },
    /// Write `deploy/crds/` from the `kubeovn.io/v1` types in `api/src/crd`.
    Crds {
        /// Fail (naming the file) when a committed CRD differs instead of writing.
        #[arg(long)]
        check: bool,
    },
    /// The lab rig under pod churn and faults, then an audit; writes `target/bench/chaos.json`.
    Chaos {
        /// 200 pods instead of 1,000.
        #[arg(long)]
        quick: bool,
    },
    /// `helm lint --strict` the chart (defaults, both seed switches, OVN off) and write
    /// `deploy/manifests/sidelane.yaml`: the chart rendered by `helm template` with its defaults.
    Manifests {
        /// Fail when the committed file differs instead of writing.
        #[arg(long)]
        check: bool,
        /// Then validate every manifest, CRD and example offline (what CI runs).
        #[arg(long)]
        validate: bool,
    },
    /// Run every fuzz target (`tests/fuzz/`) for a while, growing the committed corpora;
    /// writes `target/bench/fuzz.json`.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 40)]
        seconds: u64,
        /// Only this target.
        #[arg(long)]
        target: Option<String>,
    },
    /// Run a benchmark; writes `target/bench/<name>.json` and prints a table.
    Bench {
        /// Which benchmark.
        name: bench::Name,
        /// A reduced set that finishes in about a minute.
        #[arg(long)]
        quick: bool,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::run(),
        Command::BuildEbpf => build_ebpf::run().map(|_| ()),
        Command::Test { nextest_args } => test::run(&nextest_args),
        Command::Lab { keep } => lab::run(keep),
        Command::Chaos { quick } => lab::chaos(quick),
        Command::Bench { name, quick } => bench::run(name, quick),
        Command::Crds { check } => crds::run(&workspace_root(), check),
        Command::Fuzz { seconds, target } => {
            fuzz::run(&workspace_root(), seconds, target.as_deref())
        }
        Command::Manifests { check, validate } => {
            manifests::lint(&workspace_root())?;
            manifests::run(&workspace_root(), check)?;
            if validate {
                manifests::validate(&workspace_root())?;
            }
            Ok(())
        }
    }
}

/// The workspace root: xtask's parent directory.
fn workspace_root() -> std::path::PathBuf {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map_or_else(|| manifest.to_owned(), std::path::Path::to_owned)
}
