//! The farm's provisioning data, kept by the managers' Raft state machine: domains, subscriber
//! accounts (credentials only as HA1 digests), aliases and a change log that any reader can
//! follow from a version.
//!
//! - [`model`]: the records and the commands (replicated in the Raft log).
//! - [`db`]: the redb database the state machine applies them to, with dumps and restores
//!   for snapshots.
//! - [`numbers`]: the number registry's records (carriers, blocks, numbers) and their rules;
//!   [`number_store`]: their tables and commands.
//! - [`push`]: the active manager pushing account changes to the nodes that own them.

pub mod db;
pub mod model;
pub mod number_store;
pub mod numbers;
pub mod push;

#[cfg(test)]
mod number_tests;
#[cfg(test)]
mod tests;
