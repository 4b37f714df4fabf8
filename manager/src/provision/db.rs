//! The managers' replicated state in an embedded, crash-safe database (redb): the provisioning
//! data, the change log, the Raft pointers of the state machine, and the generic key/value map.
//!
//! Every batch of Raft entries is applied in one write transaction, committed durably
//! together with `last_applied`, so after a crash the database holds a prefix of the log and
//! openraft re-applies the rest. Reads use read transactions (MVCC): they never wait for a
//! write, and a snapshot is a consistent dump of one read transaction.
//!
//! # Tables
//! | table | key | value |
//! |---|---|---|
//! | `meta` | `last_applied`, `membership`, `version`, `first_change`, `nonce_key` | bincode |
//! | `kv` | key | value (the generic map of [`crate::raft::Request::Set`]) |
//! | `domains` | name | [`Domain`] |
//! | `accounts` | `domain \0 user` | [`Account`] |
//! | `aliases` | `domain \0 user` | the account's AOR `user@domain` |
//! | `changes` | version | [`Change`] |
//! | `batches` | import batch id | its [`RowOutcome`]s |
//! | `batch_order` | sequence | batch id (the oldest are forgotten past [`BATCHES_KEPT`]) |
//!
//! Accounts and aliases are keyed by domain first, so a domain's accounts are one range.
//!
//! # Snapshot file
//! A sequence of frames (`len: u32 LE`, `crc32: u32 LE`, bincode `SnapRecord`), opening with
//! a header and closing with an end record that counts the records, so a cut or damaged file is
//! refused rather than half loaded.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::sync::Arc;

use onehop_overlay::provision::NonceSecret;
use redb::{
    Database, Durability, ReadTransaction, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};
use serde::{Deserialize, Serialize};

use super::model::{
    Account, Applied, Change, ChangeKind, Domain, ProvError, ProvisionCommand, ProvisionOp,
    ProvisionResult, RowOutcome, MAX_IMPORT_BATCH,
};
use super::number_store::{self as ns, NumberTables};
use crate::raft::disk::{self, crc32, FRAME_HEADER, MAX_RECORD};
use crate::raft::types::{LogId, StoredMembership};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const KV: TableDefinition<&str, &str> = TableDefinition::new("kv");
const DOMAINS: TableDefinition<&str, &[u8]> = TableDefinition::new("domains");
const ACCOUNTS: TableDefinition<&str, &[u8]> = TableDefinition::new("accounts");
const ALIASES: TableDefinition<&str, &str> = TableDefinition::new("aliases");
const CHANGES: TableDefinition<u64, &[u8]> = TableDefinition::new("changes");
const BATCHES: TableDefinition<&str, &[u8]> = TableDefinition::new("batches");
const BATCH_ORDER: TableDefinition<u64, &str> = TableDefinition::new("batch_order");

/// Most changes kept in the log; older ones are dropped (a reader asking for them is told to
/// read the whole state instead).
pub const CHANGES_KEPT: u64 = 2_000_000;
/// Most import batch outcomes remembered (for retries after a failover).
pub const BATCHES_KEPT: u64 = 100_000;
/// Most rows one listing returns.
pub const MAX_PAGE: usize = 1_000;

/// The database's page cache by default (redb's own default is 1 GiB).
pub const DEFAULT_CACHE: usize = 256 << 20;

/// The format of the snapshot file.
const SNAPSHOT_FORMAT: u32 = 1;

pub(super) fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("provisioning database: {e}"))
}

/// The key of an account or alias: `domain \0 user`.
pub fn row_key(user: &str, domain: &str) -> String {
    format!("{domain}\0{user}")
}

/// Splits `user@domain` into its row key (no validation beyond the split; the domain is
/// lower-cased). `None` when there is no `@`.
pub fn key_of_aor(aor: &str) -> Option<String> {
    let aor = aor.strip_prefix("sip:").unwrap_or(aor);
    let (user, domain) = aor.rsplit_once('@')?;
    Some(row_key(user, &domain.to_ascii_lowercase()))
}

/// A page of accounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountPage {
    /// The accounts, in key order (domain, then user).
    pub accounts: Vec<Account>,
    /// The AOR to pass as `after` for the next page; `None` at the end.
    pub next: Option<String>,
}

/// A page of the change log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangePage {
    /// Changes after the asked version, oldest first.
    pub changes: Vec<Change>,
    /// The store's version now.
    pub version: u64,
    /// The oldest version still in the log (0 when none was dropped yet).
    pub first: u64,
    /// The asked version is older than the log keeps: read the whole state instead.
    pub truncated: bool,
}

/// The `meta` key of the farm's SIP nonce key.
const NONCE_KEY: &str = "nonce_key";

/// What [`ProvisionDb::farm_view`] reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FarmView {
    /// The change version.
    pub version: u64,
    /// Every provisioned domain, lower-case, sorted.
    pub domains: Vec<String>,
    /// The farm's SIP nonce key, if made.
    pub nonce_key: Option<NonceSecret>,
    /// Every domain's dial plan, by domain.
    pub dial_plans: Vec<(String, onehop_overlay::provision::DialPlan)>,
}

/// Counts of what the store holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Provisioned domains.
    pub domains: u64,
    /// Accounts.
    pub accounts: u64,
    /// Aliases.
    pub aliases: u64,
    /// The change version.
    pub version: u64,
}

/// What one record of a snapshot file holds (variants only appended).
#[derive(Serialize, Deserialize, Debug)]
enum SnapRecord {
    Header {
        format: u32,
        version: u64,
        first_change: u64,
    },
    Kv(String, String),
    Domain(Domain),
    Account(Box<Account>),
    Alias(String, String),
    Change(Change),
    Batch(String, Vec<RowOutcome>),
    BatchOrder(u64, String),
    End {
        records: u64,
    },
    /// The farm's SIP nonce key (`meta` `nonce_key`), when one was made.
    NonceKey(NonceSecret),
    /// A row of a number-registry table ([`NumberTable`]), as stored.
    NumberRow {
        table: NumberTable,
        key: String,
        value: Vec<u8>,
    },
    /// The number-history sequence (`meta` `history_seq`).
    HistorySeq(u64),
}

