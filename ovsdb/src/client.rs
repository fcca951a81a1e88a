//! The session: one connection at a time to one of the remotes, request ids mapped to
//! waiters, the server's `echo` probes answered, our own probes sent when the line is idle,
//! and on any loss a reconnect with backoff that re-issues every monitor, whose owner then
//! receives a fresh snapshot (resync). Against a clustered database only the leader is used.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use serde::{Serialize, ser::SerializeSeq as _};
use serde_json::{Value, json};
use thiserror::Error;
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::{TcpStream, UnixStream},
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};
use tracing::{debug, info, warn};

use crate::{
    framing::{FrameError, Framer},
    operation::{Condition, Operation, OperationResult},
    remote::Remote,
    schema::Schema,
    tls::Tls,
};

/// How the session behaves.
#[derive(Clone, Debug)]
pub struct Options {
    /// The servers, tried in turn.
    pub remotes: Vec<Remote>,
    /// When set, only a server that leads this (clustered) database is used.
    pub leader_of: Option<String>,
    /// First wait before reconnecting; doubles up to `backoff_max`.
    pub backoff_min: Duration,
    /// Longest wait before reconnecting [default: 2 s, so a restarted server is found within
    /// 2 s of listening again; each attempt costs one connect].
    pub backoff_max: Duration,
    /// Idle time after which we probe the server with `echo` (and give up after twice that).
    pub probe_interval: Option<Duration>,
    /// How long a request waits for a connection and then for its reply.
    pub request_timeout: Duration,
    /// The client's TLS set-up, for `ssl:` remotes.
    pub tls: Option<Tls>,
}

impl Options {
    /// Defaults for these remotes.
    pub fn new(remotes: Vec<Remote>) -> Options {
        Options {
            remotes,
            leader_of: None,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            probe_interval: Some(Duration::from_secs(10)),
            request_timeout: Duration::from_secs(30),
            tls: None,
        }
    }

    /// With this TLS set-up for `ssl:` remotes.
    #[must_use]
    pub fn with_tls(mut self, tls: Tls) -> Options {
        self.tls = Some(tls);
        self
    }
}

/// A request failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// No connection came up in time.
    #[error("{method}: not connected to any of {remotes} within {timeout:?}")]
    NotConnected {
        /// The request.
        method: String,
        /// The remotes tried.
        remotes: String,
        /// How long we waited.
        timeout: Duration,
    },
    /// The connection was lost before the reply came.
    #[error("{method}: the connection was lost before the reply")]
    Disconnected {
        /// The request.
        method: String,
    },
    /// No reply in time.
    #[error("{method}: no reply within {timeout:?}")]
    Timeout {
        /// The request.
        method: String,
        /// How long we waited.
        timeout: Duration,
    },
    /// The server answered with an error.
    #[error("{method}: the server refused: {error}")]
    Rpc {
        /// The request.
        method: String,
        /// The server's error.
        error: Value,
    },
    /// An operation of a transaction failed (the transaction was not committed).
    #[error("transaction on {database}: operation {index} ({op}) failed: {error}: {details}")]
    Operation {
        /// The database.
        database: String,
        /// The failed operation's position.
        index: usize,
        /// What it was (`insert into Logical_Switch`...).
        op: String,
        /// The server's error name.
        error: String,
        /// The server's details.
        details: String,
    },
    /// Every operation succeeded but the commit failed (a constraint or reference).
    #[error("transaction on {database}: the commit failed: {error}: {details}")]
    Commit {
        /// The database.
        database: String,
        /// The server's error name.
        error: String,
        /// The server's details.
        details: String,
    },
    /// The request could not be written as JSON.
    #[error("{method}: encoding the request")]
    Encode {
        /// The method.
        method: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The reply is not what the protocol promises.
    #[error("{method}: unexpected reply: {reply}")]
    Protocol {
        /// The request.
        method: String,
        /// The reply.
        reply: Value,
    },
}

/// What a monitor delivers.
#[derive(Clone, Debug, PartialEq)]
pub enum MonitorEvent {
    /// The monitored tables as they are now (`table-updates2` with `initial` rows): sent when
    /// the monitor starts and after every reconnect. Replace the local copy with it.
    Snapshot(Value),
    /// A change (`table-updates2`).
    Update(Value),
}

