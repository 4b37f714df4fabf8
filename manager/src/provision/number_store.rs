//! The number registry's tables in the provisioning database, the commands that change them
//! (applied by the Raft state machine, so every manager decides alike) and their reads.
//!
//! # Tables
//! | table | key | value |
//! |---|---|---|
//! | `carriers` | OCN | [`Carrier`] |
//! | `blocks` | number length (2 digits) then `first` | [`Block`] |
//! | `numbers` | the number `+15550100` | [`Number`] |
//! | `number_history` | number `\0` sequence (20 digits) | [`NumberEvent`] |
//! | `account_numbers` | AOR `\0` number | nothing (the numbers routed to an account) |
//! | `number_requests` | request id | the [`Applied`] outcome of an idempotent request |
//! | `number_request_order` | sequence | request id (the oldest are forgotten past [`REQUESTS_KEPT`]) |
//! | `dial_plans` | domain | [`DialPlan`] |
//!
//! Blocks are keyed by length first, so the block that may hold a number is the last one at
//! or before it among those of its length: one range read. A number is allocated exactly once
//! because the check and the write happen in one command of the replicated log: two managers
//! asked for one number at the same moment both forward to the leader, whose log orders them,
//! and the second finds the number taken (409).

use std::io;

use onehop_overlay::provision::{DialPlan, EnumEntry, EnumUpdate, NumberRoute};
use redb::{ReadableTable, TableDefinition, WriteTransaction};

use super::db::{io_err, ProvisionDb, Writer};
use super::model::{Applied, ChangeKind, ProvError};
use super::numbers::*;
use crate::raft::disk;

pub(super) const CARRIERS: TableDefinition<&str, &[u8]> = TableDefinition::new("carriers");
pub(super) const BLOCKS: TableDefinition<&str, &[u8]> = TableDefinition::new("blocks");
pub(super) const NUMBERS: TableDefinition<&str, &[u8]> = TableDefinition::new("numbers");
pub(super) const HISTORY: TableDefinition<&str, &[u8]> = TableDefinition::new("number_history");
pub(super) const ACCOUNT_NUMBERS: TableDefinition<&str, &str> =
    TableDefinition::new("account_numbers");
pub(super) const REQUESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("number_requests");
pub(super) const REQUEST_ORDER: TableDefinition<u64, &str> =
    TableDefinition::new("number_request_order");
pub(super) const DIAL_PLANS: TableDefinition<&str, &[u8]> = TableDefinition::new("dial_plans");

/// Idempotent request outcomes remembered (for retries after a failover).
pub const REQUESTS_KEPT: u64 = 200_000;
/// Most history entries kept per number (the oldest go first).
pub const HISTORY_KEPT: usize = 1_000;
/// Most entries of one ENUM reply.
pub const ENUM_PAGE: usize = 5_000;
/// Most bytes of the entries of one ENUM reply (below the farm client's 1 MiB reply cap).
pub const ENUM_PAGE_BYTES: usize = 512 << 10;
/// Most idempotency key characters.
pub const MAX_REQUEST_ID: usize = 128;

/// The `blocks` key of a block starting at `first`.
pub fn block_key(first: &str) -> String {
    format!("{:02}{first}", first.len())
}

/// The tables of the number registry in one write transaction.
pub struct NumberTables<'t> {
    carriers: redb::Table<'t, &'static str, &'static [u8]>,
    blocks: redb::Table<'t, &'static str, &'static [u8]>,
    numbers: redb::Table<'t, &'static str, &'static [u8]>,
    history: redb::Table<'t, &'static str, &'static [u8]>,
    account_numbers: redb::Table<'t, &'static str, &'static str>,
    requests: redb::Table<'t, &'static str, &'static [u8]>,
    request_order: redb::Table<'t, u64, &'static str>,
    dial_plans: redb::Table<'t, &'static str, &'static [u8]>,
}

