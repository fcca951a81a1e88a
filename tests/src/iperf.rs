//! iperf3 3.12 between two namespaces, with its JSON report parsed.
//!
//! The server is a one-off (`-s -1`) started in the receiving namespace and awaited until it
//! listens; the client runs in the sending namespace with `--json --get-server-output`, so one
//! report holds both sides. Each namespace pair is private to one test, so a fixed port never
//! collides.
//!
//! ## Which side's figures
//! - The rate is the **receiver's**: `end.sum_received` (TCP, and UDP in 3.12, where it holds
//!   what the server counted, not what the client sent).
//! - Retransmits are the TCP **sender's** (`end.sum_sent.retransmits`).
//! - The interval series is given for both sides. [`IperfReport::receiver_intervals`] comes from
//!   the server's own report (or the client's with `-R`): the rate over the first second, or
//!   after a live change, is measured where the packets arrive, so a policer's drops and a
//!   shaper's queue both show as they are. The server reports at the same interval as the
//!   client (`-i`).

use std::{thread, time::Duration};

use anyhow::{Context as _, bail};
use serde::Deserialize;

use crate::{
    netns::NetNs,
    process::{self, Background},
};

/// UDP payload per datagram: the largest that needs no fragmentation on a 1500-byte MTU (1500
/// IP bytes per datagram, so payload is 98.1% of what a limit on IP bytes passes).
pub const UDP_DATAGRAM_BYTES: u32 = 1472;
/// The same over IPv6, whose header is 20 bytes longer (payload 96.8% of the IP bytes). A
/// datagram that must be fragmented is lost whole when a limiter drops one of its fragments,
/// which no limiter that counts packets can avoid.
pub const UDP_DATAGRAM_BYTES_V6: u32 = 1452;

/// The port both ends use unless told otherwise.
pub const DEFAULT_PORT: u16 = 5201;

/// TCP, or UDP offered at a fixed rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// TCP (Cubic, the kernel default).
    Tcp,
    /// UDP sent at `offered_bps` bits per second (`-u -b`). To measure a limit, offer more than
    /// it (1.5 to 2 times).
    Udp {
        /// The sending rate.
        offered_bps: u64,
    },
}

impl Proto {
    /// `"tcp"` or `"udp"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp { .. } => "udp",
        }
    }
}

/// One iperf3 run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IperfSpec {
    /// TCP or UDP.
    pub proto: Proto,
    /// How long the client sends (`-t`).
    pub duration: Duration,
    /// The reporting interval of both sides (`-i`).
    pub interval: Duration,
    /// Parallel streams (`-P`).
    pub parallel: u32,
    /// Whether the server sends and the client receives (`-R`).
    pub reverse: bool,
    /// The server's port.
    pub port: u16,
}

impl IperfSpec {
    /// TCP for `duration`, one stream, half-second intervals.
    pub fn tcp(duration: Duration) -> IperfSpec {
        IperfSpec {
            proto: Proto::Tcp,
            duration,
            interval: Duration::from_millis(500),
            parallel: 1,
            reverse: false,
            port: DEFAULT_PORT,
        }
    }

    /// UDP offered at `offered_bps` for `duration`, one stream, half-second intervals.
    pub fn udp(offered_bps: u64, duration: Duration) -> IperfSpec {
        IperfSpec {
            proto: Proto::Udp { offered_bps },
            ..IperfSpec::tcp(duration)
        }
    }

    /// With `n` parallel streams.
    #[must_use]
    pub fn parallel(mut self, n: u32) -> IperfSpec {
        self.parallel = n;
        self
    }

    /// With reporting interval `interval`.
    #[must_use]
    pub fn interval(mut self, interval: Duration) -> IperfSpec {
        self.interval = interval;
        self
    }

    /// With the server sending (`-R`).
    #[must_use]
    pub fn reverse(mut self) -> IperfSpec {
        self.reverse = true;
        self
    }

    /// The client's arguments after `iperf3`.
    pub fn client_args(&self, server_addr: &str) -> Vec<String> {
        let mut args = vec![
            "-c".to_owned(),
            server_addr.to_owned(),
            "-p".to_owned(),
            self.port.to_string(),
            "-t".to_owned(),
            secs(self.duration),
            "-i".to_owned(),
            secs(self.interval),
            "-P".to_owned(),
            self.parallel.to_string(),
            "--json".to_owned(),
            "--get-server-output".to_owned(),
        ];
        if let Proto::Udp { offered_bps } = self.proto {
            args.extend([
                "-u".to_owned(),
                "-b".to_owned(),
                offered_bps.to_string(),
                "-l".to_owned(),
                if server_addr.contains(':') {
                    UDP_DATAGRAM_BYTES_V6
                } else {
                    UDP_DATAGRAM_BYTES
                }
                .to_string(),
            ]);
        }
        if self.reverse {
            args.push("-R".to_owned());
        }
        args
    }
}

