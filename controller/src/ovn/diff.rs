//! The one transaction that turns what the Northbound database holds ([`Observed`]) into the
//! desired [`Topology`] ([`diff`]). Only rows carrying the ownership marker are updated or
//! deleted; a row of a wanted name without the marker is a conflict, reported and left alone.
//! Inserts of switches and routers carry a `wait` that aborts the transaction if a row of that
//! name appeared meanwhile (a second controller, a stale copy): names stay unique.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{Value, json};
use sidelane_ovsdb::{Condition, Mutation, Operation, Row, datum};

use super::{
    RouterPort, StaticRoute, SwitchPort, Topology,
    observed::{ACL, Found, LR, LRP, LRSR, LS, LSP, Observed},
};

mod isolation;
mod nat;

/// What one reconcile would do.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// The operations of the one transaction (empty: in sync).
    pub ops: Vec<Operation>,
    /// Rows Sidelane wants whose name is taken by a row it does not own.
    pub conflicts: Vec<String>,
    /// Rows of Sidelane's nothing wants any more, left in place because they hold rows of
    /// another owner (deleting a parent would delete its children); removed once empty.
    pub kept: Vec<String>,
    /// The switches among them, by name: what each holds of another owner.
    pub kept_switches: BTreeMap<String, String>,
    /// Counts of inserted, updated and deleted rows, for logs and metrics.
    pub inserted: usize,
    /// Rows updated.
    pub updated: usize,
    /// Rows deleted (or released from their parent, for non-root rows).
    pub deleted: usize,
}

/// Rows of other owners under each parent (router or switch UUID), described.
fn foreign_children(observed: &Observed) -> HashMap<&str, Vec<String>> {
    let mut out: HashMap<&str, Vec<String>> = HashMap::new();
    for (name, f) in observed.router_ports.iter().filter(|(_, f)| !f.owned) {
        out.entry(f.value.router.as_str())
            .or_default()
            .push(format!("{LRP} {name}"));
    }
    for (router, routes) in &observed.foreign_routes {
        out.entry(router.as_str())
            .or_default()
            .extend(routes.iter().cloned());
    }
    for (name, f) in observed.switch_ports.iter().filter(|(_, f)| !f.owned) {
        out.entry(f.value.switch.as_str())
            .or_default()
            .push(format!("{LSP} {name}"));
    }
    for (parent, acls) in &observed.acls {
        for f in acls.iter().filter(|f| !f.owned) {
            out.entry(parent.as_str()).or_default().push(format!(
                "{ACL} {} {} {:?}",
                f.value.direction, f.value.priority, f.value.r#match
            ));
        }
    }
    out
}

/// `want`'s pairs are all in `have`.
fn subset(want: &BTreeMap<String, String>, have: &BTreeMap<String, String>) -> bool {
    want.iter().all(|(k, v)| have.get(k) == Some(v))
}

/// `have` with `want`'s pairs written over it (pairs others added stay).
fn merged(want: &BTreeMap<String, String>, have: &BTreeMap<String, String>) -> Value {
    let mut m = have.clone();
    m.extend(want.iter().map(|(k, v)| (k.clone(), v.clone())));
    datum::string_map(&m)
}

