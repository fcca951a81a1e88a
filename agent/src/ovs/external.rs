//! A gateway node's external network for NAT gateways (docs/nat.md): a provider bridge holding
//! the node's external NIC, and `ovn-bridge-mappings` naming it for the external Subnet's
//! physical network, so that ovn-controller joins the external switch's `localnet` port to
//! it. Idempotent: what already holds is left, other mappings stay.

use serde_json::{Value, json};
use sidelane_ovsdb::{Condition, Mutation, Operation, datum};
use tracing::info;

use super::{OVS_DB, OvsBridge, OvsError, cols};

/// `ovn-bridge-mappings` with `network` mapped to `bridge` (other pairs kept, in order).
pub fn with_mapping(mappings: &str, network: &str, bridge: &str) -> String {
    let mut pairs: Vec<String> = mappings
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty() && p.split(':').next() != Some(network))
        .map(str::to_owned)
        .collect();
    pairs.push(format!("{network}:{bridge}"));
    pairs.join(",")
}

impl OvsBridge {
    /// Makes this node a gateway node for `network`: bridge `bridge` (created with the
    /// integration bridge's datapath, in OVS's normal switching mode) with `nic` in it, and
    /// `network` → `bridge` in `ovn-bridge-mappings`.
    ///
    /// # Errors
    /// The database refuses or cannot be reached.
    pub async fn provide_external(
        &self,
        network: &str,
        bridge: &str,
        nic: &str,
    ) -> Result<(), OvsError> {
        let err = |op| {
            let (port, bridge) = (nic.to_owned(), bridge.to_owned());
            move |source| OvsError::Db {
                op,
                port,
                bridge,
                source: Box::new(source),
            }
        };
        let found = self
            .client
            .transact(
                OVS_DB,
                &[
                    select("Bridge", "name", bridge, &["ports"]),
                    select("Port", "name", nic, &["_uuid"]),
                    Operation::Select {
                        table: "Open_vSwitch".into(),
                        conditions: Vec::new(),
                        columns: Some(vec!["external_ids".into()]),
                    },
                ],
            )
            .await
            .map_err(err("reading the external network for"))?;
        let rows = |i: usize| found.get(i).map(|r| r.rows.clone()).unwrap_or_default();
        let (bridges, ports, system) = (rows(0), rows(1), rows(2));
        let mappings = system
            .first()
            .and_then(|r| r.get("external_ids"))
            .map(datum::as_string_map)
            .unwrap_or_default()
            .get("ovn-bridge-mappings")
            .cloned()
            .unwrap_or_default();
        let mut ops = Vec::new();
        if bridges.is_empty() {
            ops.extend(self.new_bridge(bridge, nic));
        } else if ports.is_empty() {
            ops.extend(port_ops(nic, "nic"));
            ops.push(Operation::Mutate {
                table: "Bridge".into(),
                conditions: vec![Condition::eq("name", json!(bridge))],
                mutations: vec![Mutation::insert(
                    "ports",
                    datum::set([datum::named_uuid("nic_port")]),
                )],
            });
        }
        let wanted = with_mapping(&mappings, network, bridge);
        if wanted != mappings {
            ops.push(Operation::Mutate {
                table: "Open_vSwitch".into(),
                conditions: Vec::new(),
                mutations: vec![
                    Mutation::delete(
                        "external_ids",
                        datum::string_set(["ovn-bridge-mappings".to_owned()]),
                    ),
                    Mutation::insert(
                        "external_ids",
                        json!(["map", [["ovn-bridge-mappings", wanted]]]),
                    ),
                ],
            });
        }
        if ops.is_empty() {
            return Ok(());
        }
        self.client
            .transact(OVS_DB, &ops)
            .await
            .map_err(err("providing the external network on"))?;
        info!(
            network,
            bridge, nic, "this node carries the external network for NAT gateways"
        );
        Ok(())
    }

    /// A bridge `bridge` with its internal port and `nic`.
    fn new_bridge(&self, bridge: &str, nic: &str) -> Vec<Operation> {
        let mut ops = port_ops(bridge, "own");
        ops.extend(port_ops(nic, "nic"));
        ops.push(Operation::Insert {
            table: "Bridge".into(),
            row: cols(vec![
                ("name", json!(bridge)),
                (
                    "ports",
                    datum::set([datum::named_uuid("own_port"), datum::named_uuid("nic_port")]),
                ),
                ("datapath_type", json!(self.datapath.as_str())),
            ]),
            uuid_name: Some("bridge".into()),
        });
        ops.push(Operation::Mutate {
            table: "Open_vSwitch".into(),
            conditions: Vec::new(),
            mutations: vec![Mutation::insert(
                "bridges",
                datum::set([datum::named_uuid("bridge")]),
            )],
        });
        ops
    }
}

fn select(table: &str, column: &str, value: &str, columns: &[&str]) -> Operation {
    Operation::Select {
        table: table.into(),
        conditions: vec![Condition::eq(column, json!(value))],
        columns: Some(columns.iter().map(|c| (*c).to_owned()).collect()),
    }
}

/// An interface and its port, named `<tag>_iface` and `<tag>_port` in the transaction (the
/// bridge's own port is internal).
fn port_ops(name: &str, tag: &str) -> Vec<Operation> {
    let mut iface: Vec<(&str, Value)> = vec![("name", json!(name))];
    if tag == "own" {
        iface.push(("type", json!("internal")));
    }
    vec![
        Operation::Insert {
            table: "Interface".into(),
            row: cols(iface),
            uuid_name: Some(format!("{tag}_iface")),
        },
        Operation::Insert {
            table: "Port".into(),
            row: cols(vec![
                ("name", json!(name)),
                (
                    "interfaces",
                    datum::set([datum::named_uuid(&format!("{tag}_iface"))]),
                ),
            ]),
            uuid_name: Some(format!("{tag}_port")),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::with_mapping;

    #[test]
    fn a_mapping_is_added_beside_others_and_replaces_its_own_network() {
        assert_eq!(with_mapping("", "ext", "br-external"), "ext:br-external");
        assert_eq!(
            with_mapping("physnet:br-phy, ext:br-old", "ext", "br-external"),
            "physnet:br-phy,ext:br-external"
        );
    }
}
