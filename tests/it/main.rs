//! Integration tests: every test starts a farm of real processes (each member on its own
//! loopback address) with `onehop-farm up --detach` and talks to it as a client would.
//! Farms are started one at a time (see `harness::Farm`), so timings are measured on a machine
//! not busy with another farm.

mod harness;

mod auth;
mod certs_time;
mod deploy;
mod dns;
mod eventserver_loss;
mod failover;
mod farm;
mod floods;
mod frames;
mod interdomain;
mod metrics;
mod monitor;
mod provisioning;
mod registrar_crash;
mod relay;
mod restart;
mod security;
mod sip;
mod sip_lossless;
mod sip_tls;
mod sip_transport;
mod sipp;
mod timing;