/// The number-registry tables in a snapshot (variants only appended).
#[derive(Serialize, Deserialize, Debug, Clone, Copy)]
enum NumberTable {
    Carriers,
    Blocks,
    Numbers,
    History,
    AccountNumbers,
    Requests,
    RequestOrder,
    DialPlans,
}

/// The change version as `tx` reads it.
pub(super) fn version_in(tx: &ReadTransaction) -> io::Result<u64> {
    let meta = tx.open_table(META).map_err(io_err)?;
    Ok(get_meta(&meta, "version")?.unwrap_or(0))
}

/// The Raft state machine's pointers as stored.
#[derive(Debug, Clone, Default)]
pub struct Pointers {
    /// The last log entry applied.
    pub last_applied: Option<LogId>,
    /// The membership in force.
    pub membership: StoredMembership,
}

/// The database (cheap to clone).
#[derive(Clone)]
pub struct ProvisionDb {
    db: Arc<Database>,
    /// The change version after each committed write (for readers that wait for a change).
    versions: Arc<tokio::sync::watch::Sender<u64>>,
}

impl std::fmt::Debug for ProvisionDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProvisionDb")
    }
}

fn get_meta<T: serde::de::DeserializeOwned>(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> io::Result<Option<T>> {
    match t.get(key).map_err(io_err)? {
        Some(v) => Ok(Some(disk::decode(v.value())?)),
        None => Ok(None),
    }
}

impl ProvisionDb {
    /// Opens (or creates) the database at `path`. Blocking.
    ///
    /// Another instance in this process that still holds the file (a Raft node being shut
    /// down and started again) is waited for, at most 5 s.
    pub fn open(path: &Path) -> io::Result<ProvisionDb> {
        ProvisionDb::open_with_cache(path, DEFAULT_CACHE)
    }

    /// [`ProvisionDb::open`] with `cache` bytes of page cache (which bounds most of the
    /// database's memory: the pages of a large store are read from the file as needed).
    pub fn open_with_cache(path: &Path, cache: usize) -> io::Result<ProvisionDb> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let db = loop {
            match Database::builder().set_cache_size(cache).create(path) {
                Ok(db) => break db,
                Err(redb::DatabaseError::DatabaseAlreadyOpen)
                    if std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(io_err(e)),
            }
        };
        let tx = db.begin_write().map_err(io_err)?;
        {
            tx.open_table(META).map_err(io_err)?;
            tx.open_table(KV).map_err(io_err)?;
            tx.open_table(DOMAINS).map_err(io_err)?;
            tx.open_table(ACCOUNTS).map_err(io_err)?;
            tx.open_table(ALIASES).map_err(io_err)?;
            tx.open_table(CHANGES).map_err(io_err)?;
            tx.open_table(BATCHES).map_err(io_err)?;
            tx.open_table(BATCH_ORDER).map_err(io_err)?;
            NumberTables::create(&tx)?;
        }
        tx.commit().map_err(io_err)?;
        let db = ProvisionDb {
            db: Arc::new(db),
            versions: Arc::new(tokio::sync::watch::channel(0).0),
        };
        let v = db.version()?;
        db.versions.send_replace(v);
        Ok(db)
    }

    fn read(&self) -> io::Result<ReadTransaction> {
        self.db.begin_read().map_err(io_err)
    }

    /// A read transaction (for the number registry's reads).
    pub(super) fn read_tx(&self) -> io::Result<ReadTransaction> {
        self.read()
    }

    /// The applied pointers.
    pub fn applied(&self) -> io::Result<Pointers> {
        let tx = self.read()?;
        let meta = tx.open_table(META).map_err(io_err)?;
        Ok(Pointers {
            last_applied: get_meta::<Option<LogId>>(&meta, "last_applied")?.flatten(),
            membership: get_meta(&meta, "membership")?.unwrap_or_default(),
        })
    }

    /// Applies a batch in one durable transaction: `f` gets a [`Writer`] and the answers are
    /// committed with the new pointers.
    pub fn write<T>(
        &self,
        f: impl FnOnce(&mut Writer<'_>) -> io::Result<T>,
        applied: &Pointers,
    ) -> io::Result<T> {
        let mut tx = self.db.begin_write().map_err(io_err)?;
        tx.set_durability(Durability::Immediate);
        let version;
        let out = {
            let mut w = Writer::new(&tx)?;
            let out = f(&mut w)?;
            version = w.version;
            w.finish()?;
            let mut meta = tx.open_table(META).map_err(io_err)?;
            meta.insert(
                "last_applied",
                disk::encode(&applied.last_applied)?.as_slice(),
            )
            .map_err(io_err)?;
            meta.insert("membership", disk::encode(&applied.membership)?.as_slice())
                .map_err(io_err)?;
            out
        };
        tx.commit().map_err(io_err)?;
        self.versions
            .send_if_modified(|v| std::mem::replace(v, version) != version);
        Ok(out)
    }

    /// A receiver of the change version, updated after every committed write and restore.
    pub fn watch_version(&self) -> tokio::sync::watch::Receiver<u64> {
        self.versions.subscribe()
    }

    /// The value of `key` in the generic map.
    pub fn kv_get(&self, key: &str) -> io::Result<Option<String>> {
        let tx = self.read()?;
        let t = tx.open_table(KV).map_err(io_err)?;
        Ok(t.get(key).map_err(io_err)?.map(|v| v.value().to_string()))
    }

    /// The whole generic map.
    pub fn kv_all(&self) -> io::Result<std::collections::BTreeMap<String, String>> {
        let tx = self.read()?;
        let t = tx.open_table(KV).map_err(io_err)?;
        let mut out = std::collections::BTreeMap::new();
        for r in t.iter().map_err(io_err)? {
            let (k, v) = r.map_err(io_err)?;
            out.insert(k.value().to_string(), v.value().to_string());
        }
        Ok(out)
    }

    /// The change version (the last change applied; 0 before any).
    pub fn version(&self) -> io::Result<u64> {
        let tx = self.read()?;
        let meta = tx.open_table(META).map_err(io_err)?;
        Ok(get_meta(&meta, "version")?.unwrap_or(0))
    }

    /// The farm's SIP nonce key, once the active manager made one.
    pub fn nonce_key(&self) -> io::Result<Option<NonceSecret>> {
        let tx = self.read()?;
        let meta = tx.open_table(META).map_err(io_err)?;
        get_meta(&meta, NONCE_KEY)
    }

    /// What the farm-read service answers, from one read transaction: the change version,
    /// every domain name (sorted) and the nonce key.
    pub fn farm_view(&self) -> io::Result<FarmView> {
        let tx = self.read()?;
        let meta = tx.open_table(META).map_err(io_err)?;
        let t = tx.open_table(DOMAINS).map_err(io_err)?;
        let mut domains = Vec::new();
        for r in t.iter().map_err(io_err)? {
            let (k, _) = r.map_err(io_err)?;
            domains.push(k.value().to_ascii_lowercase());
        }
        domains.sort();
        domains.dedup();
        Ok(FarmView {
            version: get_meta(&meta, "version")?.unwrap_or(0),
            domains,
            nonce_key: get_meta(&meta, NONCE_KEY)?,
            dial_plans: {
                let t = tx.open_table(ns::DIAL_PLANS).map_err(io_err)?;
                let mut out = Vec::new();
                for r in t.iter().map_err(io_err)? {
                    let (k, v) = r.map_err(io_err)?;
                    out.push((k.value().to_string(), disk::decode(v.value())?));
                }
                out
            },
        })
    }

    /// The account `aor` (`user@domain`) with the change version it was read at, from one
    /// read transaction.
    pub fn account_at(&self, aor: &str) -> io::Result<(u64, Option<Account>)> {
        let tx = self.read()?;
        let meta = tx.open_table(META).map_err(io_err)?;
        let version = get_meta(&meta, "version")?.unwrap_or(0);
        let Some(key) = key_of_aor(aor) else {
            return Ok((version, None));
        };
        let t = tx.open_table(ACCOUNTS).map_err(io_err)?;
        let account = match t.get(key.as_str()).map_err(io_err)? {
            Some(v) => Some(disk::decode(v.value())?),
            None => None,
        };
        Ok((version, account))
    }

    /// Counts of domains, accounts, aliases and the version.
    pub fn counts(&self) -> io::Result<Counts> {
        let tx = self.read()?;
        let meta = tx.open_table(META).map_err(io_err)?;
        Ok(Counts {
            domains: tx
                .open_table(DOMAINS)
                .map_err(io_err)?
                .len()
                .map_err(io_err)?,
            accounts: tx
                .open_table(ACCOUNTS)
                .map_err(io_err)?
                .len()
                .map_err(io_err)?,
            aliases: tx
                .open_table(ALIASES)
                .map_err(io_err)?
                .len()
                .map_err(io_err)?,
            version: get_meta(&meta, "version")?.unwrap_or(0),
        })
    }

    /// Every domain, sorted.
    pub fn domains(&self) -> io::Result<Vec<Domain>> {
        let tx = self.read()?;
        let t = tx.open_table(DOMAINS).map_err(io_err)?;
        let mut out = Vec::new();
        for r in t.iter().map_err(io_err)? {
            let (_, v) = r.map_err(io_err)?;
            out.push(disk::decode(v.value())?);
        }
        Ok(out)
    }

    /// One domain.
    pub fn domain(&self, name: &str) -> io::Result<Option<Domain>> {
        let tx = self.read()?;
        let t = tx.open_table(DOMAINS).map_err(io_err)?;
        match t.get(name).map_err(io_err)? {
            Some(v) => Ok(Some(disk::decode(v.value())?)),
            None => Ok(None),
        }
    }

    /// The account `aor` (`user@domain`).
    pub fn account(&self, aor: &str) -> io::Result<Option<Account>> {
        let Some(key) = key_of_aor(aor) else {
            return Ok(None);
        };
        let tx = self.read()?;
        let t = tx.open_table(ACCOUNTS).map_err(io_err)?;
        match t.get(key.as_str()).map_err(io_err)? {
            Some(v) => Ok(Some(disk::decode(v.value())?)),
            None => Ok(None),
        }
    }

    /// The account an alias reaches.
    pub fn alias(&self, alias: &str) -> io::Result<Option<String>> {
        let Some(key) = key_of_aor(alias) else {
            return Ok(None);
        };
        let tx = self.read()?;
        let t = tx.open_table(ALIASES).map_err(io_err)?;
        Ok(t.get(key.as_str())
            .map_err(io_err)?
            .map(|v| v.value().to_string()))
    }

    /// A page of accounts: those of `domain` (or of every domain), whose user part starts with
    /// `prefix`, after the AOR `after`, at most `limit` (capped at [`MAX_PAGE`]).
    pub fn accounts(
        &self,
        domain: Option<&str>,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> io::Result<AccountPage> {
        let limit = limit.clamp(1, MAX_PAGE);
        let tx = self.read()?;
        let t = tx.open_table(ACCOUNTS).map_err(io_err)?;
        let start = match (after.and_then(key_of_aor), domain) {
            (Some(k), _) => k,
            (None, Some(d)) => row_key(prefix, d),
            (None, None) => String::new(),
        };
        let mut accounts = Vec::new();
        let mut next = None;
        for r in t.range(start.as_str()..).map_err(io_err)? {
            let (k, v) = r.map_err(io_err)?;
            let key = k.value();
            if after.is_some_and(|a| key_of_aor(a).as_deref() == Some(key)) {
                continue;
            }
            let (d, user) = key.split_once('\0').unwrap_or(("", key));
            if let Some(want) = domain {
                if d != want {
                    break;
                }
                if !user.starts_with(prefix) {
                    if user > prefix {
                        break;
                    }
                    continue;
                }
            } else if !user.starts_with(prefix) {
                continue;
            }
            if accounts.len() == limit {
                next = accounts.last().map(Account::aor);
                break;
            }
            accounts.push(disk::decode(v.value())?);
        }
        Ok(AccountPage { accounts, next })
    }

    /// Changes after version `since`, at most `limit` (capped at [`MAX_PAGE`] * 10).
    pub fn changes(&self, since: u64, limit: usize) -> io::Result<ChangePage> {
        let limit = limit.clamp(1, MAX_PAGE * 10);
        let tx = self.read()?;
        let meta = tx.open_table(META).map_err(io_err)?;
        let version: u64 = get_meta(&meta, "version")?.unwrap_or(0);
        let first: u64 = get_meta(&meta, "first_change")?.unwrap_or(0);
        if first > 1 && since + 1 < first {
            return Ok(ChangePage {
                changes: Vec::new(),
                version,
                first,
                truncated: true,
            });
        }
        let t = tx.open_table(CHANGES).map_err(io_err)?;
        let mut changes = Vec::new();
        for r in t.range(since.saturating_add(1)..).map_err(io_err)? {
            let (_, v) = r.map_err(io_err)?;
            changes.push(disk::decode(v.value())?);
            if changes.len() == limit {
                break;
            }
        }
        Ok(ChangePage {
            changes,
            version,
            first,
            truncated: false,
        })
    }

    /// Writes a consistent dump to `path` (created or truncated, fsynced) and returns the
    /// pointers it is consistent with and its size in bytes.
    pub fn dump(&self, path: &Path) -> io::Result<(Pointers, u64)> {
        let tx = self.read()?;
        let meta = tx.open_table(META).map_err(io_err)?;
        let applied = Pointers {
            last_applied: get_meta::<Option<LogId>>(&meta, "last_applied")?.flatten(),
            membership: get_meta(&meta, "membership")?.unwrap_or_default(),
        };
        let file = File::create(path)?;
        let mut w = SnapWriter {
            out: BufWriter::with_capacity(1 << 20, file),
            records: 0,
            bytes: 0,
        };
        w.put(&SnapRecord::Header {
            format: SNAPSHOT_FORMAT,
            version: get_meta(&meta, "version")?.unwrap_or(0),
            first_change: get_meta(&meta, "first_change")?.unwrap_or(0),
        })?;
        if let Some(key) = get_meta::<NonceSecret>(&meta, NONCE_KEY)? {
            w.put(&SnapRecord::NonceKey(key))?;
        }
        dump_table(&tx, KV, &mut w, |k, v| {
            Ok(SnapRecord::Kv(k.into(), v.into()))
        })?;
        dump_table(&tx, DOMAINS, &mut w, |_, v| {
            Ok(SnapRecord::Domain(disk::decode(v)?))
        })?;
        dump_table(&tx, ACCOUNTS, &mut w, |_, v| {
            Ok(SnapRecord::Account(Box::new(disk::decode(v)?)))
        })?;
        dump_table(&tx, ALIASES, &mut w, |k, v| {
            Ok(SnapRecord::Alias(k.into(), v.into()))
        })?;
        dump_table(&tx, CHANGES, &mut w, |_, v| {
            Ok(SnapRecord::Change(disk::decode(v)?))
        })?;
        dump_table(&tx, BATCHES, &mut w, |k, v| {
            Ok(SnapRecord::Batch(k.into(), disk::decode(v)?))
        })?;
        dump_table(&tx, BATCH_ORDER, &mut w, |k, v| {
            Ok(SnapRecord::BatchOrder(k, v.into()))
        })?;
        if let Some(seq) = get_meta::<u64>(&meta, "history_seq")? {
            w.put(&SnapRecord::HistorySeq(seq))?;
        }
        for (table, def) in [
            (NumberTable::Carriers, ns::CARRIERS),
            (NumberTable::Blocks, ns::BLOCKS),
            (NumberTable::Numbers, ns::NUMBERS),
            (NumberTable::History, ns::HISTORY),
            (NumberTable::Requests, ns::REQUESTS),
            (NumberTable::DialPlans, ns::DIAL_PLANS),
        ] {
            dump_table(&tx, def, &mut w, |k, v| {
                Ok(SnapRecord::NumberRow {
                    table,
                    key: k.into(),
                    value: v.to_vec(),
                })
            })?;
        }
        dump_table(&tx, ns::ACCOUNT_NUMBERS, &mut w, |k, _| {
            Ok(SnapRecord::NumberRow {
                table: NumberTable::AccountNumbers,
                key: k.into(),
                value: Vec::new(),
            })
        })?;
        dump_table(&tx, ns::REQUEST_ORDER, &mut w, |k, v| {
            Ok(SnapRecord::NumberRow {
                table: NumberTable::RequestOrder,
                key: k.to_string(),
                value: v.as_bytes().to_vec(),
            })
        })?;
        let records = w.records;
        w.put(&SnapRecord::End { records })?;
        let bytes = w.bytes;
        let file = w.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok((applied, bytes))
    }

    /// Replaces the whole state with the dump at `path` (checked end to end before anything
    /// is committed), with `applied` as the new pointers. One durable transaction.
    pub fn restore(&self, path: &Path, applied: &Pointers) -> io::Result<u64> {
        let mut r = BufReader::with_capacity(1 << 20, File::open(path)?);
        let mut tx = self.db.begin_write().map_err(io_err)?;
        tx.set_durability(Durability::Immediate);
        for name in [META, DOMAINS, ACCOUNTS, BATCHES] {
            tx.delete_table(name).map_err(io_err)?;
        }
        tx.delete_table(KV).map_err(io_err)?;
        tx.delete_table(ALIASES).map_err(io_err)?;
        tx.delete_table(CHANGES).map_err(io_err)?;
        tx.delete_table(BATCH_ORDER).map_err(io_err)?;
        NumberTables::delete(&tx)?;
        let mut records = 0u64;
        {
            let mut meta = tx.open_table(META).map_err(io_err)?;
            let mut kv = tx.open_table(KV).map_err(io_err)?;
            let mut domains = tx.open_table(DOMAINS).map_err(io_err)?;
            let mut accounts = tx.open_table(ACCOUNTS).map_err(io_err)?;
            let mut aliases = tx.open_table(ALIASES).map_err(io_err)?;
            let mut changes = tx.open_table(CHANGES).map_err(io_err)?;
            let mut batches = tx.open_table(BATCHES).map_err(io_err)?;
            let mut order = tx.open_table(BATCH_ORDER).map_err(io_err)?;
            let mut number_rows: Vec<redb::Table<'_, &str, &[u8]>> = [
                ns::CARRIERS,
                ns::BLOCKS,
                ns::NUMBERS,
                ns::HISTORY,
                ns::REQUESTS,
                ns::DIAL_PLANS,
            ]
            .into_iter()
            .map(|d| tx.open_table(d).map_err(io_err))
            .collect::<io::Result<_>>()?;
            let mut account_numbers = tx.open_table(ns::ACCOUNT_NUMBERS).map_err(io_err)?;
            let mut request_order = tx.open_table(ns::REQUEST_ORDER).map_err(io_err)?;
            let bad =
                |m: &str| io::Error::new(io::ErrorKind::InvalidData, format!("snapshot: {m}"));
            match read_record(&mut r)? {
                Some(SnapRecord::Header {
                    format,
                    version,
                    first_change,
                }) => {
                    if format != SNAPSHOT_FORMAT {
                        return Err(bad(&format!("unknown format {format}")));
                    }
                    meta.insert("version", disk::encode(&version)?.as_slice())
                        .map_err(io_err)?;
                    meta.insert("first_change", disk::encode(&first_change)?.as_slice())
                        .map_err(io_err)?;
                }
                _ => return Err(bad("no header")),
            }
            loop {
                let Some(rec) = read_record(&mut r)? else {
                    return Err(bad("cut short (no end record)"));
                };
                match rec {
                    SnapRecord::Header { .. } => return Err(bad("second header")),
                    SnapRecord::Kv(k, v) => {
                        kv.insert(k.as_str(), v.as_str()).map_err(io_err)?;
                    }
                    SnapRecord::Domain(d) => {
                        domains
                            .insert(d.name.as_str(), disk::encode(&d)?.as_slice())
                            .map_err(io_err)?;
                    }
                    SnapRecord::Account(a) => {
                        let key = row_key(&a.user, &a.domain);
                        accounts
                            .insert(key.as_str(), disk::encode(&*a)?.as_slice())
                            .map_err(io_err)?;
                    }
                    SnapRecord::Alias(k, v) => {
                        aliases.insert(k.as_str(), v.as_str()).map_err(io_err)?;
                    }
                    SnapRecord::Change(c) => {
                        changes
                            .insert(c.version, disk::encode(&c)?.as_slice())
                            .map_err(io_err)?;
                    }
                    SnapRecord::Batch(k, v) => {
                        batches
                            .insert(k.as_str(), disk::encode(&v)?.as_slice())
                            .map_err(io_err)?;
                    }
                    SnapRecord::BatchOrder(k, v) => {
                        order.insert(k, v.as_str()).map_err(io_err)?;
                    }
                    SnapRecord::NonceKey(key) => {
                        meta.insert(NONCE_KEY, disk::encode(&key)?.as_slice())
                            .map_err(io_err)?;
                    }
                    SnapRecord::HistorySeq(seq) => {
                        meta.insert("history_seq", disk::encode(&seq)?.as_slice())
                            .map_err(io_err)?;
                    }
                    SnapRecord::NumberRow { table, key, value } => {
                        let i = match table {
                            NumberTable::Carriers => 0,
                            NumberTable::Blocks => 1,
                            NumberTable::Numbers => 2,
                            NumberTable::History => 3,
                            NumberTable::Requests => 4,
                            NumberTable::DialPlans => 5,
                            NumberTable::AccountNumbers => {
                                account_numbers.insert(key.as_str(), "").map_err(io_err)?;
                                records += 1;
                                continue;
                            }
                            NumberTable::RequestOrder => {
                                let seq: u64 = key
                                    .parse()
                                    .map_err(|_| bad("a request order key is not a number"))?;
                                let id = String::from_utf8(value)
                                    .map_err(|_| bad("a request id is not UTF-8"))?;
                                request_order.insert(seq, id.as_str()).map_err(io_err)?;
                                records += 1;
                                continue;
                            }
                        };
                        number_rows[i]
                            .insert(key.as_str(), value.as_slice())
                            .map_err(io_err)?;
                    }
                    SnapRecord::End { records: n } => {
                        if n != records + 1 {
                            return Err(bad(&format!(
                                "end record counts {n} records, the file has {}",
                                records + 1
                            )));
                        }
                        break;
                    }
                }
                records += 1;
            }
            meta.insert(
                "last_applied",
                disk::encode(&applied.last_applied)?.as_slice(),
            )
            .map_err(io_err)?;
            meta.insert("membership", disk::encode(&applied.membership)?.as_slice())
                .map_err(io_err)?;
        }
        tx.commit().map_err(io_err)?;
        let v = self.version()?;
        self.versions.send_replace(v);
        Ok(records)
    }
}

struct SnapWriter {
    out: BufWriter<File>,
    records: u64,
    bytes: u64,
}

impl SnapWriter {
    fn put(&mut self, rec: &SnapRecord) -> io::Result<()> {
        let payload = disk::encode(rec)?;
        if payload.len() > MAX_RECORD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("snapshot record of {} bytes", payload.len()),
            ));
        }
        self.out.write_all(&(payload.len() as u32).to_le_bytes())?;
        self.out.write_all(&crc32(&payload).to_le_bytes())?;
        self.out.write_all(&payload)?;
        self.records += 1;
        self.bytes += (FRAME_HEADER + payload.len()) as u64;
        Ok(())
    }
}