fn cols(pairs: Vec<(&str, Value)>) -> Row {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

fn absent(table: &str, name: &str) -> Operation {
    Operation::Wait {
        table: table.to_owned(),
        conditions: vec![Condition::eq("name", json!(name))],
        columns: vec!["name".to_owned()],
        until_equal: true,
        rows: Vec::new(),
        timeout_ms: 0,
    }
}

/// References to add to and remove from one parent row's set column.
#[derive(Default)]
struct Children {
    add: Vec<Value>,
    remove: Vec<Value>,
}

/// A wanted name that only rows of another owner hold.
struct Theirs;

struct Builder {
    plan: Plan,
    next: usize,
    /// Inserts of non-root rows (ports, routes): they come first, so parents can name them.
    children: Vec<Operation>,
    /// Inserts, updates and mutations of parents.
    parents: Vec<Operation>,
    deletes: Vec<Operation>,
}

impl Builder {
    /// The owned row named `name` among `rows`: `Ok(Some(row))` (owned copies beyond the
    /// first are deleted), `Ok(None)` when no row has the name, `Err(Theirs)` when only rows
    /// of others have it (a conflict, recorded; `what` names the kind: "a router").
    fn claim<'r, T>(
        &mut self,
        table: &str,
        what: &str,
        name: &str,
        rows: Option<&'r Vec<Found<T>>>,
    ) -> Result<Option<&'r Found<T>>, Theirs> {
        let rows = rows.map(Vec::as_slice).unwrap_or_default();
        let mut mine = rows.iter().filter(|f| f.owned);
        if let Some(first) = mine.next() {
            for extra in mine {
                self.delete(table, &extra.uuid);
            }
            Ok(Some(first))
        } else if rows.is_empty() {
            Ok(None)
        } else {
            self.plan.conflicts.push(format!(
                "{table} {name}: {what} of this name exists without Sidelane's marker"
            ));
            Err(Theirs)
        }
    }

    fn name(&mut self, prefix: &str) -> String {
        self.next += 1;
        format!("{prefix}{}", self.next)
    }

    fn insert_child(&mut self, table: &str, row: Row, prefix: &str) -> Value {
        let name = self.name(prefix);
        self.children.push(Operation::Insert {
            table: table.to_owned(),
            row,
            uuid_name: Some(name.clone()),
        });
        self.plan.inserted += 1;
        datum::named_uuid(&name)
    }

    fn update(&mut self, table: &str, uuid: &str, row: Row) {
        self.parents.push(Operation::Update {
            table: table.to_owned(),
            conditions: vec![Condition::uuid(uuid)],
            row,
        });
        self.plan.updated += 1;
    }

    fn delete(&mut self, table: &str, uuid: &str) {
        self.deletes.push(Operation::Delete {
            table: table.to_owned(),
            conditions: vec![Condition::uuid(uuid)],
        });
        self.plan.deleted += 1;
    }

    fn mutate(&mut self, table: &str, uuid: &str, column: &str, children: Children) {
        let mut mutations = Vec::new();
        if !children.remove.is_empty() {
            mutations.push(Mutation::delete(column, datum::set(children.remove)));
        }
        if !children.add.is_empty() {
            mutations.push(Mutation::insert(column, datum::set(children.add)));
        }
        if !mutations.is_empty() {
            self.parents.push(Operation::Mutate {
                table: table.to_owned(),
                conditions: vec![Condition::uuid(uuid)],
                mutations,
            });
        }
    }
}

fn route_row(r: &StaticRoute) -> Row {
    cols(vec![
        ("ip_prefix", json!(r.ip_prefix)),
        ("nexthop", json!(r.nexthop)),
        ("policy", json!(r.policy)),
        ("external_ids", datum::string_map(&super::owned_ids([]))),
    ])
}

fn router_port_row(name: &str, p: &RouterPort) -> Row {
    cols(vec![
        ("name", json!(name)),
        ("mac", json!(p.mac)),
        ("networks", datum::string_set(p.networks.iter().cloned())),
        ("external_ids", datum::string_map(&p.external_ids)),
    ])
}

fn switch_port_row(name: &str, p: &SwitchPort) -> Row {
    cols(vec![
        ("name", json!(name)),
        ("type", json!(p.kind)),
        ("addresses", datum::string_set(p.addresses.iter().cloned())),
        (
            "port_security",
            datum::string_set(p.port_security.iter().cloned()),
        ),
        ("options", datum::string_map(&p.options)),
        ("external_ids", datum::string_map(&p.external_ids)),
    ])
}

