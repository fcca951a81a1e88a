//! Whether OVN, with the security groups rendered as the controller renders them, passes
//! **every** IP packet of one family between two ports, both ways: the test the node agent's
//! fast path applies before it carries a pair of isolated pods past OVS. When it cannot prove
//! that, the pair's traffic stays on OVS, where OVN's ACLs (with conntrack) decide packet by
//! packet, so isolation never depends on which path a packet takes.
//!
//! The proof follows OVN's ACL order on each side (the sender's `from-lport` ACLs, the
//! receiver's `to-lport` ACLs): every group of a port in any group is denied all IP traffic at
//! priority 2003; above that, `allowSameGroupTraffic` allows traffic among members at 2004 and
//! each rule sits at `2300 - priority`. A side passes everything when, walking the rules that
//! may match the peer from the highest priority down, an allow of every protocol comes before
//! any drop or pass (rules allowing only some protocols are passed over: they take nothing
//! away). Both directions must pass: the fast path keeps no connection state, so replies that
//! OVN would pass only as "related" must not be carried past it either.

use std::{collections::BTreeMap, net::IpAddr};

use crate::security_group::{Direction, Group, IpVersion, Policy, Protocol, Remote};

/// One port as the verdict sees it.
#[derive(Clone, Copy, Debug)]
pub struct Port<'a> {
    /// Its address of the family in question.
    pub ip: IpAddr,
    /// The security groups it joins (empty: none, and nothing isolates it).
    pub groups: &'a [String],
}

/// Whether every IP packet between `a` and `b` (of their addresses' family) passes OVN both
/// ways. Groups named but absent from `groups` allow nothing.
pub fn all_pass(a: Port<'_>, b: Port<'_>, groups: &BTreeMap<String, Group>) -> bool {
    a.ip.is_ipv4() == b.ip.is_ipv4() && one_way(a, b, groups) && one_way(b, a, groups)
}

fn one_way(from: Port<'_>, to: Port<'_>, groups: &BTreeMap<String, Group>) -> bool {
    side(from, to, Direction::Egress, groups) && side(to, from, Direction::Ingress, groups)
}

/// A rule that may match traffic with the peer: its OVN priority, and what it does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Effect {
    /// Allows every protocol.
    AllowAll,
    /// Allows some protocols only: takes nothing away.
    AllowSome,
    /// Drops or passes (some or all of it).
    Stops,
}

