//! Real OVN and OVS from Debian's packages, run as plain processes from a temporary
//! directory: the central part ([`Central`]: Northbound and Southbound ovsdb-servers and
//! ovn-northd) and chassis ([`Chassis`]: a network namespace with its own `Open_vSwitch`
//! ovsdb-server, ovs-vswitchd on the userspace `netdev` datapath, and ovn-controller).
//! Every process logs to a file in the directory; all die with their guard.

use std::{
    ffi::OsStr,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    netns::NetNs,
    process::{self, Background},
};

const NB_SCHEMA: &str = "/usr/share/ovn/ovn-nb.ovsschema";
const SB_SCHEMA: &str = "/usr/share/ovn/ovn-sb.ovsschema";
const VSWITCH_SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";
const TOOL_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether OVN's and OVS's programs are installed (`cargo xtask setup` installs them).
pub fn installed() -> bool {
    [NB_SCHEMA, SB_SCHEMA, VSWITCH_SCHEMA]
        .iter()
        .all(|p| Path::new(p).exists())
}

fn with_env(cmd: &mut Command, dir: &Path) {
    for var in [
        "OVS_RUNDIR",
        "OVS_LOGDIR",
        "OVS_DBDIR",
        "OVS_SYSCONFDIR",
        "OVN_RUNDIR",
        "OVN_LOGDIR",
        "OVN_DBDIR",
        "OVN_SYSCONFDIR",
    ] {
        cmd.env(var, dir);
    }
}

fn tool(dir: &Path, argv: &[&str]) -> anyhow::Result<String> {
    let mut cmd = process::command(argv)?;
    with_env(&mut cmd, dir);
    process::run(&mut cmd, None, TOOL_TIMEOUT)?.checked()
}

fn daemon(dir: &Path, mut cmd: Command) -> anyhow::Result<Background> {
    with_env(&mut cmd, dir);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Background::spawn(&mut cmd)
}

fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !ready() {
        if Instant::now() >= deadline {
            bail!("{what} not ready within {timeout:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free TCP port")?;
    Ok(l.local_addr()?.port())
}

/// One ovsdb-server serving one database file on a Unix socket and a loopback TCP port.
#[derive(Debug)]
pub struct DbServer {
    dir: PathBuf,
    name: String,
    /// The database file.
    pub file: PathBuf,
    /// The Unix socket.
    pub socket: PathBuf,
    /// The loopback TCP port.
    pub port: u16,
    /// Also listening on `pssl:` (a loopback port) with these files, once switched on.
    ssl: Option<SslListener>,
    process: Option<Background>,
}

/// A database server's `pssl:` listener: its port and its key, certificate and CA (OVN's
/// `--private-key`, `--certificate`, `--ca-cert`).
#[derive(Debug, Clone)]
struct SslListener {
    /// The address it listens on.
    address: String,
    port: u16,
    key: PathBuf,
    cert: PathBuf,
    ca: PathBuf,
}

impl DbServer {
    /// Creates `<name>.db` from `schema` in `dir` and serves it.
    pub fn create(dir: &Path, name: &str, schema: &str) -> anyhow::Result<DbServer> {
        let file = dir.join(format!("{name}.db"));
        tool(
            dir,
            &["ovsdb-tool", "create", &file.to_string_lossy(), schema],
        )?;
        let mut server = DbServer {
            dir: dir.to_owned(),
            name: name.to_owned(),
            socket: dir.join(format!("{name}.sock")),
            file,
            port: free_port()?,
            ssl: None,
            process: None,
        };
        server.start()?;
        Ok(server)
    }

    /// Creates a member of a clustered database in `dir`: the first member creates the
    /// cluster (`join: None`), the others join it through the first's Raft port. Raft runs on
    /// `tcp:127.0.0.1:<raft_port>`.
    pub fn create_cluster_member(
        dir: &Path,
        name: &str,
        schema: &str,
        database: &str,
        raft_port: u16,
        join: Option<u16>,
    ) -> anyhow::Result<DbServer> {
        let file = dir.join(format!("{name}.db"));
        let local = format!("tcp:127.0.0.1:{raft_port}");
        let file_arg = file.to_string_lossy().into_owned();
        match join {
            None => tool(
                dir,
                &["ovsdb-tool", "create-cluster", &file_arg, schema, &local],
            )?,
            Some(port) => tool(
                dir,
                &[
                    "ovsdb-tool",
                    "join-cluster",
                    &file_arg,
                    database,
                    &local,
                    &format!("tcp:127.0.0.1:{port}"),
                ],
            )?,
        };
        let mut server = DbServer {
            dir: dir.to_owned(),
            name: name.to_owned(),
            socket: dir.join(format!("{name}.sock")),
            file,
            port: free_port()?,
            ssl: None,
            process: None,
        };
        server.start()?;
        Ok(server)
    }

    /// A free loopback TCP port (for Raft).
    pub fn free_port() -> anyhow::Result<u16> {
        free_port()
    }

    /// `unix:<socket>`.
    pub fn unix_remote(&self) -> String {
        format!("unix:{}", self.socket.display())
    }

    /// `tcp:127.0.0.1:<port>`.
    pub fn tcp_remote(&self) -> String {
        format!("tcp:127.0.0.1:{}", self.port)
    }

    /// Restarts the server also listening on `pssl:` with a serving certificate signed by
    /// `pki`'s CA (named `ovsdb-server`, for no host: as `ovs-pki` makes them) and asking each
    /// client for a certificate from that CA; returns its `ssl:` remote.
    pub fn serve_tls(&mut self, pki: &crate::control_plane::Pki) -> anyhow::Result<String> {
        let serving = pki.server(&format!("{}-server", self.name), "ovsdb-server", &[])?;
        self.serve_tls_with(&serving.key, &serving.cert, &pki.ca)
    }

    /// As [`DbServer::serve_tls`], with these files (`--private-key`, `--certificate`,
    /// `--ca-cert`), made elsewhere (by `ovs-pki`, as Kube-OVN's generate-ssl.sh does).
    pub fn serve_tls_with(&mut self, key: &Path, cert: &Path, ca: &Path) -> anyhow::Result<String> {
        self.serve_tls_at("127.0.0.1", key, cert, ca)
    }

    /// As [`DbServer::serve_tls_with`], listening on `address` (one of this namespace's) rather
    /// than on the loopback: for clients in other network namespaces.
    pub fn serve_tls_at(
        &mut self,
        address: &str,
        key: &Path,
        cert: &Path,
        ca: &Path,
    ) -> anyhow::Result<String> {
        self.ssl = Some(SslListener {
            address: address.to_owned(),
            port: free_port()?,
            key: key.to_owned(),
            cert: cert.to_owned(),
            ca: ca.to_owned(),
        });
        self.kill();
        self.start()?;
        self.ssl_remote()
            .context("the server has a pssl: listener now")
    }

    /// `ssl:<address>:<port>`, once [`DbServer::serve_tls`] switched it on.
    pub fn ssl_remote(&self) -> Option<String> {
        self.ssl
            .as_ref()
            .map(|ssl| format!("ssl:{}:{}", ssl.address, ssl.port))
    }

    /// (Re)starts the server on the same file, socket and port.
    pub fn start(&mut self) -> anyhow::Result<()> {
        let _ = std::fs::remove_file(&self.socket);
        let mut cmd = Command::new("ovsdb-server");
        cmd.arg(&self.file)
            .arg(format!("--remote=punix:{}", self.socket.display()))
            .arg(format!("--remote=ptcp:{}:127.0.0.1", self.port));
        if let Some(ssl) = &self.ssl {
            cmd.arg(format!("--remote=pssl:{}:{}", ssl.port, ssl.address))
                .arg(format!("--private-key={}", ssl.key.display()))
                .arg(format!("--certificate={}", ssl.cert.display()))
                .arg(format!("--ca-cert={}", ssl.ca.display()));
        }
        cmd.arg(format!(
            "--unixctl={}",
            self.dir.join(format!("{}.ctl", self.name)).display()
        ))
        .arg(format!(
            "--log-file={}",
            self.dir.join(format!("{}.log", self.name)).display()
        ))
        .arg("-vconsole:off");
        self.process = Some(daemon(&self.dir, cmd)?);
        let socket = self.socket.clone();
        let listeners: Vec<(String, u16)> = std::iter::once(("127.0.0.1".to_owned(), self.port))
            .chain(self.ssl.as_ref().map(|ssl| (ssl.address.clone(), ssl.port)))
            .collect();
        wait_for(
            &format!("ovsdb-server {}", self.name),
            Duration::from_secs(10),
            || {
                std::os::unix::net::UnixStream::connect(&socket).is_ok()
                    && listeners.iter().all(|(address, port)| {
                        std::net::TcpStream::connect((address.as_str(), *port)).is_ok()
                    })
            },
        )
    }

    /// Kills the server (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        self.process = None;
    }
}

