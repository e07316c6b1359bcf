//! `kmeta dev`: a whole cluster in one process — controllers and brokers on 127.0.0.1 (by
//! default 3 + 3), each node configured and run exactly as `kmeta server` runs it. Prints
//! `bootstrap.servers=...` once every broker serves, and stops cleanly on Ctrl-C: brokers first
//! (controlled shutdown while the controllers still run), then the controllers.

use crate::config::{apply_overrides, NodeConfig};
use crate::kafka::client::KafkaClient;
use kafka_protocol::messages::MetadataRequest;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// `kmeta dev` options.
#[derive(Clone, Debug)]
pub struct DevOptions {
    /// Controllers (ids 3001, 3002, ...).
    pub controllers: u64,
    /// Brokers (ids 1, 2, ...).
    pub brokers: u64,
    /// The host every node listens on and advertises.
    pub host: String,
    /// The first broker port; brokers use P, P+1, ...
    pub broker_port: u16,
    /// The first controller port; controllers use Q, Q+1, ...
    pub controller_port: u16,
    /// Kept across runs when given; a fresh temporary directory otherwise.
    pub data_dir: Option<PathBuf>,
    /// `key=value` settings applied to every node.
    pub overrides: Vec<String>,
    /// A secured cluster: brokers serve clients on SASL_SSL listeners (ports S, S+1, ...),
    /// the nodes talk to each other over mutual TLS, the StandardAuthorizer is on, with a
    /// CA, a node certificate and an `admin` user (a super user) made for the cluster
    /// (`docs/SECURITY.md`).
    pub secure: Option<u16>,
}

/// What `--secure` made: where its files are, and the admin's password.
struct Secure {
    dir: PathBuf,
    password: String,
}

/// The CA, the nodes' certificate, the admin's password and the client settings of a
/// `--secure` cluster, in `dir/secure`; kept ones (a kept `--data-dir`) are used again.
fn prepare_secure(dir: &Path, host: &str) -> Result<Secure, String> {
    let secure = dir.join("secure");
    let io = |e: std::io::Error| format!("{}: {e}", secure.display());
    std::fs::create_dir_all(&secure).map_err(io)?;
    let password_file = secure.join("admin.password");
    let password = match std::fs::read_to_string(&password_file) {
        Ok(p) => p.trim().to_string(),
        Err(_) => {
            let p: String = crate::sasl::scram::random_bytes(12)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            std::fs::write(&password_file, &p).map_err(io)?;
            p
        }
    };
    if !secure.join("node.pem").exists() {
        let ca = crate::tls::ca::Authority::new("kmeta dev CA")?;
        std::fs::write(secure.join("ca.crt"), ca.cert_pem()).map_err(io)?;
        let mut hosts = vec![host, "localhost", "127.0.0.1"];
        hosts.dedup();
        // One certificate for every node: it serves their TLS listeners and is what they
        // present to each other (principal User:CN=kmeta-node, a super user).
        ca.node(DEV_NODE_CN, &hosts)?
            .write(&secure, "node")
            .map_err(io)?;
    }
    std::fs::write(
        secure.join("client.properties"),
        format!(
            "# kmeta dev --secure: for kmeta's commands (--command-config) and Kafka's tools\nsecurity.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-512\nsasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username=\"admin\" password=\"{password}\";\nssl.truststore.type=PEM\nssl.truststore.location={}\n",
            secure.join("ca.crt").display()
        ),
    )
    .map_err(io)?;
    Ok(Secure {
        dir: secure,
        password,
    })
}

/// The common name of a `--secure` cluster's node certificate.
const DEV_NODE_CN: &str = "kmeta-node";

/// The first controller's node id (brokers are numbered from 1, as clients see them).
pub const FIRST_CONTROLLER_ID: u64 = 3001;

