//! The fast path's allowed pairs: for attachments in security groups, the (sender, receiver,
//! family) triples whose traffic OVN passes whole both ways ([`flow_verdict`]), kept in
//! `SL_FP_PAIRS` from the members on this node and the groups as last read. The program
//! fast-paths a frame to or from an isolated attachment only when its pair is there; every
//! other frame of theirs goes to OVS, whose ACLs decide. Entries are removed before anything
//! that could make them wrong is trusted (a member leaving, a group changing), so the map
//! never allows what OVN would not.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use sidelane_agent_common::fastpath::{
    PAIRS_MAP, PairKey, SOURCE_HAS_V4, SOURCE_HAS_V6, SOURCE_ISOLATED, Source,
};
use sidelane_api::{flow_verdict, security_group::Group};
use tracing::{debug, info};

use super::{
    DataplaneError,
    fastpath::{FastpathDataplane, FastpathPort, SWITCH_OFF},
    map_error,
};

/// An attachment on the fast path, as the pairs need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Its logical switch's number.
    pub switch: u32,
    /// Its addresses.
    pub ips: Vec<IpAddr>,
    /// Its security groups; `None` for an isolated attachment whose groups are not known
    /// (found in the pinned maps by a restarted agent, before its record is read): it gets no
    /// pair.
    pub groups: Option<Vec<String>>,
}

impl Member {
    fn groups(&self) -> Option<&[String]> {
        self.groups.as_deref()
    }
}

/// The pairs `members` may use, given `groups` (`None`: unknown yet, so none between isolated
/// attachments and anyone).
///
/// Only pairs with an isolated member are written, so the work is (isolated members) times
/// (members), not members squared: an attachment joining a node without security groups costs
/// one pass over the members.
pub fn wanted_pairs(
    members: &BTreeMap<u32, Member>,
    groups: Option<&BTreeMap<String, Group>>,
) -> BTreeSet<PairKey> {
    let mut out = BTreeSet::new();
    let Some(groups) = groups else {
        return out;
    };
    let isolated = members
        .iter()
        .filter(|(_, m)| m.groups().is_some_and(|g| !g.is_empty()));
    for (a, ma) in isolated {
        for (b, mb) in members {
            let Some(gb) = mb.groups() else {
                continue;
            };
            // A pair of two isolated members is visited from its lower end only.
            if b == a || (!gb.is_empty() && b < a) {
                continue;
            }
            add_pair(&mut out, (*a, ma), (*b, mb), groups);
        }
    }
    out
}

/// Adds both directions of every address pair of `a` and `b` (one switch, one family) whose
/// traffic OVN passes whole.
fn add_pair(
    out: &mut BTreeSet<PairKey>,
    (a, ma): (u32, &Member),
    (b, mb): (u32, &Member),
    groups: &BTreeMap<String, Group>,
) {
    let (Some(ga), Some(gb)) = (ma.groups(), mb.groups()) else {
        return;
    };
    if ma.switch != mb.switch || ma.switch == SWITCH_OFF {
        return;
    }
    for ia in &ma.ips {
        for ib in mb.ips.iter().filter(|ib| ib.is_ipv4() == ia.is_ipv4()) {
            let pa = flow_verdict::Port {
                ip: *ia,
                groups: ga,
            };
            let pb = flow_verdict::Port {
                ip: *ib,
                groups: gb,
            };
            if flow_verdict::all_pass(pa, pb, groups) {
                let family = if ia.is_ipv4() { 4 } else { 6 };
                out.insert(PairKey {
                    src: a,
                    dst: b,
                    family,
                });
                out.insert(PairKey {
                    src: b,
                    dst: a,
                    family,
                });
            }
        }
    }
}

impl FastpathDataplane {
    /// The security groups changed (or were read for the first time): the pairs follow.
    pub fn set_groups(&mut self, groups: BTreeMap<String, Group>) -> Result<(), DataplaneError> {
        self.groups = Some(groups);
        self.refresh_pairs("the security groups")
    }

    /// The groups of the attachment at `host` (an agent that restarted learns them again from
    /// its records; a pod's annotation changed): its isolation flags and the pairs follow. An
    /// attachment joining its first group is marked isolated before anything else (its frames
    /// go to OVS until its pairs are written); one leaving its last loses its pairs first.
    pub fn set_member_groups(
        &mut self,
        host: u32,
        groups: Vec<String>,
        target: &str,
    ) -> Result<(), DataplaneError> {
        let isolated = !groups.is_empty();
        if isolated {
            self.set_isolated(host, true, target)?;
        }
        if let Some(m) = self.members.get_mut(&host) {
            m.groups = Some(groups);
        }
        self.refresh_pairs(target)?;
        if !isolated {
            self.set_isolated(host, false, target)?;
        }
        Ok(())
    }

    /// [`Self::set_member_groups`] by host-end name; nothing if it is not there.
    pub fn set_member_groups_of(
        &mut self,
        netns: Option<&std::path::Path>,
        host_ifname: &str,
        groups: Vec<String>,
    ) -> Result<(), DataplaneError> {
        match super::fastpath::ifindex_in(netns, host_ifname)? {
            Some(host) => self.set_member_groups(host, groups, host_ifname),
            None => Ok(()),
        }
    }

