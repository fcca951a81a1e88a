//! A read-only container registry (the OCI distribution API's pull side) serving the images
//! `cargo xtask setup` builds under the names the seeds' pods ask for: nothing can be pulled
//! from Docker Hub here, and a kubelet pulls an image tagged `latest` (or untagged) every time,
//! so importing the images under those names is not enough. A real node's containerd reaches
//! it as the mirror of `docker.io` (`hosts.toml`), so the seeds' YAML runs verbatim.
//!
//! What stands in for what is [`SEED_IMAGES`]: Alpine's images are busybox (`/bin/ash`,
//! `sleep`, `ip`, `ping`, `nc` are there), nginx's is busybox's `httpd` on port 80.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::{process, tools};

/// `(repository on docker.io, tag, the local image serving it)`.
pub const SEED_IMAGES: &[(&str, &str, &str)] = &[
    ("library/alpine", "edge", "busybox"),
    ("library/alpine", "latest", "busybox"),
    ("library/nginx", "alpine", "httpd"),
    ("library/nginx", "latest", "httpd"),
    ("library/busybox", "latest", "busybox"),
];

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// The registry, serving until dropped.
pub struct Registry {
    port: u16,
    stopping: Arc<AtomicBool>,
    _layouts: tempfile::TempDir,
}

/// The images' OCI layouts, unpacked: one folder per local image.
#[derive(Clone)]
struct Layouts {
    root: PathBuf,
}

impl Layouts {
    fn unpack(root: &Path) -> anyhow::Result<Layouts> {
        let mut names: Vec<&str> = SEED_IMAGES.iter().map(|(_, _, local)| *local).collect();
        names.sort_unstable();
        names.dedup();
        for name in names {
            let reference = tools::image(name)?;
            let (_, tarball) = tools::images()?
                .into_iter()
                .find(|(r, _)| *r == reference)
                .with_context(|| format!("the tarball of {reference}"))?;
            let dir = root.join(name);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            process::run(
                Command::new("tar")
                    .arg("-xf")
                    .arg(&tarball)
                    .arg("-C")
                    .arg(&dir),
                None,
                Duration::from_mins(1),
            )?
            .checked()
            .with_context(|| format!("unpacking {}", tarball.display()))?;
        }
        Ok(Layouts {
            root: root.to_owned(),
        })
    }

    /// The digest of the manifest serving `repository:tag`.
    fn manifest_digest(&self, repository: &str, tag: &str) -> Option<String> {
        let (_, _, local) = SEED_IMAGES
            .iter()
            .find(|(r, t, _)| *r == repository && *t == tag)?;
        let index: Value =
            serde_json::from_slice(&std::fs::read(self.root.join(local).join("index.json")).ok()?)
                .ok()?;
        index["manifests"][0]["digest"].as_str().map(str::to_owned)
    }

    /// The bytes of blob `digest` (`sha256:<hex>`), from whichever layout holds it.
    fn blob(&self, digest: &str) -> Option<Vec<u8>> {
        let hex = digest.strip_prefix("sha256:")?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        SEED_IMAGES.iter().find_map(|(_, _, local)| {
            std::fs::read(self.root.join(local).join("blobs/sha256").join(hex)).ok()
        })
    }
}

impl Registry {
    /// Serves on a free port of `127.0.0.1`, inside the network namespace at `netns` (where
    /// the node's containerd runs) or this machine's.
    pub fn start(netns: Option<&Path>) -> anyhow::Result<Registry> {
        let dir = tempfile::Builder::new()
            .prefix("sidelane-registry-")
            .tempdir()
            .context("a folder for the registry")?;
        let layouts = Layouts::unpack(dir.path())?;
        let listener = match netns {
            Some(ns) => crate::netns::listen_in(ns, 0)?,
            None => TcpListener::bind(("127.0.0.1", 0)).context("binding the registry")?,
        };
        let port = listener
            .local_addr()
            .context("the registry's address")?
            .port();
        listener
            .set_nonblocking(true)
            .context("a non-blocking listener")?;
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&stopping);
        thread::Builder::new()
            .name(format!("registry-{port}"))
            .spawn(move || serve(&listener, &layouts, &stop))
            .context("starting the registry's thread")?;
        Ok(Registry {
            port,
            stopping,
            _layouts: dir,
        })
    }

    /// Its port on `127.0.0.1`.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Writes containerd's `hosts.toml` for `docker.io` under `certs_d` (the registry's
    /// `config_path`): pulls go to this registry first.
    pub fn write_hosts(&self, certs_d: &Path) -> anyhow::Result<()> {
        let dir = certs_d.join("docker.io");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let hosts = format!(
            "server = \"https://registry-1.docker.io\"\n\n\
             [host.\"http://127.0.0.1:{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            self.port
        );
        std::fs::write(dir.join("hosts.toml"), hosts).context("writing hosts.toml")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
    }
}

