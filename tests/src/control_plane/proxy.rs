//! A loopback TCP proxy in front of kube-apiserver whose connections the harness can cut, as a
//! load balancer or a network fault would: every watch and request in flight ends at once, and
//! clients reconnect through it. TLS passes through untouched (the serving certificate names
//! 127.0.0.1, which the proxy also listens on).

use std::{
    collections::HashMap,
    io,
    net::{Shutdown, TcpListener, TcpStream},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
};

use anyhow::Context as _;

#[derive(Debug, Default)]
struct Connections {
    open: Mutex<HashMap<u64, (TcpStream, TcpStream)>>,
    next: AtomicU64,
    stopping: AtomicBool,
    /// New connections are closed at once (the API server unreachable, as in a partition).
    refusing: AtomicBool,
}

impl Connections {
    fn cut_all(&self) -> usize {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.len();
        for (_, (client, server)) in open.drain() {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
        }
        count
    }
}

/// The proxy; it stops, cutting every connection, when dropped.
#[derive(Debug)]
pub struct CutProxy {
    port: u16,
    target: u16,
    connections: Arc<Connections>,
}

impl CutProxy {
    /// Listens on 127.0.0.1 and an ephemeral port, forwarding to `127.0.0.1:<target>`.
    pub fn start(target: u16) -> anyhow::Result<Self> {
        let listener =
            TcpListener::bind(("127.0.0.1", 0)).context("binding the API proxy to 127.0.0.1")?;
        let port = listener
            .local_addr()
            .context("the API proxy's address")?
            .port();
        let connections = Arc::new(Connections::default());
        let shared = Arc::clone(&connections);
        thread::Builder::new()
            .name(format!("api-proxy-{port}"))
            .spawn(move || accept(&listener, target, &shared))
            .context("starting the API proxy's thread")?;
        Ok(Self {
            port,
            target,
            connections,
        })
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Also listens on `127.0.0.1:<port>` inside the network namespace at `netns`, so that a
    /// process there (Multus inside a simulated node) reaches the API server with the same
    /// kubeconfig. The listener is bound from a thread that enters the namespace and exits;
    /// connections to the API server are still made from this namespace.
    pub fn listen_in(&self, netns: &std::path::Path) -> anyhow::Result<()> {
        let port = self.port;
        let listener = crate::netns::listen_in(netns, port)?;
        let target = self.target;
        let shared = Arc::clone(&self.connections);
        thread::Builder::new()
            .name(format!("api-proxy-{port}-ns"))
            .spawn(move || accept(&listener, target, &shared))
            .context("starting the API proxy's thread")?;
        Ok(())
    }

    /// Closes every open connection (both ways); returns how many there were.
    pub fn cut(&self) -> usize {
        self.connections.cut_all()
    }

    /// From now on closes every new connection at once (`true`), or forwards again (`false`).
    pub fn refuse(&self, refusing: bool) {
        self.connections.refusing.store(refusing, Ordering::SeqCst);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.connections.stopping.store(true, Ordering::SeqCst);
        // Wakes the accepting thread, which then sees `stopping`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        self.connections.cut_all();
    }
}

fn accept(listener: &TcpListener, target: u16, connections: &Arc<Connections>) {
    for client in listener.incoming() {
        if connections.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        if connections.refusing.load(Ordering::SeqCst) {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
            // The API server is down (a restart): the client sees its connection refused.
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        if let Err(error) = forward(client, server, connections) {
            tracing::warn!(%error, "the API proxy could not forward a connection");
        }
    }
}

fn forward(client: TcpStream, server: TcpStream, connections: &Arc<Connections>) -> io::Result<()> {
    let id = connections.next.fetch_add(1, Ordering::SeqCst);
    connections
        .open
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(id, (client.try_clone()?, server.try_clone()?));
    let pipes = [(client.try_clone()?, server.try_clone()?), (server, client)];
    for (mut from, mut to) in pipes {
        let connections = Arc::clone(connections);
        thread::spawn(move || {
            let _ = io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Write);
            let _ = from.shutdown(Shutdown::Read);
            if let Some((client, server)) = connections
                .open
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&id)
            {
                // One direction ended: the other ends with it, as a TCP proxy's would.
                let _ = client.shutdown(Shutdown::Both);
                let _ = server.shutdown(Shutdown::Both);
            }
        });
    }
    Ok(())
}