fn secs(d: Duration) -> String {
    format!("{}", d.as_secs_f64())
}

/// A one-off iperf3 server (`-s -1`), killed on drop if still running.
#[derive(Debug)]
pub struct IperfServer {
    process: Background,
}

impl IperfServer {
    /// Starts a server bound to `addr:port` in `ns`, reporting every `interval`, and waits
    /// (up to five seconds) until it listens.
    pub fn start(
        ns: &NetNs,
        addr: &str,
        port: u16,
        interval: Duration,
    ) -> anyhow::Result<IperfServer> {
        let port_s = port.to_string();
        let interval_s = secs(interval);
        let mut process = ns.spawn(&[
            "iperf3",
            "-s",
            "-1",
            "-B",
            addr,
            "-p",
            &port_s,
            "-i",
            &interval_s,
            "--json",
        ])?;
        // Do not probe by connecting: a one-off server would take the probe for its one test.
        let filter = format!("sport = :{port}");
        for _ in 0..250 {
            if !process.is_running() {
                bail!(
                    "`{}` exited before listening (is {addr} configured in {}?)",
                    process.command(),
                    ns.name()
                );
            }
            if !ns.exec(&["ss", "-Hltn", &filter])?.trim().is_empty() {
                return Ok(IperfServer { process });
            }
            thread::sleep(Duration::from_millis(20));
        }
        bail!("`{}` did not listen within 5 s", process.command())
    }

    /// Whether the server is still running (a one-off server exits after its test).
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }
}

/// Runs the client in `ns` against `server_addr`; the server must be listening.
pub fn run_client(ns: &NetNs, server_addr: &str, spec: &IperfSpec) -> anyhow::Result<IperfReport> {
    let client_args = spec.client_args(server_addr);
    let mut argv = vec!["iperf3"];
    argv.extend(client_args.iter().map(String::as_str));
    let mut cmd = ns.command(&argv);
    // Generous: a limiter may delay the control connection's last exchange, never by this much.
    let timeout = spec.duration + Duration::from_secs(30);
    let finished = process::run(&mut cmd, None, timeout)?;
    let parsed = IperfReport::parse(&finished.stdout, spec);
    if finished.status.success() {
        return parsed.with_context(|| format!("`{}`", finished.command));
    }
    // iperf3 reports its own errors inside the JSON (and exits 1): prefer that message.
    let reason = match parsed {
        Err(e) if !finished.stdout.trim().is_empty() => format!("{e:#}"),
        _ => finished.stderr.trim().to_owned(),
    };
    bail!(
        "`{}` failed ({}): {reason}",
        finished.command,
        finished.status
    )
}

/// Starts a server in `server_ns` on `server_addr` and runs the client in `client_ns`: one
/// measurement, traffic flowing client to server (server to client with `-R`).
pub fn measure(
    server_ns: &NetNs,
    server_addr: &str,
    client_ns: &NetNs,
    spec: &IperfSpec,
) -> anyhow::Result<IperfReport> {
    measure_via(server_ns, server_addr, client_ns, server_addr, spec)
}

/// As [`measure`], the server bound to `bind` and the client connecting to `target` (an
/// address translated to `bind` on the way, as a DNAT'd one).
pub fn measure_via(
    server_ns: &NetNs,
    bind: &str,
    client_ns: &NetNs,
    target: &str,
    spec: &IperfSpec,
) -> anyhow::Result<IperfReport> {
    let mut last_error = None;
    for _ in 0..3 {
        let _server = IperfServer::start(server_ns, bind, spec.port, spec.interval)?;
        match run_client(client_ns, target, spec) {
            Ok(report) => return Ok(report),
            // A refused or reset control connection: start afresh, a couple of times.
            Err(e) if is_connect_error(&e) => last_error = Some(e),
            Err(e) => return Err(e),
        }
        thread::sleep(Duration::from_millis(200));
    }
    Err(last_error
        .unwrap_or_else(|| anyhow::anyhow!("no attempt made"))
        .context("iperf3 could not connect after 3 attempts"))
}

fn is_connect_error(e: &anyhow::Error) -> bool {
    let text = format!("{e:#}");
    text.contains("unable to connect") || text.contains("Connection refused")
}

/// One reporting interval, summed over streams.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
pub struct Interval {
    /// Seconds since the test started, on that side's clock.
    pub start: f64,
    /// End of the interval, likewise.
    pub end: f64,
    /// Payload bytes sent or received in it.
    pub bytes: u64,
    /// Payload rate over it.
    pub bits_per_second: f64,
}

