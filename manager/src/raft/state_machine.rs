//! The replicated state machine: the provisioning database ([`ProvisionDb`], redb) with
//! snapshots kept as files.
//!
//! `apply()` commits each batch of entries to the database in one durable transaction together
//! with `last_applied` (off the runtime's threads), so a restarted manager resumes from its
//! database and openraft re-applies only what the database had not committed.
//!
//! Snapshots are dumps of one read transaction ([`ProvisionDb::dump`]) in
//! `snapshot-<n>.data`; `snapshot.meta` (replaced atomically) names the current one with its
//! Raft metadata, so a crash between writing a dump and naming it leaves the previous
//! snapshot in force. openraft streams the file to a lagging manager in chunks, which writes
//! them to `snapshot-<n>.recv` and restores its database from it ([`ProvisionDb::restore`]).
//!
//! A data directory written by an earlier version (the map kept in `raft-snapshot`) is
//! migrated into the database on open.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
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
use crate::provision::db::{Pointers, ProvisionDb, Writer};

/// The database file in the Raft directory.
pub const DB_FILE: &str = "provision.redb";
/// Names the current snapshot (atomically replaced).
const META_FILE: &str = "snapshot.meta";
/// The map of earlier versions, migrated on open.
const LEGACY_SNAPSHOT: &str = "raft-snapshot";

/// The current snapshot: its metadata and the file holding it.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct CurrentSnapshot {
    meta: SnapshotMeta,
    /// File name in the Raft directory.
    file: String,
    /// Its size in bytes.
    bytes: u64,
}

/// The snapshot format of earlier versions (a bincode map in one file).
#[derive(Deserialize)]
struct LegacySnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

fn apply_request(w: &mut Writer<'_>, req: Request) -> io::Result<Response> {
    Ok(match req {
        Request::Set { key, value } => Response {
            previous: w.kv_set(&key, &value)?,
            ..Response::default()
        },
        Request::Delete { key } => Response {
            previous: w.kv_delete(&key)?,
            ..Response::default()
        },
        Request::Provision(cmd) => Response {
            previous: None,
            provision: Some(w.apply(*cmd)?),
        },
        Request::SetNonceKey(key) => {
            w.set_nonce_key_once(&key)?;
            Response::default()
        }
    })
}

/// Read-only handle on the applied state (local, possibly behind the leader on a follower).
#[derive(Clone, Debug)]
pub struct StoreReader {
    db: ProvisionDb,
}

impl StoreReader {
    /// Value of `key` in the generic map as applied locally.
    pub async fn get(&self, key: &str) -> Option<String> {
        self.db.kv_get(key).ok().flatten()
    }

    /// Copy of the generic map as applied locally.
    pub fn snapshot_map(&self) -> BTreeMap<String, String> {
        self.db.kv_all().unwrap_or_default()
    }

    /// Last log id applied to this state machine.
    pub fn last_applied(&self) -> Option<LogId> {
        self.db.applied().ok().and_then(|p| p.last_applied)
    }

    /// The provisioning database (reads only; writes go through Raft).
    pub fn db(&self) -> &ProvisionDb {
        &self.db
    }
}

/// [`RaftStateMachine`] implementation.
pub struct StateMachineStore {
    db: ProvisionDb,
    dir: PathBuf,
    current: Arc<Mutex<Option<CurrentSnapshot>>>,
    receiving: Option<PathBuf>,
}

/// Builds snapshots from a consistent read of the database.
pub struct SnapshotBuilder {
    db: ProvisionDb,
    dir: PathBuf,
    current: Arc<Mutex<Option<CurrentSnapshot>>>,
}

fn sm_err(verb: ErrorVerb, e: io::Error) -> StorageError {
    StorageError::from_io_error(ErrorSubject::StateMachine, verb, e)
}

fn snap_err(meta: Option<&SnapshotMeta>, verb: ErrorVerb, e: io::Error) -> StorageError {
    StorageError::from_io_error(ErrorSubject::Snapshot(meta.map(|m| m.signature())), verb, e)
}

fn nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

