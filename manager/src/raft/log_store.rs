//! Durable Raft log + vote storage in a directory.
//!
//! Files (all inside the manager's Raft directory):
//! - `raft-vote`: the last saved vote, replaced atomically (temp file, fsync, rename, fsync dir)
//!   before [`RaftLogStorage::save_vote`] returns, so a restarted manager never votes twice in one
//!   term.
//! - `raft-log-meta`: `committed` and `last_purged_log_id`, replaced atomically.
//! - `raft-log`: append-only sequence of checksummed, length-prefixed bincode records, one per
//!   entry, fsync'd before the [`LogFlushed`] callback fires. Truncation cuts the file at the
//!   offset of the first removed record; purging rewrites the (small) file atomically.
//!
//! On open a torn or damaged tail of `raft-log` (crash in the middle of an append) is detected by
//! the length/CRC framing and dropped with a warning.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader};
use serde::{Deserialize, Serialize};

use super::disk::{self, Frame};
use super::types::{Entry, LogId, StorageError, TypeConfig, Vote};

const LOG_FILE: &str = "raft-log";
const VOTE_FILE: &str = "raft-vote";
const META_FILE: &str = "raft-log-meta";

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
struct LogMeta {
    committed: Option<LogId>,
    last_purged: Option<LogId>,
}

/// In-memory image of the durable state, shared with log readers.
#[derive(Default)]
struct LogMem {
    entries: BTreeMap<u64, Entry>,
    vote: Option<Vote>,
    meta: LogMeta,
}

/// Writer side of `raft-log`; only the Raft core writes, the mutex is uncontended.
struct LogDisk {
    dir: PathBuf,
    file: File,
    /// File offset of the record of each present entry.
    offsets: BTreeMap<u64, u64>,
    /// Length of the valid part of the file.
    end: u64,
}

/// What [`LogStore::open`] found and repaired.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Entries loaded.
    pub entries: usize,
    /// Bytes of a torn / damaged tail that were dropped.
    pub dropped_bytes: u64,
    /// Why the tail was dropped, if it was.
    pub dropped_reason: Option<String>,
}

/// Durable [`RaftLogStorage`] implementation.
pub struct LogStore {
    mem: Arc<RwLock<LogMem>>,
    disk: Arc<Mutex<LogDisk>>,
    report: OpenReport,
}

/// Cheap cloneable reader used by openraft's replication tasks.
#[derive(Clone)]
pub struct LogReader {
    mem: Arc<RwLock<LogMem>>,
}