/// Writes one record per row of `table`, made by `rec` from the row's key and value.
fn dump_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    tx: &ReadTransaction,
    table: TableDefinition<K, V>,
    w: &mut SnapWriter,
    rec: impl for<'a> Fn(K::SelfType<'a>, V::SelfType<'a>) -> io::Result<SnapRecord>,
) -> io::Result<()> {
    for r in tx
        .open_table(table)
        .map_err(io_err)?
        .iter()
        .map_err(io_err)?
    {
        let (k, v) = r.map_err(io_err)?;
        w.put(&rec(k.value(), v.value())?)?;
    }
    Ok(())
}

fn read_record(r: &mut impl Read) -> io::Result<Option<SnapRecord>> {
    let mut head = [0u8; FRAME_HEADER];
    let mut got = 0;
    while got < FRAME_HEADER {
        let n = r.read(&mut head[got..])?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "snapshot: record header cut short",
            ));
        }
        got += n;
    }
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if len > MAX_RECORD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("snapshot: record length {len} over {MAX_RECORD}"),
        ));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    if crc32(&payload) != crc {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "snapshot: record checksum mismatch",
        ));
    }
    disk::decode(&payload).map(Some)
}

/// The tables of one write transaction, with the change counter.
pub struct Writer<'t> {
    meta: redb::Table<'t, &'static str, &'static [u8]>,
    kv: redb::Table<'t, &'static str, &'static str>,
    domains: redb::Table<'t, &'static str, &'static [u8]>,
    accounts: redb::Table<'t, &'static str, &'static [u8]>,
    aliases: redb::Table<'t, &'static str, &'static str>,
    changes: redb::Table<'t, u64, &'static [u8]>,
    batches: redb::Table<'t, &'static str, &'static [u8]>,
    batch_order: redb::Table<'t, u64, &'static str>,
    pub(super) nt: NumberTables<'t>,
    version: u64,
    first_change: u64,
}

