//! What the Northbound database holds ([`Observed`], read from a replica) and the one
//! transaction that turns it into the desired [`Topology`] ([`plan`]). Only rows carrying the
//! ownership marker are updated or deleted; a row of a wanted name without the marker is a
//! conflict, reported and left alone. Inserts of switches and routers carry a `wait` that
//! aborts the transaction if a row of that name appeared meanwhile (a second controller, a
//! stale copy): names stay unique.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{Value, json};
use sidelane_ovsdb::{Condition, Mutation, Operation, Replica, Row, datum};

use super::{OWNER, OWNER_KEY, Router, RouterPort, StaticRoute, Switch, SwitchPort, Topology};

/// The Northbound tables Sidelane writes.
pub const TABLES: [&str; 5] = [LR, LRP, LRSR, LS, LSP];
const LR: &str = "Logical_Router";
const LRP: &str = "Logical_Router_Port";
const LRSR: &str = "Logical_Router_Static_Route";
const LS: &str = "Logical_Switch";
const LSP: &str = "Logical_Switch_Port";

/// A row as found, with its UUID and whether Sidelane owns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found<T> {
    /// The row's UUID.
    pub uuid: String,
    /// Whether it carries the ownership marker.
    pub owned: bool,
    /// Its columns.
    pub value: T,
}

/// The rows of Sidelane's tables as the database holds them.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// Routers by name (names are not unique in the schema).
    pub routers: BTreeMap<String, Vec<Found<Router>>>,
    /// Owned static routes of each router, by router UUID.
    pub routes: HashMap<String, Vec<Found<StaticRoute>>>,
    /// Switches by name.
    pub switches: BTreeMap<String, Vec<Found<Switch>>>,
    /// Router ports by name (unique), with their router's UUID in `router`.
    pub router_ports: BTreeMap<String, Found<RouterPort>>,
    /// Switch ports by name (unique), with their switch's UUID in `switch`.
    pub switch_ports: BTreeMap<String, Found<SwitchPort>>,
    /// Static routes of other owners, described, by router UUID: a router holding one is not
    /// Sidelane's alone to delete.
    pub foreign_routes: HashMap<String, Vec<String>>,
}

fn owned(ids: &BTreeMap<String, String>) -> bool {
    ids.get(OWNER_KEY).is_some_and(|v| v == OWNER)
}

fn string(row: &Row, column: &str) -> String {
    row.get(column)
        .and_then(datum::as_optional_string)
        .unwrap_or_default()
}

fn string_map(row: &Row, column: &str) -> BTreeMap<String, String> {
    row.get(column)
        .map(datum::as_string_map)
        .unwrap_or_default()
}

fn string_set(row: &Row, column: &str) -> BTreeSet<String> {
    row.get(column)
        .map(datum::as_string_set)
        .unwrap_or_default()
        .into_iter()
        .collect()
}

fn uuids(row: &Row, column: &str) -> Vec<String> {
    row.get(column).map(datum::as_uuid_set).unwrap_or_default()
}

impl Observed {
    /// Switch ports of other owners, by name, each described (addresses and who wrote it): a
    /// pod whose port name is among them must not be plugged as if the port were Sidelane's.
    pub fn held_ports(&self) -> BTreeMap<String, String> {
        self.switch_ports
            .iter()
            .filter(|(_, f)| !f.owned)
            .map(|(name, f)| {
                let addresses: Vec<&str> = f.value.addresses.iter().map(String::as_str).collect();
                let vendor = f
                    .value
                    .external_ids
                    .get("vendor")
                    .map_or("an unknown owner", String::as_str);
                (
                    name.clone(),
                    format!(
                        "{LSP} {name} belongs to {vendor} (addresses {addresses:?}, no {OWNER_KEY} marker)"
                    ),
                )
            })
            .collect()
    }

