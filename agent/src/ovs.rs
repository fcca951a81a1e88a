//! Local port binding: the host end of an OVN-backed attachment becomes a port of the
//! integration bridge (`br-int`) with `external_ids:iface-id=<logical port>`, written to the
//! node's `Open_vSwitch` database with our OVSDB client (no ovs-vsctl fork per CNI ADD), and
//! the ADD answers once ovn-controller has bound it (`external_ids:ovn-installed=true`).
//! Behind [`PortPlug`] so the attacher's tests can run without OVS.

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use futures::future::BoxFuture;
use serde_json::{Value, json};
use sidelane_ovsdb::{
    Client, ClientError, Condition, MonitorEvent, MonitorRequest, Mutation, Operation, Options,
    Remote, Replica, Row, datum,
};
use thiserror::Error;
use tokio::sync::watch;
use tracing::{debug, info, warn};

mod external;

pub use external::with_mapping;

/// The `Open_vSwitch` database.
pub const OVS_DB: &str = "Open_vSwitch";
/// Kube-OVN's default: how long an ADD waits for ovn-controller to bind the port.
pub const DEFAULT_INSTALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Which OVS datapath the integration bridge uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Datapath {
    /// The kernel datapath (the `openvswitch` module).
    System,
    /// The userspace datapath.
    Netdev,
}

impl Datapath {
    /// `system` where the `openvswitch` kernel module is loaded, `netdev` otherwise.
    pub fn detect() -> Datapath {
        if Path::new("/sys/module/openvswitch").exists() {
            Datapath::System
        } else {
            Datapath::Netdev
        }
    }

    /// The `datapath_type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Datapath::System => "system",
            Datapath::Netdev => "netdev",
        }
    }

    /// Whether veth ends must have TX checksum offload off: the userspace datapath forwards
    /// frames whose checksum the kernel left for the NIC to fill in, so TCP would fail.
    pub fn needs_tx_checksum_off(self) -> bool {
        self == Datapath::Netdev
    }
}

impl std::str::FromStr for Datapath {
    type Err = String;

    fn from_str(s: &str) -> Result<Datapath, String> {
        match s {
            "auto" => Ok(Datapath::detect()),
            "system" => Ok(Datapath::System),
            "netdev" => Ok(Datapath::Netdev),
            other => Err(format!(
                "datapath {other:?}: expected auto, system or netdev"
            )),
        }
    }
}

/// A port to plug.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortBinding {
    /// The host end's name (the OVS port and interface name).
    pub port: String,
    /// The logical switch port it binds to (`iface-id`).
    pub iface_id: String,
    /// The pod's name.
    pub pod_name: String,
    /// The pod's namespace.
    pub pod_namespace: String,
    /// The pod's network namespace path.
    pub pod_netns: String,
    /// The addresses, comma-separated.
    pub ip: String,
}

impl PortBinding {
    /// The Interface's `external_ids`, as Kube-OVN writes them.
    pub fn external_ids(&self) -> BTreeMap<String, String> {
        [
            ("iface-id", self.iface_id.as_str()),
            ("vendor", "sidelane"),
            ("pod_name", self.pod_name.as_str()),
            ("pod_namespace", self.pod_namespace.as_str()),
            ("pod_netns", self.pod_netns.as_str()),
            ("ip", self.ip.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }
}

/// Plugging or unplugging failed.
#[derive(Debug, Error)]
pub enum OvsError {
    /// The database refused or could not be reached.
    #[error("{op} port {port} on {bridge}: {source}")]
    Db {
        /// What was being done.
        op: &'static str,
        /// The port.
        port: String,
        /// The bridge.
        bridge: String,
        /// Why.
        #[source]
        source: Box<ClientError>,
    },
    /// The integration bridge does not exist.
    #[error("plugging port {port}: bridge {bridge} does not exist in the Open_vSwitch database")]
    NoBridge {
        /// The port.
        port: String,
        /// The bridge.
        bridge: String,
    },
    /// ovs-vswitchd could not open the device.
    #[error("port {port}: ovs-vswitchd cannot use the interface: {error}")]
    Interface {
        /// The port.
        port: String,
        /// OVS's error.
        error: String,
    },
    /// ovn-controller did not bind the port in time.
    #[error(
        "port {port} (iface-id {iface_id}) was not bound by ovn-controller within {timeout:?}: \
         is ovn-controller running on this node, and does the logical switch port exist?"
    )]
    NotInstalled {
        /// The port.
        port: String,
        /// The logical port.
        iface_id: String,
        /// How long we waited.
        timeout: Duration,
    },
}

