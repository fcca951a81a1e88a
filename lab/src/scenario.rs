//! The scenarios as data (`lab/scenarios.yaml`): which seed files, which objects of the lab's
//! own, and what each must show.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::check::CheckKind;

/// One scenario.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// The heading of its part of the report.
    pub name: String,
    /// Files of `deploy/examples`, applied verbatim.
    pub seeds: Vec<String>,
    /// A file of `lab/scenarios` with the lab's own objects, applied after the seeds.
    #[serde(default)]
    pub extra: Option<String>,
    /// The kinds of check that must run and hold.
    pub shows: Vec<CheckKind>,
    /// The allowed/denied matrix its isolation must show.
    #[serde(default)]
    pub matrix: Vec<crate::probe::isolation::Expect>,
    /// What the outside world must see of its NAT gateway.
    #[serde(default)]
    pub outside: Option<crate::probe::outside::Outside>,
}

/// What went wrong reading the scenarios.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {path}")]
    Parse {
        path: PathBuf,
        source: Box<serde_saphyr::Error>,
    },
}

/// The lab's folder in the source tree (its scenarios).
fn lab_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `deploy/examples/<file>`.
pub fn seed_path(file: &str) -> PathBuf {
    lab_dir().join("../deploy/examples").join(file)
}

/// `lab/scenarios/<file>`.
pub fn extra_path(file: &str) -> PathBuf {
    lab_dir().join("scenarios").join(file)
}

/// The YAML documents of a file, as JSON.
pub fn documents(path: &Path) -> Result<Vec<Value>, ScenarioError> {
    let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
        path: path.to_owned(),
        source,
    })?;
    serde_saphyr::from_multiple::<Value>(&text).map_err(|source| ScenarioError::Parse {
        path: path.to_owned(),
        source: Box::new(source),
    })
}

/// The scenarios, in the order they run.
pub fn load() -> Result<Vec<Scenario>, ScenarioError> {
    let path = lab_dir().join("scenarios.yaml");
    let text = std::fs::read_to_string(&path).map_err(|source| ScenarioError::Read {
        path: path.clone(),
        source,
    })?;
    serde_saphyr::from_str(&text).map_err(|source| ScenarioError::Parse {
        path,
        source: Box::new(source),
    })
}

impl Scenario {
    /// The files applied, seeds first.
    pub fn files(&self) -> Vec<PathBuf> {
        self.seeds
            .iter()
            .map(|f| seed_path(f))
            .chain(self.extra.iter().map(|f| extra_path(f)))
            .collect()
    }

    /// Every object the scenario applies.
    pub fn objects(&self) -> Result<Vec<Value>, ScenarioError> {
        let mut docs = Vec::new();
        for path in self.files() {
            docs.extend(documents(&path)?);
        }
        Ok(docs)
    }
}

pub use sidelane_tests::cluster::pods_made_by;

/// The annotations the user wrote for pod `pod`: its own Pod document, or the template of the
/// Deployment or StatefulSet that made it (`<name>-...`).
pub fn requested_annotations(docs: &[Value], pod: &str) -> serde_json::Map<String, Value> {
    let named = |doc: &&Value| {
        doc["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let own = docs
        .iter()
        .find(|d| d["kind"] == "Pod" && named(d) == pod)
        .map(|d| &d["metadata"]["annotations"]);
    let made_by = || {
        docs.iter()
            .filter(|d| matches!(d["kind"].as_str(), Some("Deployment" | "StatefulSet")))
            .filter(|d| pod.starts_with(&format!("{}-", named(d))))
            .max_by_key(|d| named(d).len())
            .map(|d| &d["spec"]["template"]["metadata"]["annotations"])
    };
    own.or_else(made_by)
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn every_scenario_names_files_that_exist_and_parse() {
        let scenarios = load().expect("lab/scenarios.yaml reads");
        assert_eq!(scenarios.len(), 8);
        for scenario in &scenarios {
            let objects = scenario.objects().expect("the scenario's files parse");
            assert!(pods_made_by(&objects) > 0, "{} makes no pod", scenario.name);
            assert!(
                !scenario.shows.is_empty(),
                "{} shows nothing",
                scenario.name
            );
        }
    }

    #[test]
    fn a_pods_requested_annotations_come_from_its_own_document_before_a_workloads() {
        let docs = vec![
            json!({"kind": "Pod", "metadata": {"name": "web",
                "annotations": {"a": "pod"}}}),
            json!({"kind": "Deployment", "metadata": {"name": "web"},
                "spec": {"template": {"metadata": {"annotations": {"a": "deployment"}}}}}),
            json!({"kind": "Deployment", "metadata": {"name": "web-canary"},
                "spec": {"template": {"metadata": {"annotations": {"a": "canary"}}}}}),
        ];
        let a = |pod: &str| requested_annotations(&docs, pod).get("a").cloned();
        assert_eq!(a("web"), Some(json!("pod")));
        assert_eq!(a("web-7bb64ff4f4-bvfg5"), Some(json!("deployment")));
        assert_eq!(a("web-canary-7bb64ff4f4-x"), Some(json!("canary")));
        assert_eq!(a("other"), None);
    }
}