/// The figures a QoS measurement needs from one iperf3 run.
#[derive(Clone, Debug, PartialEq)]
pub struct IperfReport {
    /// Payload rate at the receiver over the whole run, bits per second.
    pub receiver_bps: f64,
    /// Payload rate at the sender over the whole run, bits per second.
    pub sender_bps: f64,
    /// TCP segments the sender retransmitted (0 for UDP).
    pub retransmits: u64,
    /// UDP datagrams lost, percent (0 for TCP).
    pub lost_percent: f64,
    /// The receiver's intervals (see the module documentation).
    pub receiver_intervals: Vec<Interval>,
    /// The sender's intervals.
    pub sender_intervals: Vec<Interval>,
}

impl IperfReport {
    /// Parses a client's `--json --get-server-output` report of a run made with `spec`.
    pub fn parse(json: &str, spec: &IperfSpec) -> anyhow::Result<IperfReport> {
        let client: RawReport = serde_json::from_str(json).with_context(|| {
            format!(
                "parsing iperf3's JSON report: {}",
                json.chars().take(500).collect::<String>()
            )
        })?;
        if let Some(error) = client.error {
            bail!("iperf3: {error}");
        }
        let end = client.end.context("iperf3's report has no `end`")?;
        let server = client
            .server_output_json
            .context("iperf3's report has no server output (--get-server-output)")?;
        let received = end
            .sum_received
            .or(end.sum)
            .context("iperf3's report has no receiver sum")?;
        let sent = end
            .sum_sent
            .or(end.sum)
            .context("iperf3's report has no sender sum")?;
        let client_intervals = sums(client.intervals);
        let server_intervals = sums(server.intervals);
        let (receiver_intervals, sender_intervals) = if spec.reverse {
            (client_intervals, server_intervals)
        } else {
            (server_intervals, client_intervals)
        };
        Ok(IperfReport {
            receiver_bps: received.bits_per_second,
            sender_bps: sent.bits_per_second,
            retransmits: match spec.proto {
                Proto::Tcp => sent.retransmits.unwrap_or(0),
                Proto::Udp { .. } => 0,
            },
            lost_percent: received.lost_percent.unwrap_or(0.0),
            receiver_intervals,
            sender_intervals,
        })
    }

    /// The receiver's payload rate over the intervals that lie within `[from_s, to_s]` seconds
    /// (with 50 ms of slack for the clocks' jitter), bits per second; `None` if none do.
    pub fn receiver_rate_between(&self, from_s: f64, to_s: f64) -> Option<f64> {
        rate_between(&self.receiver_intervals, from_s, to_s)
    }

    /// The receiver's payload rate over the first second of the flow.
    pub fn first_second_bps(&self) -> Option<f64> {
        self.receiver_rate_between(0.0, 1.0)
    }
}

/// The payload rate over the `intervals` that lie within `[from_s, to_s]`, bits per second.
/// Edges have 50 ms of slack for the clocks' jitter; an interval that starts at the window's
/// end (within the slack) lies after it, not in it.
pub fn rate_between(intervals: &[Interval], from_s: f64, to_s: f64) -> Option<f64> {
    const SLACK_S: f64 = 0.05;
    let inside: Vec<&Interval> = intervals
        .iter()
        .filter(|i| {
            i.start >= from_s - SLACK_S
                && i.start < to_s - SLACK_S
                && i.end <= to_s + SLACK_S
                && i.end > i.start
        })
        .collect();
    let first = inside.first()?;
    let last = inside.last()?;
    let span = last.end - first.start;
    #[expect(
        clippy::cast_precision_loss,
        reason = "byte counts of one run are far below 2^52"
    )]
    let bits = inside.iter().map(|i| i.bytes).sum::<u64>() as f64 * 8.0;
    (span > 0.0).then(|| bits / span)
}

fn sums(intervals: Vec<RawInterval>) -> Vec<Interval> {
    intervals.into_iter().map(|i| i.sum).collect()
}

#[derive(Deserialize)]
struct RawReport {
    #[serde(default)]
    intervals: Vec<RawInterval>,
    end: Option<RawEnd>,
    error: Option<String>,
    server_output_json: Option<RawServer>,
}

#[derive(Deserialize)]
struct RawServer {
    #[serde(default)]
    intervals: Vec<RawInterval>,
}

#[derive(Deserialize)]
struct RawInterval {
    sum: Interval,
}

#[derive(Deserialize)]
struct RawEnd {
    sum_sent: Option<RawSum>,
    sum_received: Option<RawSum>,
    sum: Option<RawSum>,
}