/// OVN's central part: the Northbound and Southbound databases and ovn-northd.
#[derive(Debug)]
pub struct Central {
    dir: tempfile::TempDir,
    /// The Northbound database.
    pub nb: DbServer,
    /// The Southbound database.
    pub sb: DbServer,
    northd: Background,
}

impl Central {
    /// Starts the databases and ovn-northd.
    pub fn start() -> anyhow::Result<Central> {
        let dir = tempfile::Builder::new()
            .prefix("sidelane-ovn-")
            .tempdir()
            .context("creating OVN's directory")?;
        let nb = DbServer::create(dir.path(), "ovnnb_db", NB_SCHEMA)?;
        let sb = DbServer::create(dir.path(), "ovnsb_db", SB_SCHEMA)?;
        let mut cmd = Command::new("ovn-northd");
        cmd.arg(format!("--ovnnb-db={}", nb.unix_remote()))
            .arg(format!("--ovnsb-db={}", sb.unix_remote()))
            .arg(format!(
                "--unixctl={}",
                dir.path().join("ovn-northd.ctl").display()
            ))
            .arg(format!(
                "--log-file={}",
                dir.path().join("ovn-northd.log").display()
            ))
            .arg("-vconsole:off");
        let northd = daemon(dir.path(), cmd)?;
        let central = Central {
            dir,
            nb,
            sb,
            northd,
        };
        // ovn-northd has connected when NB_Global has a row it filled.
        wait_for("ovn-northd", Duration::from_secs(20), || {
            central
                .nbctl(&["--bare", "--columns=_uuid", "list", "NB_Global"])
                .is_ok_and(|o| !o.trim().is_empty())
        })?;
        Ok(central)
    }

    /// The directory holding the databases and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `ovn-nbctl` against the Northbound database.
    pub fn nbctl<S: AsRef<OsStr>>(&self, args: &[S]) -> anyhow::Result<String> {
        let mut cmd = Command::new("ovn-nbctl");
        cmd.arg(format!("--db={}", self.nb.unix_remote()))
            .arg("--timeout=30")
            .args(args);
        with_env(&mut cmd, self.dir.path());
        process::run(&mut cmd, None, TOOL_TIMEOUT)?.checked()
    }

    /// Runs `ovn-sbctl` against the Southbound database.
    pub fn sbctl<S: AsRef<OsStr>>(&self, args: &[S]) -> anyhow::Result<String> {
        let mut cmd = Command::new("ovn-sbctl");
        cmd.arg(format!("--db={}", self.sb.unix_remote()))
            .arg("--timeout=30")
            .args(args);
        with_env(&mut cmd, self.dir.path());
        process::run(&mut cmd, None, TOOL_TIMEOUT)?.checked()
    }

    /// Runs `ovn-trace` (which reads the Southbound database) on one logical datapath.
    pub fn trace(&self, datapath: &str, microflow: &str) -> anyhow::Result<String> {
        self.trace_with(&["--minimal"], datapath, microflow)
    }

