//! Several daemons ("nodes") sharing one queue on one PostgreSQL database,
//! each in its own dir with its own socket and `[node] name`, all sending
//! to one Coax stand-in.
//!
//! Nodes run on PostgreSQL whatever `COAX_TEST_BACKEND` says: a queue that
//! several daemons share exists only there. The database is a new one in
//! the test process's shared cluster ([`super::backend::new_database`]),
//! or one in a cluster of the test's own ([`PgCluster`]) when the test
//! restarts the server.

use super::backend::{adopt, new_database, on_postgres};
use super::daemon::{DaemonProcess, TestDaemon, config_text};
use super::postgres::PgCluster;
use serde_json::{Value, json};
use std::path::Path;
use tempfile::TempDir;

/// `config_text`'s test config for node `name`, with the keys of
/// `overrides` (TOML, by section) put over its own.
pub fn node_config(coax_url: &str, name: &str, overrides: &str) -> String {
    let mut config: toml::Table = config_text(coax_url, "", "")
        .parse()
        .expect("test config is TOML");
    let overrides: toml::Table = overrides.parse().expect("overrides are TOML");
    for (section, keys) in overrides {
        let Some(keys) = keys.as_table() else {
            panic!("override {section} is not a section");
        };
        let into = config
            .entry(section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .expect("a section");
        into.extend(keys.clone());
    }
    let mut node = toml::Table::new();
    node.insert("name".into(), name.into());
    config.insert("node".into(), toml::Value::Table(node));
    toml::to_string(&config).expect("config back to TOML")
}

/// The URL of a new database for one queue: in the shared cluster, or in
/// `cluster` with `application_name` set to nothing yet (see [`url_for`]).
pub async fn queue_url(cluster: Option<&PgCluster>) -> String {
    match cluster {
        Some(cluster) => cluster.url("127.0.0.1", ""),
        None => new_database().await,
    }
}

/// `url` with the node's name as its `application_name`, so that a test
/// can find (and terminate) that node's connections in `pg_stat_activity`.
pub fn url_for(url: &str, name: &str) -> String {
    let joiner = if url.contains('?') { '&' } else { '?' };
    format!("{url}{joiner}application_name={name}")
}

/// A dir whose daemon runs `config` on the queue at `url`, and that config
/// rewritten for it.
pub fn prepare(url: &str, name: &str, config: &str) -> (TempDir, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    adopt(dir.path(), &url_for(url, name));
    let config = on_postgres(config, dir.path());
    (dir, config)
}

/// Starts an in-process node `name` on the queue at `url`.
pub async fn start_node(url: &str, name: &str, config: &str) -> TestDaemon {
    let (dir, config) = prepare(url, name, config);
    TestDaemon::start_in(dir, &config).await
}

/// Starts node `name` as the real binary (so that it can be killed with
/// SIGKILL); its dir is returned with it and must outlive it.
pub async fn start_process(url: &str, name: &str, config: &str) -> (TempDir, DaemonProcess) {
    let (dir, config) = prepare(url, name, config);
    let process = DaemonProcess::start(dir.path(), &config).await;
    (dir, process)
}

/// Starts `n` in-process nodes named `node-1` .. `node-n` on one new
/// queue, each with `config_of(name)`.
pub async fn start_nodes(n: usize, config_of: impl Fn(&str) -> String) -> Vec<TestDaemon> {
    let url = queue_url(None).await;
    let mut nodes = Vec::with_capacity(n);
    for i in 1..=n {
        let name = format!("node-{i}");
        nodes.push(start_node(&url, &name, &config_of(&name)).await);
    }
    nodes
}

/// Every job of the queue as `list` shows it (with its history), page by
/// page, through the socket at `socket`.
pub async fn all_jobs(socket: &Path) -> Vec<Value> {
    let mut jobs = Vec::new();
    let mut after: Option<Value> = None;
    loop {
        let mut request = json!({"op": "list", "limit": 1000});
        if let Some(cursor) = after.take() {
            request["after"] = cursor;
        }
        let answer = super::daemon::request_at(socket, request.clone()).await;
        assert_eq!(answer["ok"], true, "{request}: {answer}");
        jobs.extend(answer["jobs"].as_array().cloned().unwrap_or_default());
        match &answer["next"] {
            Value::Null => return jobs,
            cursor => after = Some(cursor.clone()),
        }
    }
}

/// The names of the nodes that made each attempt of `job`.
pub fn attempt_nodes(job: &Value) -> Vec<String> {
    job["history"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["node"].as_str().map(str::to_owned))
        .collect()
}
