//! `cargo xtask manifests [--check]` and the manifest validation CI runs.
//!
//! `deploy/manifests/sidelane.yaml` is the Helm chart in `deploy/helm/sidelane` rendered by the
//! real `helm template` (the pinned Helm `cargo xtask setup` builds) with its default values into
//! `kube-system`, for `kubectl apply` without Helm. `helm lint --strict` runs over the chart with
//! the defaults, with each of the seeds' non-primary switches, with OVN switched off and with
//! TLS to OVN switched on, and each of those renders too.
//!
//! Validation (offline, with the PyPI packages `cargo xtask setup` installs): every built-in
//! kind in the rendered manifests, the CRDs and the examples against the Kubernetes schemas of
//! the chart's oldest supported version and the newest the validator knows, strictly (unknown
//! fields are errors); every `kubeovn.io` resource in the examples against the schema of our
//! CRD for its kind; every NetworkAttachmentDefinition against Multus's schema and its config
//! through our own NAD parser; the chart's default values against `values.schema.json`. Each
//! validator is also shown a bad document and must refuse it, so a validator that checks
//! nothing cannot pass.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::setup;

/// Where the rendered manifests install.
const NAMESPACE: &str = "kube-system";

/// The chart's oldest supported Kubernetes (its `kubeVersion`) and the newest the validator has.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.26.0", "1.37.0"];

fn chart_dir(root: &Path) -> PathBuf {
    root.join("deploy/helm/sidelane")
}

fn rendered_path(root: &Path) -> PathBuf {
    root.join("deploy/manifests/sidelane.yaml")
}

/// The value sets the chart is linted and rendered with: the defaults, the two switches of the
/// seeds (Kube-OVN chart v2 and v1), OVN switched off (an OVN the operator runs), and TLS to
/// OVN's databases (Kube-OVN's `networking.ENABLE_SSL`).
const VALUE_SETS: [(&str, &[&str]); 5] = [
    ("the defaults", &[]),
    ("cni.nonPrimaryCNI=true", &["cni.nonPrimaryCNI=true"]),
    (
        "cni_conf.NON_PRIMARY_CNI=true",
        &["cni_conf.NON_PRIMARY_CNI=true"],
    ),
    (
        "OVN switched off",
        &[
            "ovn.deployCentral=false",
            "ovn.deployNode=false",
            "ovn.nbAddr=tcp:192.0.2.10:6641",
        ],
    ),
    (
        "networking.ENABLE_SSL=true",
        &["networking.ENABLE_SSL=true"],
    ),
];

fn helm() -> anyhow::Result<PathBuf> {
    let path = crate::go_tools::cache_dir()?.join("bin/helm");
    if !path.is_file() {
        bail!(
            "{} is missing: `cargo xtask setup` builds Helm from xtask/go/helm",
            path.display()
        );
    }
    Ok(path)
}