fn io_err(subject: ErrorSubject<u64>, verb: ErrorVerb, e: io::Error) -> StorageError {
    StorageError::from_io_error(subject, verb, e)
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Frames of several entries, with each record's (index, offset relative to the buffer start).
type EncodedEntries = (Vec<u8>, Vec<(u64, u64)>);

/// Encode entries as consecutive frames; returns the buffer and each record's (index, relative offset).
fn encode_entries<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> io::Result<EncodedEntries> {
    let mut buf = Vec::new();
    let mut offsets = Vec::new();
    for e in entries {
        offsets.push((e.log_id.index, buf.len() as u64));
        disk::push_frame(&mut buf, &disk::encode(e)?)?;
    }
    Ok((buf, offsets))
}

impl LogDisk {
    /// Cut the file before the record of `index` (and everything after it).
    fn truncate_from(&mut self, index: u64) -> io::Result<()> {
        let Some((_, &off)) = self.offsets.range(index..).next() else {
            return Ok(());
        };
        self.file.set_len(off)?;
        self.file.sync_data()?;
        self.offsets.split_off(&index);
        self.end = off;
        Ok(())
    }

    fn append(&mut self, buf: &[u8], rel_offsets: &[(u64, u64)]) -> io::Result<()> {
        if let Some(&(first, _)) = rel_offsets.first() {
            // openraft truncates conflicting entries before appending; stay consistent anyway.
            self.truncate_from(first)?;
        }
        let res = self
            .file
            .write_all(buf)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = res {
            // Best effort: drop a partial write so the next append does not land after garbage.
            let _ = self.file.set_len(self.end);
            return Err(e);
        }
        for &(index, rel) in rel_offsets {
            self.offsets.insert(index, self.end + rel);
        }
        self.end += buf.len() as u64;
        Ok(())
    }

    /// Atomically replace the whole log file with `entries`.
    fn rewrite(&mut self, entries: &[Entry]) -> io::Result<()> {
        let (buf, rel) = encode_entries(entries)?;
        disk::replace_file(&self.dir, LOG_FILE, &buf)?;
        self.file = open_append(&self.dir.join(LOG_FILE))?;
        self.offsets = rel.into_iter().collect();
        self.end = buf.len() as u64;
        Ok(())
    }
}

impl LogStore {
    /// Open (or create) the log store in `dir`. Blocking: call from `spawn_blocking` or startup.
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        for name in [LOG_FILE, VOTE_FILE, META_FILE] {
            disk::remove_stale_tmp(dir, name)?;
        }
        let vote: Option<Vote> = disk::read_atomic(dir, VOTE_FILE)?
            .map(|b| disk::decode(&b))
            .transpose()?;
        let mut meta: LogMeta = disk::read_atomic(dir, META_FILE)?
            .map(|b| disk::decode(&b))
            .transpose()?
            .unwrap_or_default();

        let path = dir.join(LOG_FILE);
        let existed = path.exists();
        let buf = if existed {
            std::fs::read(&path)?
        } else {
            Vec::new()
        };

        let purged_index = meta.last_purged.as_ref().map(|l| l.index);
        let mut entries: BTreeMap<u64, Entry> = BTreeMap::new();
        let mut offsets = BTreeMap::new();
        let mut stale = false;
        let mut pos = 0usize;
        let mut report = OpenReport::default();
        loop {
            let (payload, next) = match disk::read_frame(&buf, pos) {
                Frame::End => break,
                Frame::Ok { payload, next } => (payload, next),
                Frame::Torn => {
                    report.dropped_reason = Some("torn record".to_string());
                    break;
                }
                Frame::Corrupt(why) => {
                    report.dropped_reason = Some(why);
                    break;
                }
            };
            let entry: Entry = match disk::decode(payload) {
                Ok(e) => e,
                Err(e) => {
                    report.dropped_reason = Some(e.to_string());
                    break;
                }
            };
            let index = entry.log_id.index;
            if let Some((&last, _)) = entries.last_key_value() {
                if index <= last {
                    report.dropped_reason = Some(format!("log index {index} after {last}"));
                    break;
                }
            }
            if purged_index.is_some_and(|p| index <= p) {
                // Left over by a purge interrupted between the meta update and the rewrite.
                stale = true;
            } else {
                offsets.insert(index, pos as u64);
                entries.insert(index, entry);
            }
            pos = next;
        }
        report.entries = entries.len();
        report.dropped_bytes = (buf.len() - pos) as u64;
        if let Some(why) = &report.dropped_reason {
            tracing::warn!(
                dir = %dir.display(),
                dropped_bytes = report.dropped_bytes,
                kept_entries = entries.len(),
                "raft log: dropping damaged tail: {why}"
            );
        }

        let mut disk_state = LogDisk {
            dir: dir.to_path_buf(),
            file: open_append(&path)?,
            offsets,
            end: pos as u64,
        };
        if !existed {
            disk::sync_dir(dir)?;
        }
        if stale {
            let kept: Vec<Entry> = entries.values().cloned().collect();
            disk_state.rewrite(&kept)?;
        } else if report.dropped_bytes > 0 {
            disk_state.file.set_len(pos as u64)?;
            disk_state.file.sync_data()?;
        }

        // `committed` can never be ahead of the durable log; clamp it if the tail was lost.
        let last_log = entries
            .last_key_value()
            .map(|(_, e)| e.log_id)
            .or(meta.last_purged);
        if meta.committed.is_some() && meta.committed > last_log {
            tracing::warn!(committed = ?meta.committed, last_log = ?last_log, "raft log: clamping committed");
            meta.committed = last_log;
        }

        Ok(Self {
            mem: Arc::new(RwLock::new(LogMem {
                entries,
                vote,
                meta,
            })),
            disk: Arc::new(Mutex::new(disk_state)),
            report,
        })
    }

    /// What was found / repaired when opening.
    pub fn open_report(&self) -> &OpenReport {
        &self.report
    }

    fn mem_read(&self) -> std::sync::RwLockReadGuard<'_, LogMem> {
        self.mem.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn mem_write(&self) -> std::sync::RwLockWriteGuard<'_, LogMem> {
        self.mem.write().unwrap_or_else(PoisonError::into_inner)
    }

    async fn write_meta(&self, meta: LogMeta) -> io::Result<()> {
        let bytes = disk::encode(&meta)?;
        let disk = self.disk.clone();
        disk::blocking(move || {
            let d = disk.lock().unwrap_or_else(PoisonError::into_inner);
            disk::write_atomic(&d.dir, META_FILE, &bytes)
        })
        .await?;
        self.mem_write().meta = meta;
        Ok(())
    }
}

