//! TLS on kmeta's listeners (issue 15), set with Kafka's keys: `listener.security.protocol.map`
//! names each listener's protocol, and the `ssl.*` keys (or their per-listener form,
//! `listener.name.<name>.ssl.*`) give its PEM key, certificates and client-certificate rule.
//!
//! Only PEM is read (`ssl.keystore.type=PEM`, `ssl.truststore.type=PEM`), from files or inline,
//! as Kafka takes them. A listener's files are checked for changes at most once a second, when a
//! connection arrives; a changed set is read again and new connections get it, while
//! connections already open keep theirs (as Kafka's reconfigured listeners do). Files that no
//! longer load leave the last good configuration in place, with a warning.

pub mod ca;
pub mod principal;

use crate::config::ConfigError;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// A listener's security protocol, as `listener.security.protocol.map` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecurityProtocol {
    /// No TLS, no authentication.
    Plaintext,
    /// TLS; a client may be authenticated by its certificate.
    Ssl,
    /// SASL authentication without TLS.
    SaslPlaintext,
    /// SASL authentication inside TLS.
    SaslSsl,
}

impl SecurityProtocol {
    /// Parses Kafka's name of a protocol.
    pub fn parse(name: &str) -> Option<SecurityProtocol> {
        Some(match name {
            "PLAINTEXT" => SecurityProtocol::Plaintext,
            "SSL" => SecurityProtocol::Ssl,
            "SASL_PLAINTEXT" => SecurityProtocol::SaslPlaintext,
            "SASL_SSL" => SecurityProtocol::SaslSsl,
            _ => return None,
        })
    }

    /// Kafka's name of the protocol.
    pub fn name(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "PLAINTEXT",
            SecurityProtocol::Ssl => "SSL",
            SecurityProtocol::SaslPlaintext => "SASL_PLAINTEXT",
            SecurityProtocol::SaslSsl => "SASL_SSL",
        }
    }

    /// The id Kafka's protocol carries for it (a registered endpoint's `security_protocol`).
    pub fn id(self) -> i16 {
        match self {
            SecurityProtocol::Plaintext => 0,
            SecurityProtocol::Ssl => 1,
            SecurityProtocol::SaslPlaintext => 2,
            SecurityProtocol::SaslSsl => 3,
        }
    }

    /// Whether clients on such a listener authenticate with SASL.
    pub fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }

    /// Whether connections on such a listener run inside TLS.
    pub fn uses_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }
}

/// Kafka's default `listener.security.protocol.map`, plus the controller listener's usual name.
const DEFAULT_PROTOCOL_MAP: &str =
    "PLAINTEXT:PLAINTEXT,SSL:SSL,SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT";

/// Parses `listener.security.protocol.map` (`NAME:PROTOCOL,...`).
pub fn parse_protocol_map(
    value: Option<&str>,
) -> Result<BTreeMap<String, SecurityProtocol>, ConfigError> {
    let key = "listener.security.protocol.map";
    let mut map = BTreeMap::new();
    for item in value
        .unwrap_or(DEFAULT_PROTOCOL_MAP)
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let (name, protocol) = item
            .split_once(':')
            .ok_or_else(|| ConfigError(format!("{key}: {item:?} is not NAME:PROTOCOL")))?;
        let protocol = SecurityProtocol::parse(protocol.trim()).ok_or_else(|| {
            ConfigError(format!(
                "{key}: {protocol:?} is not PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"
            ))
        })?;
        if map.insert(name.trim().to_string(), protocol).is_some() {
            return Err(ConfigError(format!("{key}: {name} is listed twice")));
        }
    }
    Ok(map)
}

/// Whether a TLS listener asks its clients for a certificate (`ssl.client.auth`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// A client without a certificate is refused.
    Required,
    /// A certificate is asked for; a client without one is let in unauthenticated.
    Requested,
    /// No certificate is asked for.
    None,
}

/// PEM text and where it comes from, for messages.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Pem {
    /// A file, read when the listener starts and again when it changes.
    File { key: String, path: PathBuf },
    /// PEM given in the configuration itself.
    Inline { key: String, text: String },
}

impl Pem {
    fn read(&self) -> Result<Vec<u8>, String> {
        match self {
            Pem::File { key, path } => std::fs::read(path)
                .map_err(|e| format!("{key}: cannot read {}: {e}", path.display())),
            Pem::Inline { text, .. } => Ok(text.clone().into_bytes()),
        }
    }

