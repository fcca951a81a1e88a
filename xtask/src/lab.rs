//! `cargo xtask lab`: the whole system on one machine (see `tests/src/lab.rs`): makes sure the
//! machine has what it needs (`setup`), builds the binaries, then runs `sidelane-lab`, whose
//! exit status it passes on.

use std::process::Command;

use crate::cmd::{exec, root};

pub fn run(keep: bool) -> anyhow::Result<()> {
    crate::setup::run()?;
    exec(Command::new("cargo").args(["build", "--locked", "--bins"]))?;
    let mut cmd = Command::new(root().join("target/debug/sidelane-lab"));
    if keep {
        cmd.arg("--keep");
    }
    exec(&mut cmd)
}