/// The operations that make `observed` what `desired` says, in one transaction.
pub fn diff(desired: &Topology, observed: &Observed) -> Plan {
    let mut d = Diff {
        desired,
        observed,
        b: Builder {
            plan: Plan::default(),
            next: 0,
            children: Vec::new(),
            parents: Vec::new(),
            deletes: Vec::new(),
        },
        router_uuid: BTreeMap::new(),
        switch_uuid: BTreeMap::new(),
        new_routers: BTreeSet::new(),
        new_switches: BTreeSet::new(),
        router_children: BTreeMap::new(),
        static_route_changes: BTreeMap::new(),
        switch_children: BTreeMap::new(),
        new_router_ports: BTreeMap::new(),
        new_router_routes: BTreeMap::new(),
        new_switch_ports: BTreeMap::new(),
        deleted_parents: BTreeSet::new(),
        lsp_refs: BTreeMap::new(),
        acl_changes: BTreeMap::new(),
        new_switch_acls: BTreeMap::new(),
        nat_changes: BTreeMap::new(),
        new_router_nats: BTreeMap::new(),
        lb_refs: BTreeMap::new(),
    };
    // One pass per table, in dependency order.
    d.load_balancers();
    d.routers();
    d.switches();
    d.router_ports();
    d.switch_ports();
    d.port_groups();
    d.address_sets();
    d.retire_unwanted();
    d.retire_load_balancers();
    d.retire_isolation();
    d.release_unwanted_ports();
    d.insert_new_parents();
    d.mutate_parents();
    let mut b = d.b;
    let mut ops = b.children;
    ops.append(&mut b.parents);
    ops.append(&mut b.deletes);
    b.plan.ops = ops;
    b.plan
}

/// One diff in progress.
struct Diff<'a> {
    desired: &'a Topology,
    observed: &'a Observed,
    b: Builder,
    /// Parents that exist (by UUID) or are inserted now (their new children, by name).
    router_uuid: BTreeMap<&'a str, String>,
    switch_uuid: BTreeMap<&'a str, String>,
    new_routers: BTreeSet<&'a str>,
    new_switches: BTreeSet<&'a str>,
    router_children: BTreeMap<String, Children>,
    static_route_changes: BTreeMap<String, Children>,
    switch_children: BTreeMap<String, Children>,
    new_router_ports: BTreeMap<&'a str, Vec<Value>>,
    new_router_routes: BTreeMap<&'a str, Vec<Value>>,
    new_switch_ports: BTreeMap<&'a str, Vec<Value>>,
    /// Parents deleted: their ports go with them.
    deleted_parents: BTreeSet<String>,
    /// Each wanted switch port's reference (its UUID, or its name in this transaction).
    lsp_refs: BTreeMap<&'a str, Value>,
    /// ACLs to add to and remove from existing switches and port groups, by (table, UUID).
    acl_changes: BTreeMap<(&'static str, String), Children>,
    /// The ACLs of switches inserted now.
    new_switch_acls: BTreeMap<&'a str, Vec<Value>>,
    /// NAT rows to add to and remove from existing routers, by router UUID.
    nat_changes: BTreeMap<String, Children>,
    /// The NAT rows of routers inserted now.
    new_router_nats: BTreeMap<&'a str, Vec<Value>>,
    /// Each wanted load balancer's reference (its UUID, or its name in this transaction).
    lb_refs: BTreeMap<&'a str, Value>,
}