fn serve(listener: &TcpListener, layouts: &Layouts, stopping: &AtomicBool) {
    while !stopping.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let layouts = layouts.clone();
                thread::spawn(move || {
                    let _ = answer(stream, &layouts);
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(20));
            }
            Err(_) => return,
        }
    }
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Wanted<'a> {
    /// `GET /v2/`: the API version check.
    Base,
    Manifest {
        repository: &'a str,
        reference: &'a str,
    },
    Blob {
        digest: &'a str,
    },
    Unknown,
}

fn wanted(path: &str) -> Wanted<'_> {
    let Some(rest) = path.strip_prefix("/v2/") else {
        return Wanted::Unknown;
    };
    if rest.is_empty() {
        return Wanted::Base;
    }
    if let Some((repository, reference)) = rest.rsplit_once("/manifests/") {
        return Wanted::Manifest {
            repository,
            reference,
        };
    }
    match rest.rsplit_once("/blobs/") {
        Some((_, digest)) => Wanted::Blob { digest },
        None => Wanted::Unknown,
    }
}

fn answer(stream: TcpStream, layouts: &Layouts) -> anyhow::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
    }
    let mut words = request.split_whitespace();
    let (Some(method), Some(path)) = (words.next(), words.next()) else {
        bail!("a request without a method and a path: {request:?}");
    };
    let path = path.split('?').next().unwrap_or(path);
    let (status, content_type, digest, body) = match wanted(path) {
        Wanted::Base => ("200 OK", "application/json", None, Some(b"{}".to_vec())),
        Wanted::Manifest {
            repository,
            reference,
        } => {
            let digest = if reference.starts_with("sha256:") {
                Some(reference.to_owned())
            } else {
                layouts.manifest_digest(repository, reference)
            };
            let body = digest.as_deref().and_then(|d| layouts.blob(d));
            ("200 OK", MANIFEST_TYPE, digest, body)
        }
        Wanted::Blob { digest } => (
            "200 OK",
            "application/octet-stream",
            Some(digest.to_owned()),
            layouts.blob(digest),
        ),
        Wanted::Unknown => ("404 Not Found", "application/json", None, None),
    };
    let mut out = stream;
    let Some(body) = body else {
        let missing = br#"{"errors":[{"code":"NAME_UNKNOWN","message":"not served here"}]}"#;
        write!(
            out,
            "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            missing.len()
        )?;
        out.write_all(missing)?;
        return Ok(());
    };
    write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Docker-Distribution-API-Version: registry/2.0\r\nConnection: close\r\n",
        body.len()
    )?;
    if let Some(digest) = digest {
        write!(out, "Docker-Content-Digest: {digest}\r\n")?;
    }
    out.write_all(b"\r\n")?;
    if method != "HEAD" {
        out.write_all(&body)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_the_manifest_or_blob_they_ask_for() {
        assert_eq!(wanted("/v2/"), Wanted::Base);
        assert_eq!(
            wanted("/v2/library/alpine/manifests/edge"),
            Wanted::Manifest {
                repository: "library/alpine",
                reference: "edge"
            }
        );
        assert_eq!(
            wanted("/v2/library/nginx/blobs/sha256:ab"),
            Wanted::Blob {
                digest: "sha256:ab"
            }
        );
        assert_eq!(wanted("/v1/_ping"), Wanted::Unknown);
        assert_eq!(wanted("/v2/library/alpine/tags/list"), Wanted::Unknown);
    }
}
