//! Integration tests: every test starts a farm of real processes (each member on its own
//! loopback address) with `onehop-farm up --detach` and talks to it as a client would.
//! Farms are started one at a time (see `harness::Farm`), so timings are measured on a machine
//! not busy with another farm. The `netns_*` tests run each member in a network namespace of
//! its own instead, so links between members can be cut, made lossy or slow (`netns.rs`).

mod harness;

mod auth;
mod certs_time;
mod chaos;
mod deploy;
mod dns;
mod enum_dns;
mod eventserver_loss;
mod failover;
mod farm;
mod floods;
mod frames;
mod interdomain;
mod metrics;
mod monitor;
mod netns;
mod netns_badlinks;
mod netns_partition;
mod netns_pause;
mod numbers;
mod numbers_sip;
mod provisioning;
mod queue_bytes;
mod registrar_crash;
mod relay;
mod restart;
mod security;
mod sip;
mod sip_lossless;
mod sip_tls;
mod sip_transport;
mod sipp;
mod store_caps;
mod timing;
