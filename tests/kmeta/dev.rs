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

/// `kmeta dev --secure`: brokers also on SASL_SSL, a CA and an admin user made for the
/// cluster, and the client settings printed; they work for kmeta's commands and for kcat.
#[test]
fn kmeta_dev_secure_prints_client_settings_that_work_over_sasl_ssl() {
    let broker_port = free_ports(3);
    let controller_port = free_ports(3);
    let secure_port = free_ports(3);
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["dev", "--broker-port", &broker_port.to_string()])
        .args(["--controller-port", &controller_port.to_string()])
        .args(["--secure", &secure_port.to_string()])
        .arg("--data-dir")
        .arg(dir.path())
        .env("KMETA_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    while lines.len() < 2 {
        lines.push(
            rx.recv_timeout(Duration::from_secs(60))
                .expect("kmeta dev --secure printed too little"),
        );
    }
    let secured = lines[0]
        .strip_prefix("bootstrap.servers=")
        .unwrap_or_else(|| panic!("{lines:?}"))
        .to_string();
    assert!(
        secured.contains(&format!(":{secure_port}")),
        "the printed bootstrap servers are not the SASL_SSL listeners: {lines:?}"
    );
    let settings = lines[1].rsplit(' ').next().unwrap().to_string();
    let text = std::fs::read_to_string(&settings).unwrap();
    let password = text
        .split("password=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_string();
    let ca = dir.path().join("secure/ca.crt").display().to_string();
    let listed = Command::new(BIN)
        .args(["brokers", "list", "--bootstrap-server", &secured])
        .args(["--command-config", &settings])
        .output()
        .unwrap();
    assert!(listed.status.success(), "{listed:?}");
    assert_eq!(
        String::from_utf8_lossy(&listed.stdout)
            .lines()
            .filter(|l| l.contains("active"))
            .count(),
        3
    );
    let out = client(&[
        "secure",
        "--client",
        "kcat",
        "--bootstrap",
        &secured,
        "--topic",
        "dev-secure",
        "--count",
        "10",
        "--security-protocol",
        "SASL_SSL",
        "--ssl-ca",
        &ca,
        "--sasl-mechanism",
        "SCRAM-SHA-512",
        "--user",
        "admin",
        "--password",
        &password,
    ]);
    assert!(out.contains("\"messages\": 10"), "{out}");
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("kmeta dev --secure did not stop within 20 s of Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
