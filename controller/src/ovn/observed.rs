//! What the Northbound database holds of the tables Sidelane writes ([`Observed`]), read from a
//! replica, each row with whether it carries Sidelane's ownership marker.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use sidelane_ovsdb::{Replica, Row, datum};

use super::{
    Acl, AddressSet, LoadBalancer, Nat, OWNER, OWNER_KEY, PortGroup, Router, RouterPort,
    StaticRoute, Switch, SwitchPort,
};

/// The Northbound tables Sidelane writes.
pub const TABLES: [&str; 11] = [LR, LRP, LRSR, LS, LSP, PG, AS, ACL, NAT, LB, GC];
pub(super) const NAT: &str = "NAT";
pub(super) const LB: &str = "Load_Balancer";
pub(super) const GC: &str = "Gateway_Chassis";
pub(super) const PG: &str = "Port_Group";
pub(super) const AS: &str = "Address_Set";
pub(super) const ACL: &str = "ACL";
pub(super) const LR: &str = "Logical_Router";
pub(super) const LRP: &str = "Logical_Router_Port";
pub(super) const LRSR: &str = "Logical_Router_Static_Route";
pub(super) const LS: &str = "Logical_Switch";
pub(super) const LSP: &str = "Logical_Switch_Port";

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
    /// Port groups by name, their ports by name and their owned ACLs.
    pub port_groups: BTreeMap<String, Vec<Found<PortGroup>>>,
    /// Address sets by name.
    pub address_sets: BTreeMap<String, Vec<Found<AddressSet>>>,
    /// The ACLs of each switch and port group, by its UUID.
    pub acls: HashMap<String, Vec<Found<Acl>>>,
    /// Owned NAT rows of each router, by router UUID.
    pub nats: HashMap<String, Vec<Found<Nat>>>,
    /// Load balancers by name.
    pub load_balancers: BTreeMap<String, Vec<Found<LoadBalancer>>>,
    /// The owned load balancers each router applies, by router UUID: their UUIDs.
    pub router_lbs: HashMap<String, BTreeSet<String>>,
    /// The gateway chassis rows of each router port, by port UUID: name → UUID.
    pub gateway_chassis: HashMap<String, BTreeMap<String, String>>,
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
    pub fn from_replica(r: &Replica) -> Observed {
        let mut o = Observed::default();
        o.read_load_balancers(r);
        let port_router = o.read_routers(r);
        let port_switch = o.read_switches(r);
        o.read_router_ports(r, &port_router);
        o.read_switch_ports(r, &port_switch);
        o.read_port_groups(r);
        o.read_address_sets(r);
        o
    }

    /// The ACLs `parent` names, remembered by its UUID; returns the owned ones.
    fn read_acls(&mut self, r: &Replica, parent_uuid: &str, parent: &Row) -> BTreeSet<Acl> {
        let mut found = Vec::new();
        for id in uuids(parent, "acls") {
            let Some(row) = r.row(ACL, &id) else {
                continue;
            };
            found.push(Found {
                uuid: id,
                owned: owned(&string_map(row, "external_ids")),
                value: Acl {
                    direction: string(row, "direction"),
                    priority: row
                        .get("priority")
                        .and_then(serde_json::Value::as_u64)
                        .and_then(|p| u16::try_from(p).ok())
                        .unwrap_or_default(),
                    r#match: string(row, "match"),
                    action: string(row, "action"),
                },
            });
        }
        let mine = found
            .iter()
            .filter(|f| f.owned)
            .map(|f| f.value.clone())
            .collect();
        if !found.is_empty() {
            self.acls.insert(parent_uuid.to_owned(), found);
        }
        mine
    }

    fn read_port_groups(&mut self, r: &Replica) {
        let port_names: HashMap<String, String> = self
            .switch_ports
            .iter()
            .map(|(name, f)| (f.uuid.clone(), name.clone()))
            .collect();
        let mut groups = BTreeMap::new();
        for (uuid, row) in r.rows(PG) {
            let external_ids = string_map(row, "external_ids");
            let ports = uuids(row, "ports")
                .iter()
                .filter_map(|p| port_names.get(p).cloned())
                .collect();
            let acls = self.read_acls(r, uuid, row);
            groups
                .entry(string(row, "name"))
                .or_insert_with(Vec::new)
                .push(Found {
                    uuid: uuid.clone(),
                    owned: owned(&external_ids),
                    value: PortGroup {
                        ports,
                        acls,
                        external_ids,
                    },
                });
        }
        self.port_groups = groups;
    }

    fn read_address_sets(&mut self, r: &Replica) {
        for (uuid, row) in r.rows(AS) {
            let external_ids = string_map(row, "external_ids");
            self.address_sets
                .entry(string(row, "name"))
                .or_default()
                .push(Found {
                    uuid: uuid.clone(),
                    owned: owned(&external_ids),
                    value: AddressSet {
                        addresses: string_set(row, "addresses"),
                        external_ids,
                    },
                });
        }
    }

    /// Routers and their static routes; returns each router port's router.
    fn read_routers<'r>(&mut self, r: &'r Replica) -> HashMap<&'r str, &'r str> {
        let mut port_router: HashMap<&str, &str> = HashMap::new();
        for (uuid, row) in r.rows(LR) {
            let external_ids = string_map(row, "external_ids");
            let routes = read_routes(r, row);
            let nats = read_nats(r, row);
            let lbs: BTreeSet<String> = uuids(row, "load_balancer")
                .into_iter()
                .filter(|id| {
                    r.row(LB, id)
                        .is_some_and(|lb| owned(&string_map(lb, "external_ids")))
                })
                .collect();
            if !lbs.is_empty() {
                self.router_lbs.insert(uuid.clone(), lbs);
            }
            for p in row.get("ports").map(datum::as_set).unwrap_or_default() {
                if let Some(p) = datum::as_uuid(p) {
                    port_router.insert(p, uuid);
                }
            }
            self.routers
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
                        nats: nats
                            .iter()
                            .filter(|f| f.owned)
                            .map(|f| f.value.clone())
                            .collect(),
                        load_balancers: BTreeSet::new(),
                        external_ids,
                    },
                });
            let foreign: Vec<String> = routes
                .iter()
                .filter(|f| !f.owned)
                .map(|f| format!("{LRSR} {} via {}", f.value.ip_prefix, f.value.nexthop))
                .chain(nats.iter().filter(|f| !f.owned).map(|f| {
                    format!(
                        "{NAT} {} {} {}",
                        f.value.kind, f.value.external_ip, f.value.logical_ip
                    )
                }))
                .collect();
            if !foreign.is_empty() {
                self.foreign_routes.insert(uuid.clone(), foreign);
            }
            self.routes.insert(
                uuid.clone(),
                routes.into_iter().filter(|f| f.owned).collect(),
            );
            self.nats
                .insert(uuid.clone(), nats.into_iter().filter(|f| f.owned).collect());
        }
        port_router
    }

    /// Switches; returns each switch port's switch.
    fn read_switches<'r>(&mut self, r: &'r Replica) -> HashMap<&'r str, &'r str> {
        let mut port_switch: HashMap<&str, &str> = HashMap::new();
        for (uuid, row) in r.rows(LS) {
            let external_ids = string_map(row, "external_ids");
            for p in row.get("ports").map(datum::as_set).unwrap_or_default() {
                if let Some(p) = datum::as_uuid(p) {
                    port_switch.insert(p, uuid);
                }
            }
            let acls = self.read_acls(r, uuid, row);
            self.switches
                .entry(string(row, "name"))
                .or_default()
                .push(Found {
                    uuid: uuid.clone(),
                    owned: owned(&external_ids),
                    value: Switch {
                        other_config: string_map(row, "other_config"),
                        external_ids,
                        acls,
                    },
                });
        }
        port_switch
    }

    fn read_router_ports(&mut self, r: &Replica, port_router: &HashMap<&str, &str>) {
        for (uuid, row) in r.rows(LRP) {
            let external_ids = string_map(row, "external_ids");
            let mut gateway_chassis = BTreeMap::new();
            let mut gc_rows = BTreeMap::new();
            for id in uuids(row, "gateway_chassis") {
                if let Some(gc) = r.row(GC, &id) {
                    let priority = gc
                        .get("priority")
                        .and_then(serde_json::Value::as_u64)
                        .and_then(|p| u16::try_from(p).ok())
                        .unwrap_or_default();
                    gateway_chassis.insert(string(gc, "chassis_name"), priority);
                    gc_rows.insert(string(gc, "name"), id);
                }
            }
            if !gc_rows.is_empty() {
                self.gateway_chassis.insert(uuid.clone(), gc_rows);
            }
            self.router_ports.insert(
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
                        gateway_chassis,
                        external_ids,
                    },
                },
            );
        }
    }

    fn read_switch_ports(&mut self, r: &Replica, port_switch: &HashMap<&str, &str>) {
        for (uuid, row) in r.rows(LSP) {
            let external_ids = string_map(row, "external_ids");
            self.switch_ports.insert(
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
    }
}

impl Observed {
    fn read_load_balancers(&mut self, r: &Replica) {
        for (uuid, row) in r.rows(LB) {
            let external_ids = string_map(row, "external_ids");
            self.load_balancers
                .entry(string(row, "name"))
                .or_default()
                .push(Found {
                    uuid: uuid.clone(),
                    owned: owned(&external_ids),
                    value: LoadBalancer {
                        protocol: string(row, "protocol"),
                        vips: string_map(row, "vips"),
                        external_ids,
                    },
                });
        }
    }
}

/// The NAT rows a router row names, each with whether it is Sidelane's.
fn read_nats(r: &Replica, lr: &Row) -> Vec<Found<Nat>> {
    uuids(lr, "nat")
        .into_iter()
        .filter_map(|id| {
            let row = r.row(NAT, &id)?;
            Some(Found {
                owned: owned(&string_map(row, "external_ids")),
                value: Nat {
                    kind: string(row, "type"),
                    external_ip: string(row, "external_ip"),
                    logical_ip: string(row, "logical_ip"),
                },
                uuid: id,
            })
        })
        .collect()
}

/// The static routes a router row names, each with whether it is Sidelane's.
fn read_routes(r: &Replica, lr: &Row) -> Vec<Found<StaticRoute>> {
    let mut routes = Vec::new();
    for id in uuids(lr, "static_routes") {
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
    routes
}
