//! Waiting on a condition, never on a fixed sleep: what the integration tests share.

use std::time::{Duration, Instant};

/// Polls `check` every 100 ms until it gives a value, and returns it; fails the test naming
/// `what` once `within` has passed.
///
/// # Panics
/// When `within` passes first.
pub fn eventually<T>(what: &str, within: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(start.elapsed() < within, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
