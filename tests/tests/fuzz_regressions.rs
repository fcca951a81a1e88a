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

#[test]
fn every_fuzz_target_binary_has_its_body_in_the_harness() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/fuzz_targets");
    let mut binaries: Vec<String> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".rs"))
                .map(str::to_owned)
        })
        .collect();
    binaries.sort();
    let mut bodies: Vec<String> = harness::TARGETS.iter().map(|t| (*t).to_owned()).collect();
    bodies.sort();
    assert_eq!(binaries, bodies);
}