impl<'t> NumberTables<'t> {
    /// Opens them in `tx`.
    pub(super) fn open(tx: &'t WriteTransaction) -> io::Result<NumberTables<'t>> {
        Ok(NumberTables {
            carriers: tx.open_table(CARRIERS).map_err(io_err)?,
            blocks: tx.open_table(BLOCKS).map_err(io_err)?,
            numbers: tx.open_table(NUMBERS).map_err(io_err)?,
            history: tx.open_table(HISTORY).map_err(io_err)?,
            account_numbers: tx.open_table(ACCOUNT_NUMBERS).map_err(io_err)?,
            requests: tx.open_table(REQUESTS).map_err(io_err)?,
            request_order: tx.open_table(REQUEST_ORDER).map_err(io_err)?,
            dial_plans: tx.open_table(DIAL_PLANS).map_err(io_err)?,
        })
    }

    /// Creates the tables that do not exist yet (a database of an earlier version).
    pub(super) fn create(tx: &WriteTransaction) -> io::Result<()> {
        NumberTables::open(tx).map(|_| ())
    }

    /// Deletes every table (before a snapshot is restored).
    pub(super) fn delete(tx: &WriteTransaction) -> io::Result<()> {
        for t in [CARRIERS, BLOCKS, NUMBERS, HISTORY, REQUESTS, DIAL_PLANS] {
            tx.delete_table(t).map_err(io_err)?;
        }
        tx.delete_table(ACCOUNT_NUMBERS).map_err(io_err)?;
        tx.delete_table(REQUEST_ORDER).map_err(io_err)?;
        Ok(())
    }

    fn get<T: serde::de::DeserializeOwned>(
        t: &redb::Table<'t, &'static str, &'static [u8]>,
        key: &str,
    ) -> io::Result<Option<T>> {
        match t.get(key).map_err(io_err)? {
            Some(v) => Ok(Some(disk::decode(v.value())?)),
            None => Ok(None),
        }
    }

    fn number(&self, n: &str) -> io::Result<Option<Number>> {
        Self::get(&self.numbers, n)
    }

    fn put_number(&mut self, n: &Number) -> io::Result<()> {
        self.numbers
            .insert(n.number.as_str(), disk::encode(n)?.as_slice())
            .map_err(io_err)?;
        Ok(())
    }

    fn block(&self, first: &str) -> io::Result<Option<Block>> {
        Self::get(&self.blocks, &block_key(first))
    }

    fn put_block(&mut self, b: &Block) -> io::Result<()> {
        self.blocks
            .insert(block_key(&b.first).as_str(), disk::encode(b)?.as_slice())
            .map_err(io_err)?;
        Ok(())
    }

    /// The block that holds `number`, if one does.
    fn block_of(&self, number: &str) -> io::Result<Option<Block>> {
        let lo = format!("{:02}", number.len());
        let hi = block_key(number);
        let mut range = self
            .blocks
            .range(lo.as_str()..=hi.as_str())
            .map_err(io_err)?;
        match range.next_back() {
            Some(r) => {
                let (_, v) = r.map_err(io_err)?;
                let b: Block = disk::decode(v.value())?;
                Ok(b.holds(number).then_some(b))
            }
            None => Ok(None),
        }
    }

    fn record_history(&mut self, seq: u64, number: &str, ev: &NumberEvent) -> io::Result<()> {
        let key = format!("{number}\0{seq:020}");
        self.history
            .insert(key.as_str(), disk::encode(ev)?.as_slice())
            .map_err(io_err)?;
        // Keep the newest HISTORY_KEPT of this number.
        let lo = format!("{number}\0");
        let hi = format!("{number}\u{1}");
        let count = self
            .history
            .range(lo.as_str()..hi.as_str())
            .map_err(io_err)?
            .count();
        if count > HISTORY_KEPT {
            let oldest = self
                .history
                .range(lo.as_str()..hi.as_str())
                .map_err(io_err)?
                .next()
                .transpose()
                .map_err(io_err)?
                .map(|(k, _)| k.value().to_string());
            if let Some(k) = oldest {
                self.history.remove(k.as_str()).map_err(io_err)?;
            }
        }
        Ok(())
    }

    fn link(&mut self, route: &Option<NumberRoute>, number: &str, on: bool) -> io::Result<()> {
        if let Some(NumberRoute::Account(aor)) = route {
            let key = format!("{aor}\0{number}");
            if on {
                self.account_numbers
                    .insert(key.as_str(), "")
                    .map_err(io_err)?;
            } else {
                self.account_numbers.remove(key.as_str()).map_err(io_err)?;
            }
        }
        Ok(())
    }
}

type Outcome = io::Result<Result<Applied, ProvError>>;

impl Writer<'_> {
    /// Records in `n`'s history the change just logged.
    fn event(&mut self, n: &Number, by: &str, action: &str, detail: String) -> io::Result<()> {
        self.event_at(self.version(), n, by, action, detail)
    }

