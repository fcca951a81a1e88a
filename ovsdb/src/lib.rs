//! Sidelane's OVSDB (RFC 7047) client, used by the controller for OVN's Northbound database
//! and by the agent for the node's `Open_vSwitch` database.
//!
//! Why our own: the published `ovsdb-client` 0.0.1 has no `transact`, never answers the
//! server's `echo` probes (so ovsdb-server drops the connection) and its codec fails when two
//! replies arrive in one read; `ovsdb` 0.0.6 only selects and panics on server requests.
//!
//! - [`framing`]: JSON messages out of a byte stream, however reads split or join them.
//! - [`datum`]: OVSDB values (uuid, named-uuid, set, map) built and read.
//! - [`operation`]: typed `transact` operations and results.
//! - [`schema`], [`replica`]: a local copy of monitored tables kept by `update2`.
//! - [`remote`]: `unix:`, `tcp:` and `ssl:` remotes; [`tls`]: TLS with a client certificate, as
//!   OVN's own `--private-key`, `--certificate` and `--ca-cert`.
//! - [`client`]: the session (request ids, echo, monitors, reconnect with resync, leader only).

pub mod client;
pub mod datum;
pub mod framing;
pub mod operation;
pub mod remote;
pub mod replica;
pub mod schema;
pub mod tls;

pub use client::{Client, ClientError, Monitor, MonitorEvent, MonitorRequest, Options};
pub use operation::{Condition, Mutation, Operation, OperationResult, Row};
pub use remote::{Remote, RemoteError, parse_remotes};
pub use replica::Replica;
pub use schema::Schema;
pub use tls::{Tls, TlsArgs, TlsError, TlsFiles};
