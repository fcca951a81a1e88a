//! `sidelane-bench qos`: how accurately each dataplane holds a pod to its rate.
//!
//! Every case builds a fresh [`PodLink`] (so every bucket starts full, as for a new pod), limits
//! one direction with one dataplane, and runs iperf3 across it:
//! - `ingress` = into the pod: the client in the host namespace sends to the server in the pod;
//!   `egress` = out of the pod: the client in the pod sends to the server in the host namespace.
//! - Sidelane's programs go on the host-side veth (placement `HostPeer`); the reference
//!   `bandwidth` plugin acts on the same veth (tbf, and an ifb for the pod's egress) with the
//!   burst Kubernetes runtimes give it (see [`crate::bandwidth_plugin`]).
//! - `measured_mbps` is the receiver's payload rate over the whole run and `ratio` is it over
//!   the configured rate; `first_second_ratio` is the receiver's payload rate over the first
//!   second (from its half-second intervals) over the configured rate, and
//!   `peak_half_second_ratio` its highest half-second interval over it. Payload rates: headers
//!   count against a limit but not as goodput, so a perfect limiter shows about 0.96 for TCP
//!   (1448 of 1500 bytes per segment) and 0.981 for UDP (1472 of 1500).
//! - Runs last 20 s for TCP and 10 s for UDP (3 s for both with `--quick`; see
//!   `QosBenchOptions::run_duration` for why TCP runs longer).
//! - UDP is offered at 1.25 times the limit ([`UDP_OFFERED_FACTOR`]), in 1472-byte datagrams;
//!   `retransmits` is the TCP sender's count (0 for UDP).
//! - `loaded_rtt`: 128 TCP flows out of the pod saturate a 100 Mbit/s egress limit while the pod
//!   pings the host every 10 ms (the echo requests share the limited direction). The figure is
//!   the loaded p99 RTT minus the **idle p50** RTT measured on the same link just before: the
//!   delay the limiter adds, against a typical idle round trip (subtracting the idle p99 instead
//!   would hide idle jitter in the baseline). Replies later than the ping's linger count as lost
//!   and are reported in the table.
//! - `prog_ns_per_packet`: each program's mean cost per packet under `BPF_PROG_TEST_RUN`, from
//!   the agent ([`prog_ns_per_packet`]).

use std::{
    fmt::Write as _,
    fs,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde::Serialize;
use sidelane_api::qos::Direction;

use crate::{
    bandwidth_plugin::{self, BandwidthPlugin, Limits, Shaping},
    iperf::{IperfReport, IperfSpec, Proto},
    sidelane::{self, PinRoot, SidelaneQos},
    topology::PodLink,
};

/// UDP is offered at this multiple of the limit: the limiter must drop a fifth of it, yet the
/// two-core machine's receiver keeps up. (At 1.5 times, 750 Mbit/s offered against 500, the
/// receiving socket itself dropped up to 0.6% of the datagrams the policer had passed: a loss
/// that is the machine's, not the limiter's.)
pub const UDP_OFFERED_FACTOR: f64 = 1.25;
/// Flows in the loaded-latency case (iperf3's `-P` maximum).
pub const LOADED_FLOWS: u32 = 128;
/// The limit in the loaded-latency case, Mbit/s.
pub const LOADED_MBPS: u64 = 100;
/// The ping interval.
const PING_INTERVAL: Duration = Duration::from_millis(10);

/// What to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QosBenchOptions {
    /// The reduced set (100 Mbit/s only, 3 s runs, a short loaded-latency case): under a minute.
    pub quick: bool,
    /// The burst given to the `bandwidth` plugin, bits (both directions).
    pub plugin_burst_bits: u64,
}

impl Default for QosBenchOptions {
    fn default() -> QosBenchOptions {
        QosBenchOptions {
            quick: false,
            plugin_burst_bits: bandwidth_plugin::KUBERNETES_DEFAULT_BURST_BITS,
        }
    }
}

impl QosBenchOptions {
    fn rates_mbps(&self) -> &'static [u64] {
        if self.quick { &[100] } else { &[10, 100, 500] }
    }

    /// How long one case sends. TCP runs 20 s in the full set: a policed TCP flow on a pod link
    /// recovers from drops by retransmission timeouts, and the data still waiting for one when
    /// the run ends (up to a timeout's worth, ~1% of a 10 s run) is never counted; twice the
    /// run halves that edge effect (measured at 100 Mbit/s: 0.944–0.956 over 10 s, 0.956–0.960
    /// over 20 s).
    fn run_duration(&self, proto: &str) -> Duration {
        Duration::from_secs(match (self.quick, proto) {
            (true, _) => 3,
            (false, "tcp") => 20,
            (false, _) => 10,
        })
    }

    fn load_duration(&self) -> Duration {
        Duration::from_secs(if self.quick { 4 } else { 12 })
    }
}