    fn key(&self) -> &str {
        match self {
            Pem::File { key, .. } | Pem::Inline { key, .. } => key,
        }
    }

    fn path(&self) -> Option<&PathBuf> {
        match self {
            Pem::File { path, .. } => Some(path),
            Pem::Inline { .. } => None,
        }
    }
}

/// The TLS settings of one listener, as configured (nothing read yet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SslConfig {
    /// The listener's name, for messages.
    pub listener: String,
    /// The private key.
    key: Pem,
    /// The certificate chain, the listener's own certificate first.
    chain: Pem,
    /// The certificates that client certificates are checked against.
    trust: Option<Pem>,
    /// `ssl.client.auth`.
    pub client_auth: ClientAuth,
    /// `ssl.enabled.protocols`: TLS 1.2 allowed beside TLS 1.3.
    tls12: bool,
    /// `ssl.endpoint.identification.algorithm` is not empty: a node connecting to this
    /// listener elsewhere checks the server's name.
    check_names: bool,
}

/// The `ssl.*` keys kmeta reads, each also taken as `listener.name.<name>.<key>`.
pub const SSL_KEYS: &[&str] = &[
    "ssl.keystore.type",
    "ssl.keystore.location",
    "ssl.keystore.certificate.chain",
    "ssl.keystore.key",
    "ssl.key.password",
    "ssl.keystore.password",
    "ssl.truststore.type",
    "ssl.truststore.location",
    "ssl.truststore.certificates",
    "ssl.truststore.password",
    "ssl.client.auth",
    "ssl.enabled.protocols",
    "ssl.endpoint.identification.algorithm",
];

/// Whether `key` is one of [`SSL_KEYS`] in its per-listener form.
pub fn is_listener_ssl_key(key: &str) -> bool {
    key.strip_prefix("listener.name.")
        .and_then(|rest| rest.split_once('.'))
        .is_some_and(|(_, k)| SSL_KEYS.contains(&k))
}