    /// Records an event of `n` at change `version` (0: a refusal, which changes no version).
    fn event_at(
        &mut self,
        version: u64,
        n: &Number,
        by: &str,
        action: &str,
        detail: String,
    ) -> io::Result<()> {
        let seq = self.next_history_seq()?;
        let ev = NumberEvent {
            version,
            at_ms: n.updated_ms,
            by: by.to_string(),
            action: action.to_string(),
            detail,
            carrier: n.carrier.clone(),
            route: n.route.clone(),
        };
        self.nt.record_history(seq, &n.number, &ev)
    }

    fn carrier_exists(&self, ocn: &str) -> io::Result<bool> {
        Ok(self.nt.carriers.get(ocn).map_err(io_err)?.is_some())
    }

    /// An outcome remembered for `request`, if any.
    pub(super) fn remembered(&self, request: &Option<String>) -> io::Result<Option<Applied>> {
        match request {
            Some(id) => NumberTables::get(&self.nt.requests, id),
            None => Ok(None),
        }
    }

    /// Remembers the outcome of a request that succeeded.
    fn remember(&mut self, request: &Option<String>, outcome: &Outcome) -> io::Result<()> {
        let (Some(id), Ok(Ok(applied))) = (request, outcome) else {
            return Ok(());
        };
        self.nt
            .requests
            .insert(id.as_str(), disk::encode(applied)?.as_slice())
            .map_err(io_err)?;
        let seq = match self.nt.request_order.last().map_err(io_err)? {
            Some((k, _)) => k.value() + 1,
            None => 1,
        };
        self.nt
            .request_order
            .insert(seq, id.as_str())
            .map_err(io_err)?;
        if seq > REQUESTS_KEPT {
            if let Some((_, oldest)) = self.nt.request_order.pop_first().map_err(io_err)? {
                self.nt.requests.remove(oldest.value()).map_err(io_err)?;
            }
        }
        Ok(())
    }

    /// Runs an idempotent number command: the remembered outcome if `request` was applied
    /// before, else `f`'s, remembered when it succeeded.
    pub(super) fn idempotent(
        &mut self,
        request: &Option<String>,
        f: impl FnOnce(&mut Self) -> Outcome,
    ) -> Outcome {
        if let Some(applied) = self.remembered(request)? {
            return Ok(Ok(applied));
        }
        let out = f(self);
        self.remember(request, &out)?;
        out
    }

    pub(super) fn add_carrier(
        &mut self,
        at: u64,
        ocn: String,
        name: String,
        actor: &Actor,
    ) -> Outcome {
        if let Err(e) = actor.farm_wide("adding a carrier") {
            return Ok(Err(e));
        }
        if self.carrier_exists(&ocn)? {
            return Ok(Err(ProvError::exists(
                "ocn",
                format!("carrier {ocn} exists already"),
            )));
        }
        let version = self.version() + 1;
        let c = Carrier {
            ocn,
            name,
            version,
            at_ms: at,
        };
        self.nt
            .carriers
            .insert(c.ocn.as_str(), disk::encode(&c)?.as_slice())
            .map_err(io_err)?;
        self.log(at, ChangeKind::CarrierAdded { carrier: c.clone() })?;
        Ok(Ok(Applied::Carrier(c)))
    }

    pub(super) fn remove_carrier(&mut self, at: u64, ocn: String, actor: &Actor) -> Outcome {
        if let Err(e) = actor.farm_wide("removing a carrier") {
            return Ok(Err(e));
        }
        if !self.carrier_exists(&ocn)? {
            return Ok(Err(ProvError::not_found(
                "ocn",
                format!("no carrier {ocn}"),
            )));
        }
        let mut blocks = 0;
        for r in self.nt.blocks.iter().map_err(io_err)? {
            let (_, v) = r.map_err(io_err)?;
            let b: Block = disk::decode(v.value())?;
            if b.carrier == ocn {
                blocks += 1;
            }
        }
        if blocks > 0 {
            return Ok(Err(ProvError::conflict(
                "ocn",
                format!("carrier {ocn} still holds {blocks} blocks; remove them first"),
            )));
        }
        let mut numbers = 0;
        for r in self.nt.numbers.iter().map_err(io_err)? {
            let (_, v) = r.map_err(io_err)?;
            let n: Number = disk::decode(v.value())?;
            if n.carrier == ocn {
                numbers += 1;
            }
        }
        if numbers > 0 {
            return Ok(Err(ProvError::conflict(
                "ocn",
                format!(
                    "carrier {ocn} still serves {numbers} ported-in numbers; release them first"
                ),
            )));
        }
        self.nt.carriers.remove(ocn.as_str()).map_err(io_err)?;
        self.log(at, ChangeKind::CarrierRemoved { ocn })?;
        Ok(Ok(Applied::Removed))
    }

