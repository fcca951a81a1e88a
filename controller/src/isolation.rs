//! What isolates the ports, as the leader last accepted it: each `SecurityGroup`'s checked rules
//! and each Subnet's `private`, `allowSubnets` and `acls`. Pure.
//!
//! A spec that does not check is refused with the field and value named, and what was accepted
//! before stays rendered: a typo never opens or closes a running network. A group that never
//! checked is not rendered at all, so its members keep only the deny-all group (closed).

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use serde_json::{Value, json};
use sidelane_api::{
    acl,
    crd::SubnetSpec,
    security_group::{self as sg, Remote},
};

use crate::{
    ovn::{Isolation, SubnetIsolation},
    status::condition,
};

/// The isolation inputs and what was refused.
#[derive(Default)]
pub struct Store {
    /// What is rendered.
    pub wanted: Isolation,
    /// Why a group's current spec is refused, by name.
    group_errors: BTreeMap<String, String>,
    /// Groups that exist (valid or not).
    groups_seen: BTreeSet<String>,
    /// Why a Subnet's isolation is refused, by name.
    subnet_errors: BTreeMap<String, String>,
}

impl Store {
    /// Takes in group `name`'s spec (`spec` of its object). Whether the rendering changed, and
    /// the refusal if the spec does not check.
    pub fn group(&mut self, name: &str, object: &Value) -> (bool, Option<String>) {
        self.groups_seen.insert(name.to_owned());
        match sg::Group::of(object) {
            Ok(input) => {
                self.group_errors.remove(name);
                let changed = self.wanted.groups.get(name) != Some(&input);
                self.wanted.groups.insert(name.to_owned(), input);
                (changed, None)
            }
            Err(e) => {
                let why = e.to_string();
                self.group_errors.insert(name.to_owned(), why.clone());
                (false, Some(why))
            }
        }
    }

    /// Group `name` is gone: its port group goes (its members stay denied).
    pub fn group_gone(&mut self, name: &str) -> bool {
        self.groups_seen.remove(name);
        self.group_errors.remove(name);
        self.wanted.groups.remove(name).is_some()
    }

    /// Whether group `name` exists.
    pub fn has_group(&self, name: &str) -> bool {
        self.groups_seen.contains(name)
    }

    /// Takes in Subnet `name`'s isolation. Whether the rendering changed, and the refusal if
    /// its `allowSubnets` or `acls` do not check.
    pub fn subnet(&mut self, name: &str, spec: &SubnetSpec) -> (bool, Option<String>) {
        match subnet_isolation(spec) {
            Ok(i) => {
                self.subnet_errors.remove(name);
                let before = self.wanted.subnets.get(name);
                let changed = before.map_or(i != SubnetIsolation::default(), |b| *b != i);
                if i == SubnetIsolation::default() {
                    self.wanted.subnets.remove(name);
                } else {
                    self.wanted.subnets.insert(name.to_owned(), i);
                }
                (changed, None)
            }
            Err(why) => {
                self.subnet_errors.insert(name.to_owned(), why.clone());
                (false, Some(why))
            }
        }
    }

    /// Subnet `name` is gone.
    pub fn subnet_gone(&mut self, name: &str) {
        self.subnet_errors.remove(name);
        self.wanted.subnets.remove(name);
    }

    /// Why Subnet `name`'s isolation is refused, if it is.
    pub fn subnet_error(&self, name: &str) -> Option<&str> {
        self.subnet_errors.get(name).map(String::as_str)
    }

    /// Whether Subnet `name` has any isolation (for its status).
    pub fn subnet_isolated(&self, name: &str) -> bool {
        self.wanted.subnets.contains_key(name) || self.subnet_errors.contains_key(name)
    }