/// Whether `port`'s own groups' rules of `direction` pass all its traffic with `peer`.
fn side(
    port: Port<'_>,
    peer: Port<'_>,
    direction: Direction,
    groups: &BTreeMap<String, Group>,
) -> bool {
    if port.groups.is_empty() {
        return true;
    }
    let family = if peer.ip.is_ipv4() {
        IpVersion::V4
    } else {
        IpVersion::V6
    };
    let mut candidates: Vec<(u16, Effect)> = Vec::new();
    for name in port.groups {
        let Some(g) = groups.get(name) else {
            continue;
        };
        if g.allow_same_group_traffic && peer.groups.contains(name) {
            candidates.push((2004, Effect::AllowAll));
        }
        for r in g
            .rules
            .iter()
            .filter(|r| r.direction == direction && r.ip_version == family)
        {
            let covers = match &r.remote {
                Remote::Net(n) => n.contains(&peer.ip),
                Remote::Group(g) => peer.groups.contains(g),
            };
            if !covers {
                continue;
            }
            let effect = match (r.policy, r.protocol) {
                (Policy::Allow, Protocol::All) => Effect::AllowAll,
                (Policy::Allow, _) => Effect::AllowSome,
                (Policy::Drop | Policy::Pass, _) => Effect::Stops,
            };
            candidates.push((2300 - u16::from(r.priority), effect));
        }
    }
    // Highest priority first; at one priority, a stop before an allow (OVN's order among
    // equal priorities is not defined, so assume the worst).
    candidates.sort_by_key(|(p, e)| (std::cmp::Reverse(*p), *e != Effect::Stops));
    for (_, effect) in candidates {
        match effect {
            Effect::AllowAll => return true,
            Effect::AllowSome => {}
            Effect::Stops => return false,
        }
    }
    // Only the deny-all (2003) is left.
    false
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn group(spec: &serde_json::Value) -> Group {
        Group::of(&json!({ "spec": spec })).expect("a valid group")
    }

    fn rule(
        direction: &str,
        policy: &str,
        priority: u8,
        protocol: &str,
        remote: &str,
    ) -> serde_json::Value {
        let mut r = json!({"ipVersion": "ipv4", "policy": policy, "priority": priority, "protocol": protocol});
        if let Some(g) = remote.strip_prefix('@') {
            r["remoteType"] = json!("securityGroup");
            r["remoteSecurityGroup"] = json!(g);
        } else {
            r["remoteType"] = json!("address");
            r["remoteAddress"] = json!(remote);
        }
        if protocol == "tcp" {
            r["portRangeMin"] = json!(80);
            r["portRangeMax"] = json!(80);
        }
        json!({ direction: [r] })
    }

    fn port<'a>(ip: &str, groups: &'a [String]) -> Port<'a> {
        Port {
            ip: ip.parse().expect("an address"),
            groups,
        }
    }

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn ports_in_no_group_pass_everything() {
        assert!(all_pass(
            port("10.0.0.1", &[]),
            port("10.0.0.2", &[]),
            &BTreeMap::new()
        ));
    }

    #[test]
    fn a_port_in_a_group_without_rules_passes_nothing() {
        let groups = BTreeMap::from([("g".to_owned(), group(&json!({})))]);
        let g = names(&["g"]);
        assert!(!all_pass(
            port("10.0.0.1", &g),
            port("10.0.0.2", &[]),
            &groups
        ));
    }

    #[test]
    fn a_group_that_allows_same_group_traffic_passes_its_members_and_no_one_else() {
        let groups = BTreeMap::from([(
            "peers".to_owned(),
            group(&json!({"allowSameGroupTraffic": true})),
        )]);
        let g = names(&["peers"]);
        assert!(all_pass(
            port("10.0.0.1", &g),
            port("10.0.0.2", &g),
            &groups
        ));
        assert!(!all_pass(
            port("10.0.0.1", &g),
            port("10.0.0.3", &[]),
            &groups
        ));
    }

    #[test]
    fn allowing_every_protocol_both_ways_passes_and_only_some_protocols_does_not() {
        let mut spec = rule("ingressRules", "allow", 10, "all", "10.0.0.0/24");
        spec["egressRules"] =
            rule("egressRules", "allow", 10, "all", "10.0.0.0/24")["egressRules"].clone();
        let groups = BTreeMap::from([("open".to_owned(), group(&spec))]);
        let g = names(&["open"]);
        assert!(all_pass(
            port("10.0.0.1", &g),
            port("10.0.0.2", &[]),
            &groups
        ));
        let mut tcp = rule("ingressRules", "allow", 10, "tcp", "10.0.0.0/24");
        tcp["egressRules"] = spec["egressRules"].clone();
        let groups = BTreeMap::from([("open".to_owned(), group(&tcp))]);
        assert!(!all_pass(
            port("10.0.0.1", &g),
            port("10.0.0.2", &[]),
            &groups
        ));
    }

    #[test]
    fn a_drop_above_an_allow_all_stops_the_pass_and_one_below_does_not() {
        let both = |drop_priority: u8| {
            let mut spec = json!({"allowSameGroupTraffic": true});
            spec["ingressRules"] = json!([
                rule("x", "drop", drop_priority, "tcp", "10.0.0.2")["x"][0].clone(),
                rule("x", "allow", 50, "all", "@peers")["x"][0].clone(),
            ]);
            BTreeMap::from([("peers".to_owned(), group(&spec))])
        };
        let g = names(&["peers"]);
        assert!(!all_pass(
            port("10.0.0.1", &g),
            port("10.0.0.2", &g),
            &both(10)
        ));
        assert!(all_pass(
            port("10.0.0.1", &g),
            port("10.0.0.2", &g),
            &both(100)
        ));
    }

    #[test]
    fn a_missing_group_allows_nothing_and_families_are_judged_apart() {
        let groups = BTreeMap::from([(
            "peers".to_owned(),
            group(&json!({"allowSameGroupTraffic": true})),
        )]);
        let ghost = names(&["ghost"]);
        assert!(!all_pass(
            port("10.0.0.1", &ghost),
            port("10.0.0.2", &ghost),
            &groups
        ));
        let g = names(&["peers"]);
        assert!(all_pass(port("fd00::1", &g), port("fd00::2", &g), &groups));
        assert!(!all_pass(
            port("10.0.0.1", &g),
            port("fd00::2", &g),
            &groups
        ));
    }
}
