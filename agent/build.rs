//! Builds the eBPF object from `agent-ebpf` (nightly + build-std, through aya-build) and leaves
//! it in `OUT_DIR`, where `dataplane::object` embeds it. `AYA_BUILD_SKIP=1` skips the build (an
//! empty object is embedded; loading it then fails with a message naming the fix).
use std::{env, fs, path::PathBuf, process::Command};

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let ebpf_dir = manifest_dir.join("../agent-ebpf");
    let common_dir = manifest_dir.join("../agent-common");
    println!("cargo::rerun-if-changed={}", common_dir.display());
    println!("cargo::rerun-if-env-changed=AYA_BUILD_SKIP");

    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        // aya-build leaves nothing behind when skipping; embed empty objects instead.
        for name in ["sidelane-qos", "sidelane-fastpath"] {
            fs::write(out_dir.join(name), []).expect("write empty eBPF object placeholder");
        }
        return;
    }
    let toolchain = ebpf_toolchain(&ebpf_dir);
    println!(
        "cargo::rerun-if-changed={}",
        ebpf_dir.join("rust-toolchain.toml").display()
    );
    preflight(&toolchain);
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "sidelane-agent-ebpf",
            root_dir: ebpf_dir.to_str().expect("agent-ebpf path is UTF-8"),
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )
    .expect("building the eBPF object failed (run `cargo xtask setup` if a tool is missing)");
}

/// The pinned nightly channel of `agent-ebpf/rust-toolchain.toml`.
fn ebpf_toolchain(ebpf_dir: &std::path::Path) -> String {
    let path = ebpf_dir.join("rust-toolchain.toml");
    let text = fs::read_to_string(&path).expect("agent-ebpf/rust-toolchain.toml is readable");
    text.lines()
        .find_map(|l| l.trim().strip_prefix("channel = "))
        .map(|c| c.trim_matches('"').to_owned())
        .expect("agent-ebpf/rust-toolchain.toml names a channel")
}

/// Fails early, naming the command that fixes it, when the eBPF toolchain is missing.
fn preflight(toolchain: &str) {
    let linker = Command::new("bpf-linker").arg("--version").output();
    let src = Command::new("rustup")
        .args(["component", "list", "--toolchain", toolchain, "--installed"])
        .output();
    let linker_ok = linker.is_ok_and(|o| o.status.success());
    let src_ok = src.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("rust-src"));
    assert!(
        linker_ok && src_ok,
        "the eBPF toolchain is missing ({}): run `cargo xtask setup` once on this machine, \
             or set AYA_BUILD_SKIP=1 to build without the eBPF object",
        match (linker_ok, src_ok) {
            (false, false) => format!("bpf-linker and {toolchain} with rust-src"),
            (false, true) => "bpf-linker".to_owned(),
            _ => format!("{toolchain} with rust-src"),
        }
    );
}
