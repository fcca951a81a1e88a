//! `ping` from a namespace, with every round-trip time kept for percentiles.

use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::{netns::NetNs, process};

/// The round-trip times of one `ping` run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PingReport {
    /// Echo requests sent.
    pub transmitted: u32,
    /// Echo replies received.
    pub received: u32,
    /// The round-trip time of every reply, in milliseconds, in arrival order.
    pub rtts_ms: Vec<f64>,
}

impl PingReport {
    /// Parses `ping`'s (iputils) output: one `time=<ms> ms` line per reply and the
    /// `N packets transmitted, M received` summary.
    pub fn parse(output: &str) -> anyhow::Result<PingReport> {
        let mut report = PingReport::default();
        let mut summary = false;
        for line in output.lines() {
            if let Some(rest) = line.split_once("time=").map(|(_, rest)| rest) {
                let ms = rest.split_whitespace().next().unwrap_or_default();
                report.rtts_ms.push(
                    ms.parse()
                        .with_context(|| format!("parsing the RTT in {line:?}"))?,
                );
            } else if line.contains("packets transmitted") {
                let numbers: Vec<u32> = line
                    .split(',')
                    .filter_map(|part| part.split_whitespace().next()?.parse().ok())
                    .collect();
                let [transmitted, received, ..] = numbers[..] else {
                    bail!("parsing ping's summary {line:?}");
                };
                report.transmitted = transmitted;
                report.received = received;
                summary = true;
            }
        }
        if !summary {
            bail!("ping printed no summary: {output}");
        }
        Ok(report)
    }

    /// The `p`th percentile (0..=100, nearest rank) of the RTTs in milliseconds; `None` without
    /// replies.
    pub fn percentile(&self, p: f64) -> Option<f64> {
        percentile(&self.rtts_ms, p)
    }

    /// The median RTT in milliseconds.
    pub fn p50(&self) -> Option<f64> {
        self.percentile(50.0)
    }

    /// The 99th percentile RTT in milliseconds.
    pub fn p99(&self) -> Option<f64> {
        self.percentile(99.0)
    }

    /// The share of requests without a reply, 0.0..=1.0.
    pub fn loss(&self) -> f64 {
        if self.transmitted == 0 {
            return 0.0;
        }
        f64::from(self.transmitted.saturating_sub(self.received)) / f64::from(self.transmitted)
    }
}

/// The `p`th percentile (nearest rank) of `values`; `None` if empty.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    #[expect(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a rank between 1 and the (small) number of samples"
    )]
    let rank = ((p.clamp(0.0, 100.0) / 100.0 * sorted.len() as f64).ceil() as usize).max(1);
    Some(sorted[rank.min(sorted.len()) - 1])
}

/// Pings `dest` from `ns` `count` times, one request every `interval` (below 200 ms needs
/// root), and waits `linger` after the last request for late replies (a reply later than that
/// counts as lost). Lost replies are not an error.
pub fn ping(
    ns: &NetNs,
    dest: &str,
    count: u32,
    interval: Duration,
    linger: Duration,
) -> anyhow::Result<PingReport> {
    let deadline = interval * count + linger.max(Duration::from_secs(1));
    let count_s = count.to_string();
    let interval_s = format!("{}", interval.as_secs_f64());
    let deadline_s = deadline.as_secs_f64().ceil().to_string();
    let finished = process::run(
        &mut ns.command(&[
            "ping",
            "-n",
            "-c",
            &count_s,
            "-i",
            &interval_s,
            "-w",
            &deadline_s,
            dest,
        ]),
        None,
        deadline + Duration::from_secs(10),
    )?;
    // ping exits 1 when replies are missing: the summary still says how many.
    PingReport::parse(&finished.stdout).with_context(|| {
        format!(
            "`{}` ({}): {}",
            finished.command,
            finished.status,
            finished.stderr.trim()
        )
    })
}

/// `ping -c <count> -i 0.05 -W 2 <dest>` from `ns`: its output when it succeeded, else what
/// failed with that output, as text for a test's assertion message.
pub fn replies(ns: &NetNs, dest: &str, count: u32) -> Result<String, String> {
    ns.exec(&[
        "ping",
        "-c",
        &count.to_string(),
        "-i",
        "0.05",
        "-W",
        "2",
        dest,
    ])
    .map_err(|e| format!("{e:#}"))
}

/// Pings `dest` from `ns` every 200 ms until a reply comes (duplicate address detection and
/// OVN's flows may still be settling), for `within` at most.
///
/// # Panics
/// When no reply came: the test cannot go on without the path.
pub fn until_reply(ns: &NetNs, dest: &str, within: Duration) {
    let start = std::time::Instant::now();
    while let Err(e) = replies(ns, dest, 1) {
        assert!(start.elapsed() < within, "ping {dest}: {e}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "PING 10.99.0.1 (10.99.0.1) 56(84) bytes of data.
64 bytes from 10.99.0.1: icmp_seq=1 ttl=64 time=0.284 ms
64 bytes from 10.99.0.1: icmp_seq=2 ttl=64 time=0.038 ms
64 bytes from 10.99.0.1: icmp_seq=4 ttl=64 time=12.5 ms

--- 10.99.0.1 ping statistics ---
4 packets transmitted, 3 received, 25% packet loss, time 30ms
rtt min/avg/max/mdev = 0.038/4.274/12.500/5.800 ms
";

    #[test]
    fn every_reply_and_the_summary_are_parsed() {
        let r = PingReport::parse(OUTPUT).expect("parses");
        assert_eq!(r.rtts_ms, vec![0.284, 0.038, 12.5]);
        assert_eq!((r.transmitted, r.received), (4, 3));
        assert!((r.loss() - 0.25).abs() < 1e-12);
    }

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), Some(50.0));
        assert_eq!(percentile(&values, 99.0), Some(99.0));
        assert_eq!(percentile(&values, 100.0), Some(100.0));
        assert_eq!(percentile(&values, 0.0), Some(1.0));
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 50.0), Some(2.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn output_without_a_summary_is_an_error() {
        assert!(PingReport::parse("ping: connect: Network is unreachable\n").is_err());
    }
}
