//! The agent's record of the attachments it made on this node, so that GC and a restarted agent
//! know what is theirs.
//!
//! One small JSON file per attachment under the state directory (`/run/sidelane/attachments` by
//! default: a tmpfs, so a reboot, which takes every pod namespace with it, starts clean). A
//! record is written before any interface or program is set up and removed only after DEL or GC
//! cleaned up, so a crash in between leaves a record that the next GC or the restarted agent
//! acts on. Files are written under a temporary name and renamed: a reader never sees half a
//! record. A file that cannot be read is reported and left alone, never deleted.

use std::{
    fs,
    io::{self, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Where records live unless the agent is told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/run/sidelane/attachments";

/// What kind of attachment a record describes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttachmentKind {
    /// An OVN-backed veth pair; the host end's name.
    Ovn {
        /// The host end (`<cid>_<if>_h`).
        host_ifname: String,
    },
    /// Another plugin's interface inside the pod, to which the agent attached QoS.
    Ipam,
}

/// One attachment the agent made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentRecord {
    /// The runtime's container (sandbox) ID.
    pub container_id: String,
    /// The interface inside the pod (`net1`).
    pub ifname: String,
    /// The pod's network namespace path as the runtime gave it.
    pub netns: PathBuf,
    /// The pod's namespace.
    pub pod_namespace: String,
    /// The pod's name.
    pub pod_name: String,
    /// The provider (`ovn` when the request named none).
    pub provider: String,
    /// OVN-backed or IPAM-only.
    pub kind: AttachmentKind,
    /// The security groups it joined (a restarted agent's fast path learns them again here).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_groups: Vec<String>,
}

impl AttachmentRecord {
    /// `namespace/name` of the pod.
    pub fn pod_key(&self) -> String {
        format!("{}/{}", self.pod_namespace, self.pod_name)
    }
}