impl<'t> Writer<'t> {
    fn new(tx: &'t WriteTransaction) -> io::Result<Writer<'t>> {
        let meta = tx.open_table(META).map_err(io_err)?;
        let version = get_meta(&meta, "version")?.unwrap_or(0);
        let first_change = get_meta(&meta, "first_change")?.unwrap_or(0);
        Ok(Writer {
            meta,
            kv: tx.open_table(KV).map_err(io_err)?,
            domains: tx.open_table(DOMAINS).map_err(io_err)?,
            accounts: tx.open_table(ACCOUNTS).map_err(io_err)?,
            aliases: tx.open_table(ALIASES).map_err(io_err)?,
            changes: tx.open_table(CHANGES).map_err(io_err)?,
            batches: tx.open_table(BATCHES).map_err(io_err)?,
            batch_order: tx.open_table(BATCH_ORDER).map_err(io_err)?,
            nt: NumberTables::open(tx)?,
            version,
            first_change,
        })
    }

    fn finish(mut self) -> io::Result<()> {
        // Drop the oldest changes past the bound (deterministic: every manager keeps the same).
        if self.version > CHANGES_KEPT {
            let keep_from = self.version - CHANGES_KEPT + 1;
            let from = self.first_change.max(1);
            if from < keep_from {
                for v in from..keep_from {
                    self.changes.remove(v).map_err(io_err)?;
                }
                self.first_change = keep_from;
            }
        }
        self.meta
            .insert("version", disk::encode(&self.version)?.as_slice())
            .map_err(io_err)?;
        self.meta
            .insert("first_change", disk::encode(&self.first_change)?.as_slice())
            .map_err(io_err)?;
        Ok(())
    }

    /// Sets `key` in the generic map; the previous value.
    pub fn kv_set(&mut self, key: &str, value: &str) -> io::Result<Option<String>> {
        Ok(self
            .kv
            .insert(key, value)
            .map_err(io_err)?
            .map(|v| v.value().to_string()))
    }

    /// Removes `key` from the generic map; the previous value.
    pub fn kv_delete(&mut self, key: &str) -> io::Result<Option<String>> {
        Ok(self
            .kv
            .remove(key)
            .map_err(io_err)?
            .map(|v| v.value().to_string()))
    }

    /// Sets the farm's SIP nonce key unless one is set; whether it was set now. Not a
    /// provisioning change (the change version stays).
    pub fn set_nonce_key_once(&mut self, key: &NonceSecret) -> io::Result<bool> {
        if self.meta.get(NONCE_KEY).map_err(io_err)?.is_some() {
            return Ok(false);
        }
        self.meta
            .insert(NONCE_KEY, disk::encode(key)?.as_slice())
            .map_err(io_err)?;
        Ok(true)
    }

    /// The change version now.
    pub(super) fn version(&self) -> u64 {
        self.version
    }

    /// The next number-history sequence (kept in `meta`).
    pub(super) fn next_history_seq(&mut self) -> io::Result<u64> {
        let seq: u64 = get_meta(&self.meta, "history_seq")?.unwrap_or(0) + 1;
        self.meta
            .insert("history_seq", disk::encode(&seq)?.as_slice())
            .map_err(io_err)?;
        Ok(seq)
    }

    /// Whether account `aor` exists.
    pub(super) fn account_exists(&self, aor: &str) -> io::Result<bool> {
        match key_of_aor(aor) {
            Some(k) => Ok(self.accounts.get(k.as_str()).map_err(io_err)?.is_some()),
            None => Ok(false),
        }
    }

    /// Whether domain `name` is provisioned.
    pub(super) fn domain_exists(&self, name: &str) -> io::Result<bool> {
        self.has_domain(name)
    }

    pub(super) fn log(&mut self, at_ms: u64, what: ChangeKind) -> io::Result<u64> {
        self.version += 1;
        if self.first_change == 0 {
            self.first_change = self.version;
        }
        let c = Change {
            version: self.version,
            at_ms,
            what,
        };
        self.changes
            .insert(c.version, disk::encode(&c)?.as_slice())
            .map_err(io_err)?;
        Ok(self.version)
    }

    fn get_account(&self, key: &str) -> io::Result<Option<Account>> {
        match self.accounts.get(key).map_err(io_err)? {
            Some(v) => Ok(Some(disk::decode(v.value())?)),
            None => Ok(None),
        }
    }

    fn put_account(&mut self, a: &Account) -> io::Result<()> {
        let key = row_key(&a.user, &a.domain);
        self.accounts
            .insert(key.as_str(), disk::encode(a)?.as_slice())
            .map_err(io_err)?;
        Ok(())
    }

    fn has_domain(&self, name: &str) -> io::Result<bool> {
        Ok(self.domains.get(name).map_err(io_err)?.is_some())
    }

    /// Applies one provisioning command.
    pub fn apply(&mut self, cmd: ProvisionCommand) -> io::Result<ProvisionResult> {
        let at = cmd.at_ms;
        let outcome = match cmd.op {
            ProvisionOp::AddDomain { name } => self.add_domain(at, name)?,
            ProvisionOp::RemoveDomain { name } => self.remove_domain(at, name)?,
            ProvisionOp::AddAccount { account } => self.add_account(at, account)?,
            ProvisionOp::UpdateAccount { aor, patch } => self.update_account(at, &aor, patch)?,
            ProvisionOp::RemoveAccount { aor } => self.remove_account(at, &aor)?,
            ProvisionOp::AddAlias { alias, aor } => self.add_alias(at, &alias, &aor)?,
            ProvisionOp::RemoveAlias { alias } => self.remove_alias(at, &alias)?,
            ProvisionOp::Import { batch, rows } => self.import(at, batch, rows)?,
            ProvisionOp::AddCarrier { ocn, name, actor } => {
                self.add_carrier(at, ocn, name, &actor)?
            }
            ProvisionOp::RemoveCarrier { ocn, actor } => self.remove_carrier(at, ocn, &actor)?,
            ProvisionOp::AddBlock {
                first,
                last,
                carrier,
                actor,
            } => self.add_block(at, first, last, carrier, &actor)?,
            ProvisionOp::RemoveBlock { first, actor } => self.remove_block(at, first, &actor)?,
            ProvisionOp::Allocate {
                want,
                patch,
                actor,
                request,
            } => self.idempotent(&request, |w| w.allocate(at, want, patch, &actor))?,
            ProvisionOp::UpdateNumber {
                number,
                patch,
                actor,
                request,
            } => self.idempotent(&request, |w| w.update_number(at, number, patch, &actor))?,
            ProvisionOp::ReleaseNumber {
                number,
                actor,
                request,
            } => self.idempotent(&request, |w| w.release_number(at, number, &actor))?,
            ProvisionOp::PortNumber {
                number,
                carrier,
                proof,
                patch,
                actor,
                request,
            } => self.idempotent(&request, |w| {
                w.port_number(at, number, carrier, proof, patch, &actor)
            })?,
            ProvisionOp::SetDialPlan {
                domain,
                plan,
                actor,
            } => self.set_dial_plan(at, domain, plan, &actor)?,
        };
        Ok(ProvisionResult {
            outcome,
            version: self.version,
        })
    }

    fn add_domain(&mut self, at: u64, name: String) -> io::Result<Result<Applied, ProvError>> {
        if self.has_domain(&name)? {
            return Ok(Err(ProvError::exists(
                "name",
                format!("domain {name} is provisioned already"),
            )));
        }
        let version = self.log(at, ChangeKind::DomainAdded { name: name.clone() })?;
        let d = Domain {
            name,
            version,
            at_ms: at,
        };
        self.domains
            .insert(d.name.as_str(), disk::encode(&d)?.as_slice())
            .map_err(io_err)?;
        Ok(Ok(Applied::Domain(d)))
    }

    fn remove_domain(&mut self, at: u64, name: String) -> io::Result<Result<Applied, ProvError>> {
        if !self.has_domain(&name)? {
            return Ok(Err(ProvError::not_found(
                "name",
                format!("domain {name} is not provisioned"),
            )));
        }
        let lo = format!("{name}\0");
        let hi = format!("{name}\u{1}");
        let accounts = self
            .accounts
            .range(lo.as_str()..hi.as_str())
            .map_err(io_err)?
            .count();
        let aliases = self
            .aliases
            .range(lo.as_str()..hi.as_str())
            .map_err(io_err)?
            .count();
        if accounts + aliases > 0 {
            return Ok(Err(ProvError::conflict(
                "name",
                format!(
                    "domain {name} still has {accounts} accounts and {aliases} aliases; remove them first"
                ),
            )));
        }
        self.domains.remove(name.as_str()).map_err(io_err)?;
        self.drop_dial_plan(&name)?;
        self.log(at, ChangeKind::DomainRemoved { name })?;
        Ok(Ok(Applied::Removed))
    }

    fn check_new(&self, field: &str, user: &str, domain: &str) -> io::Result<Option<ProvError>> {
        if !self.has_domain(domain)? {
            return Ok(Some(ProvError::not_found(
                "domain",
                format!("domain {domain} is not provisioned"),
            )));
        }
        let key = row_key(user, domain);
        if self.accounts.get(key.as_str()).map_err(io_err)?.is_some() {
            return Ok(Some(ProvError::exists(
                field,
                format!("account {user}@{domain} exists already"),
            )));
        }
        if let Some(owner) = self.aliases.get(key.as_str()).map_err(io_err)? {
            return Ok(Some(ProvError::exists(
                field,
                format!("{user}@{domain} is an alias of {} already", owner.value()),
            )));
        }
        Ok(None)
    }

    fn add_account(
        &mut self,
        at: u64,
        new: super::model::NewAccount,
    ) -> io::Result<Result<Applied, ProvError>> {
        if let Some(e) = self.check_new("user", &new.user, &new.domain)? {
            return Ok(Err(e));
        }
        let mut a = Account {
            user: new.user,
            domain: new.domain,
            display_name: new.display_name,
            enabled: new.enabled,
            ha1: new.ha1,
            aliases: Vec::new(),
            created_version: 0,
            updated_version: 0,
            created_ms: at,
            updated_ms: at,
        };
        a.created_version = self.version + 1;
        a.updated_version = self.version + 1;
        self.put_account(&a)?;
        self.log(
            at,
            ChangeKind::AccountPut {
                account: Box::new(a.clone()),
            },
        )?;
        Ok(Ok(Applied::Account(Box::new(a))))
    }

    fn update_account(
        &mut self,
        at: u64,
        aor: &str,
        patch: super::model::AccountPatch,
    ) -> io::Result<Result<Applied, ProvError>> {
        let Some(key) = key_of_aor(aor) else {
            return Ok(Err(ProvError::invalid("aor", "not user@domain")));
        };
        let Some(mut a) = self.get_account(&key)? else {
            return Ok(Err(ProvError::not_found(
                "aor",
                format!("no account {aor}"),
            )));
        };
        if let Some(d) = patch.display_name {
            a.display_name = d;
        }
        if let Some(e) = patch.enabled {
            a.enabled = e;
        }
        if let Some(h) = patch.ha1 {
            a.ha1 = h;
        }
        a.updated_version = self.version + 1;
        a.updated_ms = at;
        self.put_account(&a)?;
        self.log(
            at,
            ChangeKind::AccountPut {
                account: Box::new(a.clone()),
            },
        )?;
        Ok(Ok(Applied::Account(Box::new(a))))
    }

    fn remove_account(&mut self, at: u64, aor: &str) -> io::Result<Result<Applied, ProvError>> {
        let Some(key) = key_of_aor(aor) else {
            return Ok(Err(ProvError::invalid("aor", "not user@domain")));
        };
        let Some(a) = self.get_account(&key)? else {
            return Ok(Err(ProvError::not_found(
                "aor",
                format!("no account {aor}"),
            )));
        };
        for alias in &a.aliases {
            if let Some(k) = key_of_aor(alias) {
                self.aliases.remove(k.as_str()).map_err(io_err)?;
            }
        }
        self.accounts.remove(key.as_str()).map_err(io_err)?;
        self.unroute_account(at, &a.aor())?;
        self.log(
            at,
            ChangeKind::AccountRemoved {
                aor: a.aor(),
                aliases: a.aliases,
            },
        )?;
        Ok(Ok(Applied::Removed))
    }

    fn add_alias(
        &mut self,
        at: u64,
        alias: &str,
        aor: &str,
    ) -> io::Result<Result<Applied, ProvError>> {
        let Some(key) = key_of_aor(aor) else {
            return Ok(Err(ProvError::invalid("aor", "not user@domain")));
        };
        let Some(mut a) = self.get_account(&key)? else {
            return Ok(Err(ProvError::not_found(
                "aor",
                format!("no account {aor}"),
            )));
        };
        let Some((user, domain)) = alias.rsplit_once('@') else {
            return Ok(Err(ProvError::invalid("alias", "not user@domain")));
        };
        if let Some(e) = self.check_new("alias", user, domain)? {
            return Ok(Err(e));
        }
        let target = a.aor();
        let akey = row_key(user, domain);
        self.aliases
            .insert(akey.as_str(), target.as_str())
            .map_err(io_err)?;
        a.aliases.push(alias.to_string());
        a.aliases.sort();
        a.updated_version = self.version + 1;
        a.updated_ms = at;
        self.put_account(&a)?;
        self.log(
            at,
            ChangeKind::AliasAdded {
                alias: alias.to_string(),
                aor: target,
            },
        )?;
        Ok(Ok(Applied::Alias(Box::new(a))))
    }

    fn remove_alias(&mut self, at: u64, alias: &str) -> io::Result<Result<Applied, ProvError>> {
        let Some(akey) = key_of_aor(alias) else {
            return Ok(Err(ProvError::invalid("alias", "not user@domain")));
        };
        let Some(target) = self
            .aliases
            .remove(akey.as_str())
            .map_err(io_err)?
            .map(|v| v.value().to_string())
        else {
            return Ok(Err(ProvError::not_found(
                "alias",
                format!("no alias {alias}"),
            )));
        };
        if let Some(key) = key_of_aor(&target) {
            if let Some(mut a) = self.get_account(&key)? {
                a.aliases
                    .retain(|x| key_of_aor(x).as_deref() != Some(akey.as_str()));
                a.updated_version = self.version + 1;
                a.updated_ms = at;
                self.put_account(&a)?;
            }
        }
        self.log(
            at,
            ChangeKind::AliasRemoved {
                alias: alias.to_string(),
                aor: target,
            },
        )?;
        Ok(Ok(Applied::Removed))
    }

    fn import(
        &mut self,
        at: u64,
        batch: String,
        rows: Vec<(u64, super::model::NewAccount)>,
    ) -> io::Result<Result<Applied, ProvError>> {
        if let Some(done) = self.batches.get(batch.as_str()).map_err(io_err)? {
            let rows: Vec<RowOutcome> = disk::decode(done.value())?;
            return Ok(Ok(Applied::Import { rows, first: false }));
        }
        if rows.len() > MAX_IMPORT_BATCH {
            return Ok(Err(ProvError::invalid(
                "rows",
                format!("at most {MAX_IMPORT_BATCH} rows per batch"),
            )));
        }
        let mut out = Vec::with_capacity(rows.len());
        for (row, new) in rows {
            let error = self.add_account(at, new)?.err();
            out.push(RowOutcome { row, error });
        }
        self.batches
            .insert(batch.as_str(), disk::encode(&out)?.as_slice())
            .map_err(io_err)?;
        let seq = match self.batch_order.last().map_err(io_err)? {
            Some((k, _)) => k.value() + 1,
            None => 1,
        };
        self.batch_order
            .insert(seq, batch.as_str())
            .map_err(io_err)?;
        if seq > BATCHES_KEPT {
            if let Some((_, oldest)) = self.batch_order.pop_first().map_err(io_err)? {
                self.batches.remove(oldest.value()).map_err(io_err)?;
            }
        }
        Ok(Ok(Applied::Import {
            rows: out,
            first: true,
        }))
    }
}
