//! Named network namespaces (`ip netns`), unique per process and per call so that tests run in
//! parallel without collisions, deleted on drop.

use std::{
    ffi::OsStr,
    path::PathBuf,
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use crate::process::{self, Background};

/// How long a command run to completion inside a namespace may take.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(30);

/// A named network namespace, `sl-<pid>-<n>`, with `lo` up; deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates a fresh namespace with `lo` up.
    pub fn new() -> anyhow::Result<NetNs> {
        let name = fresh_name();
        process::run(
            &mut process::command(&["ip", "netns", "add", &name])?,
            None,
            EXEC_TIMEOUT,
        )?
        .checked()?;
        let ns = NetNs { name };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Names the network namespace process `pid` is in (a pod sandbox's pause process, whose
    /// namespace its runtime mounted where this machine may not see it): `ip netns attach`.
    /// Dropping it removes the name, and keeps the namespace alive until then.
    pub fn of_process(pid: u32) -> anyhow::Result<NetNs> {
        let name = fresh_name();
        process::run(
            &mut process::command(&["ip", "netns", "attach", &name, &pid.to_string()])?,
            None,
            EXEC_TIMEOUT,
        )?
        .checked()?;
        Ok(NetNs { name })
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The nsfs path, as a container runtime passes it to CNI (`CNI_NETNS`).
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// A command that runs `argv` inside (`ip netns exec <name> argv...`).
    pub fn command<S: AsRef<OsStr>>(&self, argv: &[S]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]);
        cmd.args(argv);
        cmd
    }

    /// Runs `argv` inside to completion and returns its stdout; the error names the command
    /// line and carries its stderr.
    pub fn exec<S: AsRef<OsStr>>(&self, argv: &[S]) -> anyhow::Result<String> {
        process::run(&mut self.command(argv), None, EXEC_TIMEOUT)?.checked()
    }

    /// A veth pair: `name` here, up, and `peer_name` (down) in `peer`: a node's `eth0` wired to
    /// a LAN, the master of its macvlan attachments.
    pub fn veth_to(&self, name: &str, peer: &NetNs, peer_name: &str) -> anyhow::Result<()> {
        self.exec(&[
            "ip",
            "link",
            "add",
            name,
            "type",
            "veth",
            "peer",
            "name",
            peer_name,
            "netns",
            peer.name(),
        ])?;
        self.exec(&["ip", "link", "set", name, "up"])?;
        Ok(())
    }

    /// Starts `argv` inside in the background with stdout and stderr captured; killed when the
    /// guard drops.
    pub fn spawn<S: AsRef<OsStr>>(&self, argv: &[S]) -> anyhow::Result<Background> {
        Background::spawn(
            self.command(argv)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        )
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let deleted = process::command(&["ip", "netns", "del", &self.name])
            .and_then(|mut cmd| process::run(&mut cmd, None, EXEC_TIMEOUT))
            .and_then(process::Finished::checked);
        if let Err(e) = deleted {
            eprintln!("warning: deleting network namespace {}: {e:#}", self.name);
        }
    }
}

/// `sl-<pid>-<n>`, unique to this process and call.
fn fresh_name() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "sl-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A TCP listener on `127.0.0.1:port` (`0`: any free port) inside the network namespace at
/// `netns`: bound from a thread that enters it and ends there, so the caller stays where it is
/// and the socket stays bound in the namespace.
pub fn listen_in(netns: &std::path::Path, port: u16) -> anyhow::Result<std::net::TcpListener> {
    use anyhow::Context as _;
    in_netns(netns, move || {
        std::net::TcpListener::bind(("127.0.0.1", port))
            .with_context(|| format!("binding 127.0.0.1:{port}"))
    })
}

/// `f`'s result, run on a thread inside the network namespace at `netns` (sockets it makes
/// stay there; the caller stays where it is).
pub fn in_netns<T: Send + 'static>(
    netns: &std::path::Path,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    use anyhow::Context as _;
    let path = netns.to_owned();
    std::thread::spawn(move || -> anyhow::Result<T> {
        let file =
            std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("entering {}", path.display()))?;
        f().with_context(|| format!("in {}", path.display()))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the thread in {} panicked", netns.display()))?
}