/// A record could not be stored, read or removed.
#[derive(Debug, Error)]
pub enum RecordError {
    /// A container ID or interface name cannot name a record file.
    #[error("{field} {value:?} cannot name an attachment record: {reason}")]
    BadKey {
        /// `container_id` or `ifname`.
        field: &'static str,
        /// The value.
        value: String,
        /// Why.
        reason: &'static str,
    },
    /// A file operation failed.
    #[error("{op} attachment record {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Every record in the directory, and the files that could not be read.
#[derive(Debug, Default)]
pub struct Listing {
    /// The records.
    pub records: Vec<AttachmentRecord>,
    /// Files that are not records we can read, with the reason; left in place.
    pub unreadable: Vec<(PathBuf, String)>,
}

/// The record directory.
#[derive(Clone, Debug)]
pub struct Records {
    dir: PathBuf,
}

const SUFFIX: &str = ".json";

impl Records {
    /// Opens (creating, mode 0700) the directory `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Records, RecordError> {
        let dir = dir.into();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| RecordError::Io {
                op: "creating the directory of",
                path: dir.clone(),
                source,
            })?;
        Ok(Records { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<container_id>+<ifname>.json`; container IDs may not hold `+`, so the name is unique.
    fn path(&self, container_id: &str, ifname: &str) -> Result<PathBuf, RecordError> {
        let ok_cid = !container_id.is_empty()
            && container_id.len() <= 128
            && !container_id.starts_with('.')
            && container_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !ok_cid {
            return Err(RecordError::BadKey {
                field: "container_id",
                value: container_id.to_owned(),
                reason: "must be 1 to 128 of [A-Za-z0-9._-], not starting with '.'",
            });
        }
        if ifname.is_empty() || ifname.len() > 15 || ifname.contains(['/', '\0']) {
            return Err(RecordError::BadKey {
                field: "ifname",
                value: ifname.to_owned(),
                reason: "must be 1 to 15 bytes without '/'",
            });
        }
        Ok(self.dir.join(format!("{container_id}+{ifname}{SUFFIX}")))
    }

    /// Stores `record`, replacing any record of the same attachment.
    pub fn put(&self, record: &AttachmentRecord) -> Result<(), RecordError> {
        let path = self.path(&record.container_id, &record.ifname)?;
        let tmp = path.with_extension("json.tmp");
        let io_err = |op, path: &Path| {
            let path = path.to_owned();
            move |source| RecordError::Io { op, path, source }
        };
        let body = serde_json::to_vec_pretty(record).map_err(|e| RecordError::Io {
            op: "encoding",
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err("creating", &tmp))?;
        file.write_all(&body).map_err(io_err("writing", &tmp))?;
        drop(file);
        fs::rename(&tmp, &path).map_err(io_err("renaming into place", &path))
    }

    /// The record of `container_id`/`ifname`, if there is one.
    pub fn get(
        &self,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<AttachmentRecord>, RecordError> {
        let path = self.path(container_id, ifname)?;
        match fs::read(&path) {
            Ok(body) => serde_json::from_slice(&body)
                .map(Some)
                .map_err(|e| RecordError::Io {
                    op: "decoding",
                    path,
                    source: io::Error::other(e),
                }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(RecordError::Io {
                op: "reading",
                path,
                source,
            }),
        }
    }

    /// Removes the record of `container_id`/`ifname`; `false` if there was none.
    pub fn remove(&self, container_id: &str, ifname: &str) -> Result<bool, RecordError> {
        let path = self.path(container_id, ifname)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(RecordError::Io {
                op: "removing",
                path,
                source,
            }),
        }
    }

    /// Every record, sorted by container ID and interface. Leftover temporary files (a crash
    /// while writing) are removed: their record was never in place.
    pub fn list(&self) -> Result<Listing, RecordError> {
        let mut listing = Listing::default();
        let entries = fs::read_dir(&self.dir).map_err(|source| RecordError::Io {
            op: "listing",
            path: self.dir.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| RecordError::Io {
                op: "listing",
                path: self.dir.clone(),
                source,
            })?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".json.tmp") {
                let _ = fs::remove_file(&path);
                continue;
            }
            if !name.ends_with(SUFFIX) {
                listing
                    .unreadable
                    .push((path, "not a record file (no .json suffix)".to_owned()));
                continue;
            }
            match fs::read(&path).map_err(|e| e.to_string()).and_then(|b| {
                serde_json::from_slice::<AttachmentRecord>(&b).map_err(|e| e.to_string())
            }) {
                Ok(record) => listing.records.push(record),
                Err(reason) => listing.unreadable.push((path, reason)),
            }
        }
        listing
            .records
            .sort_by(|a, b| (&a.container_id, &a.ifname).cmp(&(&b.container_id, &b.ifname)));
        Ok(listing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(cid: &str, ifname: &str) -> AttachmentRecord {
        AttachmentRecord {
            container_id: cid.to_owned(),
            ifname: ifname.to_owned(),
            netns: PathBuf::from("/var/run/netns/cni-1"),
            pod_namespace: "default".to_owned(),
            pod_name: "samplepod".to_owned(),
            provider: "attachnet.default.ovn".to_owned(),
            kind: AttachmentKind::Ovn {
                host_ifname: "5e7b41aa_net1_h".to_owned(),
            },
            security_groups: vec!["web".to_owned()],
        }
    }

    #[test]
    fn records_round_trip_and_are_listed_in_order() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let records = Records::open(dir.path().join("a")).expect("opens");
        let net2 = record("5e7b41aa", "net2");
        let net1 = AttachmentRecord {
            kind: AttachmentKind::Ipam,
            ..record("5e7b41aa", "net1")
        };
        records.put(&net2).expect("stored");
        records.put(&net1).expect("stored");
        assert_eq!(
            records.get("5e7b41aa", "net2").expect("read"),
            Some(net2.clone())
        );
        let listing = records.list().expect("listed");
        assert_eq!(listing.records, vec![net1, net2]);
        assert!(listing.unreadable.is_empty());
        assert!(records.remove("5e7b41aa", "net2").expect("removed"));
        assert!(!records.remove("5e7b41aa", "net2").expect("already gone"));
        assert_eq!(records.get("5e7b41aa", "net2").expect("read"), None);
    }

    #[test]
    fn a_file_that_is_not_a_record_is_reported_and_kept() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let records = Records::open(dir.path()).expect("opens");
        let junk = dir.path().join("x+net1.json");
        fs::write(&junk, b"{not json").expect("written");
        fs::write(dir.path().join("y+net1.json.tmp"), b"{").expect("written");
        let listing = records.list().expect("listed");
        assert!(listing.records.is_empty());
        assert_eq!(listing.unreadable.len(), 1);
        assert_eq!(listing.unreadable[0].0, junk);
        assert!(junk.exists(), "an unreadable record is never deleted");
        assert!(!dir.path().join("y+net1.json.tmp").exists());
    }

    #[test]
    fn keys_that_could_escape_the_directory_are_refused_by_name() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let records = Records::open(dir.path()).expect("opens");
        for cid in ["../etc", "a/b", "", ".hidden", "a+b"] {
            let err = records.put(&record(cid, "net1")).expect_err("refused");
            assert!(err.to_string().contains("container_id"), "{err}");
        }
        let err = records.get("abc", "a/b").expect_err("refused");
        assert!(err.to_string().contains("ifname \"a/b\""), "{err}");
    }
}
