//! The images the real node's pods run, built here because none can be pulled: a workload image
//! from Debian's `busybox-static` (so `ip`, `ping`, `nc` and `sleep` exist in a pod), the same
//! busybox serving HTTP (for the seeds' `nginx`), and the sandbox ("pause") image, the same
//! busybox sleeping. Each is an OCI image-layout tarball under
//! `<cache>/images/`, named after the busybox package's version, which the node imports into
//! containerd (`ctr -n k8s.io images import`). Built byte for byte the same on every run.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::cmd::{exec, output};

/// The workload image, a web server image and the sandbox image, by the reference pods name
/// them. The web server stands in for the seeds' `nginx`: busybox's `httpd` serving a page on
/// port 80, as nginx's image does by default.
pub fn references() -> anyhow::Result<[(String, &'static [&'static str]); 3]> {
    let version = busybox_version()?;
    Ok([
        (
            format!("sidelane.local/busybox:{version}"),
            &["/bin/sh"] as &[&str],
        ),
        (
            format!("sidelane.local/httpd:{version}"),
            &[
                "/bin/sh",
                "-c",
                "mkdir -p /www && echo sidelane > /www/index.html && exec httpd -f -p 80 -h /www",
            ],
        ),
        (
            format!("sidelane.local/pause:{version}"),
            &["/bin/sleep", "2147483647"],
        ),
    ])
}

/// Where the image tarballs live.
pub fn dir() -> anyhow::Result<PathBuf> {
    Ok(crate::go_tools::cache_dir()?.join("images"))
}

/// The tarball of image `reference`.
pub fn tarball(reference: &str) -> anyhow::Result<PathBuf> {
    let file = reference.replace(['/', ':'], "_");
    Ok(dir()?.join(format!("{file}.tar")))
}

/// Builds each image whose tarball is missing.
pub fn install(changed: &mut Vec<String>) -> anyhow::Result<()> {
    for (reference, cmd) in references()? {
        let out = tarball(&reference)?;
        if out.is_file() {
            continue;
        }
        build(&reference, cmd, &out)?;
        changed.push(reference);
    }
    Ok(())
}

fn busybox_version() -> anyhow::Result<String> {
    let version =
        output(Command::new("dpkg-query").args(["-W", "-f=${Version}", "busybox-static"]))
            .context("busybox-static is not installed (setup installs it)")?;
    // `1:1.35.0-4+deb12u1+b1` → `1.35.0-4`: a tag may not hold `:` or `+`.
    let upstream = version.rsplit(':').next().unwrap_or(&version);
    Ok(upstream.split('+').next().unwrap_or(upstream).to_owned())
}

fn build(reference: &str, cmd: &[&str], out: &Path) -> anyhow::Result<()> {
    eprintln!("setup: building the image {reference} from busybox-static");
    let work = tempdir(out)?;
    let rootfs = work.join("rootfs");
    let bin = rootfs.join("bin");
    fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
    for dir in ["proc", "sys", "dev", "tmp", "etc", "run"] {
        fs::create_dir_all(rootfs.join(dir)).with_context(|| format!("creating /{dir}"))?;
    }
    fs::copy("/bin/busybox", bin.join("busybox")).context("copying /bin/busybox")?;
    let applets =
        output(Command::new("/bin/busybox").arg("--list")).context("listing busybox's applets")?;
    for applet in applets
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox")
    {
        std::os::unix::fs::symlink("busybox", bin.join(applet))
            .with_context(|| format!("linking /bin/{applet}"))?;
    }
    fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")
        .context("writing /etc/passwd")?;
    let layout = work.join("layout");
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
    let layer = work.join("layer.tar");
    tar(&rootfs, &layer, &["."])?;
    let layer_desc = blob(&blobs, &fs::read(&layer).context("reading the layer")?)?;
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": cmd, "Env": ["PATH=/bin"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
    });
    let config_desc = blob(&blobs, &serde_json::to_vec(&config)?)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": described("application/vnd.oci.image.config.v1+json", &config_desc),
        "layers": [described("application/vnd.oci.image.layer.v1.tar", &layer_desc)],
    });
    let manifest_desc = blob(&blobs, &serde_json::to_vec(&manifest)?)?;
    let tag = reference.rsplit(':').next().unwrap_or("latest");
    let mut entry = described("application/vnd.oci.image.manifest.v1+json", &manifest_desc);
    entry["annotations"] = json!({
        "io.containerd.image.name": reference,
        "org.opencontainers.image.ref.name": tag,
    });
    let index = json!({"schemaVersion": 2, "manifests": [entry]});
    fs::write(layout.join("index.json"), serde_json::to_vec(&index)?).context("index.json")?;
    fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .context("oci-layout")?;
    let partial = out.with_extension("tar.partial");
    tar(&layout, &partial, &["oci-layout", "index.json", "blobs"])?;
    fs::rename(&partial, out).with_context(|| format!("writing {}", out.display()))?;
    let _ = fs::remove_dir_all(&work);
    Ok(())
}

/// A tarball of `entries` of `dir`, the same bytes on every run (sorted, owned by root, dated
/// 1970).
fn tar(dir: &Path, out: &Path, entries: &[&str]) -> anyhow::Result<()> {
    exec(
        Command::new("tar")
            .args([
                "--sort=name",
                "--mtime=@0",
                "--owner=0",
                "--group=0",
                "--numeric-owner",
            ])
            .arg("-C")
            .arg(dir)
            .arg("-cf")
            .arg(out)
            .args(entries),
    )
}

/// Writes `bytes` as a blob; its digest and size.
fn blob(blobs: &Path, bytes: &[u8]) -> anyhow::Result<Value> {
    let path = blobs.join("new");
    fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    let sum = output(Command::new("sha256sum").arg(&path)).context("sha256sum")?;
    let Some(hex) = sum.split_whitespace().next().filter(|h| h.len() == 64) else {
        bail!("sha256sum printed {sum:?}");
    };
    fs::rename(&path, blobs.join(hex)).context("naming a blob by its digest")?;
    Ok(json!({"digest": format!("sha256:{hex}"), "size": bytes.len()}))
}

fn described(media_type: &str, desc: &Value) -> Value {
    json!({"mediaType": media_type, "digest": desc["digest"], "size": desc["size"]})
}

fn tempdir(near: &Path) -> anyhow::Result<PathBuf> {
    let parent = near.parent().context("an image path has a folder")?;
    let work = parent.join(format!(".build-{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    Ok(work)
}