impl SslConfig {
    /// The TLS settings of listener `name` from `props`: `listener.name.<name>.<key>` (the
    /// name in lower case, as Kafka spells it) wins over `<key>`.
    pub fn from_properties(
        props: &BTreeMap<String, String>,
        name: &str,
    ) -> Result<SslConfig, ConfigError> {
        let scoped = |key: &str| format!("listener.name.{}.{key}", name.to_lowercase());
        // The key as found (for messages) and its value.
        let get = |key: &str| -> Option<(String, String)> {
            let s = scoped(key);
            if let Some(v) = props.get(&s) {
                return Some((s, v.clone()));
            }
            props.get(key).map(|v| (key.to_string(), v.clone()))
        };
        let nonempty = |key: &str| get(key).filter(|(_, v)| !v.trim().is_empty());
        for store in ["ssl.keystore.type", "ssl.truststore.type"] {
            if let Some((k, v)) = nonempty(store) {
                if !v.trim().eq_ignore_ascii_case("PEM") {
                    return Err(ConfigError(format!(
                        "{k}: {v:?} is not supported; kmeta reads PEM only (set {store}=PEM)"
                    )));
                }
            }
        }
        if let Some((k, _)) = nonempty("ssl.key.password") {
            return Err(ConfigError(format!(
                "{k}: encrypted private keys are not supported; give an unencrypted PKCS#8, PKCS#1 or SEC1 key and protect the file instead"
            )));
        }
        let (key, chain) = match (
            nonempty("ssl.keystore.location"),
            nonempty("ssl.keystore.certificate.chain"),
            nonempty("ssl.keystore.key"),
        ) {
            (Some((k, path)), None, None) => {
                let file = Pem::File {
                    key: k,
                    path: PathBuf::from(path.trim()),
                };
                (file.clone(), file)
            }
            (None, Some((ck, chain)), Some((kk, key))) => (
                Pem::Inline { key: kk, text: key },
                Pem::Inline {
                    key: ck,
                    text: chain,
                },
            ),
            (None, None, None) => {
                return Err(ConfigError(format!(
                    "listener {name} uses TLS: set ssl.keystore.location (a PEM file with the private key and certificate chain), or ssl.keystore.certificate.chain and ssl.keystore.key (also as listener.name.{}.ssl.*)",
                    name.to_lowercase()
                )))
            }
            _ => {
                return Err(ConfigError(format!(
                    "listener {name}: set either ssl.keystore.location or both ssl.keystore.certificate.chain and ssl.keystore.key"
                )))
            }
        };
        let trust = match (
            nonempty("ssl.truststore.location"),
            nonempty("ssl.truststore.certificates"),
        ) {
            (Some((k, path)), None) => Some(Pem::File {
                key: k,
                path: PathBuf::from(path.trim()),
            }),
            (None, Some((k, text))) => Some(Pem::Inline { key: k, text }),
            (None, None) => None,
            (Some(_), Some(_)) => {
                return Err(ConfigError(format!(
                    "listener {name}: set ssl.truststore.location or ssl.truststore.certificates, not both"
                )))
            }
        };
        let client_auth = match get("ssl.client.auth") {
            None => ClientAuth::None,
            Some((k, v)) => match v.trim() {
                "required" => ClientAuth::Required,
                "requested" => ClientAuth::Requested,
                "none" | "" => ClientAuth::None,
                other => {
                    return Err(ConfigError(format!(
                        "{k}: {other:?} is not required, requested or none"
                    )))
                }
            },
        };
        if client_auth != ClientAuth::None && trust.is_none() {
            return Err(ConfigError(format!(
                "listener {name}: ssl.client.auth={} needs ssl.truststore.location or ssl.truststore.certificates to check client certificates against",
                if client_auth == ClientAuth::Required { "required" } else { "requested" }
            )));
        }
        let tls12 = match get("ssl.enabled.protocols") {
            None => true,
            Some((k, v)) => {
                let mut tls12 = false;
                let mut tls13 = false;
                for p in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                    match p {
                        "TLSv1.2" => tls12 = true,
                        "TLSv1.3" => tls13 = true,
                        other => {
                            return Err(ConfigError(format!(
                                "{k}: {other:?} is not supported (TLSv1.2, TLSv1.3)"
                            )))
                        }
                    }
                }
                if !tls13 {
                    return Err(ConfigError(format!(
                        "{k}: TLSv1.3 must be enabled (kmeta offers TLSv1.3, and TLSv1.2 beside it)"
                    )));
                }
                tls12
            }
        };
        let check_names =
            get("ssl.endpoint.identification.algorithm").is_none_or(|(_, v)| !v.trim().is_empty());
        Ok(SslConfig {
            listener: name.to_string(),
            key,
            chain,
            trust,
            client_auth,
            tls12,
            check_names,
        })
    }

    /// Whether a truststore is given (nodes connecting to this listener need one).
    pub fn has_truststore(&self) -> bool {
        self.trust.is_some()
    }

    fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = [Some(&self.key), Some(&self.chain), self.trust.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|p| p.path().cloned())
            .collect();
        files.dedup();
        files
    }

    /// How a node connects to this listener on other nodes (the controller listener, the
    /// inter-broker listener), as Kafka does: trusting the truststore, presenting the
    /// keystore's certificate, checking the server's name unless
    /// `ssl.endpoint.identification.algorithm` is empty. Read afresh on each call, so a
    /// renewed certificate is used by the next connection.
    pub fn node_client(&self) -> Result<crate::kafka::connect::ClientSecurity, String> {
        let trust = self.trust.as_ref().ok_or_else(|| {
            format!(
                "listener {}: nodes connecting to it over TLS need ssl.truststore.location or ssl.truststore.certificates",
                self.listener
            )
        })?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in read_certificates(trust)? {
            roots
                .add(cert)
                .map_err(|e| format!("{}: a certificate is not usable: {e}", trust.key()))?;
        }
        let identity = (read_certificates(&self.chain)?, read_key(&self.key)?);
        let config =
            crate::kafka::connect::client_tls_config(roots, Some(identity), self.check_names)
                .map_err(|e| format!("listener {}: {e}", self.listener))?;
        Ok(crate::kafka::connect::ClientSecurity {
            tls: Some((config, self.check_names)),
            sasl: None,
        })
    }

    /// Reads the PEM items and builds the listener's rustls configuration.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, String> {
        let provider = provider();
        let chain = read_certificates(&self.chain)?;
        let key = read_key(&self.key)?;
        let versions: &[&rustls::SupportedProtocolVersion] = if self.tls12 {
            &[&rustls::version::TLS13, &rustls::version::TLS12]
        } else {
            &[&rustls::version::TLS13]
        };
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| format!("listener {}: {e}", self.listener))?;
        let builder = match (&self.trust, self.client_auth) {
            (Some(trust), auth) if auth != ClientAuth::None => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in read_certificates(trust)? {
                    roots.add(cert).map_err(|e| {
                        format!("{}: a certificate is not usable: {e}", trust.key())
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
                let verifier = if auth == ClientAuth::Requested {
                    verifier.allow_unauthenticated()
                } else {
                    verifier
                };
                let verifier = verifier
                    .build()
                    .map_err(|e| format!("{}: {e}", trust.key()))?;
                builder.with_client_cert_verifier(verifier)
            }
            _ => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain, key).map_err(|e| {
            format!(
                "{} and {}: the key and certificate chain do not make a usable pair: {e}",
                self.key.key(),
                self.chain.key()
            )
        })?;
        // Kafka clients speak no ALPN; none is offered.
        config.alpn_protocols.clear();
        Ok(Arc::new(config))
    }
}