/// What to monitor in one table.
#[derive(Clone, Debug, Default)]
pub struct MonitorRequest {
    /// The columns (all when `None`).
    pub columns: Option<Vec<String>>,
    /// Only rows matching these (all when empty).
    pub conditions: Vec<Condition>,
}

/// A running monitor's events.
#[derive(Debug)]
pub struct Monitor {
    id: String,
    events: mpsc::UnboundedReceiver<MonitorEvent>,
    client: Client,
}

impl Monitor {
    /// The next event (`None` once the client is gone).
    pub async fn recv(&mut self) -> Option<MonitorEvent> {
        self.events.recv().await
    }

    /// An event if one is waiting.
    pub fn try_recv(&mut self) -> Option<MonitorEvent> {
        self.events.try_recv().ok()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self
            .client
            .commands
            .send(Command::CancelMonitor(self.id.clone()));
    }
}

#[derive(Clone, Debug)]
struct Connection {
    remote: String,
    out: mpsc::UnboundedSender<Vec<u8>>,
}

struct Pending {
    method: String,
    reply: oneshot::Sender<Result<Value, ClientError>>,
    /// A monitor's (re)start: the reply is its snapshot, delivered in stream order.
    monitor: Option<mpsc::UnboundedSender<MonitorEvent>>,
}

#[derive(Clone)]
struct MonitorReg {
    database: String,
    requests: Value,
    events: mpsc::UnboundedSender<MonitorEvent>,
}

enum Command {
    StartMonitor(String, MonitorReg),
    CancelMonitor(String),
}

struct Shared {
    options: Options,
    next_id: AtomicU64,
    pending: Mutex<HashMap<u64, Pending>>,
    monitors: Mutex<BTreeMap<String, MonitorReg>>,
    connection: watch::Sender<Option<Connection>>,
    connects: AtomicU64,
    echoes_answered: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An OVSDB client session (cheap to clone; the connection lives in a background task that
/// stops when the last clone is dropped).
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<Command>,
    _driver: Arc<DriverGuard>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("remotes", &self.shared.options.remotes)
            .finish_non_exhaustive()
    }
}

struct DriverGuard(JoinHandle<()>);