impl<'a> Diff<'a> {
    /// Routers and their static routes.
    fn routers(&mut self) {
        let desired: &'a Topology = self.desired;
        let observed: &'a Observed = self.observed;
        for (name, want) in &desired.routers {
            let Ok(claim) = self
                .b
                .claim(LR, "a router", name, observed.routers.get(name))
            else {
                continue;
            };
            if let Some(first) = claim {
                self.router_uuid.insert(name, first.uuid.clone());
                if !subset(&want.external_ids, &first.value.external_ids) {
                    let row = cols(vec![(
                        "external_ids",
                        merged(&want.external_ids, &first.value.external_ids),
                    )]);
                    self.b.update(LR, &first.uuid, row);
                }
                let have = observed
                    .routes
                    .get(&first.uuid)
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                let mut kept = BTreeSet::new();
                let mut children = Children::default();
                for f in have {
                    if want.static_routes.contains(&f.value) && kept.insert(&f.value) {
                        continue;
                    }
                    children.remove.push(datum::uuid(&f.uuid));
                    self.b.plan.deleted += 1;
                }
                for r in want.static_routes.iter().filter(|r| !kept.contains(r)) {
                    children
                        .add
                        .push(self.b.insert_child(LRSR, route_row(r), "route"));
                }
                self.static_route_changes
                    .insert(first.uuid.clone(), children);
                self.router_nats(&first.uuid, want);
                self.router_load_balancers(&first.uuid, want);
            } else {
                self.new_routers.insert(name);
                let routes: Vec<Value> = want
                    .static_routes
                    .iter()
                    .map(|r| self.b.insert_child(LRSR, route_row(r), "route"))
                    .collect();
                self.new_router_routes.insert(name, routes);
                let nats = want
                    .nats
                    .iter()
                    .map(|n| self.b.insert_child(nat::NAT, nat::nat_row(n), "nat"))
                    .collect();
                self.new_router_nats.insert(name, nats);
            }
        }
    }

    /// Switches.
    fn switches(&mut self) {
        let desired: &'a Topology = self.desired;
        let observed: &'a Observed = self.observed;
        for (name, want) in &desired.switches {
            let Ok(claim) = self
                .b
                .claim(LS, "a switch", name, observed.switches.get(name))
            else {
                continue;
            };
            if let Some(first) = claim {
                self.switch_uuid.insert(name, first.uuid.clone());
                if !subset(&want.other_config, &first.value.other_config)
                    || !subset(&want.external_ids, &first.value.external_ids)
                {
                    let row = cols(vec![
                        (
                            "other_config",
                            merged(&want.other_config, &first.value.other_config),
                        ),
                        (
                            "external_ids",
                            merged(&want.external_ids, &first.value.external_ids),
                        ),
                    ]);
                    self.b.update(LS, &first.uuid, row);
                }
                let acls = self.acl_children(&first.uuid, name, &want.acls);
                self.acl_changes.insert((LS, first.uuid.clone()), acls);
            } else {
                self.new_switches.insert(name);
                let acls = want
                    .acls
                    .iter()
                    .map(|a| self.b.insert_child(ACL, isolation::acl_row(a, name), "acl"))
                    .collect();
                self.new_switch_acls.insert(name, acls);
            }
        }
    }

    /// Router ports.
    fn router_ports(&mut self) {
        let desired: &'a Topology = self.desired;
        let observed: &'a Observed = self.observed;
        for (name, want) in &desired.router_ports {
            let existing_parent = self.router_uuid.get(want.router.as_str()).cloned();
            let existing_parent = existing_parent.as_ref();
            let is_new_parent = self.new_routers.contains(want.router.as_str());
            if existing_parent.is_none() && !is_new_parent {
                continue;
            }
            match observed.router_ports.get(name) {
                Some(f) if !f.owned => {
                    self.b
                        .plan
                        .conflicts
                        .push(format!("{LRP} {name}: exists without Sidelane's marker"));
                }
                Some(f) if Some(&f.value.router) != existing_parent => {
                    // On another router (or none): released now, added back on the next pass
                    // (names are unique, so the old row must be gone first).
                    if !f.value.router.is_empty() {
                        self.router_children
                            .entry(f.value.router.clone())
                            .or_default()
                            .remove
                            .push(datum::uuid(&f.uuid));
                        self.b.plan.deleted += 1;
                    }
                }
                Some(f) => {
                    if f.value.gateway_chassis != want.gateway_chassis {
                        let refs = self.gateway_chassis_refs(name, want, Some(&f.uuid));
                        self.b
                            .update(LRP, &f.uuid, cols(vec![("gateway_chassis", refs)]));
                    }
                    if f.value.mac != want.mac
                        || f.value.networks != want.networks
                        || !subset(&want.external_ids, &f.value.external_ids)
                    {
                        let row = cols(vec![
                            ("mac", json!(want.mac)),
                            ("networks", datum::string_set(want.networks.iter().cloned())),
                            (
                                "external_ids",
                                merged(&want.external_ids, &f.value.external_ids),
                            ),
                        ]);
                        self.b.update(LRP, &f.uuid, row);
                    }
                }
                None => {
                    let mut row = router_port_row(name, want);
                    if !want.gateway_chassis.is_empty() {
                        let refs = self.gateway_chassis_refs(name, want, None);
                        row.insert("gateway_chassis".to_owned(), refs);
                    }
                    let r = self.b.insert_child(LRP, row, "lrp");
                    match existing_parent {
                        Some(uuid) => self
                            .router_children
                            .entry(uuid.clone())
                            .or_default()
                            .add
                            .push(r),
                        None => self
                            .new_router_ports
                            .entry(want.router.as_str())
                            .or_default()
                            .push(r),
                    }
                }
            }
        }
    }

