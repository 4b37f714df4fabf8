//! placeholder
pub mod raft;