    pub(super) fn add_block(
        &mut self,
        at: u64,
        first: String,
        last: String,
        carrier: String,
        actor: &Actor,
    ) -> Outcome {
        if let Err(e) = actor.farm_wide("adding a block") {
            return Ok(Err(e));
        }
        let (first, last) = match check_block(&first, &last) {
            Ok(b) => b,
            Err(e) => return Ok(Err(e)),
        };
        if !self.carrier_exists(&carrier)? {
            return Ok(Err(ProvError::not_found(
                "carrier",
                format!("no carrier {carrier}; add it first"),
            )));
        }
        // The block of this length starting at or before `last` and the first after `first`
        // are the only ones that can overlap.
        let lo = format!("{:02}", first.len());
        let hi = block_key(&last);
        if let Some(r) = self
            .nt
            .blocks
            .range(lo.as_str()..=hi.as_str())
            .map_err(io_err)?
            .next_back()
        {
            let (_, v) = r.map_err(io_err)?;
            let other: Block = disk::decode(v.value())?;
            if other.last.as_str() >= first.as_str() {
                return Ok(Err(ProvError::conflict(
                    "first",
                    format!(
                        "{first}-{last} overlaps block {}-{} of carrier {}",
                        other.first, other.last, other.carrier
                    ),
                )));
            }
        }
        let version = self.version() + 1;
        let b = Block {
            next_free: first.clone(),
            first,
            last,
            carrier,
            allocated: 0,
            version,
            at_ms: at,
        };
        self.nt.put_block(&b)?;
        self.log(at, ChangeKind::BlockAdded { block: b.clone() })?;
        Ok(Ok(Applied::Block(b)))
    }

    pub(super) fn remove_block(&mut self, at: u64, first: String, actor: &Actor) -> Outcome {
        if let Err(e) = actor.farm_wide("removing a block") {
            return Ok(Err(e));
        }
        let Some(b) = self.nt.block(&first)? else {
            return Ok(Err(ProvError::not_found(
                "first",
                format!("no block starts at {first}"),
            )));
        };
        if b.allocated > 0 {
            return Ok(Err(ProvError::conflict(
                "first",
                format!(
                    "{} numbers of block {}-{} are allocated; release them first",
                    b.allocated, b.first, b.last
                ),
            )));
        }
        self.nt
            .blocks
            .remove(block_key(&first).as_str())
            .map_err(io_err)?;
        self.log(
            at,
            ChangeKind::BlockRemoved {
                first,
                carrier: b.carrier,
            },
        )?;
        Ok(Ok(Applied::Removed))
    }

    /// Checks that an account route names an account.
    fn check_route(&self, patch: &NumberPatch) -> io::Result<Option<ProvError>> {
        if let Some(Some(NumberRoute::Account(aor))) = &patch.route {
            if self.account_exists(aor)? {
                return Ok(None);
            }
            return Ok(Some(ProvError::not_found(
                "route.account",
                format!("no account {aor}"),
            )));
        }
        Ok(None)
    }

