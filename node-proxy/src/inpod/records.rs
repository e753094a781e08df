//! Enrollment records on disk, so a restarted proxy re-adopts every enrolled pod without the
//! CNI running again.
//!
//! One JSON file per pod, `<dir>/<uid>.json`, written to a temporary name and renamed, so a
//! crash never leaves a half-written record. A record that cannot be read is reported and
//! skipped; it never stops the other pods from being restored.

use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use marrow_mesh::objects::PodUid;
use marrow_wire::enrollment::{Attachment, PodIdentity};
use serde::{Deserialize, Serialize};

/// What the proxy remembers of an enrolled pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodRecord {
    /// The pod.
    pub pod: PodIdentity,
    /// The CNI attachment that enrolled it.
    pub attachment: Attachment,
    /// Where its netns is bind-mounted (`CNI_NETNS`).
    pub netns_path: String,
    /// The netns cookie at enrollment: a path re-used by another netns is detected by it.
    pub netns_cookie: u64,
    /// Its addresses.
    pub ips: Vec<IpAddr>,
}

impl PodRecord {
    /// The pod's uid (the wire carries it as text).
    pub fn uid(&self) -> PodUid {
        PodUid::new(self.pod.uid.as_str())
    }
}

/// Errors of the record store.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Reading, writing or removing a record file failed.
    #[error("record {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// A record file is not a valid record.
    #[error("record {path} is malformed: {source}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: serde_json::Error,
    },
}

/// The directory of records.
#[derive(Clone, Debug)]
pub struct RecordStore {
    dir: PathBuf,
}

impl RecordStore {
    /// Opens (creating) the record directory.
    pub fn open(dir: PathBuf) -> Result<Self, RecordError> {
        fs::create_dir_all(&dir).map_err(|source| RecordError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(Self { dir })
    }

    /// Writes `record` atomically. The uid was validated to be a safe file name.
    pub fn save(&self, record: &PodRecord) -> Result<(), RecordError> {
        let path = self.path_of(&record.uid());
        let tmp = self.dir.join(format!(".{}.tmp", record.pod.uid));
        let io_err = |source| RecordError::Io {
            path: path.clone(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(record).map_err(|source| RecordError::Malformed {
            path: path.clone(),
            source,
        })?;
        fs::write(&tmp, bytes).map_err(io_err)?;
        fs::rename(&tmp, &path).map_err(io_err)
    }

    /// Removes the record of `uid`; a missing record is fine.
    pub fn remove(&self, uid: &PodUid) -> Result<(), RecordError> {
        let path = self.path_of(uid);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(RecordError::Io { path, source: e })
            }
            _ => Ok(()),
        }
    }

    /// Every record, each read independently: a bad file yields an error for that file only.
    pub fn load_all(&self) -> Vec<Result<PodRecord, RecordError>> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(source) => {
                return vec![Err(RecordError::Io {
                    path: self.dir.clone(),
                    source,
                })];
            }
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            out.push(read_record(&path));
        }
        out
    }

    /// The file a bad record came from, so it can be moved aside.
    pub fn quarantine(&self, path: &Path) {
        let aside = path.with_extension("json.bad");
        if let Err(error) = fs::rename(path, &aside) {
            tracing::warn!(path = %path.display(), %error, "cannot move a bad record aside");
        }
    }

    fn path_of(&self, uid: &PodUid) -> PathBuf {
        self.dir.join(format!("{uid}.json"))
    }
}

fn read_record(path: &Path) -> Result<PodRecord, RecordError> {
    let bytes = fs::read(path).map_err(|source| RecordError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| RecordError::Malformed {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(uid: &str) -> PodRecord {
        PodRecord {
            pod: PodIdentity {
                uid: uid.into(),
                namespace: "ns".into(),
                name: "p".into(),
                service_account: Some("sa".into()),
            },
            attachment: Attachment {
                container_id: "c".into(),
                ifname: "eth0".into(),
            },
            netns_path: "/var/run/netns/p".into(),
            netns_cookie: 42,
            ips: vec!["10.0.0.2".parse().unwrap()],
        }
    }

    #[test]
    fn records_round_trip_and_remove() {
        let dir = tempfile::tempdir().unwrap();
        let store = RecordStore::open(dir.path().join("pods")).unwrap();
        store.save(&record("a")).unwrap();
        store.save(&record("b")).unwrap();
        let mut all: Vec<_> = store.load_all().into_iter().map(Result::unwrap).collect();
        all.sort_by(|x, y| x.pod.uid.cmp(&y.pod.uid));
        assert_eq!(all, vec![record("a"), record("b")]);
        store.remove(&PodUid::new("a")).unwrap();
        store.remove(&PodUid::new("a")).unwrap();
        assert_eq!(store.load_all().len(), 1);
    }

    #[test]
    fn a_malformed_record_is_reported_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = RecordStore::open(dir.path().to_path_buf()).unwrap();
        store.save(&record("good")).unwrap();
        fs::write(dir.path().join("bad.json"), b"{\"pod\":").unwrap();
        let results = store.load_all();
        assert_eq!(results.len(), 2);
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
        let err = results.into_iter().find_map(Result::err).unwrap();
        assert!(err.to_string().contains("bad.json"), "{err}");
    }
}
