//! etcd for one control plane: a single member on loopback, its data in the run's folder, and
//! the two calls the harness makes of it over its JSON gateway (health, compaction).

use std::{
    fs,
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::{process::Background, tools};

/// A running etcd member; killed when dropped.
#[derive(Debug)]
pub struct Etcd {
    process: Option<Background>,
    data_dir: PathBuf,
    log: PathBuf,
    client_port: u16,
    peer_port: u16,
}

impl Etcd {
    /// Starts a fresh member whose data lives in `dir/etcd` and waits until it is healthy.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        let mut etcd = Self {
            process: None,
            data_dir: dir.join("etcd"),
            log: dir.join("etcd.log"),
            client_port: super::free_port()?,
            peer_port: super::free_port()?,
        };
        etcd.launch()?;
        Ok(etcd)
    }

    /// `http://127.0.0.1:<port>`, for `--etcd-servers`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let mut cmd = Command::new(tools::binary("etcd")?);
        cmd.arg("--name=default")
            .arg(format!("--data-dir={}", self.data_dir.display()))
            .arg(format!("--listen-client-urls={}", self.url()))
            .arg(format!("--advertise-client-urls={}", self.url()))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=default={peer}"))
            // A test cluster needs no durability across a power cut; fsync costs seconds
            // per thousand writes on a shared disk.
            .arg("--unsafe-no-fsync")
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(
                log.try_clone()
                    .with_context(|| format!("duplicating {}", self.log.display()))?,
            )
            .stderr(log);
        self.process = Some(Background::spawn(&mut cmd)?);
        self.wait_healthy(Duration::from_secs(30))
    }

    fn wait_healthy(&mut self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(health) = self.call("GET", "/health", None)
                && health["health"] == "true"
            {
                return Ok(());
            }
            if let Some(process) = &mut self.process
                && !process.is_running()
            {
                bail!("etcd exited while starting; its log: {}", tail(&self.log));
            }
            if Instant::now() > deadline {
                bail!(
                    "etcd was not healthy within {within:?}; its log: {}",
                    tail(&self.log)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the member and starts it again on the same data and ports.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.process = None;
        self.launch()
    }

    /// Stops the member (the data stays); [`Etcd::restart`] brings it back.
    pub fn stop(&mut self) {
        self.process = None;
    }

    /// Compacts away every revision before the current one, so that a watch or a continue
    /// token from before now is answered 410 Gone by kube-apiserver. Returns the revision.
    pub fn compact(&self) -> anyhow::Result<i64> {
        let range = self.call("POST", "/v3/kv/range", Some(&json!({"key": "AA=="})))?;
        let revision: i64 = range["header"]["revision"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .with_context(|| format!("etcd's range answer has no revision: {range}"))?;
        self.call(
            "POST",
            "/v3/kv/compaction",
            Some(&json!({"revision": revision.to_string(), "physical": true})),
        )
        .with_context(|| format!("compacting etcd at revision {revision}"))?;
        Ok(revision)
    }

    /// One HTTP/1.0 request to the member's client port; the JSON answer.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let body = body.map(Value::to_string).unwrap_or_default();
        let mut stream = TcpStream::connect(("127.0.0.1", self.client_port))
            .with_context(|| format!("connecting to etcd on port {}", self.client_port))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .context("setting a read timeout")?;
        write!(
            stream,
            "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .with_context(|| format!("sending {method} {path} to etcd"))?;
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .with_context(|| format!("reading etcd's answer to {method} {path}"))?;
        let (head, body) = answer
            .split_once("\r\n\r\n")
            .with_context(|| format!("etcd's answer to {method} {path} has no body: {answer}"))?;
        if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
            bail!(
                "etcd answered {method} {path} with {}: {body}",
                head.lines().next().unwrap_or_default()
            );
        }
        serde_json::from_str(body)
            .with_context(|| format!("etcd's answer to {method} {path} is not JSON: {body}"))
    }
}

/// The last lines of a log file, for error messages.
pub(crate) fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
