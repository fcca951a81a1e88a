//! Sidelane's Helm chart as the real `helm` renders it, and the parts of it a control plane
//! needs before Sidelane runs: the CRDs, the ServiceAccounts and the RBAC the chart grants.
//! Nothing here restates a rule of the chart: the identities tests run under get exactly what
//! `helm install` would give them.

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::Context as _;
use serde_json::Value;

use crate::{process, tools};

/// The kinds a control plane takes from the chart: the schema and the identities.
pub const RBAC_AND_CRD_KINDS: &[&str] = &[
    "CustomResourceDefinition",
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
];

/// The chart's folder in the workspace.
pub fn chart_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/helm/sidelane")
}

/// `helm template sidelane <chart> --namespace <namespace> --include-crds --set <values>`, as
/// YAML text.
pub fn template(namespace: &str, values: &[&str]) -> anyhow::Result<String> {
    let mut cmd = Command::new(tools::binary("helm")?);
    cmd.args(["template", "sidelane"]).arg(chart_dir()).args([
        "--namespace",
        namespace,
        "--include-crds",
    ]);
    for value in values {
        cmd.args(["--set", value]);
    }
    process::run(&mut cmd, None, Duration::from_mins(1))?.checked()
}

/// The documents of a multi-document YAML text, as JSON (empty documents dropped).
pub fn documents(yaml: &str) -> anyhow::Result<Vec<Value>> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(yaml).context("parsing multi-document YAML")?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// The chart's documents of `kinds`, rendered for `namespace`.
pub fn rendered(namespace: &str, kinds: &[&str]) -> anyhow::Result<Vec<Value>> {
    Ok(documents(&template(namespace, &[])?)?
        .into_iter()
        .filter(|d| d["kind"].as_str().is_some_and(|k| kinds.contains(&k)))
        .collect())
}

/// The documents of `kinds` in the YAML file at `path` (a component's own deployment, whose
/// ServiceAccount and RBAC the harness installs as they are).
pub fn documents_of_kinds(path: &std::path::Path, kinds: &[&str]) -> anyhow::Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(documents(&text)?
        .into_iter()
        .filter(|d| d["kind"].as_str().is_some_and(|k| kinds.contains(&k)))
        .collect())
}

/// The kinds of a component's identity: its ServiceAccount and RBAC.
pub const IDENTITY_KINDS: &[&str] = &["ServiceAccount", "ClusterRole", "ClusterRoleBinding"];

/// The NetworkAttachmentDefinition CRD, from the pinned Multus module (its deployment's first
/// document), so the harness serves NADs exactly as a Multus installation does.
pub fn network_attachment_definition_crd() -> anyhow::Result<Value> {
    let path = tools::shared("multus", "multus-daemonset.yml")?;
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    documents(&text)?
        .into_iter()
        .find(|d| {
            d["kind"] == "CustomResourceDefinition"
                && d["metadata"]["name"] == "network-attachment-definitions.k8s.cni.cncf.io"
        })
        .with_context(|| format!("{} has no NetworkAttachmentDefinition CRD", path.display()))
}

/// The whereabouts CRDs (IPPool, OverlappingRangeIPReservation) from the pinned module.
pub fn whereabouts_crds() -> anyhow::Result<Vec<Value>> {
    let mut crds = Vec::new();
    for file in [
        "whereabouts.cni.cncf.io_ippools.yaml",
        "whereabouts.cni.cncf.io_overlappingrangeipreservations.yaml",
    ] {
        let path = tools::shared("whereabouts", file)?;
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        crds.extend(documents(&text)?);
    }
    Ok(crds)
}