#[derive(Clone, Copy, Deserialize)]
struct RawSum {
    bits_per_second: f64,
    retransmits: Option<u64>,
    lost_percent: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of iperf3 3.12's TCP report (trimmed to the fields used).
    const TCP_REPORT: &str = r#"{
        "start": {},
        "intervals": [
            {"streams": [], "sum": {"start": 0, "end": 0.5, "seconds": 0.5, "bytes": 12500000,
                                    "bits_per_second": 200000000, "retransmits": 3}},
            {"streams": [], "sum": {"start": 0.5, "end": 1.0, "seconds": 0.5, "bytes": 6250000,
                                    "bits_per_second": 100000000, "retransmits": 0}}
        ],
        "end": {
            "sum_sent": {"start": 0, "end": 1.0, "bytes": 18750000, "bits_per_second": 150000000,
                         "retransmits": 3, "sender": true},
            "sum_received": {"start": 0, "end": 1.0, "bytes": 12500000,
                             "bits_per_second": 100000000, "sender": false}
        },
        "server_output_json": {
            "intervals": [
                {"streams": [], "sum": {"start": 0, "end": 0.500041, "bytes": 6250000,
                                        "bits_per_second": 99991800}},
                {"streams": [], "sum": {"start": 0.500041, "end": 1.000032, "bytes": 6250000,
                                        "bits_per_second": 100001800}},
                {"streams": [], "sum": {"start": 1.000032, "end": 1.000225, "bytes": 1000,
                                        "bits_per_second": 41450777}}
            ]
        }
    }"#;

    #[test]
    fn a_tcp_report_gives_the_receivers_rate_and_the_senders_retransmits() {
        let r = IperfReport::parse(TCP_REPORT, &IperfSpec::tcp(Duration::from_secs(1)))
            .expect("parses");
        assert!((r.receiver_bps - 100e6).abs() < 1.0);
        assert!((r.sender_bps - 150e6).abs() < 1.0);
        assert_eq!(r.retransmits, 3);
        assert_eq!(r.receiver_intervals.len(), 3);
        assert!((r.receiver_intervals[0].bits_per_second - 99_991_800.0).abs() < 1.0);
        assert_eq!(r.sender_intervals[0].bytes, 12_500_000);
    }

    #[test]
    fn the_first_second_is_measured_at_the_receiver() {
        let r = IperfReport::parse(TCP_REPORT, &IperfSpec::tcp(Duration::from_secs(1)))
            .expect("parses");
        let first = r
            .first_second_bps()
            .expect("two intervals in the first second");
        // 12.5 MB over 1.000032 s at the receiver, not the sender's 18.75 MB; the short
        // trailing interval (which starts at 1.0) is not part of the first second.
        assert!(
            (first - 12_500_000.0 * 8.0 / 1.000_032).abs() < 1.0,
            "{first}"
        );
    }

    #[test]
    fn with_reverse_the_client_is_the_receiver() {
        let r = IperfReport::parse(
            TCP_REPORT,
            &IperfSpec::tcp(Duration::from_secs(1)).reverse(),
        )
        .expect("parses");
        assert_eq!(r.receiver_intervals[0].bytes, 12_500_000);
        assert_eq!(r.sender_intervals.len(), 3);
    }

    #[test]
    fn a_udp_report_gives_what_the_server_received_and_the_loss() {
        let json = r#"{
            "intervals": [],
            "end": {
                "sum": {"bits_per_second": 200000000, "lost_percent": 0, "sender": true},
                "sum_sent": {"bits_per_second": 200000000, "lost_percent": 0},
                "sum_received": {"bits_per_second": 99000000, "lost_percent": 50.5}
            },
            "server_output_json": {"intervals": []}
        }"#;
        let r = IperfReport::parse(json, &IperfSpec::udp(200_000_000, Duration::from_secs(1)))
            .expect("parses");
        assert!((r.receiver_bps - 99e6).abs() < 1.0);
        assert!((r.lost_percent - 50.5).abs() < 1e-9);
        assert_eq!(r.retransmits, 0);
        assert_eq!(r.first_second_bps(), None);
    }

    #[test]
    fn an_iperf_error_is_reported_as_such() {
        let err = IperfReport::parse(
            r#"{"start": {}, "intervals": [], "end": {}, "error": "unable to connect to server: Connection refused"}"#,
            &IperfSpec::tcp(Duration::from_secs(1)),
        )
        .expect_err("an error report");
        assert!(is_connect_error(&err), "{err}");
    }

    #[test]
    fn the_client_command_line_carries_every_option() {
        let spec = IperfSpec::udp(150_000_000, Duration::from_secs(3))
            .parallel(4)
            .interval(Duration::from_secs(1))
            .reverse();
        assert_eq!(
            spec.client_args("10.0.0.2").join(" "),
            "-c 10.0.0.2 -p 5201 -t 3 -i 1 -P 4 --json --get-server-output -u -b 150000000 -l 1472 -R"
        );
    }

    #[test]
    fn udp_datagrams_to_an_ipv6_server_fit_the_mtu_unfragmented() {
        let spec = IperfSpec::udp(1_000_000, Duration::from_secs(1));
        let args = spec.client_args("fd00::2");
        assert!(args.windows(2).any(|w| w == ["-l", "1452"]), "{args:?}");
    }
}
