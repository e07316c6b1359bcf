//! `kmeta dev`: the README's main command.

use crate::cluster::{client, free_ports, BIN};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn kmeta_dev_prints_bootstrap_servers_serves_three_brokers_and_stops_cleanly_on_ctrl_c() {
    let broker_port = free_ports(3);
    let controller_port = free_ports(3);
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(BIN)
        .args([
            "--log-format",
            "json",
            "dev",
            "--broker-port",
            &broker_port.to_string(),
            "--controller-port",
            &controller_port.to_string(),
            "--brokers",
            "3",
            "--override",
            "broker.session.timeout.ms=3000",
            "--override",
            "broker.heartbeat.interval.ms=500",
        ])
        .env("KMETA_LOG", "info,openraft=warn")
        .stdout(Stdio::piped())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("kmeta dev printed nothing");
    let bootstrap = line
        .strip_prefix("bootstrap.servers=")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    assert_eq!(bootstrap.split(',').count(), 3);
    client(&["kcat", "--bootstrap", &bootstrap, "--brokers", "3"]);
    client(&["create", "--bootstrap", &bootstrap, "--topic", "dev-topic"]);
    client(&[
        "kcat",
        "--bootstrap",
        &bootstrap,
        "--brokers",
        "3",
        "--topic",
        "dev-topic",
    ]);

    // Ctrl-C: a clean stop with status 0, in bounded time.
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("kmeta dev did not stop within 20 s of Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    // --log-format json: every log line is a JSON object with a level and a message.
    let logs = std::fs::read_to_string(log.path()).unwrap();
    assert!(logs.lines().count() > 5, "{logs}");
    for line in logs.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{line}"
        );
    }
}