    /// The members as the pinned maps hold them (a restarted agent): isolated ones with their
    /// groups unknown until their records are read.
    pub(super) fn members_of_sources(sources: Vec<(u32, Source)>) -> BTreeMap<u32, Member> {
        sources
            .into_iter()
            .map(|(host, src)| {
                let mut ips = Vec::new();
                if src.flags & SOURCE_HAS_V4 != 0 {
                    ips.push(IpAddr::from(src.ip4));
                }
                if src.flags & SOURCE_HAS_V6 != 0 {
                    ips.push(IpAddr::from(src.ip6));
                }
                let groups = (src.flags & SOURCE_ISOLATED == 0).then(Vec::new);
                (
                    host,
                    Member {
                        switch: src.switch,
                        ips,
                        groups,
                    },
                )
            })
            .collect()
    }

    /// `port` (at `host`) is on the fast path now.
    pub(super) fn join(
        &mut self,
        host: u32,
        port: &FastpathPort,
        target: &str,
    ) -> Result<(), DataplaneError> {
        self.members.insert(
            host,
            Member {
                switch: if port.published {
                    port.switch
                } else {
                    SWITCH_OFF
                },
                ips: port.ips.clone(),
                groups: Some(port.groups.clone()),
            },
        );
        self.refresh_pairs(target)
    }

    /// The attachment at `host` left the fast path.
    pub(super) fn leave(&mut self, host: u32, target: &str) -> Result<(), DataplaneError> {
        if self.members.remove(&host).is_some() {
            self.refresh_pairs(target)?;
        }
        Ok(())
    }

    /// Makes `SL_FP_PAIRS` what the members and groups allow: removals first.
    fn refresh_pairs(&mut self, target: &str) -> Result<(), DataplaneError> {
        let want = wanted_pairs(&self.members, self.groups.as_ref());
        let have: BTreeSet<PairKey> = self.pairs.keys().filter_map(Result::ok).collect();
        let (mut removed, mut added) = (0, 0);
        for k in have.difference(&want) {
            match self.pairs.remove(k) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => removed += 1,
                Err(e) => return Err(map_error("removing from", PAIRS_MAP, target, e)),
            }
        }
        for k in want.difference(&have) {
            self.pairs
                .insert(k, 1, 0)
                .map_err(|e| map_error("writing", PAIRS_MAP, target, e))?;
            added += 1;
        }
        if removed + added > 0 {
            info!(target = %target, added, removed, pairs = want.len(),
                  "the fast path's allowed pairs of isolated attachments changed");
        } else {
            debug!(target = %target, "the fast path's allowed pairs are unchanged");
        }
        Ok(())
    }

    /// Every allowed pair.
    pub fn pairs(&self) -> Vec<PairKey> {
        self.pairs.keys().filter_map(Result::ok).collect()
    }

    /// Writes one pair directly (tests of the program's decisions).
    pub fn put_pair(&mut self, key: PairKey) -> Result<(), DataplaneError> {
        self.pairs
            .insert(key, 1, 0)
            .map_err(|e| map_error("writing", PAIRS_MAP, "the fast path", e))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn member(switch: u32, ip: &str, groups: &[&str]) -> Member {
        Member {
            switch,
            ips: vec![ip.parse().expect("an address")],
            groups: Some(groups.iter().map(|g| (*g).to_owned()).collect()),
        }
    }

    fn peers() -> BTreeMap<String, Group> {
        BTreeMap::from([(
            "peers".to_owned(),
            Group::of(&json!({"spec": {"allowSameGroupTraffic": true}})).expect("a group"),
        )])
    }

    #[test]
    fn members_of_one_group_that_passes_them_get_both_directions_and_outsiders_none() {
        let members = BTreeMap::from([
            (10, member(7, "10.0.0.10", &["peers"])),
            (11, member(7, "10.0.0.11", &["peers"])),
            (12, member(7, "10.0.0.12", &[])),
        ]);
        let pairs = wanted_pairs(&members, Some(&peers()));
        assert_eq!(
            pairs.into_iter().collect::<Vec<_>>(),
            [
                PairKey {
                    src: 10,
                    dst: 11,
                    family: 4
                },
                PairKey {
                    src: 11,
                    dst: 10,
                    family: 4
                },
            ]
        );
    }

    #[test]
    fn before_the_groups_are_read_no_isolated_pair_passes() {
        let members = BTreeMap::from([
            (10, member(7, "10.0.0.10", &["peers"])),
            (11, member(7, "10.0.0.11", &["peers"])),
        ]);
        assert!(wanted_pairs(&members, None).is_empty());
    }

    #[test]
    fn an_isolated_member_whose_groups_are_unknown_gets_no_pair() {
        let mut unknown = member(7, "10.0.0.11", &[]);
        unknown.groups = None;
        let members = BTreeMap::from([
            (10, member(7, "10.0.0.10", &["peers"])),
            (11, unknown),
            (12, member(7, "10.0.0.12", &[])),
        ]);
        assert!(wanted_pairs(&members, Some(&peers())).is_empty());
    }

    #[test]
    fn members_on_other_switches_or_off_the_fast_path_get_no_pair() {
        let members = BTreeMap::from([
            (10, member(7, "10.0.0.10", &["peers"])),
            (11, member(8, "10.0.0.11", &["peers"])),
            (12, member(SWITCH_OFF, "10.0.0.12", &["peers"])),
        ]);
        assert!(wanted_pairs(&members, Some(&peers())).is_empty());
    }
}