/// `helm template` of the chart with `values` (`--set`), into kube-system, without the CRDs
/// (they are in deploy/crds/).
fn template(root: &Path, values: &[&str]) -> anyhow::Result<String> {
    let mut cmd = Command::new(helm()?);
    cmd.args(["template", "sidelane"])
        .arg(chart_dir(root))
        .args(["--namespace", NAMESPACE]);
    for value in values {
        cmd.args(["--set", value]);
    }
    let out = cmd
        .output()
        .with_context(|| format!("running helm template {}", values.join(" ")))?;
    if !out.status.success() {
        bail!(
            "helm template --set {} failed: {}",
            values.join(","),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8(out.stdout).context("helm template printed no UTF-8")
}

/// `helm lint --strict` with each value set, and `helm template` of each.
pub fn lint(root: &Path) -> anyhow::Result<()> {
    for (what, values) in VALUE_SETS {
        let mut cmd = Command::new(helm()?);
        cmd.args(["lint", "--strict"])
            .arg(chart_dir(root))
            .args(["--namespace", NAMESPACE]);
        for value in values {
            cmd.args(["--set", value]);
        }
        let out = cmd.output().context("running helm lint")?;
        if !out.status.success() {
            bail!(
                "helm lint --strict with {what}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let rendered = template(root, values)?;
        if !rendered.contains("kind: DaemonSet") {
            bail!("helm template with {what} renders no agent DaemonSet");
        }
        eprintln!("manifests: helm lint and template with {what}: ok");
    }
    Ok(())
}

fn default_values(root: &Path) -> anyhow::Result<Value> {
    let path = chart_dir(root).join("values.yaml");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_saphyr::from_str::<Value>(&text).with_context(|| format!("parsing {}", path.display()))
}

/// The chart rendered with its default values.
pub fn render(root: &Path) -> anyhow::Result<String> {
    let mut out = String::from(
        "# Generated by `cargo xtask manifests`: deploy/helm/sidelane rendered by `helm template`\n\
         # with its default values into kube-system. Do not edit; change the chart and run the\n\
         # command again. Install: kubectl apply -f deploy/crds/ && kubectl apply -f deploy/manifests/\n",
    );
    out.push_str(&template(root, &[])?);
    Ok(out)
}

/// `cargo xtask manifests [--check]`.
pub fn run(root: &Path, check: bool) -> anyhow::Result<()> {
    let text = render(root)?;
    let path = rendered_path(root);
    if check {
        let committed = fs::read_to_string(&path).unwrap_or_default();
        if committed != text {
            bail!(
                "{} differs from the chart rendered with its default values; run `cargo xtask manifests` and commit",
                path.display()
            );
        }
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("manifests: wrote {}", path.display());
    Ok(())
}

fn yaml_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    Ok(files)
}

fn documents(path: &Path) -> anyhow::Result<Vec<Value>> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(serde_saphyr::from_multiple::<Value>(&text)
        .with_context(|| format!("parsing {}", path.display()))?
        .into_iter()
        .filter(|d| !d.is_null())
        .collect())
}

/// Runs a validator; `Ok(true)` when it accepted, with its output shown on refusal.
fn accepts(cmd: &mut Command) -> anyhow::Result<(bool, String)> {
    let out = cmd
        .output()
        .with_context(|| format!("running {}", cmd.get_program().display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

/// Multus's NetworkAttachmentDefinition schema (its CRD's `openAPIV3Schema`).
fn nad_schema() -> Value {
    json!({
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "k8s.cni.cncf.io/v1"},
            "kind": {"const": "NetworkAttachmentDefinition"},
            "metadata": {"type": "object", "required": ["name"]},
            "spec": {
                "type": "object",
                "properties": {"config": {"type": "string"}}
            }
        }
    })
}

/// Our CRDs' schemas by kind, from the committed CRD files (what a cluster installs).
fn crd_schemas(root: &Path) -> anyhow::Result<BTreeMap<String, Value>> {
    let mut schemas = BTreeMap::new();
    for file in yaml_files(&root.join("deploy/crds"))? {
        for crd in documents(&file)? {
            let kind = crd["spec"]["names"]["kind"]
                .as_str()
                .with_context(|| format!("{}: a CRD without spec.names.kind", file.display()))?
                .to_owned();
            let version = crd["spec"]["versions"]
                .as_array()
                .and_then(|v| v.iter().find(|v| v["storage"] == true))
                .with_context(|| format!("{}: no storage version", file.display()))?;
            let mut schema = version["schema"]["openAPIV3Schema"].clone();
            if !schema.is_object() {
                bail!("{}: no openAPIV3Schema", file.display());
            }
            // The CRD's schema covers spec and status; the API server checks the rest.
            schema["required"] = json!(["apiVersion", "kind", "metadata"]);
            schemas.insert(kind, schema);
        }
    }
    Ok(schemas)
}

/// Every check CI runs on the manifests.
#[expect(
    clippy::too_many_lines,
    reason = "one validation pass, step by step, each naming what it checks"
)]
pub fn validate(root: &Path) -> anyhow::Result<()> {
    let bin = setup::validators_dir()?.join("bin");
    let kv = bin.join("kubernetes-validate");
    let cj = bin.join("check-jsonschema");
    if !kv.exists() || !cj.exists() {
        bail!(
            "the manifest validators are missing from {}; run `cargo xtask setup`",
            bin.display()
        );
    }
    let scratch = root.join("target/manifest-check");
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let schemas = crd_schemas(root)?;

    // Sort every document by who validates it; a kind nobody validates is an error.
    let mut files = vec![rendered_path(root)];
    files.extend(yaml_files(&root.join("deploy/crds"))?);
    files.extend(yaml_files(&root.join("deploy/examples"))?);
    let mut builtin_files = Vec::new();
    let mut custom: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    let mut nads = Vec::new();
    let mut counted = 0usize;
    for file in &files {
        let mut has_builtin = false;
        for (i, doc) in documents(file)?.into_iter().enumerate() {
            counted += 1;
            let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
            let api = doc["apiVersion"].as_str().unwrap_or_default();
            let name = doc["metadata"]["name"].as_str().unwrap_or_default();
            let stem = file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let out = scratch.join(format!("{stem}-{i}-{kind}-{name}.json"));
            if api.starts_with("kubeovn.io/") {
                if !schemas.contains_key(&kind) {
                    bail!(
                        "{}: {kind} {name}: no CRD of ours for this kind",
                        file.display()
                    );
                }
                fs::write(&out, doc.to_string())
                    .with_context(|| format!("writing {}", out.display()))?;
                custom.entry(kind).or_default().push(out);
            } else if api.starts_with("k8s.cni.cncf.io/") {
                let config = doc["spec"]["config"].as_str().unwrap_or_default();
                let ns = doc["metadata"]["namespace"].as_str().unwrap_or("default");
                sidelane_api::nad::parse(ns, name, config).with_context(|| {
                    format!(
                        "{}: NetworkAttachmentDefinition {name}: its config",
                        file.display()
                    )
                })?;
                fs::write(&out, doc.to_string())
                    .with_context(|| format!("writing {}", out.display()))?;
                nads.push(out);
            } else if api.contains('.') && !api.contains(".k8s.io/") && !api.starts_with("apps/") {
                bail!(
                    "{}: {kind} {name} ({api}): no schema to validate it against",
                    file.display()
                );
            } else {
                has_builtin = true;
            }
        }
        if has_builtin {
            builtin_files.push(file.clone());
        }
    }

    // Built-in kinds, strictly, at both ends of the supported range.
    for version in KUBERNETES_VERSIONS {
        let (ok, text) = accepts(
            Command::new(&kv)
                .args(["--strict", "--quiet", "--no-warn", "-k", version])
                .args(&builtin_files),
        )?;
        if !ok {
            bail!("kubernetes-validate (Kubernetes {version}) refused:\n{text}");
        }
        eprintln!(
            "manifests: {} files' built-in kinds valid for Kubernetes {version}",
            builtin_files.len()
        );
    }
    // Our custom resources against our CRDs.
    for (kind, instances) in &custom {
        let schema_path = scratch.join(format!("schema-{kind}.json"));
        fs::write(&schema_path, schemas[kind].to_string())
            .with_context(|| format!("writing {}", schema_path.display()))?;
        let (ok, text) = accepts(
            Command::new(&cj)
                .arg("--schemafile")
                .arg(&schema_path)
                .args(instances),
        )?;
        if !ok {
            bail!("check-jsonschema refused {kind} resources against our CRD:\n{text}");
        }
        eprintln!(
            "manifests: {} {kind} resources valid against our CRD",
            instances.len()
        );
    }
    let nad_schema_path = scratch.join("schema-NetworkAttachmentDefinition.json");
    fs::write(&nad_schema_path, nad_schema().to_string())
        .with_context(|| format!("writing {}", nad_schema_path.display()))?;
    if !nads.is_empty() {
        let (ok, text) = accepts(
            Command::new(&cj)
                .arg("--schemafile")
                .arg(&nad_schema_path)
                .args(&nads),
        )?;
        if !ok {
            bail!("check-jsonschema refused NetworkAttachmentDefinitions:\n{text}");
        }
        eprintln!(
            "manifests: {} NetworkAttachmentDefinitions valid",
            nads.len()
        );
    }
    // The chart's values against its schema.
    let values_json = scratch.join("values.json");
    fs::write(&values_json, default_values(root)?.to_string())
        .with_context(|| format!("writing {}", values_json.display()))?;
    let values_schema = chart_dir(root).join("values.schema.json");
    let (ok, text) = accepts(
        Command::new(&cj)
            .arg("--schemafile")
            .arg(&values_schema)
            .arg(&values_json),
    )?;
    if !ok {
        bail!("the chart's default values do not match values.schema.json:\n{text}");
    }

    // Each validator refuses what it must.
    let bad = |name: &str, doc: &Value| -> anyhow::Result<PathBuf> {
        let p = scratch.join(name);
        fs::write(&p, doc.to_string()).with_context(|| format!("writing {}", p.display()))?;
        Ok(p)
    };
    let bad_pod = scratch.join("bad-pod.yaml");
    fs::write(
        &bad_pod,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: x\nspec:\n  containers:\n  - name: c\n    image: i\n    imagePullPolicy: Sometimes\n    portz: []\n",
    )
    .with_context(|| format!("writing {}", bad_pod.display()))?;
    let mut values = default_values(root)?;
    values["cni"]["nonPrimaryCNI"] = json!(false);
    let refusals = [
        (
            "kubernetes-validate, a Pod with an unknown field",
            Command::new(&kv)
                .args(["--strict", "--quiet", "--no-warn", "-k", KUBERNETES_VERSIONS[1]])
                .arg(&bad_pod)
                .output(),
        ),
        (
            "check-jsonschema, a Subnet whose cidrBlock is a number",
            Command::new(&cj)
                .arg("--schemafile")
                .arg(scratch.join("schema-Subnet.json"))
                .arg(bad(
                    "bad-subnet.json",
                    &json!({"apiVersion": "kubeovn.io/v1", "kind": "Subnet", "metadata": {"name": "x"}, "spec": {"cidrBlock": 5}}),
                )?)
                .output(),
        ),
        (
            "check-jsonschema, values with cni.nonPrimaryCNI false",
            Command::new(&cj)
                .arg("--schemafile")
                .arg(&values_schema)
                .arg(bad("bad-values.json", &values)?)
                .output(),
        ),
    ];
    for (what, result) in refusals {
        let out = result.with_context(|| format!("running {what}"))?;
        if out.status.success() {
            bail!("{what} was accepted: the validator checks nothing");
        }
    }
    if !schemas.contains_key("Subnet") {
        bail!("no Subnet CRD: the refusal check had no schema");
    }
    eprintln!(
        "manifests: {counted} documents checked; the chart's values valid; each validator refuses a bad document"
    );
    Ok(())
}
