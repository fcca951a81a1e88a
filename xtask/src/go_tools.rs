//! The Go components the lab, the tests and the benchmarks run (a real Kubernetes control
//! plane and a kubelet, containerd, etcd, Multus, whereabouts, Helm), built from the build
//! modules in `xtask/go/`.
//!
//! Each build module pins one component by its `go.mod` and `go.sum` (see `xtask/go/README.md`).
//! Binaries go to `<cache>/tools/<component>-<version>/bin/`, so a version change builds anew
//! and the second run of setup builds nothing; `<cache>/bin/` holds one symlink per binary to
//! the pinned version, which is where the harness looks (`SIDELANE_TOOLS_BIN` overrides it).
//! `<cache>` is `$XDG_CACHE_HOME/sidelane` or `~/.cache/sidelane`; Go's own module and build
//! caches stay where Go keeps them.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::cmd::{exec, root};

/// One build module: its folder under `xtask/go/`, the module it pins, and what it builds.
struct Component {
    dir: &'static str,
    module: &'static str,
    /// (package, binary name)
    binaries: &'static [(&'static str, &'static str)],
    /// The `-X` flags that stamp versions into the binaries, given the pinned version.
    stamps: fn(&str) -> String,
    /// Files of the pinned module the harness needs beside the binaries (CRDs), copied into
    /// `share/`.
    share: &'static [&'static str],
}

const COMPONENTS: &[Component] = &[
    Component {
        dir: "kubernetes",
        module: "k8s.io/kubernetes",
        binaries: &[
            ("k8s.io/kubernetes/cmd/kube-apiserver", "kube-apiserver"),
            (
                "k8s.io/kubernetes/cmd/kube-controller-manager",
                "kube-controller-manager",
            ),
            ("k8s.io/kubernetes/cmd/kube-scheduler", "kube-scheduler"),
            ("k8s.io/kubernetes/cmd/kubectl", "kubectl"),
            // The lab's real node (issue 16).
            ("k8s.io/kubernetes/cmd/kubelet", "kubelet"),
        ],
        stamps: kubernetes_stamps,
        share: &[],
    },
    Component {
        dir: "containerd",
        module: "github.com/containerd/containerd/v2",
        binaries: &[
            (
                "github.com/containerd/containerd/v2/cmd/containerd",
                "containerd",
            ),
            (
                "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2",
                "containerd-shim-runc-v2",
            ),
            ("github.com/containerd/containerd/v2/cmd/ctr", "ctr"),
        ],
        stamps: containerd_stamps,
        share: &[],
    },
    Component {
        dir: "etcd",
        module: "go.etcd.io/etcd/server/v3",
        binaries: &[("go.etcd.io/etcd/server/v3", "etcd")],
        stamps: no_stamps,
        share: &[],
    },
    Component {
        dir: "helm",
        module: "helm.sh/helm/v3",
        binaries: &[("helm.sh/helm/v3/cmd/helm", "helm")],
        stamps: helm_stamps,
        share: &[],
    },
    Component {
        dir: "multus",
        module: "gopkg.in/k8snetworkplumbingwg/multus-cni.v4",
        binaries: &[(
            "gopkg.in/k8snetworkplumbingwg/multus-cni.v4/cmd/multus",
            "multus",
        )],
        stamps: no_stamps,
        // The NetworkAttachmentDefinition CRD is the first document.
        share: &["deployments/multus-daemonset.yml"],
    },
    Component {
        dir: "whereabouts",
        module: "github.com/k8snetworkplumbingwg/whereabouts",
        binaries: &[(
            "github.com/k8snetworkplumbingwg/whereabouts/cmd",
            "whereabouts",
        )],
        stamps: no_stamps,
        share: &[
            "doc/crds/whereabouts.cni.cncf.io_ippools.yaml",
            "doc/crds/whereabouts.cni.cncf.io_overlappingrangeipreservations.yaml",
            // Its ServiceAccount and ClusterRole, as its DaemonSet installs them.
            "doc/crds/daemonset-install.yaml",
        ],
    },
];

