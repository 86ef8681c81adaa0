//! coax-scheduler: a client-side delivery daemon for scheduled Coax messages
//! and review requests.
//!
//! The daemon keeps a durable SQLite queue ([`store`]), accepts work over a
//! local Unix socket ([`server`], speaking [`protocol`]), and hands each job
//! to the Coax API ([`coax`]) when it falls due ([`dispatch`]). What to do
//! with each answer is decided by the pure functions in [`policy`]. The CLI in
//! [`cli`] is both the daemon's entry point and a client of its socket.
//!
//! Around that core: [`daemon`] assembles the parts, [`reload`] applies a
//! new config on SIGHUP, [`housekeeping`] prunes finished jobs,
//! [`schedule`] turns recurring schedules into jobs, [`summary`]
//! and [`logging`] make the logs the status page, and [`systemd`] speaks to
//! the service manager; [`metrics`] serves Prometheus; [`transfer`] moves a
//! queue between stores (`export`, `import`). [`simulate`] is a
//! Coax stand-in that serves the
//! [`demo`] and the [`bench`](mod@bench)mark.
//!
//! The modules link to their private parts on purpose: read these docs with
//! `cargo doc --document-private-items`, which CI builds with warnings denied.

// A public module's overview names its private submodules, which only the
// `--document-private-items` build shows.
#![allow(rustdoc::private_intra_doc_links)]

pub mod bench;
pub mod cli;
pub mod client;
pub mod coax;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod dispatch;
pub mod housekeeping;
pub mod job;
pub mod logging;
pub mod metrics;
pub mod policy;
pub mod protocol;
pub mod reload;
pub mod schedule;
pub mod server;
pub mod simulate;
pub mod socket;
pub mod store;
pub mod summary;
pub mod systemd;
pub mod time;
pub mod transfer;
pub mod window;
