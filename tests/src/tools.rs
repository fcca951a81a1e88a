//! The Go components `cargo xtask setup` builds (kube-apiserver, etcd, kubectl, helm, Multus,
//! whereabouts…): where their binaries and shared files are.
//!
//! Setup links `~/.cache/sidelane/bin/<binary>` to the pinned build and
//! `~/.cache/sidelane/share/<component>/` to the files it ships (CRDs); see `xtask/go/README.md`.
//! `SIDELANE_TOOLS_BIN` and `SIDELANE_TOOLS_SHARE` override the folders.

use std::path::PathBuf;

use anyhow::{Context as _, bail};

fn cache_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("sidelane"));
    }
    let home = std::env::var_os("HOME").context("neither XDG_CACHE_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cache/sidelane"))
}

fn folder(variable: &str, default: &str) -> anyhow::Result<PathBuf> {
    match std::env::var_os(variable).filter(|d| !d.is_empty()) {
        Some(dir) => Ok(PathBuf::from(dir)),
        None => Ok(cache_dir()?.join(default)),
    }
}

/// The path of a binary built by `cargo xtask setup`, e.g. `binary("kube-apiserver")`.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = folder("SIDELANE_TOOLS_BIN", "bin")?.join(name);
    if !path.is_file() {
        bail!(
            "{} is missing: `cargo xtask setup` builds it (Kubernetes, etcd, Helm, Multus and \
             whereabouts come from the Go build modules in xtask/go/)",
            path.display()
        );
    }
    Ok(path)
}

/// A file a component ships, e.g. `shared("multus", "multus-daemonset.yml")`.
pub fn shared(component: &str, file: &str) -> anyhow::Result<PathBuf> {
    let path = folder("SIDELANE_TOOLS_SHARE", "share")?
        .join(component)
        .join(file);
    if !path.is_file() {
        bail!(
            "{} is missing: `cargo xtask setup` copies it from the pinned {component} module",
            path.display()
        );
    }
    Ok(path)
}

/// The images `cargo xtask setup` builds for the real node (`<cache>/images/`,
/// `SIDELANE_IMAGES` overrides it): each reference (`sidelane.local/busybox:1.35.0-4`) with its
/// OCI layout tarball, whose name is the reference with `/` and `:` as `_`.
pub fn images() -> anyhow::Result<Vec<(String, PathBuf)>> {
    let dir = folder("SIDELANE_IMAGES", "images")?;
    let entries = std::fs::read_dir(&dir).with_context(|| {
        format!(
            "{} is missing: `cargo xtask setup` builds the node's images",
            dir.display()
        )
    })?;
    let mut out = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("listing {}", dir.display()))?
            .path();
        let Some(stem) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".tar"))
        else {
            continue;
        };
        let (Some(slash), Some(colon)) = (stem.find('_'), stem.rfind('_')) else {
            continue;
        };
        if slash == colon {
            continue;
        }
        let reference = format!(
            "{}/{}:{}",
            &stem[..slash],
            &stem[slash + 1..colon],
            &stem[colon + 1..]
        );
        out.push((reference, path));
    }
    out.sort();
    Ok(out)
}

/// The reference of the image named `name` (`busybox`, `pause`) among [`images`].
pub fn image(name: &str) -> anyhow::Result<String> {
    images()?
        .into_iter()
        .map(|(reference, _)| reference)
        .find(|r| {
            r.rsplit('/')
                .next()
                .is_some_and(|n| n.starts_with(&format!("{name}:")))
        })
        .with_context(|| format!("no image {name}: `cargo xtask setup` builds it"))
}