fn node_properties(
    o: &DevOptions,
    dir: &Path,
) -> Result<BTreeMap<u64, BTreeMap<String, String>>, String> {
    let port = |base: u16, i: u64| -> Result<u16, String> {
        base.checked_add(i as u16)
            .ok_or_else(|| format!("port {base}+{i} is out of range"))
    };
    let mut voters = Vec::new();
    for i in 0..o.controllers {
        voters.push(format!(
            "{}@{}:{}",
            FIRST_CONTROLLER_ID + i,
            o.host,
            port(o.controller_port, i)?
        ));
    }
    let voters = voters.join(",");
    let mut nodes = BTreeMap::new();
    for i in 0..o.controllers {
        let id = FIRST_CONTROLLER_ID + i;
        let mut p = BTreeMap::new();
        p.insert("node.id".into(), id.to_string());
        p.insert("process.roles".into(), "controller".into());
        p.insert("controller.quorum.voters".into(), voters.clone());
        p.insert(
            "listeners".into(),
            format!("CONTROLLER://{}:{}", o.host, port(o.controller_port, i)?),
        );
        p.insert(
            "log.dirs".into(),
            dir.join(format!("controller-{id}")).display().to_string(),
        );
        nodes.insert(id, p);
    }
    for id in 1..=o.brokers {
        let mut p = BTreeMap::new();
        p.insert("node.id".into(), id.to_string());
        p.insert("process.roles".into(), "broker".into());
        p.insert("controller.quorum.voters".into(), voters.clone());
        let listeners = match o.secure {
            None => format!("PLAINTEXT://{}:{}", o.host, port(o.broker_port, id - 1)?),
            // Replication on INTERNAL (mutual TLS), clients on SASL_SSL.
            Some(secure_port) => {
                p.insert("inter.broker.listener.name".into(), "INTERNAL".into());
                p.insert(
                    "sasl.enabled.mechanisms".into(),
                    "SCRAM-SHA-256,SCRAM-SHA-512,PLAIN".into(),
                );
                format!(
                    "INTERNAL://{h}:{},SASL_SSL://{h}:{}",
                    port(o.broker_port, id - 1)?,
                    port(secure_port, id - 1)?,
                    h = o.host
                )
            }
        };
        p.insert("listeners".into(), listeners);
        p.insert(
            "log.dirs".into(),
            dir.join(format!("broker-{id}")).display().to_string(),
        );
        nodes.insert(id, p);
    }
    for p in nodes.values_mut() {
        p.insert(
            "default.replication.factor".into(),
            o.brokers.min(3).to_string(),
        );
        if o.secure.is_some() {
            let secure = dir.join("secure");
            for (k, v) in [
                (
                    "listener.security.protocol.map",
                    "CONTROLLER:SSL,INTERNAL:SSL,SASL_SSL:SASL_SSL".to_string(),
                ),
                (
                    "ssl.keystore.location",
                    secure.join("node.pem").display().to_string(),
                ),
                (
                    "ssl.truststore.location",
                    secure.join("ca.crt").display().to_string(),
                ),
                (
                    "listener.name.controller.ssl.client.auth",
                    "required".to_string(),
                ),
                (
                    "listener.name.internal.ssl.client.auth",
                    "required".to_string(),
                ),
                (
                    "authorizer.class.name",
                    crate::config::STANDARD_AUTHORIZER.to_string(),
                ),
                ("super.users", format!("User:CN={DEV_NODE_CN};User:admin")),
            ] {
                p.insert(k.into(), v);
            }
        }
        apply_overrides(p, &o.overrides).map_err(|e| e.0)?;
    }
    Ok(nodes)
}

/// Runs the cluster until `shutdown` resolves.
pub async fn run(o: DevOptions, shutdown: impl Future<Output = ()>) -> Result<(), String> {
    if o.controllers == 0 || o.brokers == 0 {
        return Err("--controllers and --brokers must be at least 1".into());
    }
    let (dir, temporary) = match &o.data_dir {
        Some(d) => (d.clone(), false),
        None => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            (
                std::env::temp_dir().join(format!("kmeta-dev-{}-{nanos}", std::process::id())),
                true,
            )
        }
    };
    let result = run_in(&o, &dir, shutdown).await;
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