    /// Reads the tables from a replica of the Northbound database.
    #[expect(clippy::too_many_lines, reason = "one pass per table")]
    pub fn from_replica(r: &Replica) -> Observed {
        let mut o = Observed::default();
        let mut port_router: HashMap<&str, &str> = HashMap::new();
        let mut port_switch: HashMap<&str, &str> = HashMap::new();
        for (uuid, row) in r.rows(LR) {
            let external_ids = string_map(row, "external_ids");
            let mut routes = Vec::new();
            for id in uuids(row, "static_routes") {
                let Some(route) = r.row(LRSR, &id) else {
                    continue;
                };
                let ids = string_map(route, "external_ids");
                let policy = string(route, "policy");
                routes.push(Found {
                    uuid: id,
                    owned: owned(&ids),
                    value: StaticRoute {
                        ip_prefix: string(route, "ip_prefix"),
                        nexthop: string(route, "nexthop"),
                        policy: if policy.is_empty() {
                            "dst-ip".to_owned()
                        } else {
                            policy
                        },
                    },
                });
            }
            for p in row.get("ports").map(datum::as_set).unwrap_or_default() {
                if let Some(p) = datum::as_uuid(p) {
                    port_router.insert(p, uuid);
                }
            }
            o.routers
                .entry(string(row, "name"))
                .or_default()
                .push(Found {
                    uuid: uuid.clone(),
                    owned: owned(&external_ids),
                    value: Router {
                        static_routes: routes
                            .iter()
                            .filter(|f| f.owned)
                            .map(|f| f.value.clone())
                            .collect(),
                        external_ids,
                    },
                });
            let foreign: Vec<String> = routes
                .iter()
                .filter(|f| !f.owned)
                .map(|f| format!("{LRSR} {} via {}", f.value.ip_prefix, f.value.nexthop))
                .collect();
            if !foreign.is_empty() {
                o.foreign_routes.insert(uuid.clone(), foreign);
            }
            o.routes.insert(
                uuid.clone(),
                routes.into_iter().filter(|f| f.owned).collect(),
            );
        }
        for (uuid, row) in r.rows(LS) {
            let external_ids = string_map(row, "external_ids");
            for p in row.get("ports").map(datum::as_set).unwrap_or_default() {
                if let Some(p) = datum::as_uuid(p) {
                    port_switch.insert(p, uuid);
                }
            }
            o.switches
                .entry(string(row, "name"))
                .or_default()
                .push(Found {
                    uuid: uuid.clone(),
                    owned: owned(&external_ids),
                    value: Switch {
                        other_config: string_map(row, "other_config"),
                        external_ids,
                    },
                });
        }
        for (uuid, row) in r.rows(LRP) {
            let external_ids = string_map(row, "external_ids");
            o.router_ports.insert(
                string(row, "name"),
                Found {
                    uuid: uuid.clone(),
                    owned: owned(&external_ids),
                    value: RouterPort {
                        router: port_router
                            .get(uuid.as_str())
                            .map(|s| (*s).to_owned())
                            .unwrap_or_default(),
                        mac: string(row, "mac"),
                        networks: string_set(row, "networks"),
                        external_ids,
                    },
                },
            );
        }
        for (uuid, row) in r.rows(LSP) {
            let external_ids = string_map(row, "external_ids");
            o.switch_ports.insert(
                string(row, "name"),
                Found {
                    uuid: uuid.clone(),
                    owned: owned(&external_ids),
                    value: SwitchPort {
                        switch: port_switch
                            .get(uuid.as_str())
                            .map(|s| (*s).to_owned())
                            .unwrap_or_default(),
                        kind: string(row, "type"),
                        addresses: string_set(row, "addresses"),
                        port_security: string_set(row, "port_security"),
                        options: string_map(row, "options"),
                        external_ids,
                    },
                },
            );
        }
        o
    }
}

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
#[expect(
    clippy::too_many_lines,
    reason = "one pass per table, in dependency order"
)]
pub fn plan(desired: &Topology, observed: &Observed) -> Plan {
    let mut b = Builder {
        plan: Plan::default(),
        next: 0,
        children: Vec::new(),
        parents: Vec::new(),
        deletes: Vec::new(),
    };
    // Parents that exist (by UUID) or are inserted now (their new children, by name).
    let mut router_uuid: BTreeMap<&str, String> = BTreeMap::new();
    let mut switch_uuid: BTreeMap<&str, String> = BTreeMap::new();
    let mut new_routers: BTreeSet<&str> = BTreeSet::new();
    let mut new_switches: BTreeSet<&str> = BTreeSet::new();
    let mut router_children: BTreeMap<String, Children> = BTreeMap::new();
    let mut static_route_changes: BTreeMap<String, Children> = BTreeMap::new();
    let mut switch_children: BTreeMap<String, Children> = BTreeMap::new();
    let mut new_router_ports: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    let mut new_router_routes: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    let mut new_switch_ports: BTreeMap<&str, Vec<Value>> = BTreeMap::new();

    // Routers and their static routes.
    for (name, want) in &desired.routers {
        let rows = observed
            .routers
            .get(name)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut mine = rows.iter().filter(|f| f.owned);
        if let Some(first) = mine.next() {
            router_uuid.insert(name, first.uuid.clone());
            for extra in mine {
                b.delete(LR, &extra.uuid);
            }
            if !subset(&want.external_ids, &first.value.external_ids) {
                let row = cols(vec![(
                    "external_ids",
                    merged(&want.external_ids, &first.value.external_ids),
                )]);
                b.update(LR, &first.uuid, row);
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
                b.plan.deleted += 1;
            }
            for r in want.static_routes.iter().filter(|r| !kept.contains(r)) {
                children
                    .add
                    .push(b.insert_child(LRSR, route_row(r), "route"));
            }
            static_route_changes.insert(first.uuid.clone(), children);
        } else if !rows.is_empty() {
            b.plan.conflicts.push(format!(
                "{LR} {name}: a router of this name exists without Sidelane's marker"
            ));
        } else {
            new_routers.insert(name);
            let routes: Vec<Value> = want
                .static_routes
                .iter()
                .map(|r| b.insert_child(LRSR, route_row(r), "route"))
                .collect();
            new_router_routes.insert(name, routes);
        }
    }
    // Switches.
    for (name, want) in &desired.switches {
        let rows = observed
            .switches
            .get(name)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut mine = rows.iter().filter(|f| f.owned);
        if let Some(first) = mine.next() {
            switch_uuid.insert(name, first.uuid.clone());
            for extra in mine {
                b.delete(LS, &extra.uuid);
            }
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
                b.update(LS, &first.uuid, row);
            }
        } else if !rows.is_empty() {
            b.plan.conflicts.push(format!(
                "{LS} {name}: a switch of this name exists without Sidelane's marker"
            ));
        } else {
            new_switches.insert(name);
        }
    }
    // Router ports.
    for (name, want) in &desired.router_ports {
        let existing_parent = router_uuid.get(want.router.as_str());
        let is_new_parent = new_routers.contains(want.router.as_str());
        if existing_parent.is_none() && !is_new_parent {
            continue;
        }
        match observed.router_ports.get(name) {
            Some(f) if !f.owned => {
                b.plan
                    .conflicts
                    .push(format!("{LRP} {name}: exists without Sidelane's marker"));
            }
            Some(f) if Some(&f.value.router) != existing_parent => {
                // On another router (or none): released now, added back on the next pass
                // (names are unique, so the old row must be gone first).
                if !f.value.router.is_empty() {
                    router_children
                        .entry(f.value.router.clone())
                        .or_default()
                        .remove
                        .push(datum::uuid(&f.uuid));
                    b.plan.deleted += 1;
                }
            }
            Some(f) => {
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
                    b.update(LRP, &f.uuid, row);
                }
            }
            None => {
                let r = b.insert_child(LRP, router_port_row(name, want), "lrp");
                match existing_parent {
                    Some(uuid) => router_children.entry(uuid.clone()).or_default().add.push(r),
                    None => new_router_ports
                        .entry(want.router.as_str())
                        .or_default()
                        .push(r),
                }
            }
        }
    }
    // Switch ports.
    for (name, want) in &desired.switch_ports {
        let existing_parent = switch_uuid.get(want.switch.as_str());
        let is_new_parent = new_switches.contains(want.switch.as_str());
        if existing_parent.is_none() && !is_new_parent {
            continue;
        }
        match observed.switch_ports.get(name) {
            Some(f) if !f.owned => {
                b.plan
                    .conflicts
                    .push(format!("{LSP} {name}: exists without Sidelane's marker"));
            }
            Some(f) if Some(&f.value.switch) != existing_parent => {
                if !f.value.switch.is_empty() {
                    switch_children
                        .entry(f.value.switch.clone())
                        .or_default()
                        .remove
                        .push(datum::uuid(&f.uuid));
                    b.plan.deleted += 1;
                }
            }
            Some(f) => {
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
                    b.update(LSP, &f.uuid, row);
                }
            }
            None => {
                let r = b.insert_child(LSP, switch_port_row(name, want), "lsp");
                match existing_parent {
                    Some(uuid) => switch_children.entry(uuid.clone()).or_default().add.push(r),
                    None => new_switch_ports
                        .entry(want.switch.as_str())
                        .or_default()
                        .push(r),
                }
            }
        }
    }
    // Owned rows nothing wants any more. Ports of a deleted parent go with it, so a parent
    // that holds another owner's rows stays (its own children are released one by one).
    let foreign = foreign_children(observed);
    let mut deleted_parents: BTreeSet<String> = BTreeSet::new();
    let mut retire = |b: &mut Builder, table: &str, name: &str, uuid: &str| {
        if let Some(theirs) = foreign.get(uuid) {
            b.plan.kept.push(format!(
                "{table} {name} is left in place: it holds {} of another owner",
                theirs.join(", ")
            ));
        } else {
            b.delete(table, uuid);
            deleted_parents.insert(uuid.to_owned());
        }
    };
    for (name, rows) in &observed.routers {
        if !desired.routers.contains_key(name) {
            for f in rows.iter().filter(|f| f.owned) {
                retire(&mut b, LR, name, &f.uuid);
            }
        }
    }
    for (name, rows) in &observed.switches {
        if !desired.switches.contains_key(name) {
            for f in rows.iter().filter(|f| f.owned) {
                retire(&mut b, LS, name, &f.uuid);
            }
        }
    }
    for (name, f) in &observed.router_ports {
        if f.owned
            && !desired.router_ports.contains_key(name)
            && !f.value.router.is_empty()
            && !deleted_parents.contains(&f.value.router)
        {
            router_children
                .entry(f.value.router.clone())
                .or_default()
                .remove
                .push(datum::uuid(&f.uuid));
            b.plan.deleted += 1;
        }
    }
    for (name, f) in &observed.switch_ports {
        if f.owned
            && !desired.switch_ports.contains_key(name)
            && !f.value.switch.is_empty()
            && !deleted_parents.contains(&f.value.switch)
        {
            switch_children
                .entry(f.value.switch.clone())
                .or_default()
                .remove
                .push(datum::uuid(&f.uuid));
            b.plan.deleted += 1;
        }
    }
    // Parents: new ones with their children, existing ones mutated.
    for name in new_routers {
        let want = &desired.routers[name];
        b.parents.push(absent(LR, name));
        b.parents.push(Operation::Insert {
            table: LR.to_owned(),
            row: cols(vec![
                ("name", json!(name)),
                (
                    "ports",
                    datum::set(new_router_ports.remove(name).unwrap_or_default()),
                ),
                (
                    "static_routes",
                    datum::set(new_router_routes.remove(name).unwrap_or_default()),
                ),
                ("external_ids", datum::string_map(&want.external_ids)),
            ]),
            uuid_name: None,
        });
        b.plan.inserted += 1;
    }
    for name in new_switches {
        let want = &desired.switches[name];
        b.parents.push(absent(LS, name));
        b.parents.push(Operation::Insert {
            table: LS.to_owned(),
            row: cols(vec![
                ("name", json!(name)),
                (
                    "ports",
                    datum::set(new_switch_ports.remove(name).unwrap_or_default()),
                ),
                ("other_config", datum::string_map(&want.other_config)),
                ("external_ids", datum::string_map(&want.external_ids)),
            ]),
            uuid_name: None,
        });
        b.plan.inserted += 1;
    }
    for (uuid, c) in static_route_changes {
        b.mutate(LR, &uuid, "static_routes", c);
    }
    for (uuid, c) in router_children {
        b.mutate(LR, &uuid, "ports", c);
    }
    for (uuid, c) in switch_children {
        b.mutate(LS, &uuid, "ports", c);
    }
    let mut ops = b.children;
    ops.append(&mut b.parents);
    ops.append(&mut b.deletes);
    b.plan.ops = ops;
    b.plan
}
