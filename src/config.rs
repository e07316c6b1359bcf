//! Node configuration: a Kafka-style properties file plus `--override key=value`.
//!
//! Keys keep Kafka's spelling (`DESIGN.md` §4). Unknown keys are logged as warnings; a value
//! that does not parse or validate fails start-up with a message naming the key.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// A configuration error, naming the key at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// A node's role(s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Roles {
    /// Runs a broker.
    pub broker: bool,
    /// Runs a controller (a Raft voter).
    pub controller: bool,
}

/// One `NAME://host:port` listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    /// Listener name, e.g. `CONTROLLER` or `PLAINTEXT`.
    pub name: String,
    /// Host to bind.
    pub host: String,
    /// Port to bind.
    pub port: u16,
}

impl Listener {
    /// `host:port`.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Every key kmeta knows, with its default (`None` = required or optional without default).
const KNOWN_KEYS: &[(&str, Option<&str>)] = &[
    ("node.id", None),
    ("process.roles", None),
    ("controller.quorum.voters", None),
    ("listeners", None),
    ("advertised.listeners", None),
    ("controller.listener.names", Some("CONTROLLER")),
    ("log.dirs", None),
    ("log.dir", None),
    ("broker.rack", None),
    ("broker.heartbeat.interval.ms", Some("2000")),
    ("broker.session.timeout.ms", Some("9000")),
    ("controller.quorum.election.timeout.ms", Some("1000")),
    ("controller.quorum.request.timeout.ms", Some("2000")),
    ("num.partitions", Some("1")),
    ("default.replication.factor", Some("1")),
    ("unclean.leader.election.enable", Some("false")),
    (
        "metadata.log.max.record.bytes.between.snapshots",
        Some("20971520"),
    ),
    ("metadata.log.max.snapshot.interval.ms", Some("3600000")),
    ("metrics.listener", None),
    ("inter.broker.listener.name", Some("PLAINTEXT")),
    ("auto.leader.rebalance.enable", Some("true")),
    ("leader.imbalance.check.interval.seconds", Some("300")),
    ("socket.request.max.bytes", Some("8388608")),
    ("max.connections", Some("1000")),
    ("connections.max.idle.ms", Some("600000")),
    ("connection.failed.authentication.delay.ms", Some("100")),
    // The data plane (docs/DATA.md).
    ("log.segment.bytes", Some("1073741824")),
    ("log.flush.interval.messages", Some("9223372036854775807")),
    ("log.retention.ms", None),
    ("log.retention.minutes", None),
    ("log.retention.hours", Some("168")),
    ("log.retention.bytes", Some("-1")),
    ("log.retention.check.interval.ms", Some("300000")),
    ("log.message.timestamp.type", Some("CreateTime")),
    ("message.max.bytes", Some("1048588")),
    ("min.insync.replicas", Some("1")),
    ("replica.lag.time.max.ms", Some("30000")),
    ("group.min.session.timeout.ms", Some("6000")),
    ("group.max.session.timeout.ms", Some("1800000")),
    ("group.initial.rebalance.delay.ms", Some("3000")),
    // Security (issue 15, src/tls.rs): the `ssl.*` keys are in `crate::tls::SSL_KEYS`.
    ("listener.security.protocol.map", None),
    ("authorizer.class.name", Some("")),
    ("super.users", Some("")),
    ("allow.everyone.if.no.acl.found", Some("false")),
];

/// The authorizer kmeta implements (`authorizer.class.name`), Kafka's for KRaft clusters.
pub const STANDARD_AUTHORIZER: &str = "org.apache.kafka.metadata.authorizer.StandardAuthorizer";

/// Whether kmeta reads `key`.
fn is_known_key(key: &str) -> bool {
    KNOWN_KEYS.iter().any(|(known, _)| *known == key)
        || crate::tls::SSL_KEYS.contains(&key)
        || crate::tls::is_listener_ssl_key(key)
        || key == "sasl.enabled.mechanisms"
        || key
            .strip_prefix("listener.name.")
            .is_some_and(|k| k.ends_with(".sasl.enabled.mechanisms"))
}

/// How one listener is secured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerSecurity {
    /// Its protocol, from `listener.security.protocol.map`.
    pub protocol: crate::tls::SecurityProtocol,
    /// Its TLS settings, for SSL and SASL_SSL.
    pub ssl: Option<crate::tls::SslConfig>,
    /// Its SASL mechanisms, for SASL_PLAINTEXT and SASL_SSL.
    pub sasl: Option<Vec<crate::sasl::Mechanism>>,
}

