//! Where an ADD's time goes, for operators and the CNI benchmark:
//! - `sidelane_agent_add_step_seconds_total{step}`: time spent in each step of ADD, whether the
//!   ADD then succeeded or not;
//! - `sidelane_agent_add_steps_total{step}`: how many times each step ran;
//! - `sidelane_agent_add_duration_seconds`: whole ADDs that succeeded (a histogram from 1 ms).

use std::{
    collections::BTreeMap,
    future::Future,
    sync::atomic::AtomicU64,
    time::{Duration, Instant},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

/// A step of ADD.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub enum AddStep {
    /// Kube-OVN's provider check and the wait for the controller's allocation on the pod.
    Allocation,
    /// Writing the attachment's record.
    Record,
    /// Creating and configuring the veth pair(s) and the pod's interface.
    Links,
    /// Putting the host end on the eBPF fast path.
    Fastpath,
    /// Adding the port to OVS's integration bridge.
    OvsPort,
    /// Waiting for ovn-controller to bind the port (`ovn-installed`).
    OvnInstalled,
    /// Attaching and configuring the rate limits.
    Qos,
}

impl AddStep {
    /// Every step, in the order ADD takes them.
    pub const ALL: [AddStep; 7] = [
        AddStep::Allocation,
        AddStep::Record,
        AddStep::Links,
        AddStep::Fastpath,
        AddStep::OvsPort,
        AddStep::OvnInstalled,
        AddStep::Qos,
    ];

    /// The `step` label.
    pub const fn as_str(self) -> &'static str {
        match self {
            AddStep::Allocation => "allocation",
            AddStep::Record => "record",
            AddStep::Links => "links",
            AddStep::Fastpath => "fastpath",
            AddStep::OvsPort => "ovs_port",
            AddStep::OvnInstalled => "ovn_installed",
            AddStep::Qos => "qos",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    step: &'static str,
}

/// What the steps have cost so far: seconds and runs per step.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepTotals {
    /// Seconds spent, per step.
    pub seconds: BTreeMap<AddStep, f64>,
    /// Runs, per step.
    pub runs: BTreeMap<AddStep, u64>,
}

impl StepTotals {
    /// What was spent between `earlier` and `self`.
    #[must_use]
    pub fn since(&self, earlier: &StepTotals) -> StepTotals {
        let seconds = self
            .seconds
            .iter()
            .map(|(step, s)| (*step, s - earlier.seconds.get(step).copied().unwrap_or(0.0)))
            .collect();
        let runs = self
            .runs
            .iter()
            .map(|(step, n)| (*step, n - earlier.runs.get(step).copied().unwrap_or(0)))
            .collect();
        StepTotals { seconds, runs }
    }
}

/// The agent's ADD timings.
#[derive(Debug)]
pub struct AddTimes {
    seconds: Family<StepLabels, Counter<f64, AtomicU64>>,
    runs: Family<StepLabels, Counter>,
    whole: Histogram,
}

impl Default for AddTimes {
    fn default() -> AddTimes {
        AddTimes {
            seconds: Family::default(),
            runs: Family::default(),
            // 1 ms to about 16 s.
            whole: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
        }
    }
}

impl AddTimes {
    /// Registers the three metrics in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "add_step_seconds",
            "Seconds ADD spent in each step, whether the ADD succeeded or not",
            self.seconds.clone(),
        );
        registry.register("add_steps", "Times each step of ADD ran", self.runs.clone());
        registry.register(
            "add_duration_seconds",
            "Whole ADDs that succeeded, from the request to the answer",
            self.whole.clone(),
        );
    }

    /// Charges `spent` to `step`.
    pub(crate) fn spent(&self, step: AddStep, spent: Duration) {
        let labels = StepLabels {
            step: step.as_str(),
        };
        self.seconds
            .get_or_create(&labels)
            .inc_by(spent.as_secs_f64());
        self.runs.get_or_create(&labels).inc();
    }

    /// Runs `work` as `step`, charging its time (also when it fails).
    pub(crate) async fn timed<T>(&self, step: AddStep, work: impl Future<Output = T>) -> T {
        let started = Instant::now();
        let out = work.await;
        self.spent(step, started.elapsed());
        out
    }

    /// Records a whole ADD that succeeded.
    pub(crate) fn served(&self, took: Duration) {
        self.whole.observe(took.as_secs_f64());
    }

    /// The totals so far.
    pub fn totals(&self) -> StepTotals {
        let mut totals = StepTotals::default();
        for step in AddStep::ALL {
            let labels = StepLabels {
                step: step.as_str(),
            };
            totals
                .seconds
                .insert(step, self.seconds.get_or_create(&labels).get());
            totals
                .runs
                .insert(step, self.runs.get_or_create(&labels).get());
        }
        totals
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_timed_step_is_charged_once_with_its_time_and_totals_subtract() {
        let times = AddTimes::default();
        let before = times.totals();
        times.spent(AddStep::Links, Duration::from_millis(3));
        let out = times.timed(AddStep::Qos, async { 7 }).await;
        assert_eq!(out, 7);
        let spent = times.totals().since(&before);
        assert_eq!(spent.runs[&AddStep::Links], 1);
        assert_eq!(spent.runs[&AddStep::Qos], 1);
        assert_eq!(spent.runs[&AddStep::Allocation], 0);
        assert!((spent.seconds[&AddStep::Links] - 0.003).abs() < 1e-9);
    }

    #[test]
    fn the_metrics_are_exposed_under_the_agents_prefix_with_a_step_label() {
        let times = AddTimes::default();
        times.spent(AddStep::OvnInstalled, Duration::from_millis(250));
        times.served(Duration::from_millis(300));
        let mut registry = Registry::with_prefix("sidelane_agent");
        times.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        assert!(
            text.contains("sidelane_agent_add_step_seconds_total{step=\"ovn_installed\"} 0.25"),
            "{text}"
        );
        assert!(
            text.contains("sidelane_agent_add_steps_total{step=\"ovn_installed\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("sidelane_agent_add_duration_seconds_count 1"),
            "{text}"
        );
    }
}