/// The dataplane under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Sidelane's TC eBPF programs.
    Sidelane,
    /// The reference CNI `bandwidth` plugin.
    BandwidthPlugin,
}

impl Mode {
    /// Both, in report order.
    pub const ALL: [Mode; 2] = [Mode::Sidelane, Mode::BandwidthPlugin];

    /// The name used in the report.
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Sidelane => "sidelane",
            Mode::BandwidthPlugin => "bandwidth-plugin",
        }
    }
}

/// `target/bench/qos.json` as a whole.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QosReport {
    /// One per (rate, direction, protocol, mode).
    pub cases: Vec<Case>,
    /// One per mode.
    pub loaded_rtt: Vec<LoadedRtt>,
    /// Per-packet program cost: each program's own, net of the test-run harness.
    pub prog_ns_per_packet: ProgNs,
    /// The raw `BPF_PROG_TEST_RUN` figures behind it.
    pub prog_test_run_ns: TestRunNs,
}

/// Raw `BPF_PROG_TEST_RUN` times per run, ns: each QoS program, and a two-instruction program
/// that returns at once (the harness: the kernel's per-run skb setup and the timing loop).
/// `prog_ns_per_packet` is raw minus harness.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct TestRunNs {
    /// The ingress (into the pod) program, as timed.
    pub ingress_raw: f64,
    /// The egress (out of the pod) program, as timed.
    pub egress_raw: f64,
    /// The empty program, as timed.
    pub harness: f64,
}

/// One rate measurement.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Case {
    /// `"ingress"` (into the pod) or `"egress"` (out of it).
    pub direction: &'static str,
    /// `"tcp"` or `"udp"`.
    pub proto: &'static str,
    /// The dataplane.
    pub mode: Mode,
    /// The limit, Mbit/s.
    pub configured_mbps: u64,
    /// The receiver's payload rate over the run, Mbit/s.
    pub measured_mbps: f64,
    /// `measured_mbps / configured_mbps`.
    pub ratio: f64,
    /// TCP retransmits (0 for UDP).
    pub retransmits: u64,
    /// The receiver's rate over the first second over the configured rate.
    pub first_second_ratio: f64,
    /// The receiver's highest rate in any of its half-second intervals over the configured
    /// rate: how far the limit lets a flow overshoot for a moment.
    pub peak_half_second_ratio: f64,
    /// UDP datagrams lost, percent (table only).
    #[serde(skip)]
    pub lost_percent: f64,
}

/// Latency under load.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LoadedRtt {
    /// The dataplane.
    pub mode: Mode,
    /// Parallel TCP flows.
    pub flows: u32,
    /// The egress limit, Mbit/s.
    pub configured_mbps: u64,
    /// Loaded p99 RTT minus idle p50 RTT, ms.
    pub rtt_added_ms_p99: f64,
    /// Idle p50 RTT, ms (table only).
    #[serde(skip)]
    pub idle_p50_ms: f64,
    /// Loaded p99 RTT, ms (table only).
    #[serde(skip)]
    pub loaded_p99_ms: f64,
    /// Share of pings unanswered under load (table only).
    #[serde(skip)]
    pub loaded_ping_loss: f64,
    /// The flows' aggregate receiver rate, Mbit/s (table only).
    #[serde(skip)]
    pub load_mbps: f64,
}

/// Mean nanoseconds per packet of each program.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct ProgNs {
    /// The program limiting traffic into the pod.
    pub ingress: f64,
    /// The program limiting traffic out of the pod.
    pub egress: f64,
}