/// A parsed and validated node configuration.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// `node.id`.
    pub node_id: u64,
    /// `process.roles`.
    pub roles: Roles,
    /// `controller.quorum.voters`: id → `host:port`.
    pub voters: BTreeMap<u64, String>,
    /// `listeners`.
    pub listeners: Vec<Listener>,
    /// Each listener's security, by listener name.
    pub security: BTreeMap<String, ListenerSecurity>,
    /// `advertised.listeners` (defaults to `listeners`).
    pub advertised_listeners: Vec<Listener>,
    /// `controller.listener.names` (first name).
    pub controller_listener_name: String,
    /// The first of `log.dirs` (or `log.dir`).
    pub log_dir: PathBuf,
    /// `broker.rack`.
    pub rack: Option<String>,
    /// `broker.heartbeat.interval.ms`.
    pub heartbeat_interval_ms: u64,
    /// `broker.session.timeout.ms`.
    pub session_timeout_ms: u64,
    /// `controller.quorum.election.timeout.ms`.
    pub election_timeout_ms: u64,
    /// `controller.quorum.request.timeout.ms`: the least time one Raft RPC between
    /// controllers is given (`raft::network::rpc_deadline`).
    pub request_timeout_ms: u64,
    /// `num.partitions`.
    pub num_partitions: i32,
    /// `default.replication.factor`.
    pub default_replication_factor: i16,
    /// `unclean.leader.election.enable`.
    pub unclean_leader_election_enable: bool,
    /// `metadata.log.max.record.bytes.between.snapshots`.
    pub snapshot_bytes: u64,
    /// `metadata.log.max.snapshot.interval.ms`.
    pub snapshot_interval_ms: u64,
    /// Keys present but unknown (warned about at start).
    pub unknown_keys: Vec<String>,
    /// `leader.imbalance.check.interval.seconds` in ms, or 0 when
    /// `auto.leader.rebalance.enable=false`.
    pub leader_balance_interval_ms: u64,
    /// `metrics.listener`: `host:port` of the Prometheus endpoint, if any.
    pub metrics_listener: Option<String>,
    /// `inter.broker.listener.name`: the broker listener clients are told about.
    pub broker_listener_name: String,
    /// `socket.request.max.bytes`, `max.connections`, `connections.max.idle.ms`,
    /// `connection.failed.authentication.delay.ms`.
    pub limits: crate::kafka::listener::Limits,
    /// The data plane's keys (`log.segment.bytes`, `min.insync.replicas`, ...).
    pub data: crate::broker::replicas::DataConfig,
    /// The group coordinator's keys (`group.*`).
    pub groups: crate::broker::group::GroupConfig,
    /// The authorizer, when `authorizer.class.name` names the StandardAuthorizer; without
    /// one every request is allowed.
    pub authorizer: Option<kmeta_metadata::acl::Authorizer>,
    /// How this node connects to the controllers (Raft between controllers, brokers to the
    /// controllers): TLS when the controller listener is SSL.
    pub controller_tls: Option<crate::tls::SslConfig>,
    /// How a broker connects to other brokers' inter-broker listener (replica fetches): TLS
    /// when that listener is SSL.
    pub inter_broker_tls: Option<crate::tls::SslConfig>,
}

