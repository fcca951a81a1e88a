//! The isolation part of the diff: port groups (their ports and ACLs), address sets, and the
//! ACLs of switches and port groups. The same rules as the rest: only marked rows are changed
//! or deleted, a wanted name held without the marker is a conflict, inserts of named root rows
//! wait for the name to be free.

use std::collections::BTreeSet;

use serde_json::{Value, json};
use sidelane_ovsdb::{Operation, Row, datum};

use super::{Children, Diff, absent, cols, merged, subset};
use crate::ovn::{
    Acl, AddressSet, PortGroup,
    observed::{ACL, AS, PG},
    owned_ids,
};

/// An ACL row, marked, naming its parent as Kube-OVN does (`parent`).
pub(super) fn acl_row(a: &Acl, parent: &str) -> Row {
    cols(vec![
        ("direction", json!(a.direction)),
        ("priority", json!(a.priority)),
        ("match", json!(a.r#match)),
        ("action", json!(a.action)),
        (
            "external_ids",
            datum::string_map(&owned_ids([("parent", parent)])),
        ),
    ])
}

fn address_set_row(name: &str, s: &AddressSet) -> Row {
    cols(vec![
        ("name", json!(name)),
        ("addresses", datum::string_set(s.addresses.iter().cloned())),
        ("external_ids", datum::string_map(&s.external_ids)),
    ])
}

impl<'a> Diff<'a> {
    /// The owned ACLs of the parent `uuid` (named `name`) made `want`: others' ACLs stay.
    pub(super) fn acl_children(
        &mut self,
        uuid: &str,
        name: &str,
        want: &BTreeSet<Acl>,
    ) -> Children {
        let observed: &'a crate::ovn::Observed = self.observed;
        let have = observed
            .acls
            .get(uuid)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut kept = BTreeSet::new();
        let mut children = Children::default();
        for f in have.iter().filter(|f| f.owned) {
            if want.contains(&f.value) && kept.insert(&f.value) {
                continue;
            }
            children.remove.push(datum::uuid(&f.uuid));
            self.b.plan.deleted += 1;
        }
        for a in want.iter().filter(|a| !kept.contains(a)) {
            children
                .add
                .push(self.b.insert_child(ACL, acl_row(a, name), "acl"));
        }
        children
    }

    /// The references of a port group's wanted ports that exist or are inserted now.
    fn port_refs(&self, want: &PortGroup) -> (BTreeSet<String>, Vec<Value>) {
        want.ports
            .iter()
            .filter_map(|p| {
                self.lsp_refs
                    .get(p.as_str())
                    .map(|r| (p.clone(), r.clone()))
            })
            .unzip()
    }

    /// Port groups: their ports (replaced as a whole) and their ACLs.
    pub(super) fn port_groups(&mut self) {
        let desired: &'a crate::ovn::Topology = self.desired;
        let observed: &'a crate::ovn::Observed = self.observed;
        for (name, want) in &desired.port_groups {
            let Ok(claim) = self
                .b
                .claim(PG, "a port group", name, observed.port_groups.get(name))
            else {
                continue;
            };
            let (names, refs) = self.port_refs(want);
            if let Some(first) = claim {
                if first.value.ports != names
                    || !subset(&want.external_ids, &first.value.external_ids)
                {
                    let row = cols(vec![
                        ("ports", datum::set(refs)),
                        (
                            "external_ids",
                            merged(&want.external_ids, &first.value.external_ids),
                        ),
                    ]);
                    self.b.update(PG, &first.uuid, row);
                }
                let acls = self.acl_children(&first.uuid, name, &want.acls);
                self.acl_changes.insert((PG, first.uuid.clone()), acls);
            } else {
                let acls: Vec<Value> = want
                    .acls
                    .iter()
                    .map(|a| self.b.insert_child(ACL, acl_row(a, name), "acl"))
                    .collect();
                self.b.parents.push(absent(PG, name));
                self.b.parents.push(Operation::Insert {
                    table: PG.to_owned(),
                    row: cols(vec![
                        ("name", json!(name)),
                        ("ports", datum::set(refs)),
                        ("acls", datum::set(acls)),
                        ("external_ids", datum::string_map(&want.external_ids)),
                    ]),
                    uuid_name: None,
                });
                self.b.plan.inserted += 1;
            }
        }
    }

    /// Address sets.
    pub(super) fn address_sets(&mut self) {
        let desired: &'a crate::ovn::Topology = self.desired;
        let observed: &'a crate::ovn::Observed = self.observed;
        for (name, want) in &desired.address_sets {
            let Ok(claim) =
                self.b
                    .claim(AS, "an address set", name, observed.address_sets.get(name))
            else {
                continue;
            };
            if let Some(first) = claim {
                if first.value.addresses != want.addresses
                    || !subset(&want.external_ids, &first.value.external_ids)
                {
                    let mut row = address_set_row(name, want);
                    row.remove("name");
                    row.insert(
                        "external_ids".into(),
                        merged(&want.external_ids, &first.value.external_ids),
                    );
                    self.b.update(AS, &first.uuid, row);
                }
            } else {
                self.b.parents.push(absent(AS, name));
                self.b.parents.push(Operation::Insert {
                    table: AS.to_owned(),
                    row: address_set_row(name, want),
                    uuid_name: None,
                });
                self.b.plan.inserted += 1;
            }
        }
    }

    /// Owned port groups and address sets nothing wants any more (a port group's ACLs go
    /// with it).
    pub(super) fn retire_isolation(&mut self) {
        let (desired, observed) = (self.desired, self.observed);
        for (name, rows) in &observed.port_groups {
            if !desired.port_groups.contains_key(name) {
                for f in rows.iter().filter(|f| f.owned) {
                    self.b.delete(PG, &f.uuid);
                    self.deleted_parents.insert(f.uuid.clone());
                }
            }
        }
        for (name, rows) in &observed.address_sets {
            if !desired.address_sets.contains_key(name) {
                for f in rows.iter().filter(|f| f.owned) {
                    self.b.delete(AS, &f.uuid);
                }
            }
        }
    }
}
