//! The replicated provisioning store: a `BTreeMap<String, String>` state machine with snapshots.
//!
//! `apply()` only updates memory. Durability comes from the log (entries up to the persisted
//! `committed` are re-applied by openraft on restart) plus the snapshot, which is written to
//! `raft-snapshot` in the Raft directory (atomically) whenever one is built or installed, and
//! loaded back on open.

use std::collections::BTreeMap;
use std::io::{self, Cursor};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::disk;
use super::types::{
    Entry, LogId, Request, Response, Snapshot, SnapshotMeta, StorageError, StoredMembership,
    TypeConfig,
};

const SNAPSHOT_FILE: &str = "raft-snapshot";

/// The applied state.
#[derive(Clone, Debug, Default)]
pub struct StateMachineData {
    pub last_applied: Option<LogId>,
    pub last_membership: StoredMembership,
    pub kv: BTreeMap<String, String>,
}

impl StateMachineData {
    fn apply_request(&mut self, req: Request) -> Response {
        match req {
            Request::Set { key, value } => Response {
                previous: self.kv.insert(key, value),
            },
            Request::Delete { key } => Response {
                previous: self.kv.remove(&key),
            },
        }
    }
}

/// Read-only handle on the applied provisioning state (local, possibly stale on a follower).
#[derive(Clone, Debug, Default)]
pub struct StoreReader {
    data: Arc<RwLock<StateMachineData>>,
}

impl StoreReader {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, StateMachineData> {
        self.data.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Value of `key` as applied locally.
    pub async fn get(&self, key: &str) -> Option<String> {
        self.read().kv.get(key).cloned()
    }

    /// Copy of the whole map as applied locally.
    pub fn snapshot_map(&self) -> BTreeMap<String, String> {
        self.read().kv.clone()
    }

    /// Last log id applied to this state machine.
    pub fn last_applied(&self) -> Option<LogId> {
        self.read().last_applied
    }
}

/// A snapshot as kept in memory and on disk.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    /// bincode of the `BTreeMap<String, String>`.
    data: Vec<u8>,
}

/// [`RaftStateMachine`] implementation.
pub struct StateMachineStore {
    data: Arc<RwLock<StateMachineData>>,
    dir: PathBuf,
    current: Arc<Mutex<Option<StoredSnapshot>>>,
}

/// Builds snapshots from a consistent copy of the state machine.
pub struct SnapshotBuilder {
    data: Arc<RwLock<StateMachineData>>,
    dir: PathBuf,
    current: Arc<Mutex<Option<StoredSnapshot>>>,
}

fn sm_err(verb: ErrorVerb, e: io::Error) -> StorageError {
    StorageError::from_io_error(ErrorSubject::StateMachine, verb, e)
}

fn snap_err(meta: Option<&SnapshotMeta>, verb: ErrorVerb, e: io::Error) -> StorageError {
    StorageError::from_io_error(ErrorSubject::Snapshot(meta.map(|m| m.signature())), verb, e)
}

fn to_snapshot(s: &StoredSnapshot) -> Snapshot {
    Snapshot {
        meta: s.meta.clone(),
        snapshot: Box::new(Cursor::new(s.data.clone())),
    }
}

async fn persist_snapshot(dir: &Path, snap: &StoredSnapshot) -> io::Result<()> {
    let bytes = disk::encode(snap)?;
    let dir = dir.to_path_buf();
    disk::blocking(move || disk::write_atomic(&dir, SNAPSHOT_FILE, &bytes)).await
}

impl StateMachineStore {
    /// Open the state machine in `dir`, restoring the persisted snapshot if any. Blocking.
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        disk::remove_stale_tmp(dir, SNAPSHOT_FILE)?;
        let mut data = StateMachineData::default();
        let current = match disk::read_atomic(dir, SNAPSHOT_FILE)? {
            None => None,
            Some(bytes) => {
                let snap: StoredSnapshot = disk::decode(&bytes)?;
                data.kv = disk::decode(&snap.data)?;
                data.last_applied = snap.meta.last_log_id;
                data.last_membership = snap.meta.last_membership.clone();
                Some(snap)
            }
        };
        Ok(Self {
            data: Arc::new(RwLock::new(data)),
            dir: dir.to_path_buf(),
            current: Arc::new(Mutex::new(current)),
        })
    }

    /// A reader sharing this state machine's data.
    pub fn reader(&self) -> StoreReader {
        StoreReader {
            data: self.data.clone(),
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, StateMachineData> {
        self.data.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let (last_applied, last_membership, kv_bytes) = {
            let d = self.data.read().unwrap_or_else(PoisonError::into_inner);
            let bytes = disk::encode(&d.kv).map_err(|e| sm_err(ErrorVerb::Read, e))?;
            (d.last_applied, d.last_membership.clone(), bytes)
        };
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let snapshot_id = match &last_applied {
            Some(l) => format!("{}-{}-{nanos}", l.leader_id, l.index),
            None => format!("--{nanos}"),
        };
        let snap = StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: last_applied,
                last_membership,
                snapshot_id,
            },
            data: kv_bytes,
        };
        let out = to_snapshot(&snap);
        // Serialises with `install_snapshot`; never replace a newer snapshot with an older one.
        let mut current = self.current.lock().await;
        if current
            .as_ref()
            .is_some_and(|c| c.meta.last_log_id > snap.meta.last_log_id)
        {
            return Ok(out);
        }
        persist_snapshot(&self.dir, &snap)
            .await
            .map_err(|e| snap_err(Some(&snap.meta), ErrorVerb::Write, e))?;
        *current = Some(snap);
        Ok(out)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let d = self.data.read().unwrap_or_else(PoisonError::into_inner);
        Ok((d.last_applied, d.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut d = self.write();
        let mut out = Vec::new();
        for entry in entries {
            d.last_applied = Some(entry.log_id);
            let resp = match entry.payload {
                EntryPayload::Blank => Response::default(),
                EntryPayload::Normal(req) => d.apply_request(req),
                EntryPayload::Membership(m) => {
                    d.last_membership = StoredMembership::new(Some(entry.log_id), m);
                    Response::default()
                }
            };
            out.push(resp);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            data: self.data.clone(),
            dir: self.dir.clone(),
            current: self.current.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let kv: BTreeMap<String, String> =
            disk::decode(&data).map_err(|e| snap_err(Some(meta), ErrorVerb::Read, e))?;
        let snap = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        let mut current = self.current.lock().await;
        persist_snapshot(&self.dir, &snap)
            .await
            .map_err(|e| snap_err(Some(meta), ErrorVerb::Write, e))?;
        {
            let mut d = self.write();
            d.kv = kv;
            d.last_applied = meta.last_log_id;
            d.last_membership = meta.last_membership.clone();
        }
        *current = Some(snap);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        Ok(self.current.lock().await.as_ref().map(to_snapshot))
    }
}