    /// Group `name`'s status, as Kube-OVN writes it, with `Validated` and `Ready` conditions:
    /// a refused spec, and remote groups that do not exist, are named.
    pub fn group_status(&self, name: &str, now: &str) -> Value {
        let rendered = self.wanted.groups.get(name);
        let error = self.group_errors.get(name);
        let missing: Vec<&str> = rendered
            .map(|g| {
                g.rules
                    .iter()
                    .filter_map(|r| match &r.remote {
                        Remote::Group(n) if !self.has_group(n) => Some(n.as_str()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let validated = match error {
            None => condition("Validated", true, "ValidatedRules", "", now),
            Some(e) => condition("Validated", false, "InvalidRule", e, now),
        };
        let (ready, reason, message) = match (rendered, error, missing.is_empty()) {
            (None, _, _) => (
                false,
                "NotRendered",
                "no valid spec has been accepted yet; members are denied all traffic".to_owned(),
            ),
            (Some(_), Some(_), _) => (
                true,
                "PreviousRulesKept",
                "the rules accepted before stay in place until the spec is fixed".to_owned(),
            ),
            (Some(_), None, false) => (
                true,
                "RemoteGroupMissing",
                format!(
                    "remoteSecurityGroup names no group: {}; those rules match nothing",
                    missing.join(", ")
                ),
            ),
            (Some(_), None, true) => (true, "Rendered", String::new()),
        };
        json!({
            "portGroup": sg::port_group(name),
            "allowSameGroupTraffic": rendered.is_some_and(|g| g.allow_same_group_traffic),
            "ingressLastSyncSuccess": rendered.is_some() && error.is_none(),
            "egressLastSyncSuccess": rendered.is_some() && error.is_none(),
            "conditions": [validated, condition("Ready", ready, reason, &message, now)],
        })
    }
}

/// A Subnet's isolation from its spec: `private`, `allowSubnets` (CIDRs) and `acls`.
fn subnet_isolation(spec: &SubnetSpec) -> Result<SubnetIsolation, String> {
    let mut allow_subnets = Vec::new();
    for (i, text) in spec.allow_subnets.iter().enumerate() {
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let net: IpNet = text
            .parse()
            .map_err(|_| format!("spec.allowSubnets[{i}]: {text:?} is not a CIDR"))?;
        allow_subnets.push(net);
    }
    let acls = acl::subnet_acls(spec.other.get("acls")).map_err(|e| e.to_string())?;
    Ok(SubnetIsolation {
        private: spec.private.unwrap_or(false),
        allow_subnets,
        acls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(rules: &Value) -> Value {
        json!({"spec": {"allowSameGroupTraffic": true, "ingressRules": rules}})
    }

    fn tcp22() -> Value {
        json!([{"ipVersion": "ipv4", "policy": "allow", "priority": 1, "protocol": "tcp",
                "portRangeMin": 22, "portRangeMax": 22, "remoteType": "address",
                "remoteAddress": "10.0.0.0/8"}])
    }

    #[test]
    fn a_bad_edit_of_a_group_is_refused_and_keeps_the_rules_accepted_before() {
        let mut s = Store::default();
        assert_eq!(s.group("web", &group(&tcp22())), (true, None));
        let before = s.wanted.clone();
        let mut bad = tcp22();
        bad[0]["portRangeMax"] = json!(70000);
        let (changed, refusal) = s.group("web", &group(&bad));
        assert!(!changed);
        assert_eq!(
            refusal.as_deref(),
            Some("ingressRules[0].portRangeMax: \"70000\" is out of the range 1-65535")
        );
        assert_eq!(s.wanted, before);
        let status = s.group_status("web", "t");
        assert_eq!(status["conditions"][0]["status"], "False");
        assert_eq!(status["conditions"][1]["reason"], "PreviousRulesKept");
        assert_eq!(status["portGroup"], "ovn.sg.web");
    }

    #[test]
    fn a_group_that_never_checked_is_not_rendered_and_says_its_members_are_denied() {
        let mut s = Store::default();
        let (changed, refusal) = s.group(
            "db",
            &json!({"spec": {"ingressRules": [{"ipVersion": "v4"}]}}),
        );
        assert!(!changed);
        assert!(refusal.is_some());
        assert!(s.has_group("db"));
        assert!(!s.wanted.groups.contains_key("db"));
        assert_eq!(
            s.group_status("db", "t")["conditions"][1]["status"],
            "False"
        );
    }

    #[test]
    fn a_rule_naming_a_missing_remote_group_is_reported_on_the_status() {
        let mut s = Store::default();
        let rules = json!([{"ipVersion": "ipv4", "policy": "allow", "priority": 1,
                            "remoteType": "securityGroup", "remoteSecurityGroup": "ghost"}]);
        s.group("web", &group(&rules));
        let status = s.group_status("web", "t");
        assert_eq!(status["conditions"][1]["reason"], "RemoteGroupMissing");
        assert!(
            status["conditions"][1]["message"]
                .as_str()
                .is_some_and(|m| m.contains("ghost"))
        );
    }

    #[test]
    fn a_subnet_acl_that_does_not_parse_is_refused_and_the_accepted_ones_stay() {
        let mut s = Store::default();
        let good = SubnetSpec::from_value(&json!({"private": true, "allowSubnets": ["10.1.0.0/16"],
            "acls": [{"action": "drop", "direction": "to-lport", "priority": 1002, "match": "ip4.src == 10.0.0.2"}]}))
            .expect("a spec");
        assert_eq!(s.subnet("a", &good), (true, None));
        let bad = SubnetSpec::from_value(&json!({"private": true,
            "acls": [{"action": "drop", "direction": "to-lport", "priority": 1002, "match": "ip4.src == "}]}))
            .expect("a spec");
        let (changed, refusal) = s.subnet("a", &bad);
        assert!(!changed);
        assert_eq!(
            refusal.as_deref(),
            Some("spec.acls[0].match: \"ip4.src == \" ends where a value was expected")
        );
        assert_eq!(s.wanted.subnets["a"].acls.len(), 1);
        assert!(s.subnet_isolated("a"));
    }
}
