//! Build settings for the eBPF object.
//!
//! `--cpu=v3` lets LLVM emit BPF atomics with fetch and compare-exchange (kernel >= 5.12), which
//! the GCRA state update needs to be exact when two CPUs police the same interface at once.
fn main() {
    println!("cargo::rerun-if-changed=build.rs");
}