/// `authorizer.class.name`, `super.users` and `allow.everyone.if.no.acl.found`.
fn parse_authorizer(
    props: &BTreeMap<String, String>,
) -> Result<Option<kmeta_metadata::acl::Authorizer>, ConfigError> {
    let class = props.get("authorizer.class.name").map_or("", |v| v.trim());
    if class.is_empty() {
        return Ok(None);
    }
    if class != STANDARD_AUTHORIZER {
        return Err(ConfigError(format!(
            "authorizer.class.name: {class:?} is not available; kmeta implements {STANDARD_AUTHORIZER}"
        )));
    }
    let mut super_users = std::collections::BTreeSet::new();
    for p in props
        .get("super.users")
        .map_or("", String::as_str)
        .split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        match p.split_once(':') {
            Some((kind, name)) if !kind.is_empty() && !name.is_empty() => {
                super_users.insert(p.to_string());
            }
            _ => {
                return Err(ConfigError(format!(
                    "super.users: {p:?} is not a principal (Type:name, e.g. User:admin)"
                )))
            }
        }
    }
    let allow_everyone_if_no_acl_found = match props
        .get("allow.everyone.if.no.acl.found")
        .map(|v| v.trim())
    {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ConfigError(format!(
                "allow.everyone.if.no.acl.found: {other:?} is not true or false"
            )))
        }
    };
    Ok(Some(kmeta_metadata::acl::Authorizer {
        super_users,
        allow_everyone_if_no_acl_found,
    }))
}

/// Parses properties text: `key=value` (or `key: value`) lines, `#`/`!` comments.
pub fn parse_properties(text: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        let Some(split) = line.find(['=', ':']) else {
            return Err(ConfigError(format!(
                "line {}: expected key=value, got {line:?}",
                n + 1
            )));
        };
        let key = line[..split].trim();
        if key.is_empty() {
            return Err(ConfigError(format!("line {}: empty key", n + 1)));
        }
        out.insert(key.to_string(), line[split + 1..].trim().to_string());
    }
    Ok(out)
}

/// Applies `key=value` overrides on top of file properties.
pub fn apply_overrides(
    props: &mut BTreeMap<String, String>,
    overrides: &[String],
) -> Result<(), ConfigError> {
    for o in overrides {
        let Some((k, v)) = o.split_once('=') else {
            return Err(ConfigError(format!("--override {o:?}: expected key=value")));
        };
        props.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(())
}

fn parse_listeners(key: &str, value: &str) -> Result<Vec<Listener>, ConfigError> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| {
            let bad = || ConfigError(format!("{key}: {item:?} is not NAME://host:port"));
            let (name, rest) = item.split_once("://").ok_or_else(bad)?;
            let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
            let port = port.parse::<u16>().map_err(|_| bad())?;
            if name.is_empty() || host.is_empty() {
                return Err(bad());
            }
            Ok(Listener {
                name: name.to_string(),
                host: host.trim_matches(['[', ']']).to_string(),
                port,
            })
        })
        .collect()
}

/// Each listener's protocol and TLS settings. Every listener must be named in
/// `listener.security.protocol.map` (Kafka's default map when the key is absent).
fn listener_security(
    props: &BTreeMap<String, String>,
    map: &BTreeMap<String, crate::tls::SecurityProtocol>,
    listeners: &[Listener],
) -> Result<BTreeMap<String, ListenerSecurity>, ConfigError> {
    let mut out = BTreeMap::new();
    for l in listeners {
        let protocol = *map.get(&l.name).ok_or_else(|| {
            ConfigError(format!(
                "listener.security.protocol.map: listener {} has no security protocol (add {}:PLAINTEXT, {}:SSL, ...)",
                l.name, l.name, l.name
            ))
        })?;
        let ssl = if protocol.uses_tls() {
            Some(crate::tls::SslConfig::from_properties(props, &l.name)?)
        } else {
            None
        };
        let sasl = if protocol.uses_sasl() {
            Some(crate::sasl::enabled_mechanisms(props, &l.name)?)
        } else {
            None
        };
        out.insert(
            l.name.clone(),
            ListenerSecurity {
                protocol,
                ssl,
                sasl,
            },
        );
    }
    Ok(out)
}