/// Binds host ends of attachments to OVN.
pub trait PortPlug: Send + Sync {
    /// Adds the port (or brings an existing one's binding up to date).
    fn plug<'a>(&'a self, binding: &'a PortBinding) -> BoxFuture<'a, Result<(), OvsError>>;
    /// Waits until ovn-controller has bound the plugged port (`ovn-installed`).
    fn wait_bound<'a>(&'a self, binding: &'a PortBinding) -> BoxFuture<'a, Result<(), OvsError>>;
    /// Removes the port; a port that is not there is success.
    fn unplug<'a>(&'a self, port: &'a str) -> BoxFuture<'a, Result<(), OvsError>>;
    /// The bridge's datapath.
    fn datapath(&self) -> Datapath;
    /// Whether the database answers now (CNI STATUS); why not, if it does not.
    fn ready(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}

#[derive(Clone, Debug, Default)]
struct InterfaceState {
    installed: bool,
    error: Option<String>,
}

type States = Arc<Mutex<HashMap<String, InterfaceState>>>;

/// The node's integration bridge, through the `Open_vSwitch` database.
pub struct OvsBridge {
    client: Client,
    bridge: String,
    datapath: Datapath,
    install_timeout: Duration,
    states: States,
    changed: watch::Receiver<u64>,
    monitor: tokio::task::JoinHandle<()>,
}

impl Drop for OvsBridge {
    fn drop(&mut self) {
        self.monitor.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn cols(pairs: Vec<(&str, Value)>) -> Row {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

impl OvsBridge {
    /// Connects to the database at `remote`, makes sure `bridge` exists (creating it with
    /// `datapath` if not), and follows its interfaces' binding state.
    pub async fn connect(
        remote: Remote,
        tls: Option<sidelane_ovsdb::Tls>,
        bridge: &str,
        datapath: Datapath,
        install_timeout: Duration,
    ) -> Result<OvsBridge, OvsError> {
        let db_err = |op| {
            move |source| OvsError::Db {
                op,
                port: String::new(),
                bridge: bridge.to_owned(),
                source: Box::new(source),
            }
        };
        let mut options = Options::new(vec![remote]);
        options.request_timeout = Duration::from_secs(10);
        options.tls = tls;
        let client = Client::connect(options)
            .await
            .map_err(db_err("connecting for"))?;
        ensure_bridge(&client, bridge, datapath)
            .await
            .map_err(db_err("creating the bridge for"))?;
        let schema = client
            .schema(OVS_DB)
            .await
            .map_err(db_err("reading the schema for"))?;
        let states: States = Arc::default();
        let (tx, changed) = watch::channel(0u64);
        let tables: BTreeMap<String, MonitorRequest> = [(
            "Interface".to_owned(),
            MonitorRequest {
                columns: Some(vec!["name".into(), "external_ids".into(), "error".into()]),
                conditions: Vec::new(),
            },
        )]
        .into();
        let mut monitor = client.monitor(OVS_DB, &tables);
        let task_states = Arc::clone(&states);
        let monitor = tokio::spawn(async move {
            let mut replica = Replica::new(schema);
            while let Some(event) = monitor.recv().await {
                match event {
                    MonitorEvent::Snapshot(s) => replica.reset(s),
                    MonitorEvent::Update(u) => replica.apply(u),
                }
                let now: HashMap<String, InterfaceState> = replica
                    .rows("Interface")
                    .map(|(_, row)| {
                        let ids = row
                            .get("external_ids")
                            .map(datum::as_string_map)
                            .unwrap_or_default();
                        let name = row
                            .get("name")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned();
                        let error = row.get("error").and_then(datum::as_optional_string);
                        (
                            name,
                            InterfaceState {
                                installed: ids.get("ovn-installed").is_some_and(|v| v == "true"),
                                error,
                            },
                        )
                    })
                    .collect();
                *lock(&task_states) = now;
                tx.send_modify(|v| *v += 1);
            }
        });
        info!(
            bridge,
            datapath = datapath.as_str(),
            "plugging OVN attachments into the integration bridge"
        );
        Ok(OvsBridge {
            client,
            bridge: bridge.to_owned(),
            datapath,
            install_timeout,
            states,
            changed,
            monitor,
        })
    }

    fn db_err(&self, op: &'static str, port: &str) -> impl FnOnce(ClientError) -> OvsError {
        let (port, bridge) = (port.to_owned(), self.bridge.clone());
        move |source| OvsError::Db {
            op,
            port,
            bridge,
            source: Box::new(source),
        }
    }

    async fn add_port(&self, b: &PortBinding) -> Result<(), OvsError> {
        let ids = datum::string_map(&b.external_ids());
        let ops = [
            Operation::Wait {
                table: "Bridge".into(),
                conditions: vec![Condition::eq("name", json!(self.bridge))],
                columns: vec!["name".into()],
                until_equal: true,
                rows: vec![cols(vec![("name", json!(self.bridge))])],
                timeout_ms: 0,
            },
            Operation::Wait {
                table: "Port".into(),
                conditions: vec![Condition::eq("name", json!(b.port))],
                columns: vec!["name".into()],
                until_equal: true,
                rows: Vec::new(),
                timeout_ms: 0,
            },
            Operation::Insert {
                table: "Interface".into(),
                row: cols(vec![("name", json!(b.port)), ("external_ids", ids.clone())]),
                uuid_name: Some("iface".into()),
            },
            Operation::Insert {
                table: "Port".into(),
                row: cols(vec![
                    ("name", json!(b.port)),
                    ("interfaces", datum::set([datum::named_uuid("iface")])),
                    ("external_ids", ids.clone()),
                ]),
                uuid_name: Some("port".into()),
            },
            Operation::Mutate {
                table: "Bridge".into(),
                conditions: vec![Condition::eq("name", json!(self.bridge))],
                mutations: vec![Mutation::insert(
                    "ports",
                    datum::set([datum::named_uuid("port")]),
                )],
            },
        ];
        match self.client.transact(OVS_DB, &ops).await {
            Ok(_) => Ok(()),
            Err(ClientError::Operation { index: 0, .. }) => Err(OvsError::NoBridge {
                port: b.port.clone(),
                bridge: self.bridge.clone(),
            }),
            // The port is there already (a repeated ADD): bring its binding up to date.
            Err(ClientError::Operation { index: 1, .. }) => {
                let update = [Operation::Update {
                    table: "Interface".into(),
                    conditions: vec![Condition::eq("name", json!(b.port))],
                    row: cols(vec![("external_ids", ids)]),
                }];
                self.client
                    .transact(OVS_DB, &update)
                    .await
                    .map(drop)
                    .map_err(self.db_err("updating", &b.port))
            }
            Err(e) => Err(self.db_err("adding", &b.port)(e)),
        }
    }

    async fn wait_installed(&self, b: &PortBinding) -> Result<(), OvsError> {
        let mut changed = self.changed.clone();
        let wait = async {
            loop {
                let state = lock(&self.states).get(&b.port).cloned();
                if let Some(s) = state {
                    if s.installed {
                        return Ok(());
                    }
                    if let Some(error) = s.error {
                        return Err(OvsError::Interface {
                            port: b.port.clone(),
                            error,
                        });
                    }
                }
                if changed.changed().await.is_err() {
                    return Err(OvsError::NotInstalled {
                        port: b.port.clone(),
                        iface_id: b.iface_id.clone(),
                        timeout: self.install_timeout,
                    });
                }
            }
        };
        tokio::time::timeout(self.install_timeout, wait)
            .await
            .unwrap_or_else(|_| {
                Err(OvsError::NotInstalled {
                    port: b.port.clone(),
                    iface_id: b.iface_id.clone(),
                    timeout: self.install_timeout,
                })
            })
    }

    async fn remove_port(&self, port: &str) -> Result<(), OvsError> {
        let found = self
            .client
            .transact(
                OVS_DB,
                &[Operation::Select {
                    table: "Port".into(),
                    conditions: vec![Condition::eq("name", json!(port))],
                    columns: Some(vec!["_uuid".into()]),
                }],
            )
            .await
            .map_err(self.db_err("finding", port))?;
        let uuids: Vec<Value> = found
            .first()
            .map(|r| {
                r.rows
                    .iter()
                    .filter_map(|row| row.get("_uuid").cloned())
                    .collect()
            })
            .unwrap_or_default();
        if uuids.is_empty() {
            debug!(port, "no OVS port to remove");
            return Ok(());
        }
        // Ports (and their interfaces) are not root rows: released from every bridge, they go.
        self.client
            .transact(
                OVS_DB,
                &[Operation::Mutate {
                    table: "Bridge".into(),
                    conditions: Vec::new(),
                    mutations: vec![Mutation::delete("ports", datum::set(uuids))],
                }],
            )
            .await
            .map(drop)
            .map_err(self.db_err("removing", port))
    }
}

impl PortPlug for OvsBridge {
    fn plug<'a>(&'a self, binding: &'a PortBinding) -> BoxFuture<'a, Result<(), OvsError>> {
        Box::pin(self.add_port(binding))
    }

    fn wait_bound<'a>(&'a self, binding: &'a PortBinding) -> BoxFuture<'a, Result<(), OvsError>> {
        Box::pin(self.wait_installed(binding))
    }

    fn unplug<'a>(&'a self, port: &'a str) -> BoxFuture<'a, Result<(), OvsError>> {
        Box::pin(self.remove_port(port))
    }

    fn datapath(&self) -> Datapath {
        self.datapath
    }

    fn ready(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            match tokio::time::timeout(READY_DEADLINE, self.client.echo()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(format!("the Open_vSwitch database does not answer: {e}")),
                Err(_) => Err(format!(
                    "the Open_vSwitch database did not answer an echo within {READY_DEADLINE:?}"
                )),
            }
        })
    }
}

/// How long STATUS waits for the Open_vSwitch database's echo.
const READY_DEADLINE: Duration = Duration::from_secs(2);

/// Creates the bridge (as `ovs-vsctl add-br` does: with its internal port) if it is missing.
async fn ensure_bridge(
    client: &Client,
    bridge: &str,
    datapath: Datapath,
) -> Result<(), ClientError> {
    let found = client
        .transact(
            OVS_DB,
            &[Operation::Select {
                table: "Bridge".into(),
                conditions: vec![Condition::eq("name", json!(bridge))],
                columns: Some(vec!["datapath_type".into()]),
            }],
        )
        .await?;
    if let Some(row) = found.first().and_then(|r| r.rows.first()) {
        let have = row
            .get("datapath_type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let have = if have.is_empty() { "system" } else { have };
        if have != datapath.as_str() {
            warn!(
                bridge,
                have,
                want = datapath.as_str(),
                "the integration bridge exists with another datapath type; left as it is"
            );
        }
        return Ok(());
    }
    let ops = [
        Operation::Insert {
            table: "Interface".into(),
            row: cols(vec![("name", json!(bridge)), ("type", json!("internal"))]),
            uuid_name: Some("iface".into()),
        },
        Operation::Insert {
            table: "Port".into(),
            row: cols(vec![
                ("name", json!(bridge)),
                ("interfaces", datum::set([datum::named_uuid("iface")])),
            ]),
            uuid_name: Some("port".into()),
        },
        Operation::Insert {
            table: "Bridge".into(),
            row: cols(vec![
                ("name", json!(bridge)),
                ("ports", datum::set([datum::named_uuid("port")])),
                ("datapath_type", json!(datapath.as_str())),
                ("fail_mode", json!("secure")),
                (
                    "other_config",
                    json!(["map", [["disable-in-band", "true"]]]),
                ),
            ]),
            uuid_name: Some("bridge".into()),
        },
        Operation::Mutate {
            table: "Open_vSwitch".into(),
            conditions: Vec::new(),
            mutations: vec![Mutation::insert(
                "bridges",
                datum::set([datum::named_uuid("bridge")]),
            )],
        },
    ];
    client.transact(OVS_DB, &ops).await?;
    info!(
        bridge,
        datapath = datapath.as_str(),
        "created the integration bridge"
    );
    Ok(())
}