async fn open_snapshot(dir: &Path, cur: &CurrentSnapshot) -> io::Result<Snapshot> {
    let f = tokio::fs::File::open(dir.join(&cur.file)).await?;
    Ok(Snapshot {
        meta: cur.meta.clone(),
        snapshot: Box::new(f),
    })
}

/// Makes `next` the current snapshot (its file already in `dir`), then removes every other
/// snapshot file. Blocking.
fn name_current(dir: &Path, next: &CurrentSnapshot) -> io::Result<()> {
    disk::write_atomic(dir, META_FILE, &disk::encode(next)?)?;
    remove_other_snapshots(dir, Some(&next.file))
}

fn remove_other_snapshots(dir: &Path, keep: Option<&str>) -> io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let ours = name.starts_with("snapshot-")
            && (name.ends_with(".data") || name.ends_with(".recv") || name.ends_with(".tmp"));
        if ours && Some(name.as_str()) != keep {
            std::fs::remove_file(e.path())?;
        }
    }
    Ok(())
}

impl StateMachineStore {
    /// Open the state machine in `dir` (creating the database), migrating an earlier version's
    /// map if there is one. Blocking.
    pub fn open(dir: &Path) -> io::Result<Self> {
        Self::open_with_cache(dir, crate::provision::db::DEFAULT_CACHE)
    }