    pub(super) fn allocate(
        &mut self,
        at: u64,
        want: Want,
        patch: NumberPatch,
        actor: &Actor,
    ) -> Outcome {
        let (mut block, number) = match want {
            Want::Number(n) => {
                let Some(b) = self.nt.block_of(&n)? else {
                    return Ok(Err(ProvError::not_found(
                        "number",
                        format!("no block holds {n}; a number is allocated from a carrier's block"),
                    )));
                };
                if let Err(e) =
                    actor.may_change(&b.carrier, "number", &format!("block {}", b.first))
                {
                    return Ok(Err(e));
                }
                if let Some(held) = self.nt.number(&n)? {
                    return Ok(Err(ProvError::exists(
                        "number",
                        format!("{n} is allocated already (carrier {})", held.carrier),
                    )));
                }
                (b, n)
            }
            Want::NextFree(first) => {
                let Some(b) = self.nt.block(&first)? else {
                    return Ok(Err(ProvError::not_found(
                        "block",
                        format!("no block starts at {first}"),
                    )));
                };
                if let Err(e) = actor.may_change(&b.carrier, "block", &format!("block {}", b.first))
                {
                    return Ok(Err(e));
                }
                let len = b.first.len();
                let last = digits_value(&b.last);
                let mut v = digits_value(&b.next_free);
                loop {
                    if v > last {
                        return Ok(Err(ProvError::conflict(
                            "block",
                            format!("block {}-{} has no free number", b.first, b.last),
                        )));
                    }
                    let n = number_of(v, len);
                    if self.nt.number(&n)?.is_none() {
                        break (b, n);
                    }
                    v += 1;
                }
            }
        };
        if let Some(e) = self.check_route(&patch)? {
            return Ok(Err(e));
        }
        let version = self.version() + 1;
        let mut n = Number {
            number: number.clone(),
            block: block.first.clone(),
            carrier: block.carrier.clone(),
            assignee: None,
            route: None,
            props: NumberProps::default(),
            pin: None,
            pin_failures: 0,
            locked_until_ms: 0,
            created_version: version,
            updated_version: version,
            created_ms: at,
            updated_ms: at,
        };
        patch.apply(&mut n);
        self.nt.put_number(&n)?;
        self.nt.link(&n.route, &n.number, true)?;
        block.allocated += 1;
        if block.next_free == number {
            let next = digits_value(&number) + 1;
            block.next_free = number_of(next.min(digits_value(&block.last) + 1), number.len());
        }
        self.nt.put_block(&block)?;
        self.log(
            at,
            ChangeKind::NumberPut {
                number: Box::new(n.public()),
            },
        )?;
        self.event(
            &n,
            &actor.name,
            "allocated",
            format!("from block {}", block.first),
        )?;
        Ok(Ok(Applied::Number(Box::new(n.clone()))))
    }

    fn held_number(&self, number: &str, actor: &Actor) -> io::Result<Result<Number, ProvError>> {
        let Some(n) = self.nt.number(number)? else {
            return Ok(Err(ProvError::not_found(
                "number",
                format!("{number} is not allocated"),
            )));
        };
        if let Err(e) = actor.may_change(&n.carrier, "number", number) {
            return Ok(Err(e));
        }
        Ok(Ok(n))
    }

    fn put_changed(&mut self, at: u64, before: &Number, n: &mut Number) -> io::Result<()> {
        n.updated_version = self.version() + 1;
        n.updated_ms = at;
        self.nt.link(&before.route, &n.number, false)?;
        self.nt.link(&n.route, &n.number, true)?;
        self.nt.put_number(n)?;
        self.log(
            at,
            ChangeKind::NumberPut {
                number: Box::new(n.public()),
            },
        )?;
        Ok(())
    }

    pub(super) fn update_number(
        &mut self,
        at: u64,
        number: String,
        patch: NumberPatch,
        actor: &Actor,
    ) -> Outcome {
        let mut n = match self.held_number(&number, actor)? {
            Ok(n) => n,
            Err(e) => return Ok(Err(e)),
        };
        if let Some(e) = self.check_route(&patch)? {
            return Ok(Err(e));
        }
        let before = n.clone();
        let what = patch.describe();
        patch.apply(&mut n);
        self.put_changed(at, &before, &mut n)?;
        self.event(&n, &actor.name, "updated", what)?;
        Ok(Ok(Applied::Number(Box::new(n.clone()))))
    }