    /// Runs `ovn-trace` with `options` (an output format, `--ct=new`...).
    pub fn trace_with(
        &self,
        options: &[&str],
        datapath: &str,
        microflow: &str,
    ) -> anyhow::Result<String> {
        let mut cmd = Command::new("ovn-trace");
        cmd.arg(format!("--db={}", self.sb.unix_remote()))
            .args(options)
            .arg(datapath)
            .arg(microflow);
        with_env(&mut cmd, self.dir.path());
        process::run(&mut cmd, None, TOOL_TIMEOUT)?.checked()
    }

    /// Waits until ovn-northd has turned the Northbound contents into the Southbound ones.
    pub fn sync(&self) -> anyhow::Result<()> {
        self.nbctl(&["--wait=sb", "sync"]).map(drop)
    }

    /// Whether ovn-northd still runs.
    pub fn northd_running(&mut self) -> bool {
        self.northd.is_running()
    }
}

/// A chassis: a network namespace with its own OVS (userspace datapath) and ovn-controller.
#[derive(Debug)]
pub struct Chassis {
    /// The node's namespace: `br-int` and the host ends of pod veths live here.
    pub ns: NetNs,
    dir: tempfile::TempDir,
    /// The chassis' name (OVS `system-id`).
    pub name: String,
    /// Its tunnel endpoint.
    pub encap_ip: String,
    /// The `Open_vSwitch` database.
    pub db: DbServer,
    /// `br-int`'s `datapath_type`: `netdev` (userspace) or `system` (the kernel module).
    pub datapath: String,
    vswitchd: Background,
    controller: Background,
}

impl Chassis {
    /// Starts a chassis attached to `central`, with `br-int` on the `netdev` datapath and
    /// tunnels from `127.0.0.1` (a single node).
    pub fn start(central: &Central, name: &str) -> anyhow::Result<Chassis> {
        Chassis::start_with(central, name, "127.0.0.1")
    }

    /// Starts a chassis whose tunnel endpoint is `encap_ip` (unique per chassis; see
    /// [`Chassis::connect`] for the underlay that carries it).
    pub fn start_with(central: &Central, name: &str, encap_ip: &str) -> anyhow::Result<Chassis> {
        Chassis::start_on(central, name, encap_ip, "netdev")
    }

    /// Starts a chassis whose `br-int` has `datapath` (`netdev`, or `system` where the
    /// openvswitch kernel module is loaded: the lab's choice, as a real node's).
    pub fn start_on(
        central: &Central,
        name: &str,
        encap_ip: &str,
        datapath: &str,
    ) -> anyhow::Result<Chassis> {
        let ns = NetNs::new()?;
        let dir = tempfile::Builder::new()
            .prefix("sidelane-ovs-")
            .tempdir()
            .context("creating the chassis' directory")?;
        let db = DbServer::create(dir.path(), "conf", VSWITCH_SCHEMA)?;
        let remote = db.unix_remote();
        tool(
            dir.path(),
            &["ovs-vsctl", &format!("--db={remote}"), "--no-wait", "init"],
        )?;
        let mut cmd = ns.command(&["ovs-vswitchd"]);
        cmd.arg(&remote)
            .arg(format!(
                "--unixctl={}",
                dir.path().join("ovs-vswitchd.ctl").display()
            ))
            .arg(format!(
                "--log-file={}",
                dir.path().join("ovs-vswitchd.log").display()
            ))
            .arg("-vconsole:off");
        let vswitchd = daemon(dir.path(), cmd)?;
        tool(
            dir.path(),
            &[
                "ovs-vsctl",
                &format!("--db={remote}"),
                "--timeout=30",
                "set",
                "Open_vSwitch",
                ".",
                &format!("external_ids:system-id={name}"),
                &format!("external_ids:ovn-remote={}", central.sb.unix_remote()),
                "external_ids:ovn-encap-type=geneve",
                &format!("external_ids:ovn-encap-ip={encap_ip}"),
                &format!("external_ids:ovn-bridge-datapath-type={datapath}"),
                "--",
                "--may-exist",
                "add-br",
                "br-int",
                "--",
                "set",
                "Bridge",
                "br-int",
                &format!("datapath_type={datapath}"),
                "fail-mode=secure",
                "other_config:disable-in-band=true",
            ],
        )?;
        // ovn-controller takes no --unixctl: its control socket is
        // <OVN_RUNDIR>/ovn-controller.<pid>.ctl.
        let mut cmd = ns.command(&["ovn-controller"]);
        cmd.arg(&remote)
            .arg(format!(
                "--log-file={}",
                dir.path().join("ovn-controller.log").display()
            ))
            .arg("-vconsole:off");
        let controller = daemon(dir.path(), cmd)?;
        let chassis = Chassis {
            datapath: datapath.to_owned(),
            ns,
            dir,
            encap_ip: encap_ip.to_owned(),
            name: name.to_owned(),
            db,
            vswitchd,
            controller,
        };
        wait_for(
            "the chassis in the Southbound database",
            Duration::from_secs(30),
            || {
                central
                    .sbctl(&["--bare", "--columns=name", "list", "Chassis"])
                    .is_ok_and(|o| o.lines().any(|l| l.trim() == name))
            },
        )?;
        Ok(chassis)
    }