async fn run_in(
    o: &DevOptions,
    dir: &Path,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    let mut configs = BTreeMap::new();
    for (id, props) in node_properties(o, dir)? {
        let config =
            NodeConfig::from_properties(&props).map_err(|e| format!("node {id}: {}", e.0))?;
        configs.insert(id, config);
    }
    // One cluster id for every node: the one already on disk (a kept --data-dir), else new.
    let mut cluster_id = None;
    for c in configs.values() {
        if let Some(meta) = crate::storage::read_meta(&c.log_dir)? {
            cluster_id = Some(meta.cluster_id);
        }
    }
    let new_cluster = cluster_id.is_none();
    let cluster_id = cluster_id.unwrap_or_else(crate::random_cluster_id);
    let secure = match o.secure {
        Some(_) => Some(prepare_secure(dir, &o.host)?),
        None => None,
    };
    // A new secured cluster starts with its admin user (both SCRAM mechanisms).
    let users: Vec<kmeta_metadata::MetadataRecord> =
        match &secure {
            Some(s) => kmeta_metadata::record::ScramMechanism::ALL
                .into_iter()
                .map(|m| {
                    kmeta_metadata::MetadataRecord::UserScramCredential(
                        crate::sasl::scram::credential(m, "admin", &s.password, 4096),
                    )
                })
                .collect(),
            None => Vec::new(),
        };
    if secure.is_some() && !new_cluster {
        tracing::warn!("--secure on a kept --data-dir: the admin user exists only if the cluster was first started with --secure");
    }
    for c in configs.values() {
        crate::storage::format(c, &cluster_id, true, &users)?;
    }
    tracing::info!(cluster_id = %cluster_id, dir = %dir.display(), "starting a local cluster");

    let (stop_brokers, brokers_stopped) = watch::channel(false);
    let (stop_controllers, controllers_stopped) = watch::channel(false);
    let (failed_tx, mut failed) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut controllers = Vec::new();
    let mut brokers = Vec::new();
    for (id, config) in configs.clone() {
        let mut signal = if config.roles.broker {
            brokers_stopped.clone()
        } else {
            controllers_stopped.clone()
        };
        let failed_tx = failed_tx.clone();
        let task = tokio::spawn(async move {
            let stop = async move {
                let _ = signal.wait_for(|s| *s).await;
            };
            let result = crate::server::run(config, stop)
                .await
                .map_err(|e| format!("node {id}: {e}"));
            if let Err(e) = &result {
                let _ = failed_tx.send(e.clone());
            }
            result
        });
        if id >= FIRST_CONTROLLER_ID {
            controllers.push(task);
        } else {
            brokers.push(task);
        }
    }
    // Clients go to the PLAINTEXT listeners, or on a secured cluster to the SASL_SSL ones
    // as the admin.
    let (bootstrap, client) = match (&secure, o.secure) {
        (Some(s), Some(secure_port)) => {
            let text = std::fs::read_to_string(s.dir.join("client.properties"))
                .map_err(|e| format!("{}: {e}", s.dir.display()))?;
            let props = crate::config::parse_properties(&text).map_err(|e| e.0)?;
            (
                (0..o.brokers)
                    .map(|i| format!("{}:{}", o.host, secure_port + i as u16))
                    .collect::<Vec<_>>(),
                crate::kafka::connect::ClientSecurity::from_properties(&props)?,
            )
        }
        _ => (
            (0..o.brokers)
                .map(|i| format!("{}:{}", o.host, o.broker_port + i as u16))
                .collect(),
            Default::default(),
        ),
    };
    let secured = secure.is_some();
    let ready = async {
        // On a secured cluster the admin logs in: that works once the first active
        // controller has written the admin user and a broker has it, so the settings are
        // printed once every broker knows it.
        wait_ready(&bootstrap[0], o.brokers as usize, &client).await?;
        if secured {
            for addr in &bootstrap {
                wait_for_user(addr, "admin", &client).await?;
            }
        }
        Ok::<(), String>(())
    };
    tokio::pin!(shutdown);
    let outcome = tokio::select! {
        r = ready => r,
        Some(e) = failed.recv() => Err(e),
        _ = &mut shutdown => Err("interrupted before the cluster was ready".into()),
    };
    if outcome.is_ok() {
        println!("bootstrap.servers={}", bootstrap.join(","));
        if let Some(s) = &secure {
            let ca = s.dir.join("ca.crt");
            println!(
                "client settings (SASL_SSL, SCRAM-SHA-512, user admin): {}",
                s.dir.join("client.properties").display()
            );
            println!(
                "  kmeta topics list --bootstrap-server {} --command-config {}",
                bootstrap[0],
                s.dir.join("client.properties").display()
            );
            println!(
                "  kcat -b {} -X security.protocol=sasl_ssl -X sasl.mechanism=SCRAM-SHA-512 -X sasl.username=admin -X sasl.password={} -X ssl.ca.location={} -L",
                bootstrap[0],
                s.password,
                ca.display()
            );
            println!("  (the nodes talk to each other over mutual TLS; admin is a super user: add users with `kmeta users add` and grant them with `kmeta acls add`)");
        }
        tokio::select! {
            _ = &mut shutdown => {}
            Some(e) = failed.recv() => tracing::error!(error = %e, "a node stopped"),
        }
    }
    tracing::info!("stopping: brokers first (controlled shutdown), then controllers");
    let _ = stop_brokers.send(true);
    let mut errors = Vec::new();
    for b in brokers {
        if let Ok(Err(e)) = b.await {
            errors.push(e);
        }
    }
    let _ = stop_controllers.send(true);
    for c in controllers {
        if let Ok(Err(e)) = c.await {
            errors.push(e);
        }
    }
    outcome?;
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// Waits until the broker at `addr` knows `user`'s SCRAM credentials (at most a minute).
async fn wait_for_user(
    addr: &str,
    user: &str,
    security: &crate::kafka::connect::ClientSecurity,
) -> Result<(), String> {
    use kafka_protocol::messages::describe_user_scram_credentials_request::UserName;
    use kafka_protocol::messages::DescribeUserScramCredentialsRequest;
    let start = Instant::now();
    let request = DescribeUserScramCredentialsRequest::default().with_users(Some(vec![
        UserName::default().with_name(crate::kafka::wire::sb(user)),
    ]));
    loop {
        let connected =
            KafkaClient::connect_with(addr, "kmeta-dev", Duration::from_secs(2), security).await;
        if let Ok(mut c) = connected {
            if let Ok(r) = c.send(&request, 0).await {
                if r.results.first().is_some_and(|u| u.error_code == 0) {
                    return Ok(());
                }
            }
        }
        if start.elapsed() > Duration::from_secs(60) {
            return Err(format!(
                "the broker at {addr} did not learn user {user} within a minute"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the first broker lists every broker as live (at most a minute).
async fn wait_ready(
    addr: &str,
    brokers: usize,
    security: &crate::kafka::connect::ClientSecurity,
) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let connected =
            KafkaClient::connect_with(addr, "kmeta-dev", Duration::from_secs(2), security).await;
        if let Ok(mut c) = connected {
            if let Ok(md) = c.send(&MetadataRequest::default(), 12).await {
                if md.brokers.len() == brokers {
                    return Ok(());
                }
            }
        }
        if start.elapsed() > Duration::from_secs(60) {
            return Err(format!(
                "the cluster was not ready within a minute (no {brokers} live brokers at {addr})"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
