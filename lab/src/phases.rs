//! The lab's phases and how long each took (the report's last table).

use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::interrupt;

/// The phases run so far.
#[derive(Debug, Default)]
pub struct Phases(Vec<(String, Duration)>);

impl Phases {
    /// Runs `f` as phase `name`, printing its start and how long it took.
    pub fn run<T>(
        &mut self,
        name: &str,
        f: impl FnOnce() -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        interrupt::check()?;
        eprintln!("==> {name}");
        let start = Instant::now();
        let out = f().with_context(|| format!("lab phase: {name}"))?;
        let took = start.elapsed();
        eprintln!("    done in {:.1} s", took.as_secs_f64());
        self.0.push((name.to_owned(), took));
        Ok(out)
    }

    /// Each phase and how long it took, in order.
    pub fn iter(&self) -> impl Iterator<Item = &(String, Duration)> {
        self.0.iter()
    }
}