    /// The directory holding the chassis' database and logs (its `OVS_RUNDIR`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `ovs-vsctl` against the chassis' database.
    pub fn vsctl<S: AsRef<OsStr>>(&self, args: &[S]) -> anyhow::Result<String> {
        let mut cmd = Command::new("ovs-vsctl");
        cmd.arg(format!("--db={}", self.db.unix_remote()))
            .arg("--timeout=30")
            .args(args);
        with_env(&mut cmd, self.dir.path());
        process::run(&mut cmd, None, TOOL_TIMEOUT)?.checked()
    }

    /// Runs `ovs-appctl` against ovs-vswitchd (`dpctl/dump-flows`, `dpif/show`...).
    pub fn appctl<S: AsRef<OsStr>>(&self, args: &[S]) -> anyhow::Result<String> {
        let mut cmd = Command::new("ovs-appctl");
        cmd.arg(format!(
            "--target={}",
            self.dir.path().join("ovs-vswitchd.ctl").display()
        ))
        .args(args);
        with_env(&mut cmd, self.dir.path());
        process::run(&mut cmd, None, TOOL_TIMEOUT)?.checked()
    }

    /// Points ovn-controller at the Southbound database's `remote` over TLS: the client key,
    /// certificate and CA go in the chassis' `SSL` table (`ovs-vsctl set-ssl`, which
    /// ovn-controller reads), `external_ids:ovn-remote` names the `ssl:` remote; waits until
    /// ovn-controller is connected again.
    pub fn use_southbound_tls(
        &self,
        remote: &str,
        key: &Path,
        cert: &Path,
        ca: &Path,
    ) -> anyhow::Result<()> {
        let db = format!("--db={}", self.db.unix_remote());
        tool(
            self.dir.path(),
            &[
                "ovs-vsctl",
                &db,
                "set-ssl",
                &key.display().to_string(),
                &cert.display().to_string(),
                &ca.display().to_string(),
                "--",
                "set",
                "Open_vSwitch",
                ".",
                &format!("external_ids:ovn-remote={remote}"),
            ],
        )?;
        wait_for(
            &format!("{}'s ovn-controller connected to {remote}", self.name),
            Duration::from_secs(30),
            || {
                self.controller_status()
                    .is_ok_and(|s| s.trim() == "connected")
            },
        )
    }