/// The cryptography under every TLS connection: rustls's *ring* provider (X25519, P-256 and
/// P-384 key exchange; AES-GCM and ChaCha20-Poly1305). rustls 0.23.48 deprecated it for
/// lacking post-quantum key exchange, which only its aws-lc-rs provider has; that one is a
/// large C and assembly build, and Kafka's clients (OpenSSL under librdkafka, the JDK) offer
/// no post-quantum group by default. See docs/SECURITY.md.
#[allow(deprecated)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certificates(pem: &Pem) -> Result<Vec<CertificateDer<'static>>, String> {
    let text = pem.read()?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not PEM certificates: {e}", pem.key()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no certificate (-----BEGIN CERTIFICATE-----) found",
            pem.key()
        ));
    }
    Ok(certs)
}

fn read_key(pem: &Pem) -> Result<PrivateKeyDer<'static>, String> {
    let text = pem.read()?;
    if text
        .windows(b"ENCRYPTED PRIVATE KEY".len())
        .any(|w| w == b"ENCRYPTED PRIVATE KEY")
    {
        return Err(format!(
            "{}: the private key is encrypted; kmeta reads unencrypted keys only",
            pem.key()
        ));
    }
    PrivateKeyDer::from_pem_slice(&text).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => {
            format!(
                "{}: no private key (-----BEGIN PRIVATE KEY-----) found",
                pem.key()
            )
        }
        e => format!("{}: not a PEM private key: {e}", pem.key()),
    })
}

/// How often a listener's PEM files are checked for changes, at most.
pub const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// What identifies one version of a file: its modification time, size and inode.
type FileStamp = Option<(SystemTime, u64, u64)>;

fn stamps(files: &[PathBuf]) -> Vec<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    files
        .iter()
        .map(|f| {
            std::fs::metadata(f)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len(), m.ino())))
        })
        .collect()
}

struct Loaded {
    acceptor: tokio_rustls::TlsAcceptor,
    stamps: Vec<FileStamp>,
    checked: Instant,
}

/// A listener's TLS, its files read again when they change.
pub struct ServerTls {
    config: SslConfig,
    files: Vec<PathBuf>,
    loaded: Mutex<Loaded>,
}

impl ServerTls {
    /// Reads the listener's key and certificates; an error names the key at fault.
    pub fn load(config: SslConfig) -> Result<Arc<ServerTls>, String> {
        let files = config.files();
        let stamps = stamps(&files);
        let server = config.server_config()?;
        Ok(Arc::new(ServerTls {
            config,
            files,
            loaded: Mutex::new(Loaded {
                acceptor: tokio_rustls::TlsAcceptor::from(server),
                stamps,
                checked: Instant::now(),
            }),
        }))
    }

    /// The acceptor for a new connection: the files' current contents if they changed since
    /// they were last read (checked at most once per [`RELOAD_CHECK`]).
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if loaded.checked.elapsed() >= RELOAD_CHECK && !self.files.is_empty() {
            loaded.checked = Instant::now();
            let now = stamps(&self.files);
            if now != loaded.stamps {
                loaded.stamps = now;
                match self.config.server_config() {
                    Ok(server) => {
                        tracing::info!(listener = %self.config.listener, "TLS key and certificates reloaded");
                        loaded.acceptor = tokio_rustls::TlsAcceptor::from(server);
                    }
                    Err(e) => tracing::warn!(
                        listener = %self.config.listener,
                        error = %e,
                        "TLS files changed but do not load; keeping the last good ones"
                    ),
                }
            }
        }
        loaded.acceptor.clone()
    }

    /// The listener's settings.
    pub fn config(&self) -> &SslConfig {
        &self.config
    }
}
