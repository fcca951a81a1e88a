//! The NAT gateway's rows in the one transaction: a router's NAT rows (children, like its
//! static routes), the load balancers it applies (root rows it references), and the gateway
//! chassis of its gateway port (children of the port). Rows without the marker are never
//! touched: a foreign load balancer of a wanted name is a conflict.

use std::collections::BTreeSet;

use serde_json::{Value, json};
use sidelane_ovsdb::{Row, datum};

use super::{Children, Diff, cols};
use crate::ovn::{
    LoadBalancer, Nat, Router, RouterPort,
    observed::{GC, LB, LR},
};

pub(super) use crate::ovn::observed::NAT;

/// A NAT row.
pub(super) fn nat_row(n: &Nat) -> Row {
    cols(vec![
        ("type", json!(n.kind)),
        ("external_ip", json!(n.external_ip)),
        ("logical_ip", json!(n.logical_ip)),
        (
            "external_ids",
            datum::string_map(&crate::ovn::owned_ids([])),
        ),
    ])
}

fn lb_row(name: &str, lb: &LoadBalancer) -> Row {
    cols(vec![
        ("name", json!(name)),
        ("protocol", json!(lb.protocol)),
        ("vips", datum::string_map(&lb.vips)),
        ("external_ids", datum::string_map(&lb.external_ids)),
    ])
}

/// A gateway chassis row's name: `<router port>-<chassis>`.
fn gateway_chassis_name(port: &str, chassis: &str) -> String {
    format!("{port}-{chassis}")
}

impl<'a> Diff<'a> {
    /// Load balancers: updated in place, or inserted; their references are kept for the
    /// routers that apply them.
    pub(super) fn load_balancers(&mut self) {
        let (desired, observed) = (self.desired, self.observed);
        for (name, want) in &desired.load_balancers {
            let Ok(claim) = self.b.claim(
                LB,
                "a load balancer",
                name,
                observed.load_balancers.get(name),
            ) else {
                continue;
            };
            if let Some(first) = claim {
                if first.value.protocol != want.protocol || first.value.vips != want.vips {
                    let mut row = lb_row(name, want);
                    row.remove("name");
                    self.b.update(LB, &first.uuid, row);
                }
                self.lb_refs.insert(name, datum::uuid(&first.uuid));
            } else {
                let r = self.b.insert_child(LB, lb_row(name, want), "lb");
                self.lb_refs.insert(name, r);
            }
        }
    }

    /// The references of the load balancers `router` applies.
    pub(super) fn lb_refs_of(&self, router: &Router) -> Vec<Value> {
        router
            .load_balancers
            .iter()
            .filter_map(|n| self.lb_refs.get(n.as_str()).cloned())
            .collect()
    }

    /// An existing router's load balancer references: owned ones nothing wants go, wanted
    /// ones are added; other owners' stay.
    pub(super) fn router_load_balancers(&mut self, uuid: &str, want: &Router) {
        let have = self
            .observed
            .router_lbs
            .get(uuid)
            .cloned()
            .unwrap_or_default();
        let wanted = self.lb_refs_of(want);
        let wanted_uuids: BTreeSet<&str> = wanted.iter().filter_map(datum::as_uuid).collect();
        let mut c = Children::default();
        for h in &have {
            if !wanted_uuids.contains(h.as_str()) {
                c.remove.push(datum::uuid(h));
            }
        }
        for w in wanted {
            if datum::as_uuid(&w).is_none_or(|u| !have.contains(u)) {
                c.add.push(w);
            }
        }
        self.b.mutate(LR, uuid, "load_balancer", c);
    }

    /// An existing router's NAT rows: owned ones nothing wants go, wanted ones are added.
    pub(super) fn router_nats(&mut self, uuid: &str, want: &'a Router) {
        let observed = self.observed;
        let have = observed
            .nats
            .get(uuid)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut kept = BTreeSet::new();
        let mut c = Children::default();
        for f in have {
            if want.nats.contains(&f.value) && kept.insert(&f.value) {
                continue;
            }
            c.remove.push(datum::uuid(&f.uuid));
            self.b.plan.deleted += 1;
        }
        for n in want.nats.iter().filter(|n| !kept.contains(n)) {
            c.add.push(self.b.insert_child(NAT, nat_row(n), "nat"));
        }
        self.nat_changes.insert(uuid.to_owned(), c);
    }

    /// Owned load balancers nothing wants any more (routers' references to them are dropped
    /// in the same transaction).
    pub(super) fn retire_load_balancers(&mut self) {
        let (desired, observed) = (self.desired, self.observed);
        for (name, rows) in &observed.load_balancers {
            for f in rows.iter().filter(|f| f.owned) {
                if !desired.load_balancers.contains_key(name) {
                    self.b.delete(LB, &f.uuid);
                }
            }
        }
    }

    /// The gateway chassis column of router port `name`: rows kept (their priority updated)
    /// or inserted, one per chassis.
    pub(super) fn gateway_chassis_refs(
        &mut self,
        name: &str,
        want: &RouterPort,
        port_uuid: Option<&str>,
    ) -> Value {
        let observed = self.observed;
        let existing = port_uuid.and_then(|u| observed.gateway_chassis.get(u));
        let have = port_uuid
            .and_then(|_| observed.router_ports.get(name))
            .map(|f| &f.value.gateway_chassis);
        let mut refs = Vec::new();
        for (chassis, priority) in &want.gateway_chassis {
            let row_name = gateway_chassis_name(name, chassis);
            if let Some(uuid) = existing.and_then(|e| e.get(&row_name)) {
                if have.and_then(|h| h.get(chassis)) != Some(priority) {
                    self.b
                        .update(GC, uuid, cols(vec![("priority", json!(priority))]));
                }
                refs.push(datum::uuid(uuid));
            } else {
                let row = cols(vec![
                    ("name", json!(row_name)),
                    ("chassis_name", json!(chassis)),
                    ("priority", json!(priority)),
                ]);
                refs.push(self.b.insert_child(GC, row, "gc"));
            }
        }
        datum::set(refs)
    }
}