    /// `ovn-appctl connection-status` of the chassis' ovn-controller.
    pub fn controller_status(&self) -> anyhow::Result<String> {
        let ctl = std::fs::read_dir(self.dir.path())?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.extension().is_some_and(|e| e == "ctl")
                    && p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("ovn-controller."))
            })
            .context("ovn-controller's control socket")?;
        let mut cmd = Command::new("ovn-appctl");
        cmd.arg(format!("--target={}", ctl.display()))
            .arg("connection-status");
        with_env(&mut cmd, self.dir.path());
        process::run(&mut cmd, None, TOOL_TIMEOUT)?.checked()
    }

    /// Joins two chassis by an underlay: a veth pair `ul0` between their namespaces. On the
    /// userspace datapath each end is a port of a `br-phy` bridge whose own interface holds the
    /// chassis' tunnel endpoint in a /24, as OVS's userspace tunnels need; on the kernel
    /// datapath `ul0` holds it.
    pub fn connect(a: &Chassis, b: &Chassis) -> anyhow::Result<()> {
        a.ns.exec(&[
            "ip",
            "link",
            "add",
            "ul0",
            "type",
            "veth",
            "peer",
            "name",
            "ul0",
            "netns",
            b.ns.name(),
        ])
        .context("creating the underlay veth")?;
        for c in [a, b] {
            c.underlay_end("ul0")?;
        }
        Ok(())
    }

    /// Joins three or more chassis by an underlay: a bridge in `hub` (a namespace of its own)
    /// with a veth `ul0` from each chassis.
    ///
    /// # Errors
    /// A link cannot be made.
    pub fn join_hub(hub: &NetNs, chassis: &[&Chassis]) -> anyhow::Result<()> {
        hub.exec(&["ip", "link", "add", "br-ul", "type", "bridge"])?;
        hub.exec(&["ip", "link", "set", "br-ul", "up"])?;
        for (i, c) in chassis.iter().enumerate() {
            let port = format!("ul{i}");
            hub.exec(&[
                "ip",
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "ul0",
                "netns",
                c.ns.name(),
            ])
            .context("creating an underlay veth")?;
            hub.exec(&["ip", "link", "set", &port, "master", "br-ul", "up"])?;
            c.underlay_end("ul0")?;
        }
        Ok(())
    }

    /// This chassis' end of the underlay, `dev`: up, and holding the tunnel endpoint (on the
    /// userspace datapath through a `br-phy` bridge).
    fn underlay_end(&self, dev: &str) -> anyhow::Result<()> {
        self.ns.exec(&["ip", "link", "set", dev, "up"])?;
        if self.datapath == "system" {
            // Kernel tunnels route through the namespace's own stack.
            self.ns.exec(&[
                "ip",
                "addr",
                "add",
                &format!("{}/24", self.encap_ip),
                "dev",
                dev,
            ])?;
            return Ok(());
        }
        self.vsctl(&[
            "--may-exist",
            "add-br",
            "br-phy",
            "--",
            "set",
            "Bridge",
            "br-phy",
            "datapath_type=netdev",
            "--",
            "--may-exist",
            "add-port",
            "br-phy",
            dev,
        ])?;
        self.ns.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", self.encap_ip),
            "dev",
            "br-phy",
        ])?;
        self.ns.exec(&["ip", "link", "set", "br-phy", "up"])?;
        Ok(())
    }

    /// Whether ovs-vswitchd and ovn-controller still run.
    pub fn running(&mut self) -> bool {
        self.vswitchd.is_running() && self.controller.is_running()
    }

    /// The node goes down as far as OVN can tell: ovn-controller and ovs-vswitchd are killed
    /// (SIGKILL), so its datapath, its tunnels' BFD sessions and its gateway ports stop.
    pub fn power_off(&mut self) {
        for p in [&mut self.controller, &mut self.vswitchd] {
            let _ = p.child_mut().kill();
            let _ = p.child_mut().wait();
        }
    }
}

/// `true` if OVN and OVS are installed; otherwise skips with a message, or panics under CI
/// (`CI=true` or `1`), where tests against the real OVN never skip.
///
/// # Panics
/// In CI when OVN or OVS is missing.
pub fn require_installed(test: &str) -> bool {
    if installed() {
        return true;
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(
        !ci,
        "{test} needs OVN and OVS ({NB_SCHEMA}, {VSWITCH_SCHEMA}); run `cargo xtask setup`"
    );
    eprintln!("skipping {test}: OVN and OVS are not installed (cargo xtask setup installs them)");
    false
}
