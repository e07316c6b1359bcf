//! The client side of a secured Kafka connection, for kmeta's own tools (the operator commands'
//! `--command-config`, the benchmark): TLS with rustls, then SASL (SCRAM or PLAIN), set with
//! Kafka's client keys: `security.protocol`, `ssl.truststore.location`,
//! `ssl.keystore.location` (a PEM file with the client's key and certificate),
//! `ssl.endpoint.identification.algorithm`, `sasl.mechanism`, and `sasl.jaas.config`
//! (`... username="u" password="p";`) or librdkafka's `sasl.username` and `sasl.password`.

use super::client::{connect_tcp, decode_response, encode_request};
use super::wire::{read_frame, sb, write_frame};
use crate::sasl::Mechanism;
use crate::tls::SecurityProtocol;
use kafka_protocol::messages::{SaslAuthenticateRequest, SaslHandshakeRequest};
use kafka_protocol::protocol::StrBytes;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A client's login.
#[derive(Clone)]
pub struct SaslLogin {
    /// The mechanism.
    pub mechanism: Mechanism,
    /// The user.
    pub user: String,
    /// The password (never printed: `Debug` leaves it out).
    pub password: String,
}

impl std::fmt::Debug for SaslLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaslLogin")
            .field("mechanism", &self.mechanism)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// How a client secures its connections.
#[derive(Clone, Default)]
pub struct ClientSecurity {
    /// TLS, with the name certificates are checked against (`None`: not checked, for
    /// `ssl.endpoint.identification.algorithm=`).
    pub tls: Option<(Arc<rustls::ClientConfig>, bool)>,
    /// SASL.
    pub sasl: Option<SaslLogin>,
}

/// Skips the server certificate's name check (Kafka's empty
/// `ssl.endpoint.identification.algorithm`), still checking its chain.
#[derive(Debug)]
struct NoHostnameCheck(Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for NoHostnameCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `username="..."` out of a `sasl.jaas.config` value.
fn jaas_option(jaas: &str, key: &str) -> Option<String> {
    let at = jaas.find(&format!("{key}="))? + key.len() + 1;
    let rest = jaas[at..].strip_prefix('"')?;
    Some(rest[..rest.find('"')?].to_string())
}

impl ClientSecurity {
    /// Reads Kafka's client keys (a `--command-config` file).
    pub fn from_properties(props: &BTreeMap<String, String>) -> Result<ClientSecurity, String> {
        let protocol = props
            .get("security.protocol")
            .map(|p| p.trim().to_ascii_uppercase())
            .unwrap_or_else(|| "PLAINTEXT".into());
        let protocol = SecurityProtocol::parse(&protocol).ok_or_else(|| {
            format!(
                "security.protocol: {protocol:?} is not PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"
            )
        })?;
        let mut out = ClientSecurity::default();
        if protocol.uses_tls() {
            let mut roots = rustls::RootCertStore::empty();
            let trust = props.get("ssl.truststore.location").ok_or(
                "ssl.truststore.location is required for TLS (a PEM file of CA certificates)",
            )?;
            let pem = std::fs::read(trust)
                .map_err(|e| format!("ssl.truststore.location: cannot read {trust}: {e}"))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| format!("ssl.truststore.location: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("ssl.truststore.location: {e}"))?;
            }
            let check_names = props
                .get("ssl.endpoint.identification.algorithm")
                .is_none_or(|v| !v.trim().is_empty());
            let identity = match props.get("ssl.keystore.location") {
                Some(path) => {
                    let pem = std::fs::read(path)
                        .map_err(|e| format!("ssl.keystore.location: cannot read {path}: {e}"))?;
                    let chain = CertificateDer::pem_slice_iter(&pem)
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| format!("ssl.keystore.location: {e}"))?;
                    let key = PrivateKeyDer::from_pem_slice(&pem)
                        .map_err(|e| format!("ssl.keystore.location: no private key: {e}"))?;
                    Some((chain, key))
                }
                None => None,
            };
            let config = client_tls_config(roots, identity, check_names)
                .map_err(|e| format!("ssl.keystore.location: {e}"))?;
            out.tls = Some((config, check_names));
        }
        if protocol.uses_sasl() {
            let name = props.get("sasl.mechanism").map_or("GSSAPI", |m| m.trim());
            let mechanism = Mechanism::parse(name).ok_or_else(|| {
                format!("sasl.mechanism: {name:?} is not PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
            })?;
            let jaas = props
                .get("sasl.jaas.config")
                .map(String::as_str)
                .unwrap_or("");
            let user = props
                .get("sasl.username")
                .cloned()
                .or_else(|| jaas_option(jaas, "username"))
                .ok_or("sasl.jaas.config (username=\"..\" password=\"..\") or sasl.username is required for SASL")?;
            let password = props
                .get("sasl.password")
                .cloned()
                .or_else(|| jaas_option(jaas, "password"))
                .ok_or("sasl.jaas.config or sasl.password must give a password")?;
            out.sasl = Some(SaslLogin {
                mechanism,
                user,
                password,
            });
        }
        Ok(out)
    }

    /// Whether anything is secured.
    pub fn is_plaintext(&self) -> bool {
        self.tls.is_none() && self.sasl.is_none()
    }
}

/// A client's TLS settings: servers checked against `roots` (and, with `check_names`, the
/// name connected to, Kafka's `ssl.endpoint.identification.algorithm=https`), `identity` (a
/// certificate chain and its key) presented when the server asks for one.
pub fn client_tls_config(
    roots: rustls::RootCertStore,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    check_names: bool,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = crate::tls::provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let roots = Arc::new(roots);
    let builder = if check_names {
        builder.with_root_certificates(roots)
    } else {
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|e| e.to_string())?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoHostnameCheck(verifier)))
    };
    let config = match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| e.to_string())?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// How a node connects to a listener of other nodes that `tls` secures (`None`: plaintext),