/// The TLS settings this node uses to connect to `listener` on other nodes (the controller
/// listener, the inter-broker listener), from `listener.security.protocol.map`: `None` for
/// PLAINTEXT. The connections kmeta opens itself are PLAINTEXT or SSL: nodes authenticate
/// each other with certificates, and SASL there is refused.
fn node_client_tls(
    props: &BTreeMap<String, String>,
    map: &BTreeMap<String, crate::tls::SecurityProtocol>,
    listener: &str,
    what: &str,
) -> Result<Option<crate::tls::SslConfig>, ConfigError> {
    // A broker's map need not name the controller listener (not one of its own): then
    // it is PLAINTEXT.
    let Some(protocol) = map.get(listener) else {
        return Ok(None);
    };
    if protocol.uses_sasl() {
        return Err(ConfigError(format!(
            "listener.security.protocol.map: {what} {listener} is {}, but it must be PLAINTEXT or SSL: kmeta's nodes authenticate each other with certificates (SSL with ssl.client.auth=required)",
            protocol.name()
        )));
    }
    if !protocol.uses_tls() {
        return Ok(None);
    }
    let ssl = crate::tls::SslConfig::from_properties(props, listener)?;
    if !ssl.has_truststore() {
        return Err(ConfigError(format!(
            "{what} {listener} is SSL: set ssl.truststore.location (or listener.name.{}.ssl.truststore.location), the CA that the other nodes' certificates are checked against",
            listener.to_lowercase()
        )));
    }
    Ok(Some(ssl))
}

fn parse_voters(value: &str) -> Result<BTreeMap<u64, String>, ConfigError> {
    let mut voters = BTreeMap::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let bad = || {
            ConfigError(format!(
                "controller.quorum.voters: {item:?} is not id@host:port"
            ))
        };
        let (id, addr) = item.split_once('@').ok_or_else(bad)?;
        let id = id.parse::<u64>().map_err(|_| bad())?;
        let (_, port) = addr.rsplit_once(':').ok_or_else(bad)?;
        port.parse::<u16>().map_err(|_| bad())?;
        if voters.insert(id, addr.to_string()).is_some() {
            return Err(ConfigError(format!(
                "controller.quorum.voters: voter {id} is listed twice"
            )));
        }
    }
    Ok(voters)
}

fn number<T>(props: &BTreeMap<String, String>, key: &str, min: T) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + fmt::Display + Copy,
{
    let raw = props
        .get(key)
        .map(String::as_str)
        .or_else(|| {
            KNOWN_KEYS
                .iter()
                .find(|(k, _)| *k == key)
                .and_then(|(_, d)| *d)
        })
        .ok_or_else(|| ConfigError(format!("{key} is required")))?;
    let v: T = raw
        .parse()
        .map_err(|_| ConfigError(format!("{key}: {raw:?} is not a valid number")))?;
    if v < min {
        return Err(ConfigError(format!(
            "{key}: {v} is below the minimum {min}"
        )));
    }
    Ok(v)
}

