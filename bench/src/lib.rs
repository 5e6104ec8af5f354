//! Parley's load generator: the real protocol over real TLS + WebSocket,
//! built to hold tens of thousands of sessions, with open-loop pacing, HDR
//! histograms and a result file per run.
//!
//! A run is one coordinator process (what the user starts) and one or more
//! worker processes it re-executes from itself, each holding at most 19,000
//! sessions (the machine allows 20,000 open files per process).
//!
//! Modules:
//! - [`addr`]: loopback-only targets, source addresses, TCP connect.
//! - [`conn`]: one lean session (TLS, upgrade, frames, hand-encoded sends).
//! - [`pacing`]: the open-loop send schedule.
//! - [`stats`]: histograms, counters, per-second series and their merge.
//! - [`worker`]: the coordinator/worker protocol and process fan-out.
//! - [`jobs`]: what a worker does for each scenario.
//! - [`scenario`]: what the coordinator does for each scenario.
//! - [`report`]: the result file and the one-screen summary with goals.
//! - [`plot`]: the SVG of throughput and latency over time.
//! - [`echo`]: the bare TLS + WebSocket echo server (the floor).
//! - [`users`]: provisioned credentials.
//! - [`procfs`]: a process's resident memory.

#![forbid(unsafe_code)]

pub mod addr;
pub mod conn;
pub mod echo;
pub mod jobs;
pub mod pacing;
pub mod plot;

pub mod procfs;
pub mod report;
pub mod scenario;

pub mod stats;
pub mod users;
pub mod worker;