    /// Switch ports.
    fn switch_ports(&mut self) {
        let desired: &'a Topology = self.desired;
        let observed: &'a Observed = self.observed;
        for (name, want) in &desired.switch_ports {
            let existing_parent = self.switch_uuid.get(want.switch.as_str());
            let is_new_parent = self.new_switches.contains(want.switch.as_str());
            if existing_parent.is_none() && !is_new_parent {
                continue;
            }
            match observed.switch_ports.get(name) {
                Some(f) if !f.owned => {
                    self.b
                        .plan
                        .conflicts
                        .push(format!("{LSP} {name}: exists without Sidelane's marker"));
                }
                Some(f) if Some(&f.value.switch) != existing_parent => {
                    if !f.value.switch.is_empty() {
                        self.switch_children
                            .entry(f.value.switch.clone())
                            .or_default()
                            .remove
                            .push(datum::uuid(&f.uuid));
                        self.b.plan.deleted += 1;
                    }
                }
                Some(f) => {
                    self.lsp_refs.insert(name, datum::uuid(&f.uuid));
                    if f.value.kind != want.kind
                        || f.value.addresses != want.addresses
                        || f.value.port_security != want.port_security
                        || !subset(&want.options, &f.value.options)
                        || !subset(&want.external_ids, &f.value.external_ids)
                    {
                        let mut row = switch_port_row(name, want);
                        row.remove("name");
                        row.insert("options".into(), merged(&want.options, &f.value.options));
                        row.insert(
                            "external_ids".into(),
                            merged(&want.external_ids, &f.value.external_ids),
                        );
                        self.b.update(LSP, &f.uuid, row);
                    }
                }
                None => {
                    let r = self.b.insert_child(LSP, switch_port_row(name, want), "lsp");
                    self.lsp_refs.insert(name, r.clone());
                    match existing_parent {
                        Some(uuid) => self
                            .switch_children
                            .entry(uuid.clone())
                            .or_default()
                            .add
                            .push(r),
                        None => self
                            .new_switch_ports
                            .entry(want.switch.as_str())
                            .or_default()
                            .push(r),
                    }
                }
            }
        }
    }

    /// Owned routers and switches nothing wants any more. Ports of a deleted parent go with
    /// it, so a parent that holds another owner's rows stays (its own children are released
    /// one by one).
    fn retire_unwanted(&mut self) {
        let (desired, observed) = (self.desired, self.observed);
        let foreign = foreign_children(observed);
        for (name, rows) in &observed.routers {
            if !desired.routers.contains_key(name) {
                for f in rows.iter().filter(|f| f.owned) {
                    self.retire(&foreign, LR, name, &f.uuid);
                }
            }
        }
        for (name, rows) in &observed.switches {
            if !desired.switches.contains_key(name) {
                for f in rows.iter().filter(|f| f.owned) {
                    self.retire(&foreign, LS, name, &f.uuid);
                }
            }
        }
    }

