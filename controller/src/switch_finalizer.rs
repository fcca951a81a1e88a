//! The finalizer that keeps a deleted OVN Subnet visible while its logical switch still holds
//! another owner's rows (Kube-OVN's own Subnet finalizer does the same for its switches): the
//! Subnet stays `Terminating` with `Ready=False` naming those rows, and goes once its switch
//! is gone from the Northbound database. Only a controller that writes the Northbound database
//! puts it on; one that does not (IPAM only) takes it off again.

use sidelane_api::crd::SubnetSpec;

use crate::nb::NbView;

/// Sidelane's finalizer on OVN Subnets.
pub const FINALIZER: &str = "sidelane.io/logical-switch";

/// What to do about one Subnet's finalizer now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing (yet).
    Wait,
    /// Put it on.
    Add,
    /// Take it off: the switch is gone, or was never Sidelane's to keep.
    Remove,
    /// Keep it: the switch stays for another owner's rows, described.
    Hold(String),
}

/// Whether Sidelane builds a switch for this Subnet: an OVN provider (`ovn`, `<nad>.<ns>.ovn`,
/// or none) and a controller that writes the Northbound database.
pub fn wants_switch(spec: &SubnetSpec, writes_nb: bool) -> bool {
    let p = spec.provider.as_str();
    writes_nb && (p.is_empty() || p == "ovn" || p.rsplit_once('.').is_some_and(|(_, l)| l == "ovn"))
}

/// The step for Subnet `name` with `finalizers`, being deleted or not, given what the
/// Northbound reconciler last saw (`None`: nothing seen yet, so nothing is decided on it).
pub fn step(
    name: &str,
    finalizers: &[String],
    deleting: bool,
    wants_switch: bool,
    view: Option<&NbView>,
) -> Step {
    let has = finalizers.iter().any(|f| f == FINALIZER);
    match (deleting, has, wants_switch) {
        (false, false, true) => Step::Add,
        (_, true, false) => Step::Remove,
        (true, true, true) => match view {
            None => Step::Wait,
            Some(v) => match v.kept_switches.get(name) {
                Some(holds) => Step::Hold(holds.clone()),
                None if v.switches.contains(name) => Step::Wait,
                None => Step::Remove,
            },
        },
        _ => Step::Wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours() -> Vec<String> {
        vec![
            "kubeovn.io/kube-ovn-controller".to_owned(),
            FINALIZER.to_owned(),
        ]
    }

    fn view(switches: &[&str], kept: &[(&str, &str)]) -> NbView {
        NbView {
            switches: switches.iter().map(|s| (*s).to_owned()).collect(),
            kept_switches: kept
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..NbView::default()
        }
    }

    #[test]
    fn an_ovn_subnet_gets_the_finalizer_and_an_ipam_one_or_an_ipam_only_controller_does_not() {
        let ovn = SubnetSpec {
            provider: "attachnet.default.ovn".to_owned(),
            ..SubnetSpec::default()
        };
        let macvlan = SubnetSpec {
            provider: "macvlan.default".to_owned(),
            ..SubnetSpec::default()
        };
        assert!(wants_switch(&ovn, true));
        assert!(wants_switch(&SubnetSpec::default(), true));
        assert!(!wants_switch(&macvlan, true));
        assert!(!wants_switch(&ovn, false));
        assert_eq!(step("a", &[], false, true, None), Step::Add);
        assert_eq!(step("a", &ours(), false, true, None), Step::Wait);
        assert_eq!(step("a", &ours(), false, false, None), Step::Remove);
    }

    #[test]
    fn a_deleted_subnet_waits_for_its_switch_and_is_held_while_another_owner_is_on_it() {
        let v = view(&["a"], &[]);
        assert_eq!(
            step("a", &ours(), true, true, None),
            Step::Wait,
            "nothing seen yet"
        );
        assert_eq!(step("a", &ours(), true, true, Some(&v)), Step::Wait);
        let held = view(&["a"], &[("a", "Logical_Switch a ... holds their-port")]);
        assert!(
            matches!(step("a", &ours(), true, true, Some(&held)), Step::Hold(h) if h.contains("their-port"))
        );
        assert_eq!(
            step("a", &ours(), true, true, Some(&view(&[], &[]))),
            Step::Remove
        );
        assert_eq!(
            step("a", &["other".to_owned()], true, true, Some(&v)),
            Step::Wait,
            "not ours"
        );
    }
}
