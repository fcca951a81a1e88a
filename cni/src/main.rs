//! `sidelane-cni`: reads the CNI environment and stdin, prints the result; see the library.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    process::ExitCode,
};

fn main() -> ExitCode {
    let vars: BTreeMap<String, String> = std::env::vars().collect();
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        // Nothing to parse the version from: print in the newest version.
        println!(
            "{}",
            sidelane_api::cni::CniError::new(
                sidelane_api::cni::ErrorCode::Io,
                "reading the network configuration from stdin failed",
                e.to_string(),
            )
            .to_json(sidelane_api::cni::CniVersion::V1_1_0.as_str())
        );
        return ExitCode::FAILURE;
    }
    let outcome = sidelane_cni::run(&vars, &stdin);
    let mut out = std::io::stdout().lock();
    if !outcome.stdout.is_empty() {
        // A closed stdout leaves nothing to report to.
        let _ = writeln!(out, "{}", outcome.stdout);
    }
    if outcome.exit_code == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