impl Drop for DriverGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Client {
    /// Starts the session (connecting in the background; requests wait for it).
    pub fn start(options: Options) -> Client {
        let (connection, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            options,
            next_id: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            monitors: Mutex::new(BTreeMap::new()),
            connection,
            connects: AtomicU64::new(0),
            echoes_answered: AtomicU64::new(0),
        });
        let (commands, rx) = mpsc::unbounded_channel();
        let driver = tokio::spawn(drive(Arc::clone(&shared), rx));
        Client {
            shared,
            commands,
            _driver: Arc::new(DriverGuard(driver)),
        }
    }

    /// Starts the session and waits until it is connected.
    pub async fn connect(options: Options) -> Result<Client, ClientError> {
        let client = Client::start(options);
        client.wait_connected("connect").await?;
        Ok(client)
    }

    /// How many connections were made so far (1 after the first; more after reconnects).
    pub fn connects(&self) -> u64 {
        self.shared.connects.load(Ordering::Relaxed)
    }

    /// How many of the server's `echo` probes were answered.
    pub fn echoes_answered(&self) -> u64 {
        self.shared.echoes_answered.load(Ordering::Relaxed)
    }

    /// The remote in use, if connected.
    pub fn connected_to(&self) -> Option<String> {
        self.shared
            .connection
            .borrow()
            .as_ref()
            .map(|c| c.remote.clone())
    }

    async fn wait_connected(&self, method: &str) -> Result<Connection, ClientError> {
        let timeout = self.shared.options.request_timeout;
        let mut rx = self.shared.connection.subscribe();
        let wait = async {
            loop {
                if let Some(c) = rx.borrow_and_update().clone() {
                    return Some(c);
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(Some(c)) => Ok(c),
            _ => Err(ClientError::NotConnected {
                method: method.to_owned(),
                remotes: remotes_text(&self.shared.options.remotes),
                timeout,
            }),
        }
    }

    /// Sends a request and waits for its result.
    pub async fn request(&self, method: &str, params: Value) -> Result<Value, ClientError> {
        let conn = self.wait_connected(method).await?;
        let rx = send_request(&self.shared, &conn.out, method, &params, None);
        await_reply(rx, method, self.shared.options.request_timeout).await
    }

    /// `echo`: the server returns what it was sent.
    pub async fn echo(&self) -> Result<(), ClientError> {
        let reply = self.request("echo", json!(["ping"])).await?;
        if reply == json!(["ping"]) {
            Ok(())
        } else {
            Err(ClientError::Protocol {
                method: "echo".into(),
                reply,
            })
        }
    }

    /// The databases the server holds.
    pub async fn list_dbs(&self) -> Result<Vec<String>, ClientError> {
        let reply = self.request("list_dbs", json!([])).await?;
        serde_json::from_value(reply.clone()).map_err(|_| ClientError::Protocol {
            method: "list_dbs".into(),
            reply,
        })
    }

    /// A database's schema.
    pub async fn schema(&self, database: &str) -> Result<Schema, ClientError> {
        Ok(Schema::from_json(
            &self.request("get_schema", json!([database])).await?,
        ))
    }

    /// Runs operations as one transaction: all take effect or none.
    pub async fn transact(
        &self,
        database: &str,
        ops: &[Operation],
    ) -> Result<Vec<OperationResult>, ClientError> {
        let conn = self.wait_connected("transact").await?;
        let rx = send_request(
            &self.shared,
            &conn.out,
            "transact",
            &Transact { database, ops },
            None,
        );
        let reply = await_reply(rx, "transact", self.shared.options.request_timeout).await?;
        transaction_results(database, ops, reply)
    }

    /// Starts a `monitor_cond` on some tables. The first event is a snapshot; after every
    /// reconnect another snapshot comes, then updates.
    pub fn monitor(&self, database: &str, tables: &BTreeMap<String, MonitorRequest>) -> Monitor {
        let id = format!(
            "monitor-{}",
            self.shared.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let requests: serde_json::Map<String, Value> = tables
            .iter()
            .map(|(table, req)| {
                let mut r = json!({});
                if let Some(columns) = &req.columns {
                    r["columns"] = json!(columns);
                }
                if !req.conditions.is_empty() {
                    r["where"] =
                        Value::Array(req.conditions.iter().map(Condition::to_json).collect());
                }
                (table.clone(), json!([r]))
            })
            .collect();
        let (events, rx) = mpsc::unbounded_channel();
        let reg = MonitorReg {
            database: database.to_owned(),
            requests: Value::Object(requests),
            events,
        };
        let _ = self.commands.send(Command::StartMonitor(id.clone(), reg));
        Monitor {
            id,
            events: rx,
            client: self.clone(),
        }
    }
}

fn remotes_text(remotes: &[Remote]) -> String {
    remotes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn transaction_results(
    database: &str,
    ops: &[Operation],
    reply: Value,
) -> Result<Vec<OperationResult>, ClientError> {
    let Some(results) = reply.as_array() else {
        return Err(ClientError::Protocol {
            method: "transact".into(),
            reply,
        });
    };
    let text = |v: &Value, key: &str| {
        v.get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    for (index, r) in results.iter().enumerate() {
        if r.get("error").is_some_and(|e| !e.is_null()) {
            let (error, details) = (text(r, "error"), text(r, "details"));
            return Err(match ops.get(index) {
                Some(op) => ClientError::Operation {
                    database: database.to_owned(),
                    index,
                    op: describe(op),
                    error,
                    details,
                },
                None => ClientError::Commit {
                    database: database.to_owned(),
                    error,
                    details,
                },
            });
        }
    }
    Ok(results.iter().map(OperationResult::from_json).collect())
}

fn describe(op: &Operation) -> String {
    let verb = match op {
        Operation::Insert { .. } => "insert into",
        Operation::Update { .. } => "update of",
        Operation::Mutate { .. } => "mutate of",
        Operation::Delete { .. } => "delete from",
        Operation::Wait { .. } => "wait on",
        Operation::Select { .. } => "select from",
        Operation::Comment(_) => return "comment".into(),
    };
    format!("{verb} {}", op.table().unwrap_or_default())
}

/// `transact`'s parameters: the database, then each operation.
struct Transact<'a> {
    database: &'a str,
    ops: &'a [Operation],
}

impl Serialize for Transact<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.ops.len() + 1))?;
        seq.serialize_element(self.database)?;
        for op in self.ops {
            seq.serialize_element(op)?;
        }
        seq.end()
    }
}

/// A request on the wire, serialised from borrowed parameters.
#[derive(Serialize)]
struct Request<'a, P: Serialize> {
    id: u64,
    method: &'a str,
    params: &'a P,
}

