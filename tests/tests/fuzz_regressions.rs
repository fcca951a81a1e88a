//! Replays every committed fuzz input (the corpora `cargo xtask fuzz` grew, the hand-written
//! seeds, and the inputs of crashes that were found and fixed) through the same target bodies
//! the fuzzer runs, so a parser that regresses fails the normal test run.

#[path = "../fuzz/src/harness.rs"]
mod harness;

use std::{fs, path::Path};

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut out = Vec::new();
    for kind in ["seeds", "corpus", "regressions"] {
        let dir = root.join(kind).join(target);
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.filter_map(Result::ok) {
            let path = e.path();
            let bytes =
                fs::read(&path).unwrap_or_else(|err| panic!("reading {}: {err}", path.display()));
            out.push((
                format!("{kind}/{target}/{}", e.file_name().to_string_lossy()),
                bytes,
            ));
        }
    }
    out
}

#[test]
fn every_committed_fuzz_input_runs_through_its_parser_without_a_panic() {
    let mut total = 0;
    for target in harness::TARGETS {
        let inputs = inputs(target);
        assert!(
            inputs.len() >= 2,
            "{target}: {} committed inputs; run `cargo xtask fuzz` and commit tests/fuzz/corpus",
            inputs.len()
        );
        for (name, bytes) in &inputs {
            let result = std::panic::catch_unwind(|| harness::run(target, bytes));
            assert!(result.is_ok(), "{name} panics {target}");
        }
        total += inputs.len();
    }
    eprintln!(
        "replayed {total} fuzz inputs over {} targets",
        harness::TARGETS.len()
    );
}