/// `kubectl version` and `/version` say the release (Helm and clients read it).
fn kubernetes_stamps(version: &str) -> String {
    let minor = version.split('.').nth(1).unwrap_or_default();
    format!(
        "-X k8s.io/component-base/version.gitVersion={version} \
         -X k8s.io/component-base/version.gitMajor=1 \
         -X k8s.io/component-base/version.gitMinor={minor} \
         -X k8s.io/component-base/version.gitTreeState=clean"
    )
}

/// Helm's Makefile stamps its version and the Kubernetes release `helm template` and `helm
/// lint` assume (without it: 1.20, and the chart's `kubeVersion: >=1.26` refuses to render).
/// The release is the minor of Helm's own client-go (v0.37 for Helm 3.22), which is also the
/// release `kubernetes/` pins.
fn helm_stamps(version: &str) -> String {
    let mut flags = format!("-X helm.sh/helm/v3/internal/version.version={version}");
    for package in ["pkg/lint/rules", "pkg/chartutil"] {
        let _ = write!(
            flags,
            " -X helm.sh/helm/v3/{package}.k8sVersionMajor=1 \
             -X helm.sh/helm/v3/{package}.k8sVersionMinor=37"
        );
    }
    flags
}

/// `containerd --version` and the CRI's version answer say the release.
fn containerd_stamps(version: &str) -> String {
    format!("-X github.com/containerd/containerd/v2/version.Version={version}")
}

fn no_stamps(_: &str) -> String {
    String::new()
}

/// Sidelane's cache folder.
pub fn cache_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("sidelane"));
    }
    let home = std::env::var_os("HOME").context("neither XDG_CACHE_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cache/sidelane"))
}

/// The version `go.mod` in `dir` requires of `module`.
fn pinned_version(dir: &Path, module: &str) -> anyhow::Result<String> {
    let path = dir.join("go.mod");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .map(|line| line.trim().trim_start_matches("require").trim())
        .find_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some(module))
                .then(|| words.next())
                .flatten()
                .map(str::to_owned)
        })
        .with_context(|| format!("{} requires no version of {module}", path.display()))
}

