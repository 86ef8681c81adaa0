//! The shipped rules and dashboard against Prometheus's own tools:
//! `promtool check metrics` on a live daemon's output, `promtool check
//! rules` and `promtool test rules` on contrib/prometheus, and a real
//! Prometheus on loopback scraping a live daemon, through whose query API
//! every dashboard and alert expression must be valid and return a series.
//!
//! Prometheus comes from Debian's `prometheus` package, which `.ci/test`
//! installs where it is missing. Without it these tests fail and say so.

use crate::helpers::coax::{CoaxStub, Reply};
use crate::helpers::{PATIENCE, wait_until};
use crate::metrics::{free_port, get, start_with_metrics};
use serde_json::{Value, json};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const CONTRIB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib");

/// The path of a Prometheus tool, or a failure that says how to get it.
fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/bin"] {
        let path = Path::new(dir).join(name);
        if path.exists() {
            return path;
        }
    }
    panic!(
        "{name} is not installed: run .ci/test, or `apt-get install --no-install-recommends prometheus` \
         (Debian's package brings /usr/bin/prometheus and /usr/bin/promtool)"
    )
}

fn run(command: &mut Command, stdin: Option<&str>) -> (bool, String) {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).expect("write stdin");
    }
    drop(input);
    let out = child.wait_with_output().expect("wait");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A daemon that has sent a job (a retry included, so every histogram has
/// samples) and serves metrics; its address.
async fn busy_daemon(
    dir: &Path,
    coax: &CoaxStub,
) -> (crate::helpers::daemon::DaemonProcess, String) {
    coax.push_for("/send/retry", Reply::status(503));
    let (daemon, base) = start_with_metrics(dir, coax, "").await;
    for channel in ["sms", "retry"] {
        let job = json!({"kind": "message", "channel": channel,
                         "payload": {"message": "hi", "phone": "+15550100"}});
        daemon.request(json!({"op": "enqueue", "job": job})).await;
    }
    wait_until("both jobs to be sent", PATIENCE, || async {
        let stats = daemon.request(json!({"op": "stats"})).await;
        (stats["counts"]["sent"] == 2).then_some(())
    })
    .await;
    (daemon, base)
}

#[tokio::test]
async fn metrics_output_passes_promtool_check_metrics() {
    let promtool = tool("promtool");
    let coax = CoaxStub::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (_daemon, base) = busy_daemon(dir.path(), &coax).await;
    let (status, text) = get(&format!("{base}/metrics")).await;
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("coax_scheduler_lateness_seconds_bucket"),
        "{text}"
    );
    let (ok, said) = run(
        Command::new(&promtool).args(["check", "metrics"]),
        Some(&text),
    );
    assert!(
        ok && said.trim().is_empty(),
        "promtool check metrics:\n{said}\non:\n{text}"
    );
}

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let promtool = tool("promtool");
    let dir = Path::new(CONTRIB).join("prometheus");
    let (ok, said) = run(
        Command::new(&promtool)
            .args(["check", "rules", "alerts.yml"])
            .current_dir(&dir),
        None,
    );
    assert!(ok && said.contains("SUCCESS: 4 rules found"), "{said}");
    let (ok, said) = run(
        Command::new(&promtool)
            .args(["test", "rules", "alerts.test.yml"])
            .current_dir(&dir),
        None,
    );
    assert!(ok && said.contains("SUCCESS"), "{said}");
}

