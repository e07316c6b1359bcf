//! A cluster of real `kmeta server` processes for tests: controllers 101.., brokers 1..,
//! formatted in a temporary directory; every process is killed when the cluster is dropped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_kmeta");

/// A free port on 127.0.0.1 for a server a test starts later.
pub fn free_port() -> u16 {
    free_ports(1)
}

/// The first of `n` consecutive free ports on 127.0.0.1 ([`kmeta::free_ports`]).
pub fn free_ports(n: u16) -> u16 {
    kmeta::free_ports(n).expect("free ports")
}

pub struct ProcessCluster {
    pub dir: tempfile::TempDir,
    pub controllers: BTreeMap<u64, u16>,
    pub brokers: BTreeMap<u64, u16>,
    /// Each node's metrics endpoint port.
    pub metrics: BTreeMap<u64, u16>,
    configs: BTreeMap<u64, PathBuf>,
    procs: BTreeMap<u64, Child>,
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for child in self.procs.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // KMETA_KEEP_LOGS=DIR keeps the nodes' logs for a look after the test.
        if let Some(keep) = std::env::var_os("KMETA_KEEP_LOGS") {
            let keep = Path::new(&keep);
            let _ = std::fs::create_dir_all(keep);
            for entry in std::fs::read_dir(self.dir.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = entry.file_name();
                if name.to_string_lossy().ends_with(".log") {
                    let _ = std::fs::copy(entry.path(), keep.join(name));
                }
            }
        }
    }
}