fn read_range<RB: RangeBounds<u64>>(mem: &RwLock<LogMem>, range: RB) -> Vec<Entry> {
    let mem = mem.read().unwrap_or_else(PoisonError::into_inner);
    mem.entries.range(range).map(|(_, e)| e.clone()).collect()
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(read_range(&self.mem, range))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(read_range(&self.mem, range))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let mem = self.mem_read();
        let last_purged_log_id = mem.meta.last_purged;
        let last_log_id = mem
            .entries
            .last_key_value()
            .map(|(_, e)| e.log_id)
            .or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        LogReader {
            mem: self.mem.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let bytes =
            disk::encode(vote).map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        let disk = self.disk.clone();
        disk::blocking(move || {
            let d = disk.lock().unwrap_or_else(PoisonError::into_inner);
            disk::write_atomic(&d.dir, VOTE_FILE, &bytes)
        })
        .await
        .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        self.mem_write().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.mem_read().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let mut meta = self.mem_read().meta.clone();
        if meta.committed == committed {
            return Ok(());
        }
        meta.committed = committed;
        self.write_meta(meta)
            .await
            .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.mem_read().meta.committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        if entries.is_empty() {
            callback.log_io_completed(Ok(()));
            return Ok(());
        }
        let (buf, rel) = encode_entries(&entries)
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, e))?;
        let first = entries[0].log_id.index;
        let disk = self.disk.clone();
        let res = disk::blocking(move || {
            let mut d = disk.lock().unwrap_or_else(PoisonError::into_inner);
            d.append(&buf, &rel)
        })
        .await;
        if let Err(e) = res {
            callback.log_io_completed(Err(io::Error::new(e.kind(), e.to_string())));
            return Err(io_err(ErrorSubject::Logs, ErrorVerb::Write, e));
        }
        {
            let mut mem = self.mem_write();
            mem.entries.split_off(&first);
            for e in entries {
                mem.entries.insert(e.log_id.index, e);
            }
        }
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let index = log_id.index;
        let disk = self.disk.clone();
        disk::blocking(move || {
            let mut d = disk.lock().unwrap_or_else(PoisonError::into_inner);
            d.truncate_from(index)
        })
        .await
        .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        self.mem_write().entries.split_off(&index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut meta = self.mem_read().meta.clone();
        if meta.last_purged.is_some_and(|p| p >= log_id) {
            return Ok(());
        }
        meta.last_purged = Some(log_id);
        // Record the purge point first: entries at or below it are ignored on open.
        self.write_meta(meta)
            .await
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        let kept: Vec<Entry> = {
            let mut mem = self.mem_write();
            let kept = mem.entries.split_off(&(log_id.index + 1));
            mem.entries = kept;
            mem.entries.values().cloned().collect()
        };
        let disk = self.disk.clone();
        disk::blocking(move || {
            let mut d = disk.lock().unwrap_or_else(PoisonError::into_inner);
            d.rewrite(&kept)
        })
        .await
        .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        Ok(())
    }
}