/// The per-packet cost of the two QoS programs from the agent's `BPF_PROG_TEST_RUN`
/// measurement: each program's own cost (raw minus the harness) and the raw figures.
pub fn prog_ns_per_packet() -> anyhow::Result<(ProgNs, TestRunNs)> {
    let cost = sidelane_agent::dataplane::qos::measure_prog_cost()?;
    Ok((
        ProgNs {
            ingress: round1(cost.ingress_ns()),
            egress: round1(cost.egress_ns()),
        },
        TestRunNs {
            ingress_raw: round1(cost.ingress_raw_ns),
            egress_raw: round1(cost.egress_raw_ns),
            harness: round1(cost.harness_ns),
        },
    ))
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Runs the benchmark, printing progress to stderr.
pub fn run(options: &QosBenchOptions) -> anyhow::Result<QosReport> {
    let started = Instant::now();
    // First: it is quick, and if the programs cannot load nothing else will work either.
    let (prog_ns, test_run) = prog_ns_per_packet().context("measuring prog_ns_per_packet")?;
    eprintln!(
        "prog_ns_per_packet: ingress {:.1} ns, egress {:.1} ns (raw {:.1} / {:.1} ns, harness {:.1} ns)",
        prog_ns.ingress,
        prog_ns.egress,
        test_run.ingress_raw,
        test_run.egress_raw,
        test_run.harness
    );

    let mut cases = Vec::new();
    for &mbps in options.rates_mbps() {
        for dir in Direction::ALL {
            for proto in ["tcp", "udp"] {
                for mode in Mode::ALL {
                    let case = run_case(options, mode, dir, proto, mbps).with_context(|| {
                        format!(
                            "{} {proto} at {mbps} Mbit/s with {}",
                            dir.describe(),
                            mode.as_str()
                        )
                    })?;
                    eprintln!("{}", case_row(&case));
                    cases.push(case);
                }
            }
        }
    }

    let mut loaded_rtt = Vec::new();
    for mode in Mode::ALL {
        let rtt = run_loaded_rtt(options, mode)
            .with_context(|| format!("loaded RTT with {}", mode.as_str()))?;
        eprintln!("{}", rtt_row(&rtt));
        loaded_rtt.push(rtt);
    }
    eprintln!("done in {:.0?}", started.elapsed());
    Ok(QosReport {
        cases,
        loaded_rtt,
        prog_ns_per_packet: prog_ns,
        prog_test_run_ns: test_run,
    })
}

/// One dataplane's limit on a [`PodLink`]; removed on drop (each variant's own `Drop`), which
/// must come before the link's.
enum Shaper {
    Sidelane(#[expect(dead_code, reason = "held for its Drop, which detaches")] SidelaneQos),
    Plugin(#[expect(dead_code, reason = "held for its Drop, which runs CNI DEL")] BandwidthPlugin),
}

impl Shaper {
    fn install(
        link: &PodLink,
        mode: Mode,
        dir: Direction,
        mbps: u64,
        plugin_burst_bits: u64,
    ) -> anyhow::Result<Shaper> {
        match mode {
            Mode::Sidelane => {
                let qos = SidelaneQos::new(link, PinRoot::new("sidelane-bench"))?;
                qos.apply(&sidelane::spec(dir, mbps))?;
                Ok(Shaper::Sidelane(qos))
            }
            Mode::BandwidthPlugin => {
                let shaping = Shaping {
                    rate_bps: mbps * 1_000_000,
                    burst_bits: plugin_burst_bits,
                };
                let limits = match dir {
                    Direction::Ingress => Limits {
                        ingress: Some(shaping),
                        egress: None,
                    },
                    Direction::Egress => Limits {
                        ingress: None,
                        egress: Some(shaping),
                    },
                };
                let (plugin, _result) = BandwidthPlugin::add(link, &limits)?;
                Ok(Shaper::Plugin(plugin))
            }
        }
    }
}

#[expect(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "rates in bits per second fit f64 exactly enough, and back"
)]
fn udp_offered_bps(mbps: u64) -> u64 {
    (mbps as f64 * 1e6 * UDP_OFFERED_FACTOR) as u64
}

#[expect(
    clippy::cast_precision_loss,
    reason = "configured rates are small integers"
)]
fn ratio(bps: f64, mbps: u64) -> f64 {
    bps / (mbps as f64 * 1e6)
}

/// One case on a fresh pod link.
pub(crate) fn run_case(
    options: &QosBenchOptions,
    mode: Mode,
    dir: Direction,
    proto: &'static str,
    mbps: u64,
) -> anyhow::Result<Case> {
    let link = PodLink::new()?;
    let shaper = Shaper::install(&link, mode, dir, mbps, options.plugin_burst_bits)?;
    let duration = options.run_duration(proto);
    let spec = if proto == "udp" {
        IperfSpec::udp(udp_offered_bps(mbps), duration)
    } else {
        IperfSpec::tcp(duration)
    };
    let report = link.measure(dir, &spec)?;
    drop(shaper);
    case_from(mode, dir, &spec, mbps, &report)
}

