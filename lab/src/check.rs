//! The lab's checks as typed values: what kind of promise, about what, whether it held.

use serde::Deserialize;

/// The kinds of promise the lab checks; a scenario names the ones it must show
/// (`lab/scenarios.yaml`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckKind {
    /// The pod's node set it up through Multus.
    SetUp,
    /// Multus wrote `network-status`, and every interface in it is in the pod with the
    /// addresses reported.
    NetworkStatus,
    /// An attachment the pod's network selection asks for has an address.
    Attached,
    /// The controller's allocation annotations name the interface's address and switch.
    Allocation,
    /// An address the user asked for (`ip_address`) is the interface's.
    StaticAddress,
    /// The interface's address is one of the pool the user named (`ip_pool`).
    IpPool,
    /// The attachment is on the switch the user named (`logical_switch`).
    LogicalSwitch,
    /// A route of the `routes` annotation is in the pod.
    CustomRoute,
    /// The selection's `default-route` is the pod's default route.
    DefaultRoute,
    /// Pods of one switch on one node reach each other.
    ReachSameNode,
    /// Pods of one switch on two nodes reach each other.
    ReachAcrossNodes,
    /// Pods of two Subnets of one Vpc reach each other through its router.
    RoutedAcrossSubnets,
    /// Pods of different Vpcs do not reach each other.
    VpcIsolation,
    /// The scenario's allowed/denied matrix (security groups, private Subnets) holds.
    Isolation,
    /// The outside world sees what the scenario's NAT gateway promises (SNAT, DNAT, FIP) and
    /// nothing else.
    Outside,
    /// A rate limit holds, measured with iperf3.
    Qos,
    /// Same-node traffic of one switch took the eBPF fast path.
    FastPath,
    /// The `sidelane` command line shows what the scenario made.
    Cli,
    /// The seeds' debug commands (`kubectl exec <pod> -- ip addr show`, `ip route show`, a
    /// ping over net1; `kubectl get pod -o yaml` for network-status), run against a pod a real
    /// node runs, show what was allocated and what the pod has.
    KubectlExec,
    /// A kind of check the scenario must show ran and held.
    Shown,
}

impl CheckKind {
    /// The kind as `lab/scenarios.yaml` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::SetUp => "set-up",
            Self::NetworkStatus => "network-status",
            Self::Attached => "attached",
            Self::Allocation => "allocation",
            Self::StaticAddress => "static-address",
            Self::IpPool => "ip-pool",
            Self::LogicalSwitch => "logical-switch",
            Self::CustomRoute => "custom-route",
            Self::DefaultRoute => "default-route",
            Self::ReachSameNode => "reach-same-node",
            Self::ReachAcrossNodes => "reach-across-nodes",
            Self::RoutedAcrossSubnets => "routed-across-subnets",
            Self::VpcIsolation => "vpc-isolation",
            Self::Isolation => "isolation",
            Self::Outside => "outside",
            Self::Qos => "qos",
            Self::FastPath => "fast-path",
            Self::Cli => "cli",
            Self::KubectlExec => "kubectl-exec",
            Self::Shown => "shown",
        }
    }
}

/// One check and whether it held.
#[derive(Clone, Debug)]
pub struct Check {
    pub kind: CheckKind,
    /// What was checked, as the report reads it.
    pub what: String,
    pub ok: bool,
    /// What was seen.
    pub detail: String,
}

/// The checks of one scenario (or of the chaos run), in the order they ran.
#[derive(Clone, Debug, Default)]
pub struct Checks(Vec<Check>);

impl Checks {
    /// Records a check; a failure is printed at once.
    pub fn record(
        &mut self,
        kind: CheckKind,
        what: impl Into<String>,
        ok: bool,
        detail: impl Into<String>,
    ) {
        let check = Check {
            kind,
            what: what.into(),
            ok,
            detail: detail.into(),
        };
        if !check.ok {
            eprintln!("    FAILED: {}: {}", check.what, check.detail);
        }
        self.0.push(check);
    }

    /// Adds the checks of another list.
    pub fn extend(&mut self, other: Checks) {
        self.0.extend(other.0);
    }

    /// Every check, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Check> {
        self.0.iter()
    }

    /// The checks that failed.
    pub fn failed(&self) -> impl Iterator<Item = &Check> {
        self.0.iter().filter(|c| !c.ok)
    }

    /// How many checks there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no check ran.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Records, for each kind the scenario must show, whether checks of that kind ran and all
    /// held.
    pub fn require_shown(&mut self, kinds: &[CheckKind]) {
        for &kind in kinds {
            let of_kind: Vec<&Check> = self.0.iter().filter(|c| c.kind == kind).collect();
            let failed = of_kind.iter().filter(|c| !c.ok).count();
            let ok = !of_kind.is_empty() && failed == 0;
            let detail = format!("{} checks, {failed} failed", of_kind.len());
            self.record(
                CheckKind::Shown,
                format!("shows {}", kind.name()),
                ok,
                detail,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kind_the_scenario_must_show_fails_when_no_check_of_it_ran() {
        let mut checks = Checks::default();
        checks.record(CheckKind::Qos, "qos-pod held to 1000 Mbit/s", true, "");
        checks.require_shown(&[CheckKind::Qos, CheckKind::FastPath]);
        let shown: Vec<(String, bool)> = checks
            .iter()
            .filter(|c| c.kind == CheckKind::Shown)
            .map(|c| (c.what.clone(), c.ok))
            .collect();
        assert_eq!(
            shown,
            [
                ("shows qos".to_owned(), true),
                ("shows fast-path".to_owned(), false)
            ]
        );
    }

    #[test]
    fn a_kind_the_scenario_must_show_fails_when_one_of_its_checks_failed() {
        let mut checks = Checks::default();
        checks.record(CheckKind::Cli, "sidelane subnets lists a", true, "");
        checks.record(CheckKind::Cli, "sidelane subnets lists b", false, "");
        checks.require_shown(&[CheckKind::Cli]);
        let last = checks.iter().last().map(|c| (c.ok, c.detail.clone()));
        assert_eq!(last, Some((false, "2 checks, 1 failed".to_owned())));
    }

    #[test]
    fn kinds_read_from_yaml_as_the_scenarios_spell_them() {
        let kinds: Vec<CheckKind> =
            serde_saphyr::from_str("[reach-across-nodes, ip-pool, qos]").expect("valid YAML");
        assert_eq!(
            kinds,
            [
                CheckKind::ReachAcrossNodes,
                CheckKind::IpPool,
                CheckKind::Qos
            ]
        );
        assert!(kinds.iter().all(|k| !k.name().is_empty()));
    }
}