    /// [`StateMachineStore::open`] with `cache` bytes of database page cache. Blocking.
    pub fn open_with_cache(dir: &Path, cache: usize) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        disk::remove_stale_tmp(dir, META_FILE)?;
        let db = ProvisionDb::open_with_cache(&dir.join(DB_FILE), cache)?;
        let current: Option<CurrentSnapshot> = match disk::read_atomic(dir, META_FILE)? {
            Some(bytes) => Some(disk::decode(&bytes)?),
            None => None,
        };
        remove_other_snapshots(dir, current.as_ref().map(|c| c.file.as_str()))?;
        if let Some(bytes) = disk::read_atomic(dir, LEGACY_SNAPSHOT)? {
            let legacy: LegacySnapshot = disk::decode(&bytes)?;
            let kv: BTreeMap<String, String> = disk::decode(&legacy.data)?;
            if db.applied()?.last_applied.is_none() {
                let ptr = Pointers {
                    last_applied: legacy.meta.last_log_id,
                    membership: legacy.meta.last_membership.clone(),
                };
                db.write(
                    |w| {
                        for (k, v) in &kv {
                            w.kv_set(k, v)?;
                        }
                        Ok(())
                    },
                    &ptr,
                )?;
            }
            std::fs::remove_file(dir.join(LEGACY_SNAPSHOT))?;
            disk::sync_dir(dir)?;
        }
        Ok(Self {
            db,
            dir: dir.to_path_buf(),
            current: Arc::new(Mutex::new(current)),
            receiving: None,
        })
    }

    /// A reader sharing this state machine's database.
    pub fn reader(&self) -> StoreReader {
        StoreReader {
            db: self.db.clone(),
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        // Serialises with `install_snapshot`; never replace a newer snapshot with an older one.
        let mut current = self.current.lock().await;
        let started = std::time::Instant::now();
        let file = format!("snapshot-{}.data", nanos());
        let (db, dir, name) = (self.db.clone(), self.dir.clone(), file.clone());
        let (ptr, bytes) = disk::blocking(move || db.dump(&dir.join(&name)))
            .await
            .map_err(|e| sm_err(ErrorVerb::Read, e))?;
        let snapshot_id = match &ptr.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, nanos()),
            None => format!("--{}", nanos()),
        };
        let next = CurrentSnapshot {
            meta: SnapshotMeta {
                last_log_id: ptr.last_applied,
                last_membership: ptr.membership,
                snapshot_id,
            },
            file,
            bytes,
        };
        if let Some(cur) = current.as_ref() {
            if cur.meta.last_log_id > next.meta.last_log_id {
                let _ = std::fs::remove_file(self.dir.join(&next.file));
                return open_snapshot(&self.dir, cur)
                    .await
                    .map_err(|e| snap_err(Some(&cur.meta), ErrorVerb::Read, e));
            }
        }
        let (dir, n) = (self.dir.clone(), next.clone());
        disk::blocking(move || name_current(&dir, &n))
            .await
            .map_err(|e| snap_err(Some(&next.meta), ErrorVerb::Write, e))?;
        tracing::info!(
            bytes = next.bytes,
            last = ?next.meta.last_log_id,
            ms = started.elapsed().as_millis() as u64,
            "provisioning snapshot built"
        );
        let out = open_snapshot(&self.dir, &next)
            .await
            .map_err(|e| snap_err(Some(&next.meta), ErrorVerb::Read, e))?;
        *current = Some(next);
        Ok(out)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let db = self.db.clone();
        let p = disk::blocking(move || db.applied())
            .await
            .map_err(|e| sm_err(ErrorVerb::Read, e))?;
        Ok((p.last_applied, p.membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let db = self.db.clone();
        disk::blocking(move || {
            let mut ptr = db.applied()?;
            for e in &entries {
                ptr.last_applied = Some(e.log_id);
                if let EntryPayload::Membership(m) = &e.payload {
                    ptr.membership = StoredMembership::new(Some(e.log_id), m.clone());
                }
            }
            db.write(
                |w| {
                    let mut out = Vec::with_capacity(entries.len());
                    for e in entries {
                        out.push(match e.payload {
                            EntryPayload::Normal(req) => apply_request(w, req)?,
                            EntryPayload::Blank | EntryPayload::Membership(_) => {
                                Response::default()
                            }
                        });
                    }
                    Ok(out)
                },
                &ptr,
            )
        })
        .await
        .map_err(|e| sm_err(ErrorVerb::Write, e))
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            dir: self.dir.clone(),
            current: self.current.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let path = self.dir.join(format!("snapshot-{}.recv", nanos()));
        let f = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(|e| snap_err(None, ErrorVerb::Write, e))?;
        if let Some(old) = self.receiving.replace(path) {
            let _ = tokio::fs::remove_file(old).await;
        }
        Ok(Box::new(f))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        use tokio::io::AsyncSeekExt;
        let err = |verb, e| snap_err(Some(meta), verb, e);
        let started = std::time::Instant::now();
        // The data may be any file (usually the one begin_receiving_snapshot made): copy it
        // whole into a snapshot file of ours, then load that.
        let mut current = self.current.lock().await;
        let file = format!("snapshot-{}.data", nanos());
        let mut src = *snapshot;
        src.seek(std::io::SeekFrom::Start(0))
            .await
            .map_err(|e| err(ErrorVerb::Read, e))?;
        let bytes = {
            let mut out = tokio::fs::File::create(self.dir.join(&file))
                .await
                .map_err(|e| err(ErrorVerb::Write, e))?;
            let n = tokio::io::copy(&mut src, &mut out)
                .await
                .map_err(|e| err(ErrorVerb::Write, e))?;
            out.sync_all().await.map_err(|e| err(ErrorVerb::Write, e))?;
            n
        };
        drop(src);
        if let Some(recv) = self.receiving.take() {
            let _ = tokio::fs::remove_file(recv).await;
        }
        let next = CurrentSnapshot {
            meta: meta.clone(),
            file,
            bytes,
        };
        let (db, dir, n) = (self.db.clone(), self.dir.clone(), next.clone());
        disk::blocking(move || {
            let ptr = Pointers {
                last_applied: n.meta.last_log_id,
                membership: n.meta.last_membership.clone(),
            };
            let records = db.restore(&dir.join(&n.file), &ptr)?;
            name_current(&dir, &n)?;
            tracing::info!(
                records,
                bytes = n.bytes,
                ms = started.elapsed().as_millis() as u64,
                "provisioning snapshot installed"
            );
            Ok(())
        })
        .await
        .map_err(|e| err(ErrorVerb::Write, e))?;
        *current = Some(next);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let current = self.current.lock().await;
        match current.as_ref() {
            None => Ok(None),
            Some(c) => open_snapshot(&self.dir, c)
                .await
                .map(Some)
                .map_err(|e| snap_err(Some(&c.meta), ErrorVerb::Read, e)),
        }
    }
}