/// Builds every component whose pinned binaries are missing and points `bin/` at them, and
/// `share/<component>/` at the files it shares.
pub fn install(changed: &mut Vec<String>) -> anyhow::Result<()> {
    let cache = cache_dir()?;
    let links = cache.join("bin");
    fs::create_dir_all(&links).with_context(|| format!("creating {}", links.display()))?;
    for component in COMPONENTS {
        let module_dir = root().join("xtask/go").join(component.dir);
        let version = pinned_version(&module_dir, component.module)?;
        let out = cache
            .join("tools")
            .join(format!("{}-{version}", component.dir))
            .join("bin");
        let missing: Vec<_> = component
            .binaries
            .iter()
            .filter(|(_, name)| !out.join(name).is_file())
            .collect();
        if !missing.is_empty() {
            build(component, &module_dir, &version, &out)?;
            changed.push(format!("{} {version}", component.dir));
        }
        for (_, name) in component.binaries {
            link(&out.join(name), &links.join(name))?;
        }
        if !component.share.is_empty() {
            let share = out.with_file_name("share");
            if component
                .share
                .iter()
                .any(|f| !share.join(file_name(f)).is_file())
            {
                copy_shared(component, &module_dir, &version, &share)?;
            }
            let shared = cache.join("share");
            fs::create_dir_all(&shared)
                .with_context(|| format!("creating {}", shared.display()))?;
            link(&share, &shared.join(component.dir))?;
        }
    }
    Ok(())
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Copies the component's shared files out of the pinned module's source in Go's module cache.
fn copy_shared(
    component: &Component,
    module_dir: &Path,
    version: &str,
    share: &Path,
) -> anyhow::Result<()> {
    let listed = Command::new("go")
        .args(["mod", "download", "-json", component.module])
        .current_dir(module_dir)
        .output()
        .with_context(|| format!("running go mod download {}", component.module))?;
    let info: serde_json::Value = serde_json::from_slice(&listed.stdout).with_context(|| {
        format!(
            "go mod download {} answered no JSON: {}",
            component.module,
            String::from_utf8_lossy(&listed.stderr)
        )
    })?;
    let source = info["Dir"].as_str().map(PathBuf::from).with_context(|| {
        format!(
            "go mod download {}@{version} named no folder",
            component.module
        )
    })?;
    fs::create_dir_all(share).with_context(|| format!("creating {}", share.display()))?;
    for file in component.share {
        let from = source.join(file);
        let to = share.join(file_name(file));
        fs::copy(&from, &to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    }
    Ok(())
}

fn build(
    component: &Component,
    module_dir: &Path,
    version: &str,
    out: &Path,
) -> anyhow::Result<()> {
    which_go()?;
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let names: Vec<_> = component.binaries.iter().map(|(_, n)| *n).collect();
    eprintln!(
        "setup: building {} {version} ({}) from xtask/go/{}; the first build on a new machine \
         takes minutes",
        component.dir,
        names.join(", "),
        component.dir
    );
    let ldflags = format!("-s -w {}", (component.stamps)(version));
    let started = Instant::now();
    // Into a scratch folder first, so that an interrupted build never leaves a binary that
    // the next run would take for finished.
    let scratch = out.with_file_name("bin.partial");
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    for (package, name) in component.binaries {
        exec(
            Command::new("go")
                .args(["build", "-mod=readonly", "-trimpath", "-buildvcs=false"])
                .arg(format!("-ldflags={ldflags}"))
                .arg("-o")
                .arg(scratch.join(name))
                .arg(package)
                .current_dir(module_dir)
                .env("CGO_ENABLED", "0"),
        )
        .with_context(|| format!("building {name} of {} {version}", component.dir))?;
    }
    for (_, name) in component.binaries {
        let built = scratch.join(name);
        fs::rename(&built, out.join(name))
            .with_context(|| format!("moving {} to {}", built.display(), out.display()))?;
    }
    let _ = fs::remove_dir_all(&scratch);
    eprintln!(
        "setup: built {} {version} in {:.0} s",
        component.dir,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `dst` becomes a symlink to `src` (replacing what was there).
fn link(src: &Path, dst: &Path) -> anyhow::Result<()> {
    if fs::read_link(dst).is_ok_and(|current| current == src) {
        return Ok(());
    }
    let _ = fs::remove_file(dst);
    std::os::unix::fs::symlink(src, dst)
        .with_context(|| format!("linking {} to {}", dst.display(), src.display()))
}

fn which_go() -> anyhow::Result<()> {
    if Command::new("go")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Ok(());
    }
    bail!(
        "`go` is not on PATH: the Kubernetes components, etcd, Multus, whereabouts and Helm are \
         built from Go modules (Go 1.26 or later; this machine kind has it in /usr/local/go/bin)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_version_is_read_from_a_require_block_or_line() {
        let dir = tempfile_dir();
        fs::write(
            dir.join("go.mod"),
            "module x\n\ngo 1.26\n\nrequire (\n\tgithub.com/a/b v1.0.0 // indirect\n\tk8s.io/kubernetes v1.37.2\n)\n",
        )
        .expect("write go.mod");
        assert_eq!(
            pinned_version(&dir, "k8s.io/kubernetes").expect("found"),
            "v1.37.2"
        );
        fs::write(
            dir.join("go.mod"),
            "module x\nrequire helm.sh/helm/v3 v3.22.0\n",
        )
        .expect("write go.mod");
        assert_eq!(
            pinned_version(&dir, "helm.sh/helm/v3").expect("found"),
            "v3.22.0"
        );
        assert!(pinned_version(&dir, "k8s.io/kubernetes").is_err());
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn every_component_has_a_build_module_pinning_its_module() {
        for component in COMPONENTS {
            let dir = root().join("xtask/go").join(component.dir);
            let version = pinned_version(&dir, component.module)
                .unwrap_or_else(|e| panic!("{}: {e:#}", component.dir));
            assert!(version.starts_with('v'), "{}: {version}", component.dir);
            assert!(
                dir.join("go.sum").is_file(),
                "{} has a go.sum",
                component.dir
            );
        }
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-go-tools-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("create temp dir");
        dir
    }
}