fn write(path: &Path, text: String) -> PathBuf {
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

impl ProcessCluster {
    /// Formats and starts `controllers` controllers and `brokers` brokers; `extra` lines are
    /// added to every config file.
    pub fn start(controllers: u64, brokers: u64, extra: &str) -> ProcessCluster {
        Self::start_with(controllers, brokers, extra, &|_, _| String::new(), &[])
    }

    /// [`ProcessCluster::start`], with `broker_extra(id, port)` lines added to broker `id`'s
    /// config after `extra` (a later line wins: `listeners=...` adds listeners), and
    /// `format_args` given to every node's `kmeta storage format`.
    pub fn start_with(
        controllers: u64,
        brokers: u64,
        extra: &str,
        broker_extra: &dyn Fn(u64, u16) -> String,
        format_args: &[&str],
    ) -> ProcessCluster {
        let dir = tempfile::tempdir().unwrap();
        let cports: BTreeMap<u64, u16> = (101..101 + controllers)
            .map(|id| (id, free_port()))
            .collect();
        let bports: BTreeMap<u64, u16> = (1..=brokers).map(|id| (id, free_port())).collect();
        let voters: Vec<String> = cports
            .iter()
            .map(|(i, p)| format!("{i}@127.0.0.1:{p}"))
            .collect();
        let voters = voters.join(",");
        let mut configs = BTreeMap::new();
        let metrics: BTreeMap<u64, u16> = cports
            .keys()
            .chain(bports.keys())
            .map(|id| (*id, free_port()))
            .collect();
        let extra_for =
            |id: &u64| format!("metrics.listener=http://127.0.0.1:{}\n{extra}", metrics[id]);
        for (id, port) in &cports {
            let extra = extra_for(id);
            let text = format!(
                "node.id={id}\nprocess.roles=controller\ncontroller.quorum.voters={voters}\nlisteners=CONTROLLER://127.0.0.1:{port}\nlog.dirs={}\ncontroller.quorum.election.timeout.ms=300\nbroker.heartbeat.interval.ms=500\nbroker.session.timeout.ms=3000\n{extra}\n",
                dir.path().join(format!("data-{id}")).display()
            );
            configs.insert(
                *id,
                write(&dir.path().join(format!("node-{id}.properties")), text),
            );
        }
        for (id, port) in &bports {
            let extra = extra_for(id);
            let text = format!(
                "node.id={id}\nprocess.roles=broker\ncontroller.quorum.voters={voters}\nlisteners=PLAINTEXT://127.0.0.1:{port}\nlog.dirs={}\nbroker.heartbeat.interval.ms=500\nbroker.session.timeout.ms=3000\n{extra}\n{}\n",
                dir.path().join(format!("data-{id}")).display(),
                broker_extra(*id, *port),
            );
            configs.insert(
                *id,
                write(&dir.path().join(format!("node-{id}.properties")), text),
            );
        }
        let out = Command::new(BIN)
            .args(["storage", "random-uuid"])
            .output()
            .unwrap();
        let cluster_id = String::from_utf8(out.stdout).unwrap().trim().to_string();
        for config in configs.values() {
            let out = Command::new(BIN)
                .args([
                    "storage",
                    "format",
                    "--config",
                    config.to_str().unwrap(),
                    "--cluster-id",
                    &cluster_id,
                ])
                .args(format_args)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
        }
        let mut cluster = ProcessCluster {
            dir,
            controllers: cports,
            brokers: bports,
            metrics,
            configs,
            procs: BTreeMap::new(),
        };
        let ids: Vec<u64> = cluster.configs.keys().copied().collect();
        for id in ids {
            cluster.spawn(id);
        }
        cluster
    }

    /// Starts node `id` (again).
    pub fn spawn(&mut self, id: u64) {
        let log = std::fs::File::create(self.dir.path().join(format!("node-{id}.log"))).unwrap();
        // KMETA_TEST_NODE_BINARY runs the nodes from another build (to show a test failing
        // on the code before a fix).
        let bin = std::env::var("KMETA_TEST_NODE_BINARY").unwrap_or_else(|_| BIN.to_string());
        let child = Command::new(bin)
            .args(["server", "--config", self.configs[&id].to_str().unwrap()])
            .env("KMETA_LOG", "info,openraft=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.procs.insert(id, child);
    }

    /// `kill -9` of node `id`.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut c) = self.procs.remove(&id) {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// `kill -9` of every node, then every node started again from its directory.
    pub fn restart_all(&mut self) {
        let ids: Vec<u64> = self
            .brokers
            .keys()
            .chain(self.controllers.keys())
            .copied()
            .collect();
        for id in &ids {
            self.kill(*id);
        }
        for id in &ids {
            self.spawn(*id);
        }
    }

    /// SIGTERM to node `id`, waiting at most `within` for it to exit.
    pub fn terminate(&mut self, id: u64, within: Duration) -> bool {
        let Some(mut c) = self.procs.remove(&id) else {
            return true;
        };
        unsafe_sigterm(c.id());
        let start = Instant::now();
        while start.elapsed() < within {
            if let Ok(Some(_)) = c.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }

    /// `host:port` of every broker, comma-separated.
    pub fn bootstrap(&self) -> String {
        self.brokers
            .values()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The address of broker `id`.
    pub fn broker_addr(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.brokers[&id])
    }

    /// The address of controller `id`.
    pub fn controller_addr(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.controllers[&id])
    }

    /// True if node `id`'s log since its last start contains `text`.
    pub fn log_contains(&self, id: u64, text: &str) -> bool {
        std::fs::read_to_string(self.dir.path().join(format!("node-{id}.log")))
            .is_ok_and(|t| t.contains(text))
    }

    /// The last lines of node `id`'s log (for failure messages).
    pub fn log_tail(&self, id: u64) -> String {
        let text = std::fs::read_to_string(self.dir.path().join(format!("node-{id}.log")))
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

fn unsafe_sigterm(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}

/// Waits until a client (kcat) sees `n` live brokers of `c`.
pub fn wait_for_brokers(c: &ProcessCluster, n: usize) {
    let b = c.bootstrap();
    let want = n.to_string();
    // 60 s: on 2 cores, next to the data-plane tests, registration can take a while.
    until(Duration::from_secs(60), "live brokers", || {
        try_client(&["kcat", "--bootstrap", &b, "--brokers", &want])
            .0
            .then_some(())
    });
}

/// Runs a scenario of `tests/clients/check.py` with the Python that has the client libraries
/// (`KMETA_PYTHON`, set by `scripts/test.sh`). Returns its JSON line, or panics with its error.
pub fn client(args: &[&str]) -> String {
    let (ok, out) = try_client(args);
    assert!(ok, "check.py {args:?} failed:\n{out}");
    out
}

/// Like [`client`], returning `(succeeded, stdout or stderr)`.
pub fn try_client(args: &[&str]) -> (bool, String) {
    let python = std::env::var("KMETA_PYTHON").expect(
        "KMETA_PYTHON is not set: run ./scripts/test.sh, which installs the Kafka clients and sets it",
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/check.py");
    let out = Command::new("timeout")
        .arg("120")
        .arg(python)
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    if out.status.success() {
        (
            true,
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        )
    } else {
        (
            false,
            format!(
                "{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }
}

/// Polls `f` until it returns `Some`, at most `within`.
pub fn until<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < within,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until kcat's metadata lists three live (unfenced) brokers, at most 60 s.
pub fn wait_for_three_brokers(c: &ProcessCluster) {
    until(Duration::from_secs(60), "three live brokers", || {
        let out = Command::new("kcat")
            .args(["-b", &c.bootstrap(), "-L", "-J", "-m", "5"])
            .output()
            .expect("kcat (scripts/test.sh installs it)");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["brokers"].as_array()?.len() == 3).then_some(())
    });
}

/// Runs `kmeta ARGS --bootstrap-server B --command-config CONFIG` (an operator command
/// logging in as CONFIG says); (succeeded, stdout then stderr).
pub fn kmeta_as(
    config: impl AsRef<std::ffi::OsStr>,
    bootstrap: &str,
    args: &[&str],
) -> (bool, String) {
    let out = Command::new(BIN)
        .args(args)
        .args(["--bootstrap-server", bootstrap, "--command-config"])
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// A client's settings for SSL: trusting the CA in `ca`, presenting the key and
/// certificate chain in `keystore`.
pub fn ssl_client(ca: &Path, keystore: &Path) -> kmeta::kafka::connect::ClientSecurity {
    let props: BTreeMap<String, String> = [
        ("security.protocol", "SSL".to_string()),
        ("ssl.truststore.location", ca.display().to_string()),
        ("ssl.keystore.location", keystore.display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    kmeta::kafka::connect::ClientSecurity::from_properties(&props).unwrap()
}
