//! The integration tests: the daemon against a Coax stand-in on loopback.
//!
//! Everything shares one test binary so it is linked once. Helpers live in
//! [`helpers`]: the daemon fixture (in-process or as a real process), the
//! Coax stand-in, and wait-until helpers with timeouts.

mod attack11;
mod attack12;
mod attack_windows;
mod attackpg;
mod attackpg2;
mod attackpg3;
mod bench;
mod chaos;
mod cli;
mod connections;
mod counts;
mod followups;
mod gate;
mod hand_edits;
mod helpers;
mod lifecycle;
mod metrics;
mod multinode;
mod nodes;
mod outage;
mod outcomes;
mod paging;
mod pg_delivery;
mod pg_groups;
mod pg_jobs;
mod pg_schedules;
mod postgres;
mod prometheus;
mod protocol;
mod quarantine;
mod recurring;
mod refusal;
mod regression;
mod reliability;
mod reload;
mod service;
mod simulate;
mod smoke;
mod startup;
mod storage;
mod systemd;
mod tags;
mod transfer;
mod windows;