fn case_from(
    mode: Mode,
    dir: Direction,
    spec: &IperfSpec,
    mbps: u64,
    report: &IperfReport,
) -> anyhow::Result<Case> {
    let first_second = report
        .first_second_bps()
        .context("the receiver reported no intervals within the first second")?;
    Ok(Case {
        direction: dir.as_str(),
        proto: spec.proto.as_str(),
        mode,
        configured_mbps: mbps,
        measured_mbps: report.receiver_bps / 1e6,
        ratio: ratio(report.receiver_bps, mbps),
        retransmits: report.retransmits,
        first_second_ratio: ratio(first_second, mbps),
        peak_half_second_ratio: ratio(peak_bps(report), mbps),
        lost_percent: match spec.proto {
            Proto::Tcp => 0.0,
            Proto::Udp { .. } => report.lost_percent,
        },
    })
}

/// The receiver's highest rate over one of its intervals (a last interval shorter than 0.4 s,
/// cut off by the end of the run, is left out: its rate is noise).
fn peak_bps(report: &IperfReport) -> f64 {
    report
        .receiver_intervals
        .iter()
        .filter(|i| i.end - i.start >= 0.4)
        .map(|i| i.bits_per_second)
        .fold(0.0, f64::max)
}

fn run_loaded_rtt(options: &QosBenchOptions, mode: Mode) -> anyhow::Result<LoadedRtt> {
    let dir = Direction::Egress;
    let link = PodLink::new()?;
    let shaper = Shaper::install(&link, mode, dir, LOADED_MBPS, options.plugin_burst_bits)?;

    let idle = link.ping(dir, 200, PING_INTERVAL, Duration::from_secs(1))?;
    let idle_p50 = idle.p50().context("no reply to any idle ping")?;

    let load_duration = options.load_duration();
    // Let the flows start and any initial burst drain before sampling, and stop sampling half
    // a second before the flows end.
    let warmup = Duration::from_millis(1500);
    let sampling = load_duration
        .saturating_sub(warmup)
        .saturating_sub(Duration::from_millis(500));
    let count = u32::try_from(sampling.as_millis() / PING_INTERVAL.as_millis()).unwrap_or(100);
    let spec = IperfSpec::tcp(load_duration)
        .parallel(LOADED_FLOWS)
        .interval(Duration::from_secs(1));
    let (load, loaded) = thread::scope(|scope| {
        let load = scope.spawn(|| link.measure(dir, &spec));
        thread::sleep(warmup);
        // Replies stuck in a deep queue may take seconds: wait for them well past the load.
        let loaded = link.ping(dir, count, PING_INTERVAL, Duration::from_secs(10));
        (load.join(), loaded)
    });
    let load = load.map_err(|_| anyhow::anyhow!("the load thread panicked"))??;
    let loaded = loaded?;
    drop(shaper);
    let loaded_p99 = loaded.p99().context("no reply to any ping under load")?;
    Ok(LoadedRtt {
        mode,
        flows: LOADED_FLOWS,
        configured_mbps: LOADED_MBPS,
        rtt_added_ms_p99: loaded_p99 - idle_p50,
        idle_p50_ms: idle_p50,
        loaded_p99_ms: loaded_p99,
        loaded_ping_loss: loaded.loss(),
        load_mbps: load.receiver_bps / 1e6,
    })
}

/// Writes `report` as pretty JSON to `path`, creating the directory.
pub fn write_report(report: &QosReport, path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let json = serde_json::to_string_pretty(report).context("serialising the report")?;
    fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))
}

fn direction_label(direction: &str) -> &'static str {
    if direction == "ingress" {
        Direction::Ingress.describe()
    } else {
        Direction::Egress.describe()
    }
}

fn case_row(c: &Case) -> String {
    let loss = if c.proto == "udp" {
        format!("{:.1}% lost", c.lost_percent)
    } else {
        format!("{} retx", c.retransmits)
    };
    format!(
        "{:<24} {:<4} {:<17} {:>6} {:>10.2} {:>7.3} {:>9.3} {:>9.3}  {loss}",
        direction_label(c.direction),
        c.proto,
        c.mode.as_str(),
        c.configured_mbps,
        c.measured_mbps,
        c.ratio,
        c.first_second_ratio,
        c.peak_half_second_ratio,
    )
}

fn rtt_row(r: &LoadedRtt) -> String {
    format!(
        "{:<17} {:>5} {:>6} {:>10.3} {:>10.3} {:>10.3} {:>7.1}% {:>10.1}",
        r.mode.as_str(),
        r.flows,
        r.configured_mbps,
        r.idle_p50_ms,
        r.loaded_p99_ms,
        r.rtt_added_ms_p99,
        r.loaded_ping_loss * 100.0,
        r.load_mbps,
    )
}