    pub(super) fn release_number(&mut self, at: u64, number: String, actor: &Actor) -> Outcome {
        let n = match self.held_number(&number, actor)? {
            Ok(n) => n,
            Err(e) => return Ok(Err(e)),
        };
        self.nt.link(&n.route, &n.number, false)?;
        self.nt.numbers.remove(number.as_str()).map_err(io_err)?;
        if let Some(mut b) = self.nt.block(&n.block)? {
            b.allocated = b.allocated.saturating_sub(1);
            // By value: past the block's end the hint may have one digit more.
            if digits_value(&number) < digits_value(&b.next_free) {
                b.next_free = number.clone();
            }
            self.nt.put_block(&b)?;
        }
        self.log(
            at,
            ChangeKind::NumberReleased {
                number: number.clone(),
                carrier: n.carrier.clone(),
            },
        )?;
        let mut gone = n;
        gone.route = None;
        gone.updated_ms = at;
        self.event(&gone, &actor.name, "released", String::new())?;
        Ok(Ok(Applied::Removed))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn port_number(
        &mut self,
        at: u64,
        number: String,
        carrier: String,
        proof: PinProof,
        patch: NumberPatch,
        actor: &Actor,
    ) -> Outcome {
        if let Err(e) = actor.may_change(&carrier, "carrier", &format!("porting to {carrier}")) {
            return Ok(Err(e));
        }
        if !self.carrier_exists(&carrier)? {
            return Ok(Err(ProvError::not_found(
                "carrier",
                format!("no carrier {carrier}"),
            )));
        }
        let Some(mut n) = self.nt.number(&number)? else {
            return Ok(Err(ProvError::not_found(
                "number",
                format!("{number} is not allocated"),
            )));
        };
        if n.carrier == carrier {
            return Ok(Err(ProvError::conflict(
                "carrier",
                format!("{number} is served by {carrier} already"),
            )));
        }
        if at < n.locked_until_ms {
            return Ok(Err(ProvError {
                status: 429,
                code: "locked".into(),
                field: Some("pin".into()),
                message: format!(
                    "too many wrong PINs for {number}: porting it is refused for {} s more",
                    (n.locked_until_ms - at).div_ceil(1000)
                ),
            }));
        }
        let Some(pin) = n.pin.clone() else {
            return Ok(Err(ProvError::conflict(
                "pin",
                format!("{number} has no porting PIN; its carrier sets one first"),
            )));
        };
        if pin.salt != proof.salt {
            // The PIN changed between the request's read and now: not a wrong PIN.
            return Ok(Err(ProvError::conflict(
                "pin",
                format!("the PIN of {number} changed meanwhile; try again"),
            )));
        }
        if !pin.matches(&proof) {
            n.pin_failures += 1;
            let locked = n.pin_failures >= PIN_TRIES;
            if locked {
                n.locked_until_ms = at + PIN_LOCK_MS;
                n.pin_failures = 0;
            }
            n.updated_ms = at;
            self.nt.put_number(&n)?;
            let detail = if locked {
                format!("wrong PIN; locked for {} min", PIN_LOCK_MS / 60_000)
            } else {
                "wrong PIN".into()
            };
            self.event_at(
                0,
                &n,
                &actor.name,
                "port refused",
                format!("to {carrier}: {detail}"),
            )?;
            return Ok(Err(ProvError {
                status: 403,
                code: "wrong_pin".into(),
                field: Some("pin".into()),
                message: if locked {
                    format!(
                        "wrong PIN for {number}; after {PIN_TRIES} wrong PINs porting it is refused for {} minutes",
                        PIN_LOCK_MS / 60_000
                    )
                } else {
                    format!(
                        "wrong PIN for {number} ({} more tries before porting it is locked)",
                        PIN_TRIES - n.pin_failures
                    )
                },
            }));
        }
        if let Some(e) = self.check_route(&patch)? {
            return Ok(Err(e));
        }
        let before = n.clone();
        let from = std::mem::replace(&mut n.carrier, carrier.clone());
        // The old carrier's routing and assignee do not follow the number.
        n.route = None;
        n.assignee = None;
        n.pin_failures = 0;
        n.locked_until_ms = 0;
        patch.apply(&mut n);
        self.put_changed(at, &before, &mut n)?;
        self.event(
            &n,
            &actor.name,
            "ported",
            format!("from {from} to {carrier}"),
        )?;
        Ok(Ok(Applied::Number(Box::new(n.clone()))))
    }

    pub(super) fn set_dial_plan(
        &mut self,
        at: u64,
        domain: String,
        plan: Option<DialPlan>,
        actor: &Actor,
    ) -> Outcome {
        if let Err(e) = actor.farm_wide("setting a dial plan") {
            return Ok(Err(e));
        }
        if !self.domain_exists(&domain)? {
            return Ok(Err(ProvError::not_found(
                "domain",
                format!("domain {domain} is not provisioned"),
            )));
        }
        match &plan {
            Some(p) => {
                self.nt
                    .dial_plans
                    .insert(domain.as_str(), disk::encode(p)?.as_slice())
                    .map_err(io_err)?;
            }
            None => {
                self.nt.dial_plans.remove(domain.as_str()).map_err(io_err)?;
            }
        }
        self.log(
            at,
            ChangeKind::DialPlanSet {
                domain,
                plan: plan.clone(),
            },
        )?;
        Ok(Ok(Applied::DialPlan(plan)))
    }

    /// Unroutes every number routed to account `aor` (the account is being removed).
    pub(super) fn unroute_account(&mut self, at: u64, aor: &str) -> io::Result<()> {
        let lo = format!("{aor}\0");
        let hi = format!("{aor}\u{1}");
        let mut numbers = Vec::new();
        for r in self
            .nt
            .account_numbers
            .range(lo.as_str()..hi.as_str())
            .map_err(io_err)?
        {
            let (k, _) = r.map_err(io_err)?;
            if let Some((_, n)) = k.value().split_once('\0') {
                numbers.push(n.to_string());
            }
        }
        for number in numbers {
            if let Some(mut n) = self.nt.number(&number)? {
                let before = n.clone();
                n.route = None;
                self.put_changed(at, &before, &mut n)?;
                self.event(
                    &n,
                    "provisioning",
                    "updated",
                    format!("route: account {aor} removed"),
                )?;
            }
        }
        Ok(())
    }

    /// Drops a domain's dial plan (the domain is being removed).
    pub(super) fn drop_dial_plan(&mut self, domain: &str) -> io::Result<()> {
        self.nt.dial_plans.remove(domain).map_err(io_err)?;
        Ok(())
    }
}

/// A page of numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumberPage {
    /// The numbers, in order.
    pub numbers: Vec<Number>,
    /// The `after` of the next page; `None` at the end.
    pub next: Option<String>,
}