    fn retire(
        &mut self,
        foreign: &HashMap<&str, Vec<String>>,
        table: &str,
        name: &str,
        uuid: &str,
    ) {
        if let Some(theirs) = foreign.get(uuid) {
            let holds = format!(
                "{table} {name} is left in place: it holds {} of another owner",
                theirs.join(", ")
            );
            if table == LS {
                self.b
                    .plan
                    .kept_switches
                    .insert(name.to_owned(), holds.clone());
            }
            self.b.plan.kept.push(holds);
        } else {
            self.b.delete(table, uuid);
            self.deleted_parents.insert(uuid.to_owned());
        }
    }

    /// Owned ports nothing wants any more, on parents that stay.
    fn release_unwanted_ports(&mut self) {
        let (desired, observed) = (self.desired, self.observed);
        for (name, f) in &observed.router_ports {
            if f.owned
                && !desired.router_ports.contains_key(name)
                && !f.value.router.is_empty()
                && !self.deleted_parents.contains(&f.value.router)
            {
                self.router_children
                    .entry(f.value.router.clone())
                    .or_default()
                    .remove
                    .push(datum::uuid(&f.uuid));
                self.b.plan.deleted += 1;
            }
        }
        for (name, f) in &observed.switch_ports {
            if f.owned
                && !desired.switch_ports.contains_key(name)
                && !f.value.switch.is_empty()
                && !self.deleted_parents.contains(&f.value.switch)
            {
                self.switch_children
                    .entry(f.value.switch.clone())
                    .or_default()
                    .remove
                    .push(datum::uuid(&f.uuid));
                self.b.plan.deleted += 1;
            }
        }
    }

    /// New routers and switches, with their new children.
    fn insert_new_parents(&mut self) {
        let desired: &'a Topology = self.desired;
        for name in std::mem::take(&mut self.new_routers) {
            let want = &desired.routers[name];
            self.b.parents.push(absent(LR, name));
            self.b.parents.push(Operation::Insert {
                table: LR.to_owned(),
                row: cols(vec![
                    ("name", json!(name)),
                    (
                        "ports",
                        datum::set(self.new_router_ports.remove(name).unwrap_or_default()),
                    ),
                    (
                        "static_routes",
                        datum::set(self.new_router_routes.remove(name).unwrap_or_default()),
                    ),
                    (
                        "nat",
                        datum::set(self.new_router_nats.remove(name).unwrap_or_default()),
                    ),
                    ("load_balancer", datum::set(self.lb_refs_of(want))),
                    ("external_ids", datum::string_map(&want.external_ids)),
                ]),
                uuid_name: None,
            });
            self.b.plan.inserted += 1;
        }
        for name in std::mem::take(&mut self.new_switches) {
            let want = &desired.switches[name];
            self.b.parents.push(absent(LS, name));
            self.b.parents.push(Operation::Insert {
                table: LS.to_owned(),
                row: cols(vec![
                    ("name", json!(name)),
                    (
                        "ports",
                        datum::set(self.new_switch_ports.remove(name).unwrap_or_default()),
                    ),
                    ("other_config", datum::string_map(&want.other_config)),
                    ("external_ids", datum::string_map(&want.external_ids)),
                    (
                        "acls",
                        datum::set(self.new_switch_acls.remove(name).unwrap_or_default()),
                    ),
                ]),
                uuid_name: None,
            });
            self.b.plan.inserted += 1;
        }
    }

    /// Existing parents gain and lose children.
    fn mutate_parents(&mut self) {
        for (uuid, c) in std::mem::take(&mut self.static_route_changes) {
            self.b.mutate(LR, &uuid, "static_routes", c);
        }
        for (uuid, c) in std::mem::take(&mut self.router_children) {
            self.b.mutate(LR, &uuid, "ports", c);
        }
        for (uuid, c) in std::mem::take(&mut self.nat_changes) {
            self.b.mutate(LR, &uuid, "nat", c);
        }
        for (uuid, c) in std::mem::take(&mut self.switch_children) {
            self.b.mutate(LS, &uuid, "ports", c);
        }
        for ((table, uuid), c) in std::mem::take(&mut self.acl_changes) {
            if !self.deleted_parents.contains(&uuid) {
                self.b.mutate(table, &uuid, "acls", c);
            }
        }
    }
}