/// The report as a readable table; directions are named from the pod's side.
pub fn table(report: &QosReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<24} {:<4} {:<17} {:>6} {:>10} {:>7} {:>9} {:>9}  retransmits / loss",
        "direction", "proto", "mode", "Mbit/s", "measured", "ratio", "1st-sec", "peak-0.5s"
    );
    for c in &report.cases {
        let _ = writeln!(out, "{}", case_row(c));
    }
    let _ = writeln!(
        out,
        "\nlatency under load ({LOADED_FLOWS} TCP flows out of the pod, ping pod -> host):"
    );
    let _ = writeln!(
        out,
        "{:<17} {:>5} {:>6} {:>10} {:>10} {:>10} {:>8} {:>10}",
        "mode", "flows", "Mbit/s", "idle p50", "load p99", "added p99", "lost", "load Mbit/s"
    );
    for r in &report.loaded_rtt {
        let _ = writeln!(out, "{}", rtt_row(r));
    }
    let _ = writeln!(
        out,
        "\nper-packet program cost (BPF_PROG_TEST_RUN, net of the harness): ingress (into the pod) \
         {:.1} ns, egress (out of the pod) {:.1} ns\n  raw: ingress {:.1} ns, egress {:.1} ns; \
         harness (empty program) {:.1} ns",
        report.prog_ns_per_packet.ingress,
        report.prog_ns_per_packet.egress,
        report.prog_test_run_ns.ingress_raw,
        report.prog_test_run_ns.egress_raw,
        report.prog_test_run_ns.harness
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> QosReport {
        QosReport {
            cases: vec![Case {
                direction: "ingress",
                proto: "tcp",
                mode: Mode::BandwidthPlugin,
                configured_mbps: 100,
                measured_mbps: 95.5,
                ratio: 0.955,
                retransmits: 12,
                first_second_ratio: 41.0,
                peak_half_second_ratio: 45.0,
                lost_percent: 0.0,
            }],
            loaded_rtt: vec![LoadedRtt {
                mode: Mode::Sidelane,
                flows: 128,
                configured_mbps: 100,
                rtt_added_ms_p99: 0.5,
                idle_p50_ms: 0.05,
                loaded_p99_ms: 0.55,
                loaded_ping_loss: 0.02,
                load_mbps: 95.0,
            }],
            prog_ns_per_packet: ProgNs {
                ingress: 20.0,
                egress: 21.0,
            },
            prog_test_run_ns: TestRunNs {
                ingress_raw: 46.0,
                egress_raw: 47.0,
                harness: 26.0,
            },
        }
    }

    #[test]
    fn the_json_report_has_exactly_the_agreed_shape() {
        let json = serde_json::to_value(sample()).expect("serialises");
        assert_eq!(
            json,
            serde_json::json!({
                "cases": [{"direction": "ingress", "proto": "tcp", "mode": "bandwidth-plugin",
                           "configured_mbps": 100, "measured_mbps": 95.5, "ratio": 0.955,
                           "retransmits": 12, "first_second_ratio": 41.0,
                           "peak_half_second_ratio": 45.0}],
                "loaded_rtt": [{"mode": "sidelane", "flows": 128, "configured_mbps": 100,
                                "rtt_added_ms_p99": 0.5}],
                "prog_ns_per_packet": {"ingress": 20.0, "egress": 21.0},
                "prog_test_run_ns": {"ingress_raw": 46.0, "egress_raw": 47.0, "harness": 26.0}
            })
        );
    }

    #[test]
    fn the_table_names_directions_from_the_pods_side() {
        let table = table(&sample());
        assert!(table.contains("ingress (into the pod)"), "{table}");
        assert!(table.contains("bandwidth-plugin"), "{table}");
    }

    #[test]
    fn the_quick_set_is_small_enough_for_a_minute() {
        let quick = QosBenchOptions {
            quick: true,
            ..QosBenchOptions::default()
        };
        let cases = quick.rates_mbps().len() * 2 * 2 * Mode::ALL.len();
        let seconds = cases as u64 * quick.run_duration("tcp").as_secs()
            + Mode::ALL.len() as u64 * quick.load_duration().as_secs();
        assert!(seconds <= 40, "{cases} cases, {seconds} s of traffic");
    }

    #[test]
    fn udp_is_offered_above_the_limit() {
        assert_eq!(udp_offered_bps(100), 125_000_000);
    }
}
