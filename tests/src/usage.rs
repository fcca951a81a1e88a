//! What processes use, read from `/proc` and `getrusage`: CPU time (what each part of a rig
//! costs during a benchmark phase) and resident memory.

use std::collections::BTreeMap;

/// utime + stime of a process, in seconds.
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_cpu_seconds(&stat)
}

/// utime + stime from the text of a `/proc/<pid>/stat`, in seconds.
fn stat_cpu_seconds(stat: &str) -> Option<f64> {
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100);
    #[expect(
        clippy::cast_precision_loss,
        reason = "clock ticks per second: a small number"
    )]
    Some(ticks / hz as f64)
}

/// The resident memory of a process, MiB.
pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// CPU seconds of the children this process has waited for (the plugin binaries it ran).
pub fn children_cpu() -> f64 {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN);
    usage.map_or(0.0, |u| {
        #[expect(clippy::cast_precision_loss, reason = "seconds of CPU: far below 2^52")]
        let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
        t(u.user_time()) + t(u.system_time())
    })
}

/// CPU seconds so far by part: every process whose name is among those asked for (summed by
/// name), this process itself, and the children it has waited for.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CpuByPart(pub BTreeMap<String, f64>);

/// The part this process is counted as.
pub const THIS_PROCESS: &str = "this process";
/// The part the waited-for children are counted as.
pub const CHILDREN: &str = "children";

impl CpuByPart {
    /// Reads `/proc` now for processes named `names` (their `comm`).
    pub fn now(names: &[&str]) -> CpuByPart {
        let mut parts: BTreeMap<String, f64> =
            names.iter().map(|n| ((*n).to_owned(), 0.0)).collect();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for entry in dir.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|p| p.parse::<u32>().ok())
                else {
                    continue;
                };
                let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else {
                    continue;
                };
                if let Some(total) = parts.get_mut(comm.trim())
                    && let Some(cpu) = process_cpu_seconds(pid)
                {
                    *total += cpu;
                }
            }
        }
        parts.insert(
            THIS_PROCESS.to_owned(),
            process_cpu_seconds(std::process::id()).unwrap_or(0.0),
        );
        parts.insert(CHILDREN.to_owned(), children_cpu());
        CpuByPart(parts)
    }

    /// What each part spent since `earlier`, rounded to milliseconds.
    #[must_use]
    pub fn since(&self, earlier: &CpuByPart) -> BTreeMap<String, f64> {
        self.0
            .iter()
            .map(|(part, s)| {
                let spent = s - earlier.0.get(part).copied().unwrap_or(0.0);
                (part.clone(), (spent.max(0.0) * 1000.0).round() / 1000.0)
            })
            .collect()
    }
}

#[cfg(test)]
#[expect(
    clippy::float_cmp,
    reason = "ticks over a fixed rate: the same division on both sides"
)]
mod tests {
    use super::*;

    #[test]
    fn cpu_seconds_are_utime_plus_stime_after_a_name_with_spaces() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 150 50 0 0 20 0 1 0";
        let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .unwrap_or(100);
        #[expect(clippy::cast_precision_loss, reason = "a small number")]
        let expected = 200.0 / hz as f64;
        assert_eq!(stat_cpu_seconds(stat), Some(expected));
    }

    #[test]
    fn this_process_is_always_a_part() {
        let now = CpuByPart::now(&["no-such-process-name"]);
        assert_eq!(now.0["no-such-process-name"], 0.0);
        assert!(now.0[THIS_PROCESS] >= 0.0);
        assert_eq!(now.since(&now)[THIS_PROCESS], 0.0);
    }
}