/// the certificate files read afresh for each connection.
pub fn node_security(tls: Option<&crate::tls::SslConfig>) -> io::Result<ClientSecurity> {
    match tls {
        None => Ok(ClientSecurity::default()),
        Some(ssl) => ssl
            .node_client()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e)),
    }
}

/// A client connection: TCP, or TLS over TCP.
pub enum ClientStream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ClientStream::Plain(s) => s.is_write_vectored(),
            ClientStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Whether `e` is a refusal: a failed TLS handshake or login, or a TLS alert from the peer
/// (with TLS 1.3 a server refuses a client's certificate after the client has finished its
/// side of the handshake, so the refusal comes with the first read).
pub fn is_refusal(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::PermissionDenied
        || e.get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .is_some()
}

fn refused(why: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, why.to_string())
}

/// Connects to `addr` within `timeout` and secures the connection as `security` says: the
/// TLS handshake, then the SASL exchange (SaslHandshake v1 and SaslAuthenticate).
pub async fn connect(
    addr: &str,
    timeout: Duration,
    security: &ClientSecurity,
) -> io::Result<ClientStream> {
    let tcp = connect_tcp(addr, timeout).await?;
    let mut stream = match &security.tls {
        None => ClientStream::Plain(tcp),
        Some((config, _)) => {
            let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
            let name = ServerName::try_from(host.trim_matches(['[', ']']).to_string())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{addr}: {e}")))?;
            let connector = tokio_rustls::TlsConnector::from(config.clone());
            let tls = tokio::time::timeout(timeout, connector.connect(name, tcp))
                .await
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("TLS handshake with {addr}"),
                    )
                })?
                // A refused handshake is an authentication failure, reported as one.
                .map_err(|e| refused(format!("TLS handshake with {addr} failed: {e}")))?;
            ClientStream::Tls(Box::new(tls))
        }
    };
    if let Some(login) = &security.sasl {
        tokio::time::timeout(timeout, authenticate(&mut stream, login))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("SASL with {addr}")))??;
    }
    Ok(stream)
}

/// One request and its answer during authentication.
async fn exchange<R: kafka_protocol::protocol::Request>(
    stream: &mut ClientStream,
    request: &R,
    version: i16,
    correlation: i32,
) -> io::Result<R::Response> {
    let client_id = StrBytes::from_static_str("kmeta");
    let out = encode_request(request, version, correlation, &client_id)?;
    write_frame(stream, &out).await?;
    let reply = read_frame(stream, 1 << 20)
        .await?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "closed during SASL"))?;
    decode_response::<R>(reply, version, correlation)
}

async fn authenticate(stream: &mut ClientStream, login: &SaslLogin) -> io::Result<()> {
    let handshake = exchange(
        stream,
        &SaslHandshakeRequest::default().with_mechanism(sb(login.mechanism.name())),
        1,
        1,
    )
    .await?;
    if handshake.error_code != 0 {
        return Err(refused(format!(
            "the server does not offer {} (it offers {:?})",
            login.mechanism.name(),
            handshake
                .mechanisms
                .iter()
                .map(|m| m.to_string())
                .collect::<Vec<_>>()
        )));
    }
    let step = |bytes: Vec<u8>| SaslAuthenticateRequest::default().with_auth_bytes(bytes.into());
    let answer = |r: kafka_protocol::messages::SaslAuthenticateResponse| {
        if r.error_code != 0 {
            Err(refused(format!(
                "SASL authentication failed: {}",
                r.error_message.as_deref().unwrap_or("no reason given")
            )))
        } else {
            Ok(r.auth_bytes.to_vec())
        }
    };
    match login.mechanism {
        Mechanism::Plain => {
            let token = format!("\0{}\0{}", login.user, login.password).into_bytes();
            answer(exchange(stream, &step(token), 2, 2).await?)?;
        }
        Mechanism::Scram(m) => {
            let mut client = crate::sasl::scram::ScramClient::new(m, &login.user, &login.password);
            let server_first = answer(exchange(stream, &step(client.first()), 2, 2).await?)?;
            let last = client.finish(&server_first).map_err(|e| refused(e.0))?;
            let server_final = answer(exchange(stream, &step(last), 2, 3).await?)?;
            client.verify(&server_final).map_err(|e| refused(e.0))?;
        }
    }
    Ok(())
}