impl ProvisionDb {
    fn read_all<T: serde::de::DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
    ) -> io::Result<Vec<T>> {
        let tx = self.read_tx()?;
        let t = tx.open_table(table).map_err(io_err)?;
        let mut out = Vec::new();
        for r in t.iter().map_err(io_err)? {
            let (_, v) = r.map_err(io_err)?;
            out.push(disk::decode(v.value())?);
        }
        Ok(out)
    }

    fn read_one<T: serde::de::DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> io::Result<Option<T>> {
        let tx = self.read_tx()?;
        let t = tx.open_table(table).map_err(io_err)?;
        match t.get(key).map_err(io_err)? {
            Some(v) => Ok(Some(disk::decode(v.value())?)),
            None => Ok(None),
        }
    }

    /// Every carrier, by OCN.
    pub fn carriers(&self) -> io::Result<Vec<Carrier>> {
        self.read_all(CARRIERS)
    }

    /// One carrier.
    pub fn carrier(&self, ocn: &str) -> io::Result<Option<Carrier>> {
        self.read_one(CARRIERS, ocn)
    }

    /// Every block, by length then first number.
    pub fn blocks(&self) -> io::Result<Vec<Block>> {
        self.read_all(BLOCKS)
    }

    /// The block starting at `first`.
    pub fn block(&self, first: &str) -> io::Result<Option<Block>> {
        self.read_one(BLOCKS, &block_key(first))
    }

    /// The number `number` (canonical), PIN hash included.
    pub fn number(&self, number: &str) -> io::Result<Option<Number>> {
        self.read_one(NUMBERS, number)
    }

    /// The number `number` with the change version it was read at.
    pub fn number_at(&self, number: &str) -> io::Result<(u64, Option<Number>)> {
        let tx = self.read_tx()?;
        let version = super::db::version_in(&tx)?;
        let t = tx.open_table(NUMBERS).map_err(io_err)?;
        let n = match t.get(number).map_err(io_err)? {
            Some(v) => Some(disk::decode(v.value())?),
            None => None,
        };
        Ok((version, n))
    }

    /// A page of numbers: those of the block starting at `block` (or every number), after
    /// `after`, at most `limit` (capped at [`super::db::MAX_PAGE`]).
    pub fn numbers(
        &self,
        block: Option<&Block>,
        after: Option<&str>,
        limit: usize,
    ) -> io::Result<NumberPage> {
        let limit = limit.clamp(1, super::db::MAX_PAGE);
        let tx = self.read_tx()?;
        let t = tx.open_table(NUMBERS).map_err(io_err)?;
        let start = match (after, block) {
            (Some(a), _) => a.to_string(),
            (None, Some(b)) => b.first.clone(),
            (None, None) => String::new(),
        };
        let mut numbers: Vec<Number> = Vec::new();
        let mut next = None;
        for r in t.range(start.as_str()..).map_err(io_err)? {
            let (k, v) = r.map_err(io_err)?;
            let key = k.value();
            if after == Some(key) {
                continue;
            }
            if let Some(b) = block {
                if key > b.last.as_str() {
                    break;
                }
                if !b.holds(key) {
                    continue;
                }
            }
            if numbers.len() == limit {
                next = numbers.last().map(|n| n.number.clone());
                break;
            }
            numbers.push(disk::decode(v.value())?);
        }
        Ok(NumberPage { numbers, next })
    }

    /// The history of `number`, oldest first (every allocation it had, kept after release).
    pub fn number_history(&self, number: &str) -> io::Result<Vec<NumberEvent>> {
        let tx = self.read_tx()?;
        let t = tx.open_table(HISTORY).map_err(io_err)?;
        let lo = format!("{number}\0");
        let hi = format!("{number}\u{1}");
        let mut out = Vec::new();
        for r in t.range(lo.as_str()..hi.as_str()).map_err(io_err)? {
            let (_, v) = r.map_err(io_err)?;
            out.push(disk::decode(v.value())?);
        }
        Ok(out)
    }

    /// Every domain's dial plan, by domain.
    pub fn dial_plans(&self) -> io::Result<Vec<(String, DialPlan)>> {
        let tx = self.read_tx()?;
        let t = tx.open_table(DIAL_PLANS).map_err(io_err)?;
        let mut out = Vec::new();
        for r in t.iter().map_err(io_err)? {
            let (k, v) = r.map_err(io_err)?;
            out.push((k.value().to_string(), disk::decode(v.value())?));
        }
        Ok(out)
    }

    /// One domain's dial plan.
    pub fn dial_plan(&self, domain: &str) -> io::Result<Option<DialPlan>> {
        self.read_one(DIAL_PLANS, domain)
    }

    /// The ENUM data for a client holding everything up to `since` (see
    /// [`onehop_overlay::provision::EnumUpdate`]): changes after `since` when the change log
    /// still reaches back there, else a page of the full listing after `after`.
    pub fn enum_update(&self, since: u64, after: Option<&str>) -> io::Result<EnumUpdate> {
        if since > 0 {
            let page = self.changes(since, ENUM_PAGE)?;
            if !page.truncated {
                let mut entries = Vec::new();
                let mut version = since;
                let mut bytes = 0;
                let mut more = false;
                for c in &page.changes {
                    if bytes > ENUM_PAGE_BYTES {
                        more = true;
                        break;
                    }
                    version = c.version;
                    let e = match &c.what {
                        ChangeKind::NumberPut { number } => EnumEntry {
                            number: number.number.clone(),
                            uri: number.route.as_ref().map(NumberRoute::sip_uri),
                        },
                        ChangeKind::NumberReleased { number, .. } => EnumEntry {
                            number: number.clone(),
                            uri: None,
                        },
                        _ => continue,
                    };
                    bytes += e.number.len() + e.uri.as_ref().map_or(0, String::len) + 8;
                    entries.push(e);
                }
                if !more && page.changes.len() < ENUM_PAGE {
                    // Every change up to the version read is in this answer.
                    version = version.max(page.version);
                } else {
                    more = true;
                }
                return Ok(EnumUpdate {
                    version,
                    reset: false,
                    entries,
                    next: more.then(String::new),
                });
            }
        }
        let tx = self.read_tx()?;
        let version = super::db::version_in(&tx)?;
        let t = tx.open_table(NUMBERS).map_err(io_err)?;
        let start = after.unwrap_or("");
        let mut entries = Vec::new();
        let mut bytes = 0;
        let mut next = None;
        for r in t.range(start..).map_err(io_err)? {
            let (k, v) = r.map_err(io_err)?;
            if after == Some(k.value()) {
                continue;
            }
            if entries.len() == ENUM_PAGE || bytes > ENUM_PAGE_BYTES {
                next = entries.last().map(|e: &EnumEntry| e.number.clone());
                break;
            }
            let n: Number = disk::decode(v.value())?;
            if let Some(route) = &n.route {
                let uri = route.sip_uri();
                bytes += n.number.len() + uri.len() + 8;
                entries.push(EnumEntry {
                    number: n.number,
                    uri: Some(uri),
                });
            }
        }
        Ok(EnumUpdate {
            version,
            reset: true,
            entries,
            next,
        })
    }
}