fn send_request<P: Serialize>(
    shared: &Shared,
    out: &mpsc::UnboundedSender<Vec<u8>>,
    method: &str,
    params: &P,
    monitor: Option<mpsc::UnboundedSender<MonitorEvent>>,
) -> oneshot::Receiver<Result<Value, ClientError>> {
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let (reply, rx) = oneshot::channel();
    lock(&shared.pending).insert(
        id,
        Pending {
            method: method.to_owned(),
            reply,
            monitor,
        },
    );
    let failed = match serde_json::to_vec(&Request { id, method, params }) {
        Ok(bytes) => out.send(bytes).err().map(|_| ClientError::Disconnected {
            method: method.to_owned(),
        }),
        Err(source) => Some(ClientError::Encode {
            method: method.to_owned(),
            source,
        }),
    };
    if let Some(error) = failed
        && let Some(p) = lock(&shared.pending).remove(&id)
    {
        let _ = p.reply.send(Err(error));
    }
    rx
}

async fn await_reply(
    rx: oneshot::Receiver<Result<Value, ClientError>>,
    method: &str,
    timeout: Duration,
) -> Result<Value, ClientError> {
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(ClientError::Disconnected {
            method: method.to_owned(),
        }),
        Err(_) => Err(ClientError::Timeout {
            method: method.to_owned(),
            timeout,
        }),
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

async fn open(remote: &Remote, tls: Option<&Tls>) -> std::io::Result<Box<dyn Io>> {
    Ok(match remote {
        Remote::Unix(path) => Box::new(UnixStream::connect(path).await?),
        Remote::Tcp { host, port } => {
            let s = TcpStream::connect((host.as_str(), *port)).await?;
            s.set_nodelay(true)?;
            Box::new(s)
        }
        Remote::Ssl { host, port } => {
            let tls = tls.ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("{remote} needs a private key, a certificate and a CA certificate"),
                )
            })?;
            let s = TcpStream::connect((host.as_str(), *port)).await?;
            s.set_nodelay(true)?;
            Box::new(tls.connect(host, s).await?)
        }
    })
}