impl NodeConfig {
    /// Reads a properties file and applies overrides.
    pub fn load(path: &Path, overrides: &[String]) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
        let mut props = parse_properties(&text)?;
        apply_overrides(&mut props, overrides)?;
        NodeConfig::from_properties(&props)
    }

    /// Validates properties into a configuration.
    pub fn from_properties(props: &BTreeMap<String, String>) -> Result<NodeConfig, ConfigError> {
        let unknown_keys = props.keys().filter(|k| !is_known_key(k)).cloned().collect();
        let node_id: u64 = number(props, "node.id", 0)?;
        let roles_raw = props.get("process.roles").ok_or_else(|| {
            ConfigError(
                "process.roles is required (controller, broker or broker,controller)".into(),
            )
        })?;
        let mut roles = Roles {
            broker: false,
            controller: false,
        };
        for r in roles_raw.split(',').map(str::trim) {
            match r {
                "broker" => roles.broker = true,
                "controller" => roles.controller = true,
                other => {
                    return Err(ConfigError(format!(
                        "process.roles: unknown role {other:?}"
                    )))
                }
            }
        }
        if !roles.broker && !roles.controller {
            return Err(ConfigError("process.roles: no role given".into()));
        }
        let voters = parse_voters(
            props
                .get("controller.quorum.voters")
                .map(String::as_str)
                .unwrap_or(""),
        )?;
        if voters.is_empty() {
            return Err(ConfigError(
                "controller.quorum.voters is required (id@host:port,...)".into(),
            ));
        }
        let listeners = parse_listeners(
            "listeners",
            props.get("listeners").map(String::as_str).unwrap_or(""),
        )?;
        let advertised_listeners = match props.get("advertised.listeners") {
            Some(v) => parse_listeners("advertised.listeners", v)?,
            None => listeners.clone(),
        };
        let controller_listener_name = props
            .get("controller.listener.names")
            .map(|v| v.split(',').next().unwrap_or("").trim().to_string())
            .unwrap_or_else(|| "CONTROLLER".into());
        let broker_listener_name = props
            .get("inter.broker.listener.name")
            .cloned()
            .unwrap_or_else(|| "PLAINTEXT".into());
        let protocols = crate::tls::parse_protocol_map(
            props
                .get("listener.security.protocol.map")
                .map(String::as_str),
        )?;
        // How this node reaches the others, checked first: SASL between nodes is refused
        // before a listener's own settings are read.
        let controller_tls = node_client_tls(
            props,
            &protocols,
            &controller_listener_name,
            "the controller listener (controller.listener.names)",
        )?;
        let inter_broker_tls = if roles.broker {
            node_client_tls(
                props,
                &protocols,
                &broker_listener_name,
                "the inter-broker listener (inter.broker.listener.name)",
            )?
        } else {
            None
        };
        let security = listener_security(props, &protocols, &listeners)?;
        if roles.controller {
            if !voters.contains_key(&node_id) {
                return Err(ConfigError(format!(
                    "controller.quorum.voters: this controller (node.id={node_id}) is not among the voters"
                )));
            }
            if !listeners.iter().any(|l| l.name == controller_listener_name) {
                return Err(ConfigError(format!(
                    "listeners: a controller needs a {controller_listener_name}:// listener"
                )));
            }
        }
        let log_dir = props
            .get("log.dirs")
            .or_else(|| props.get("log.dir"))
            .and_then(|v| v.split(',').next())
            .map(|v| PathBuf::from(v.trim()))
            .filter(|p| !p.as_os_str().is_empty())
            .ok_or_else(|| ConfigError("log.dirs is required".into()))?;
        let unclean = match props
            .get("unclean.leader.election.enable")
            .map(String::as_str)
        {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(ConfigError(format!(
                    "unclean.leader.election.enable: {other:?} is not true or false"
                )))
            }
        };
        let heartbeat_interval_ms = number(props, "broker.heartbeat.interval.ms", 1)?;
        let session_timeout_ms: u64 = number(props, "broker.session.timeout.ms", 1)?;
        if session_timeout_ms <= heartbeat_interval_ms {
            return Err(ConfigError(format!(
                "broker.session.timeout.ms ({session_timeout_ms}) must exceed broker.heartbeat.interval.ms ({heartbeat_interval_ms})"
            )));
        }
        let retention_ms: i64 = match (
            props.get("log.retention.ms"),
            props.get("log.retention.minutes"),
        ) {
            (Some(_), _) => number(props, "log.retention.ms", -1)?,
            (None, Some(_)) => {
                number::<i64>(props, "log.retention.minutes", -1)?.saturating_mul(60_000)
            }
            (None, None) => {
                number::<i64>(props, "log.retention.hours", -1)?.saturating_mul(3_600_000)
            }
        };
        let timestamp_type = props
            .get("log.message.timestamp.type")
            .map_or("CreateTime", String::as_str);
        if !matches!(timestamp_type, "CreateTime" | "LogAppendTime") {
            return Err(ConfigError(format!(
                "log.message.timestamp.type: {timestamp_type:?} is not CreateTime or LogAppendTime"
            )));
        }
        let flush: i64 = number(props, "log.flush.interval.messages", 1)?;
        let data = crate::broker::replicas::DataConfig {
            log_dir: log_dir.clone(),
            log: crate::broker::log::LogConfig {
                segment_bytes: number(props, "log.segment.bytes", 14u64)?,
                flush_messages: if flush == i64::MAX {
                    u64::MAX
                } else {
                    flush as u64
                },
                retention_ms: if retention_ms < 0 { -1 } else { retention_ms },
                retention_bytes: number(props, "log.retention.bytes", -1i64)?,
                max_message_bytes: number(props, "message.max.bytes", 0usize)?,
                log_append_time: timestamp_type == "LogAppendTime",
                ..crate::broker::log::LogConfig::default()
            },
            min_insync_replicas: number(props, "min.insync.replicas", 1usize)?,
            replica_lag_ms: number(props, "replica.lag.time.max.ms", 1i64)?,
            retention_check_ms: number(props, "log.retention.check.interval.ms", 1u64)?,
        };
        let groups = crate::broker::group::GroupConfig {
            min_session_ms: number(props, "group.min.session.timeout.ms", 1i32)?,
            max_session_ms: number(props, "group.max.session.timeout.ms", 1i32)?,
            initial_rebalance_delay_ms: number(props, "group.initial.rebalance.delay.ms", 0i64)?,
        };
        if groups.max_session_ms < groups.min_session_ms {
            return Err(ConfigError(format!(
                "group.max.session.timeout.ms ({}) is below group.min.session.timeout.ms ({})",
                groups.max_session_ms, groups.min_session_ms
            )));
        }
        let authorizer = parse_authorizer(props)?;
        Ok(NodeConfig {
            controller_tls,
            inter_broker_tls,
            data,
            groups,
            authorizer,
            node_id,
            roles,
            voters,
            listeners,
            security,
            advertised_listeners,
            controller_listener_name,
            log_dir,
            rack: props.get("broker.rack").cloned().filter(|r| !r.is_empty()),
            heartbeat_interval_ms,
            session_timeout_ms,
            election_timeout_ms: number(props, "controller.quorum.election.timeout.ms", 50)?,
            request_timeout_ms: number(props, "controller.quorum.request.timeout.ms", 1)?,
            num_partitions: number(props, "num.partitions", 1)?,
            default_replication_factor: number(props, "default.replication.factor", 1)?,
            unclean_leader_election_enable: unclean,
            snapshot_bytes: number(props, "metadata.log.max.record.bytes.between.snapshots", 1)?,
            snapshot_interval_ms: number(props, "metadata.log.max.snapshot.interval.ms", 0)?,
            unknown_keys,
            leader_balance_interval_ms: match props
                .get("auto.leader.rebalance.enable")
                .map(String::as_str)
            {
                None | Some("true") => {
                    number::<u64>(props, "leader.imbalance.check.interval.seconds", 1)? * 1000
                }
                Some("false") => 0,
                Some(other) => {
                    return Err(ConfigError(format!(
                        "auto.leader.rebalance.enable: {other:?} is not true or false"
                    )))
                }
            },
            metrics_listener: props
                .get("metrics.listener")
                .filter(|v| !v.is_empty())
                .map(|v| crate::metrics::parse_listener(v))
                .transpose()
                .map_err(ConfigError)?,
            broker_listener_name,
            limits: crate::kafka::listener::Limits {
                max_request_bytes: number(props, "socket.request.max.bytes", 64usize)?,
                max_connections: number(props, "max.connections", 1usize)?,
                idle_timeout: std::time::Duration::from_millis(number(
                    props,
                    "connections.max.idle.ms",
                    1u64,
                )?),
                failed_authentication_delay: std::time::Duration::from_millis(number(
                    props,
                    "connection.failed.authentication.delay.ms",
                    0u64,
                )?),
            },
        })
    }

    /// The listener with this name.
    pub fn listener(&self, name: &str) -> Option<&Listener> {
        self.listeners.iter().find(|l| l.name == name)
    }

    /// The limits of this node's Kafka listeners.
    pub fn listener_limits(&self) -> crate::kafka::listener::Limits {
        self.limits
    }

    /// Where this node's metadata log and snapshots live.
    pub fn metadata_dir(&self) -> PathBuf {
        self.log_dir.join("__cluster_metadata-0")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(text: &str) -> BTreeMap<String, String> {
        parse_properties(text).unwrap()
    }

    const GOOD: &str = "
# a controller
node.id=1
process.roles=controller
controller.quorum.voters=1@127.0.0.1:9093,2@127.0.0.1:9094,3@127.0.0.1:9095
listeners=CONTROLLER://127.0.0.1:9093
log.dirs=/tmp/kmeta-1
some.future.key=1
";

    #[test]
    fn a_valid_file_parses_with_kafka_defaults() {
        let c = NodeConfig::from_properties(&props(GOOD)).unwrap();
        assert_eq!(c.node_id, 1);
        assert!(c.roles.controller && !c.roles.broker);
        assert_eq!(c.voters.len(), 3);
        assert_eq!(c.session_timeout_ms, 9000);
        assert_eq!(c.heartbeat_interval_ms, 2000);
        assert_eq!(c.election_timeout_ms, 1000);
        assert_eq!(c.request_timeout_ms, 2000);
        assert_eq!(c.listener("CONTROLLER").unwrap().addr(), "127.0.0.1:9093");
        assert_eq!(c.unknown_keys, vec!["some.future.key".to_string()]);
    }

    #[test]
    fn bad_values_fail_naming_the_key() {
        let cases = [
            ("node.id", "abc"),
            ("process.roles", "leader"),
            ("controller.quorum.voters", "1@nowhere"),
            ("listeners", "CONTROLLER:9093"),
            ("broker.session.timeout.ms", "-5"),
            ("unclean.leader.election.enable", "yes"),
            ("num.partitions", "0"),
        ];
        for (key, value) in cases {
            let mut p = props(GOOD);
            p.insert(key.into(), value.into());
            let err = NodeConfig::from_properties(&p).unwrap_err();
            assert!(err.0.contains(key), "{key}: {err}");
        }
        let mut p = props(GOOD);
        p.insert("node.id".into(), "7".into());
        assert!(NodeConfig::from_properties(&p)
            .unwrap_err()
            .0
            .contains("controller.quorum.voters"));
    }

    #[test]
    fn every_listener_needs_a_security_protocol_and_tls_ones_their_keys() {
        const BROKER: &str = "
node.id=1
process.roles=broker
controller.quorum.voters=101@127.0.0.1:9093
log.dirs=/tmp/kmeta-1
";
        let with = |extra: &str| {
            let mut p = props(BROKER);
            p.extend(props(extra));
            NodeConfig::from_properties(&p)
        };
        let c = with("listeners=PLAINTEXT://127.0.0.1:9092,SSL://127.0.0.1:9094\nssl.keystore.location=/k.pem")
            .unwrap();
        assert_eq!(
            c.security["SSL"].protocol,
            crate::tls::SecurityProtocol::Ssl
        );
        assert!(c.security["SSL"].ssl.is_some());
        assert_eq!(
            c.security["PLAINTEXT"].protocol,
            crate::tls::SecurityProtocol::Plaintext
        );
        assert!(c.unknown_keys.is_empty(), "{:?}", c.unknown_keys);
        // A name Kafka's default map lacks must be mapped, as Kafka requires.
        let err =
            with("listeners=PLAINTEXT://127.0.0.1:9092,EXTERNAL://127.0.0.1:9094").unwrap_err();
        assert!(err.0.contains("listener.security.protocol.map") && err.0.contains("EXTERNAL"));
        let c = with("listeners=PLAINTEXT://127.0.0.1:9092,EXTERNAL://127.0.0.1:9094\nlistener.security.protocol.map=PLAINTEXT:PLAINTEXT,EXTERNAL:SSL\nlistener.name.external.ssl.keystore.location=/k.pem").unwrap();
        assert_eq!(
            c.security["EXTERNAL"].protocol,
            crate::tls::SecurityProtocol::Ssl
        );
        // An SSL listener without a keystore.
        let err = with("listeners=PLAINTEXT://127.0.0.1:9092,SSL://127.0.0.1:9094").unwrap_err();
        assert!(err.0.contains("ssl.keystore.location"), "{err}");
        let c =
            with("listeners=PLAINTEXT://127.0.0.1:9092,SASL_PLAINTEXT://127.0.0.1:9094").unwrap();
        use crate::sasl::Mechanism::Scram;
        use kmeta_metadata::record::ScramMechanism::{Sha256, Sha512};
        assert_eq!(
            c.security["SASL_PLAINTEXT"].sasl,
            Some(vec![Scram(Sha256), Scram(Sha512)])
        );
        let err = with("listeners=PLAINTEXT://127.0.0.1:9092,SASL_SSL://127.0.0.1:9094\nssl.keystore.location=/k.pem\nsasl.enabled.mechanisms=GSSAPI").unwrap_err();
        assert!(err.0.contains("sasl.enabled.mechanisms"), "{err}");
        // Between nodes: SSL, with a truststore to check the other nodes against; not SASL.
        let err = with("listeners=SSL://127.0.0.1:9094\ninter.broker.listener.name=SSL\nssl.keystore.location=/k.pem").unwrap_err();
        assert!(err.0.contains("ssl.truststore.location"), "{err}");
        let c = with("listeners=SSL://127.0.0.1:9094\ninter.broker.listener.name=SSL\nssl.keystore.location=/k.pem\nssl.truststore.location=/ca.pem").unwrap();
        assert!(c.inter_broker_tls.is_some() && c.controller_tls.is_none());
        let err = with("listeners=SASL_SSL://127.0.0.1:9094\ninter.broker.listener.name=SASL_SSL\nssl.keystore.location=/k.pem").unwrap_err();
        assert!(err.0.contains("inter-broker listener"), "{err}");
        let mut p = props(GOOD);
        p.insert(
            "listener.security.protocol.map".into(),
            "CONTROLLER:SSL".into(),
        );
        p.insert("ssl.keystore.location".into(), "/k.pem".into());
        let err = NodeConfig::from_properties(&p).unwrap_err();
        assert!(err.0.contains("ssl.truststore.location"), "{err}");
        p.insert("ssl.truststore.location".into(), "/ca.pem".into());
        p.insert("ssl.client.auth".into(), "required".into());
        let c = NodeConfig::from_properties(&p).unwrap();
        assert!(c.controller_tls.is_some() && c.security["CONTROLLER"].ssl.is_some());
        p.insert(
            "listener.security.protocol.map".into(),
            "CONTROLLER:SASL_SSL".into(),
        );
        let err = NodeConfig::from_properties(&p).unwrap_err();
        assert!(err.0.contains("controller listener"), "{err}");
    }

    #[test]
    fn overrides_win_over_the_file() {
        let mut p = props(GOOD);
        apply_overrides(&mut p, &["broker.session.timeout.ms=3000".into()]).unwrap();
        assert_eq!(
            NodeConfig::from_properties(&p).unwrap().session_timeout_ms,
            3000
        );
        assert!(apply_overrides(&mut p, &["nonsense".into()]).is_err());
    }

    #[test]
    fn the_standard_authorizer_is_configured_with_kafkas_keys() {
        let with = |extra: &str| NodeConfig::from_properties(&props(&format!("{GOOD}{extra}")));
        assert_eq!(with("").unwrap().authorizer, None);
        let auth = with(&format!(
            "authorizer.class.name={STANDARD_AUTHORIZER}\nsuper.users=User:admin; User:CN=broker\n"
        ))
        .unwrap()
        .authorizer
        .unwrap();
        assert_eq!(
            auth.super_users.iter().collect::<Vec<_>>(),
            ["User:CN=broker", "User:admin"]
        );
        assert!(!auth.allow_everyone_if_no_acl_found);
        let open = with(&format!(
            "authorizer.class.name={STANDARD_AUTHORIZER}\nallow.everyone.if.no.acl.found=true\n"
        ))
        .unwrap();
        assert!(open.authorizer.unwrap().allow_everyone_if_no_acl_found);
        let err =
            with("authorizer.class.name=kafka.security.authorizer.AclAuthorizer\n").unwrap_err();
        assert!(err.0.contains("authorizer.class.name"), "{err}");
        let err = with(&format!(
            "authorizer.class.name={STANDARD_AUTHORIZER}\nsuper.users=admin\n"
        ))
        .unwrap_err();
        assert!(err.0.contains("super.users"), "{err}");
    }
}
