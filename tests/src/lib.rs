//! End-to-end tests: they spawn the real `tether-control-plane` and
//! `tether-agent` binaries on 127.0.0.1 and talk to them over real TCP, with
//! tonic clients and with grpcurl. Every scenario runs on SQLite and on
//! PostgreSQL (`TETHER_TEST_POSTGRES_URL`, which `./scripts/test` provides).
//!
//! One crate, one test binary: the scenarios are modules of this library's
//! unit tests, which links once.

#[cfg(test)]
mod access_keys;
#[cfg(test)]
mod admin;
#[cfg(test)]
mod edge;
#[cfg(test)]
mod events;
#[cfg(test)]
mod faults;
#[cfg(test)]
mod harness;
#[cfg(test)]
mod http_agent;
#[cfg(test)]
mod loadgen;
#[cfg(test)]
mod output;
#[cfg(test)]
mod pools;
#[cfg(test)]
mod readme;
#[cfg(test)]
mod receiver;
#[cfg(test)]
mod registry;
#[cfg(test)]
mod reports;
#[cfg(test)]
mod rest;
#[cfg(test)]
mod scoring;
#[cfg(test)]
mod sdk;
#[cfg(test)]
mod secrets;
#[cfg(test)]
mod tenancy;
#[cfg(test)]
mod tls;
#[cfg(test)]
mod usage;
#[cfg(test)]
mod work;