/// Why a connection ended.
#[derive(Debug, Error)]
enum Ended {
    #[error("the server closed the connection")]
    Eof,
    #[error("reading: {0}")]
    Read(std::io::Error),
    #[error("framing: {0}")]
    Frame(#[from] FrameError),
    #[error("no reply to our echo probe")]
    ProbeTimeout,
}

/// Connects, reconnects and serves monitors for the session's lifetime.
async fn drive(shared: Arc<Shared>, mut commands: mpsc::UnboundedReceiver<Command>) {
    let opts = shared.options.clone();
    let mut backoff = opts.backoff_min;
    let mut generation = 0u64;
    let mut turn = 0usize;
    loop {
        let remote = &opts.remotes[turn % opts.remotes.len().max(1)];
        turn += 1;
        // Commands that arrive while disconnected are registered for the next connection.
        while let Ok(cmd) = commands.try_recv() {
            register(&shared, cmd);
        }
        match open(remote, opts.tls.as_ref()).await {
            Ok(io) => {
                generation += 1;
                let served = serve(&shared, io, remote, generation, &mut commands).await;
                if served {
                    backoff = opts.backoff_min;
                }
            }
            Err(e) => debug!(remote = %remote, error = %e, "cannot connect to the OVSDB server"),
        }
        if commands.is_closed() && Arc::strong_count(&shared) == 1 {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(opts.backoff_max);
    }
}

fn register(shared: &Shared, cmd: Command) -> Option<(String, MonitorReg)> {
    match cmd {
        Command::StartMonitor(id, reg) => {
            lock(&shared.monitors).insert(id.clone(), reg.clone());
            Some((id, reg))
        }
        Command::CancelMonitor(id) => {
            lock(&shared.monitors).remove(&id);
            None
        }
    }
}

/// Serves one connection until it ends. Returns whether it was usable (handshake done).
async fn serve(
    shared: &Arc<Shared>,
    io: Box<dyn Io>,
    remote: &Remote,
    generation: u64,
    commands: &mut mpsc::UnboundedReceiver<Command>,
) -> bool {
    let (mut reader, mut writer) = tokio::io::split(io);
    let (out, mut out_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let writer_task = tokio::spawn(async move {
        while let Some(bytes) = out_rx.recv().await {
            if writer.write_all(&bytes).await.is_err() {
                break;
            }
        }
    });
    let reader_shared = Arc::clone(shared);
    let reader_out = out.clone();
    let mut reader_task =
        tokio::spawn(async move { read_loop(&reader_shared, &mut reader, &reader_out).await });
    let usable = handshake(shared, &out, remote).await;
    let ended = if usable {
        shared.connects.fetch_add(1, Ordering::Relaxed);
        shared.connection.send_replace(Some(Connection {
            remote: remote.to_string(),
            out: out.clone(),
        }));
        info!(remote = %remote, generation, "connected to the OVSDB server");
        loop {
            tokio::select! {
                ended = &mut reader_task => break ended,
                cmd = commands.recv() => {
                    let Some(cmd) = cmd else { continue };
                    let cancelled = match &cmd {
                        Command::CancelMonitor(id) => Some(id.clone()),
                        Command::StartMonitor(..) => None,
                    };
                    if let Some((id, reg)) = register(shared, cmd) {
                        start_monitor(shared, &out, &id, &reg);
                    } else if let Some(id) = cancelled {
                        drop(send_request(shared, &out, "monitor_cancel", &json!([id]), None));
                    }
                }
            }
        }
    } else {
        reader_task.abort();
        Ok(Ok(()))
    };
    shared.connection.send_replace(None);
    writer_task.abort();
    let pending: Vec<Pending> = lock(&shared.pending).drain().map(|(_, p)| p).collect();
    for p in pending {
        let _ = p
            .reply
            .send(Err(ClientError::Disconnected { method: p.method }));
    }
    match ended {
        Ok(Err(e)) => {
            warn!(remote = %remote, error = %e, "lost the OVSDB connection; reconnecting");
        }
        Ok(Ok(())) => {}
        Err(e) => warn!(remote = %remote, error = %e, "the OVSDB reader stopped"),
    }
    usable
}

/// After connecting: check leadership if asked, then restart every monitor.
async fn handshake(shared: &Shared, out: &mpsc::UnboundedSender<Vec<u8>>, remote: &Remote) -> bool {
    let timeout = shared.options.request_timeout;
    if let Some(db) = &shared.options.leader_of {
        let params = json!(["_Server", {"op": "select", "table": "Database",
            "where": [["name", "==", db]], "columns": ["leader", "model", "connected"]}]);
        let rx = send_request(shared, out, "transact", &params, None);
        match await_reply(rx, "transact", timeout).await {
            Ok(reply) => {
                let row = &reply[0]["rows"][0];
                if !is_usable_member(row) {
                    info!(remote = %remote, database = %db,
                          "the server is not the database's cluster leader; trying another");
                    return false;
                }
            }
            // A server without the _Server database is standalone by definition.
            Err(ClientError::Rpc { .. }) => {}
            Err(e) => {
                warn!(remote = %remote, error = %e, "checking the server's role");
                return false;
            }
        }
    }
    let monitors: Vec<(String, MonitorReg)> = lock(&shared.monitors)
        .iter()
        .map(|(id, reg)| (id.clone(), reg.clone()))
        .collect();
    for (id, reg) in &monitors {
        start_monitor(shared, out, id, reg);
    }
    true
}

/// Whether a `_Server.Database` row belongs to a server we may use: a standalone database, or
/// the connected leader of a clustered one.
pub fn is_usable_member(row: &Value) -> bool {
    if row.is_null() {
        return false;
    }
    let model = row
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("standalone");
    if model != "clustered" {
        return true;
    }
    row.get("leader") == Some(&json!(true)) && row.get("connected") != Some(&json!(false))
}

fn start_monitor(
    shared: &Shared,
    out: &mpsc::UnboundedSender<Vec<u8>>,
    id: &str,
    reg: &MonitorReg,
) {
    let params = json!([reg.database, id, reg.requests]);
    let rx = send_request(
        shared,
        out,
        "monitor_cond",
        &params,
        Some(reg.events.clone()),
    );
    let id = id.to_owned();
    tokio::spawn(async move {
        if let Ok(Err(e)) = rx.await {
            warn!(monitor = %id, error = %e, "starting a monitor");
        }
    });
}

async fn read_loop<R: AsyncRead + Unpin>(
    shared: &Shared,
    reader: &mut R,
    out: &mpsc::UnboundedSender<Vec<u8>>,
) -> Result<(), Ended> {
    let mut framer = Framer::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut probing = false;
    loop {
        let read = match shared.options.probe_interval {
            Some(interval) => match tokio::time::timeout(interval, reader.read(&mut buf)).await {
                Ok(r) => r,
                Err(_) if probing => return Err(Ended::ProbeTimeout),
                Err(_) => {
                    probing = true;
                    let _ = out.send(br#"{"id":"echo","method":"echo","params":[]}"#.to_vec());
                    continue;
                }
            },
            None => reader.read(&mut buf).await,
        };
        let n = read.map_err(Ended::Read)?;
        if n == 0 {
            return Err(Ended::Eof);
        }
        probing = false;
        framer.push(&buf[..n]);
        while let Some(msg) = framer.next_message()? {
            dispatch(shared, msg, out);
        }
    }
}

fn dispatch(shared: &Shared, mut msg: Value, out: &mpsc::UnboundedSender<Vec<u8>>) {
    // Messages are moved apart, never cloned: an update or a reply can hold every row of a
    // large database.
    if let Some(method) = msg.get("method").and_then(Value::as_str).map(str::to_owned) {
        let id = msg.get_mut("id").map_or(Value::Null, Value::take);
        let params = msg.get_mut("params").map_or(Value::Null, Value::take);
        match method.as_str() {
            "echo" if !id.is_null() => {
                let reply = json!({"id": id, "result": params, "error": null});
                let _ = out.send(reply.to_string().into_bytes());
                shared.echoes_answered.fetch_add(1, Ordering::Relaxed);
            }
            "update2" | "update" => {
                let Value::Array(mut params) = params else {
                    return;
                };
                if params.len() < 2 {
                    return;
                }
                let updates = params.swap_remove(1);
                let monitors = lock(&shared.monitors);
                if let Some(reg) = params[0].as_str().and_then(|m| monitors.get(m)) {
                    let _ = reg.events.send(MonitorEvent::Update(updates));
                }
            }
            _ if !id.is_null() => {
                let reply =
                    json!({"id": id, "result": null, "error": format!("unknown method {method}")});
                let _ = out.send(reply.to_string().into_bytes());
            }
            _ => debug!(method, "ignored a notification"),
        }
        return;
    }
    let Some(id) = msg.get("id").and_then(Value::as_u64) else {
        // The reply to our own echo probe (id "echo"), or noise.
        return;
    };
    let Some(p) = lock(&shared.pending).remove(&id) else {
        return;
    };
    let result = match msg.get_mut("error").map(Value::take) {
        Some(e) if !e.is_null() => Err(ClientError::Rpc {
            method: p.method,
            error: e,
        }),
        _ => Ok(msg.get_mut("result").map_or(Value::Null, Value::take)),
    };
    match (&p.monitor, result) {
        // A monitor's snapshot goes to its events; its caller only learns that it started.
        (Some(events), Ok(snapshot)) => {
            let _ = events.send(MonitorEvent::Snapshot(snapshot));
            let _ = p.reply.send(Ok(Value::Null));
        }
        (_, result) => {
            let _ = p.reply.send(result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_connected_leader_of_a_clustered_database_is_used() {
        assert!(is_usable_member(
            &json!({"model": "standalone", "leader": true})
        ));
        assert!(is_usable_member(
            &json!({"model": "clustered", "leader": true, "connected": true})
        ));
        assert!(!is_usable_member(
            &json!({"model": "clustered", "leader": false, "connected": true})
        ));
        assert!(!is_usable_member(
            &json!({"model": "clustered", "leader": true, "connected": false})
        ));
        assert!(!is_usable_member(&Value::Null));
    }

    #[test]
    fn a_failed_operation_is_reported_with_its_table_and_the_servers_details() {
        let ops = vec![Operation::Delete {
            table: "Logical_Switch".into(),
            conditions: vec![],
        }];
        let err = transaction_results(
            "OVN_Northbound",
            &ops,
            json!([{"error": "referential integrity violation", "details": "row is referenced"}]),
        )
        .expect_err("an error");
        assert_eq!(
            err.to_string(),
            "transaction on OVN_Northbound: operation 0 (delete from Logical_Switch) failed: \
             referential integrity violation: row is referenced"
        );
        let commit = transaction_results(
            "OVN_Northbound",
            &ops,
            json!([{"count": 1}, {"error": "constraint violation", "details": "duplicate name"}]),
        )
        .expect_err("a commit error");
        assert!(matches!(commit, ClientError::Commit { .. }), "{commit}");
    }
}