/// A Prometheus server on loopback with a throwaway data directory.
struct Prometheus {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Prometheus {
    async fn start(dir: &Path, target: &str) -> Prometheus {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {CONTRIB}/prometheus/alerts.yml\n\
                 scrape_configs:\n  - job_name: coax-scheduler\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("write prometheus.yml");
        let addr = format!("127.0.0.1:{}", free_port());
        let log = dir.join("prometheus.log");
        let out = std::fs::File::create(&log).expect("log file");
        let child = Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::from(out.try_clone().expect("log file")))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start prometheus: {e}"));
        let mut prometheus = Prometheus {
            child,
            url: format!("http://{addr}"),
            log,
        };
        let ready = format!("{}/-/ready", prometheus.url);
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Ok(Some(status)) = prometheus.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", prometheus.logs());
            }
            let answered = reqwest::get(&ready).await.map(|r| r.status().is_success());
            if answered.unwrap_or(false) {
                return prometheus;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("prometheus did not become ready:\n{}", prometheus.logs());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs an instant query; the answer's `data.result`, or the error.
    async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let answer: Value = reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", expr)])
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .text()
            .await
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str(&t).map_err(|e| format!("{e}: {t}")))?;
        if answer["status"] != "success" {
            return Err(answer.to_string());
        }
        Ok(answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every `expr:` of the alert rules (each is written on one line).
fn alert_expressions() -> Vec<String> {
    let text = std::fs::read_to_string(format!("{CONTRIB}/prometheus/alerts.yml"))
        .expect("contrib/prometheus/alerts.yml");
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("expr: "))
        .map(str::to_owned)
        .collect()
}

/// Every target expression of the dashboard's panels.
fn dashboard_expressions() -> Vec<String> {
    let text = std::fs::read_to_string(format!("{CONTRIB}/grafana/coax-scheduler.json"))
        .expect("contrib/grafana/coax-scheduler.json");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    panels
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().expect("a target's expr").to_owned())
        .collect()
}

/// An alert's expression with each comparison made a `bool` one, so that
/// it returns its series whether or not the alert would fire.
fn with_bool_comparisons(expr: &str) -> String {
    let mut out = String::new();
    let (mut braces, mut quoted) = (0, false);
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        out.push(c);
        match c {
            '"' => quoted = !quoted,
            '{' if !quoted => braces += 1,
            '}' if !quoted => braces -= 1,
            '=' | '!' | '<' | '>' if !quoted && braces == 0 => {
                let next = chars.get(i + 1).copied();
                if next == Some('=') {
                    out.push('=');
                    i += 1;
                }
                if c != '=' || next == Some('=') {
                    out.push_str(" bool");
                }
            }
            _ => {}
        }
        i += 1;
    }
    out
}

#[test]
fn alert_expressions_get_bool_comparisons() {
    assert_eq!(
        with_bool_comparisons(r#"a{s!="x"} > 300 and on(i) b{s=~"y"} == 1"#),
        r#"a{s!="x"} > bool 300 and on(i) b{s=~"y"} == bool 1"#
    );
}

#[tokio::test]
async fn prometheus_scrapes_the_daemon_and_every_dashboard_and_alert_expression_has_a_series() {
    let coax = CoaxStub::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (_daemon, base) = busy_daemon(dir.path(), &coax).await;
    let target = base.trim_start_matches("http://").to_owned();
    let prometheus = Prometheus::start(dir.path(), &target).await;

    // rate() needs two samples in its window; wait for three scrapes.
    wait_until("three scrapes of the daemon", PATIENCE, || async {
        let result = prometheus
            .query(r#"count_over_time(up{job="coax-scheduler"}[5m]) >= 3"#)
            .await
            .ok()?;
        (!result.is_empty()).then_some(())
    })
    .await;
    let up = prometheus
        .query(r#"up{job="coax-scheduler"}"#)
        .await
        .expect("query");
    assert_eq!(up[0]["value"][1], "1", "the daemon is scraped: {up:?}");

    let alerts = alert_expressions();
    assert_eq!(alerts.len(), 4, "{alerts:?}");
    let dashboard = dashboard_expressions();
    assert!(dashboard.len() >= 10, "{dashboard:?}");
    let mut failures = Vec::new();
    let exprs = dashboard
        .into_iter()
        .chain(alerts.iter().map(|e| with_bool_comparisons(e)));
    for expr in exprs {
        match prometheus.query(&expr).await {
            Ok(result) if !result.is_empty() => {}
            Ok(_) => failures.push(format!("{expr}: no series")),
            Err(e) => failures.push(format!("{expr}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "expressions failing:\n{}",
        failures.join("\n")
    );

    // Prometheus loaded the rules as they are shipped.
    let (_, rules) = get(&format!("{}/api/v1/rules", prometheus.url)).await;
    let rules: Value = serde_json::from_str(&rules).expect("JSON");
    let loaded = rules["data"]["groups"][0]["rules"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(loaded, 4, "{rules}");
}
