//! TLS on the Kafka listeners (issue 15): who gets in, who is refused, and certificates
//! replaced without a restart.

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse, ResponseKind};
use kafka_protocol::protocol::{Message, StrBytes};
use kmeta::kafka::client::{decode_response, encode_request};
use kmeta::kafka::listener::{serve, Limits, Service};
use kmeta::kafka::wire::{encode_response, read_frame, write_frame, ApiSet, Request};
use kmeta::tls::ca::{Authority, Issued};
use kmeta::tls::{ServerTls, SslConfig};
use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// Answers ApiVersions.
struct Versions(ApiSet);

impl Service for Versions {
    fn apis(&self) -> &ApiSet {
        &self.0
    }

    async fn handle(&self, request: Request) -> Result<Bytes, String> {
        versions_answer(&self.0, request)
    }
}

/// The ApiVersions answer of a listener serving `apis`.
fn versions_answer(apis: &ApiSet, request: Request) -> Result<Bytes, String> {
    let response: ResponseKind = apis.api_versions_response().into();
    encode_response(
        request.header.correlation_id,
        request.api_key,
        request.version,
        &response,
    )
}

/// The TLS settings of listener `SSL` from properties text.
fn ssl_config(text: &str) -> SslConfig {
    let props: BTreeMap<String, String> = kmeta::config::parse_properties(text).unwrap();
    SslConfig::from_properties(&props, "SSL").unwrap()
}

/// Serves ApiVersions with `tls` on a new port; returns its address.
async fn serve_tls(tls: Arc<ServerTls>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let service = Arc::new(Versions(ApiSet::new(vec![(
        ApiKey::ApiVersions,
        ApiVersionsRequest::VERSIONS,
    )])));
    tokio::spawn(serve(
        listener,
        service,
        Limits::default(),
        kmeta::kafka::listener::Security {
            tls: Some(tls),
            sasl: None,
        },
        std::future::pending(),
    ));
    addr
}

type ClientStream = tokio_rustls::client::TlsStream<TcpStream>;

/// A TLS connection to `addr` trusting `ca_pem`, presenting `cert` if given.
async fn tls_connect(addr: &str, ca_pem: &str, cert: Option<&Issued>) -> io::Result<ClientStream> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(kmeta::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match cert {
        Some(c) => {
            let chain = CertificateDer::pem_slice_iter(c.chain_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    let tcp = TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    connector
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
}

/// One ApiVersions exchange on `stream`, bounded by 5 s.
async fn api_versions<S>(stream: &mut S) -> io::Result<ApiVersionsResponse>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let request = encode_request(
        &ApiVersionsRequest::default(),
        3,
        7,
        &StrBytes::from_static_str("security-test"),
    )?;
    tokio::time::timeout(Duration::from_secs(5), async {
        write_frame(stream, &request).await?;
        let reply = read_frame(stream, 1 << 20)
            .await?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "closed"))?;
        decode_response::<ApiVersionsRequest>(reply, 3, 7)
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer"))?
}

/// Connects and asks for ApiVersions: whether the listener answered.
async fn answered(addr: &str, ca_pem: &str, cert: Option<&Issued>) -> bool {
    match tls_connect(addr, ca_pem, cert).await {
        Ok(mut s) => api_versions(&mut s).await.is_ok(),
        Err(_) => false,
    }
}

/// A CA, its certificate in `dir/ca.crt`, and a server certificate for 127.0.0.1 in
/// `dir/server.pem`.
pub(crate) fn authority(dir: &Path) -> Authority {
    let ca = Authority::new("kmeta test CA").unwrap();
    std::fs::write(dir.join("ca.crt"), ca.cert_pem()).unwrap();
    ca.server("broker", &["127.0.0.1", "localhost"])
        .unwrap()
        .write(dir, "server")
        .unwrap();
    ca
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_listener_requiring_certificates_serves_trusted_clients_and_refuses_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let ca = authority(dir.path());
    let tls = ServerTls::load(ssl_config(&format!(
        "ssl.keystore.type=PEM\nssl.keystore.location={}\nssl.truststore.type=PEM\nssl.truststore.location={}\nssl.client.auth=required\n",
        dir.path().join("server.pem").display(),
        dir.path().join("ca.crt").display(),
    )))
    .unwrap();
    let addr = serve_tls(tls).await;
    let ca_pem = ca.cert_pem();
    let trusted = ca.client("alice").unwrap();
    let stranger = Authority::new("another CA")
        .unwrap()
        .client("mallory")
        .unwrap();

    assert!(answered(&addr, &ca_pem, Some(&trusted)).await);
    assert!(
        !answered(&addr, &ca_pem, None).await,
        "a client without a certificate was served"
    );
    assert!(
        !answered(&addr, &ca_pem, Some(&stranger)).await,
        "a client whose certificate another CA signed was served"
    );
    // A plaintext Kafka client on the TLS port gets no Kafka answer.
    let mut plain = TcpStream::connect(&addr).await.unwrap();
    assert!(api_versions(&mut plain).await.is_err());
    // A client that does not trust the listener's CA refuses it.
    let other_ca = Authority::new("not the broker's CA").unwrap().cert_pem();
    assert!(tls_connect(&addr, &other_ca, Some(&trusted)).await.is_err());
    // None of them stopped the listener.
    assert!(answered(&addr, &ca_pem, Some(&trusted)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_requesting_certificates_also_serves_clients_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let ca = authority(dir.path());
    let tls = ServerTls::load(ssl_config(&format!(
        "listener.name.ssl.ssl.keystore.location={}\nssl.keystore.location=/nonexistent\nssl.truststore.location={}\nssl.client.auth=requested\n",
        dir.path().join("server.pem").display(),
        dir.path().join("ca.crt").display(),
    )))
    .unwrap();
    let addr = serve_tls(tls).await;
    let ca_pem = ca.cert_pem();
    assert!(answered(&addr, &ca_pem, None).await);
    assert!(answered(&addr, &ca_pem, Some(&ca.client("alice").unwrap())).await);
    let stranger = Authority::new("another CA")
        .unwrap()
        .client("mallory")
        .unwrap();
    assert!(
        !answered(&addr, &ca_pem, Some(&stranger)).await,
        "a certificate that is offered must still be trusted"
    );
}

/// The certificate a TLS connection's server presented.
fn presented(stream: &ClientStream) -> Vec<u8> {
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn leaf_der(issued: &Issued) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_slice_iter(issued.chain_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_certificate_reaches_new_connections_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::new("kmeta test CA").unwrap();
    let first = ca.server("broker", &["127.0.0.1"]).unwrap();
    let keystore = first.write(dir.path(), "server").unwrap();
    let tls = ServerTls::load(ssl_config(&format!(
        "ssl.keystore.location={}\n",
        keystore.display()
    )))
    .unwrap();
    let addr = serve_tls(tls).await;
    let ca_pem = ca.cert_pem();

    let mut old = tls_connect(&addr, &ca_pem, None).await.unwrap();
    assert_eq!(presented(&old), leaf_der(&first));

    // The operator renews the certificate in place.
    let second = ca.server("broker", &["127.0.0.1"]).unwrap();
    second.write(dir.path(), "server").unwrap();
    let renewed = async {
        loop {
            let s = tls_connect(&addr, &ca_pem, None).await.unwrap();
            if presented(&s) == leaf_der(&second) {
                return s;
            }
            assert_eq!(presented(&s), leaf_der(&first));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let mut new = tokio::time::timeout(Duration::from_secs(5), renewed)
        .await
        .expect("the renewed certificate was not served within 5 s");
    api_versions(&mut new).await.unwrap();
    // The connection made before the renewal carries on.
    api_versions(&mut old).await.unwrap();

    // A half-written or broken file leaves the last good certificate in place.
    std::fs::write(&keystore, "-----BEGIN PRIVATE KEY-----\ngarbage\n").unwrap();
    tokio::time::sleep(kmeta::tls::RELOAD_CHECK + Duration::from_millis(300)).await;
    let mut after = tls_connect(&addr, &ca_pem, None).await.unwrap();
    assert_eq!(presented(&after), leaf_der(&second));
    api_versions(&mut after).await.unwrap();
}

#[test]
fn tls_settings_fail_start_up_naming_the_key_at_fault() {
    let cases = [
        ("", "ssl.keystore.location"),
        (
            "ssl.keystore.type=JKS\nssl.keystore.location=/k",
            "ssl.keystore.type",
        ),
        (
            "ssl.keystore.location=/k\nssl.client.auth=required",
            "ssl.truststore.location",
        ),
        (
            "ssl.keystore.location=/k\nssl.client.auth=always",
            "ssl.client.auth",
        ),
        (
            "ssl.keystore.location=/k\nssl.key.password=secret",
            "ssl.key.password",
        ),
        ("ssl.keystore.certificate.chain=x", "ssl.keystore.key"),
        (
            "ssl.keystore.location=/k\nssl.enabled.protocols=TLSv1.1",
            "ssl.enabled.protocols",
        ),
    ];
    for (text, key) in cases {
        let props = kmeta::config::parse_properties(text).unwrap();
        let err = SslConfig::from_properties(&props, "SSL").unwrap_err();
        assert!(err.0.contains(key), "{text:?}: {err}");
    }
    // The files are read when the listener starts: a missing one names its key and path.
    let props =
        kmeta::config::parse_properties("ssl.keystore.location=/nonexistent/k.pem").unwrap();
    let err = ServerTls::load(SslConfig::from_properties(&props, "SSL").unwrap())
        .err()
        .unwrap();
    assert!(
        err.contains("ssl.keystore.location") && err.contains("/nonexistent/k.pem"),
        "{err}"
    );
}

/// Counts the requests it handles.
struct Counting(ApiSet, std::sync::atomic::AtomicUsize);

impl Service for Counting {
    fn apis(&self) -> &ApiSet {
        &self.0
    }

    async fn handle(&self, request: Request) -> Result<Bytes, String> {
        self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        versions_answer(&self.0, request)
    }
}

/// 40 ApiVersions requests of about 1 KiB each, framed back to back: more than one read
/// of the listener's buffer, and more than TLS reads at once.
fn many_requests() -> Vec<u8> {
    let name = "x".repeat(1000);
    let mut out = Vec::new();
    for i in 0..40 {
        let request = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_string(name.clone()))
            .with_client_software_version(StrBytes::from_static_str("1"));
        let frame = encode_request(&request, 3, i, &StrBytes::from_static_str("closing")).unwrap();
        kmeta::kafka::wire::put_frame(&mut out, &frame);
    }
    out
}

/// Serves one accepted connection whose client has already sent its requests and closed;
/// returns how many requests were acted on.
async fn acted_on_after_close<T: kmeta::kafka::listener::Stream>(stream: T) -> usize {
    let service = Arc::new(Counting(
        ApiSet::new(vec![(ApiKey::ApiVersions, ApiVersionsRequest::VERSIONS)]),
        Default::default(),
    ));
    // Everything the client sent, and its FIN, are in the socket by now.
    tokio::time::sleep(Duration::from_millis(100)).await;
    kmeta::kafka::listener::serve_connection(
        stream,
        None,
        service.clone(),
        Limits::default(),
        None,
    )
    .await;
    service.1.load(std::sync::atomic::Ordering::SeqCst)
}

/// A client that gave up (timed out, then closed) must not have its requests acted on
/// later: a paused broker still finds them in its socket, with the FIN behind them, and
/// acting on them could land a stale write after the client's next one. Over TLS the
/// client's closing alert comes before its FIN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_the_socket_of_a_client_that_closed_are_not_acted_on_over_tcp_or_tls() {
    use tokio::io::AsyncWriteExt;
    let requests = many_requests();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let mut client = TcpStream::connect(&addr).await.unwrap();
    client.write_all(&requests).await.unwrap();
    client.shutdown().await.unwrap();
    let (accepted, _) = listener.accept().await.unwrap();
    assert_eq!(acted_on_after_close(accepted).await, 0, "over TCP");

    let dir = tempfile::tempdir().unwrap();
    let ca = authority(dir.path());
    let tls = ServerTls::load(ssl_config(&format!(
        "ssl.keystore.location={}\n",
        dir.path().join("server.pem").display()
    )))
    .unwrap();
    let ca_pem = ca.cert_pem();
    let client = tokio::spawn(async move {
        let mut s = tls_connect(&addr, &ca_pem, None).await.unwrap();
        s.write_all(&requests).await.unwrap();
        s.shutdown().await.unwrap();
        s
    });
    let (accepted, peer) = listener.accept().await.unwrap();
    let stream = kmeta::kafka::listener::tls_handshake(&tls, accepted, peer, Limits::default())
        .await
        .unwrap();
    let _client = client.await.unwrap();
    assert_eq!(acted_on_after_close(stream).await, 0, "over TLS");
}

/// Three controllers and three brokers, each broker with a PLAINTEXT listener for
/// replication and an SSL one for clients (`ssl.client.auth=required`). Returns the cluster,
/// the SSL bootstrap list, and the directory of the CA, server and client files.
fn ssl_cluster() -> (
    crate::cluster::ProcessCluster,
    String,
    tempfile::TempDir,
    Authority,
) {
    let files = tempfile::tempdir().unwrap();
    let ca = authority(files.path());
    ca.client("alice")
        .unwrap()
        .write(files.path(), "alice")
        .unwrap();
    let ssl_ports: BTreeMap<u64, u16> = (1..=3)
        .map(|id| (id, crate::cluster::free_port()))
        .collect();
    let extra = format!(
        "ssl.keystore.type=PEM\nssl.keystore.location={}\nssl.truststore.type=PEM\nssl.truststore.location={}\nssl.client.auth=required",
        files.path().join("server.pem").display(),
        files.path().join("ca.crt").display(),
    );
    let c = crate::cluster::ProcessCluster::start_with(
        3,
        3,
        &extra,
        &|id, port| {
            format!(
                "listeners=PLAINTEXT://127.0.0.1:{port},SSL://127.0.0.1:{}",
                ssl_ports[&id]
            )
        },
        &[],
    );
    let bootstrap = ssl_ports
        .values()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    (c, bootstrap, files, ca)
}

#[test]
fn real_clients_work_over_ssl_with_a_client_certificate_and_are_refused_without_one() {
    use crate::cluster::client;
    let (c, ssl, files, _ca) = ssl_cluster();
    let f = |name: &str| files.path().join(name).display().to_string();
    let (ca, cert, key) = (f("ca.crt"), f("alice.crt"), f("alice.key"));
    crate::cluster::wait_for_brokers(&c, 3);
    for lib in ["kcat", "confluent", "kafka-python", "aiokafka"] {
        let topic = format!("ssl-{lib}");
        let out = client(&[
            "secure",
            "--client",
            lib,
            "--bootstrap",
            &ssl,
            "--topic",
            &topic,
            "--count",
            "50",
            "--security-protocol",
            "SSL",
            "--ssl-ca",
            &ca,
            "--ssl-cert",
            &cert,
            "--ssl-key",
            &key,
        ]);
        eprintln!("{out}");
        assert!(out.contains("\"messages\": 50"), "{lib}: {out}");
    }
    for lib in ["kcat", "confluent", "kafka-python", "aiokafka"] {
        // No client certificate, where one is required.
        let out = client(&[
            "secure",
            "--client",
            lib,
            "--bootstrap",
            &ssl,
            "--expect-refused",
            "--security-protocol",
            "SSL",
            "--ssl-ca",
            &ca,
        ]);
        eprintln!("without a certificate: {out}");
        // A plaintext client on the TLS port.
        let out = client(&[
            "secure",
            "--client",
            lib,
            "--bootstrap",
            &ssl,
            "--expect-refused",
        ]);
        eprintln!("plaintext on the TLS port: {out}");
    }
    // The brokers served the refused clients' attempts and carry on.
    let out = client(&[
        "secure",
        "--client",
        "confluent",
        "--bootstrap",
        &ssl,
        "--topic",
        "ssl-after",
        "--count",
        "10",
        "--security-protocol",
        "SSL",
        "--ssl-ca",
        &ca,
        "--ssl-cert",
        &cert,
        "--ssl-key",
        &key,
    ]);
    assert!(out.contains("\"messages\": 10"), "{out}");
    // The operator commands present a client certificate as Kafka's tools do.
    let config = files.path().join("client.properties");
    std::fs::write(
        &config,
        format!(
            "security.protocol=SSL\nssl.truststore.location={ca}\nssl.keystore.location={}\n",
            f("alice.pem")
        ),
    )
    .unwrap();
    let topics = std::process::Command::new(crate::cluster::BIN)
        .args([
            "topics",
            "list",
            "--bootstrap-server",
            &ssl,
            "--command-config",
        ])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        topics.status.success() && String::from_utf8_lossy(&topics.stdout).contains("ssl-after"),
        "{topics:?}"
    );
    // Every broker logged the refusals as failed authentications.
    assert!((1..=3).any(|id| c.log_contains(id, "failed authentication")));
}

/// Three controllers and three brokers, each broker with a PLAINTEXT listener (replication,
/// and the operator setting users up), a SASL_SSL one and a SASL_PLAINTEXT one. Returns the
/// cluster, the files, and the SASL_SSL and SASL_PLAINTEXT bootstrap lists. `format_args` go
/// to every node's `kmeta storage format`.
fn sasl_cluster(
    format_args: &[&str],
) -> (
    crate::cluster::ProcessCluster,
    tempfile::TempDir,
    String,
    String,
) {
    let files = tempfile::tempdir().unwrap();
    authority(files.path());
    let ports: BTreeMap<u64, (u16, u16)> = (1..=3)
        .map(|id| {
            (
                id,
                (crate::cluster::free_port(), crate::cluster::free_port()),
            )
        })
        .collect();
    let extra = format!(
        "ssl.keystore.location={}\nsasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512",
        files.path().join("server.pem").display(),
    );
    let c = crate::cluster::ProcessCluster::start_with(
        3,
        3,
        &extra,
        &|id, port| {
            format!(
            "listeners=PLAINTEXT://127.0.0.1:{port},SASL_SSL://127.0.0.1:{},SASL_PLAINTEXT://127.0.0.1:{}",
            ports[&id].0, ports[&id].1
        )
        },
        format_args,
    );
    let list = |f: fn(&(u16, u16)) -> u16| {
        ports
            .values()
            .map(|p| format!("127.0.0.1:{}", f(p)))
            .collect::<Vec<_>>()
            .join(",")
    };
    (c, files, list(|p| p.0), list(|p| p.1))
}

#[test]
fn real_clients_authenticate_with_scram_and_plain_and_a_wrong_password_is_refused() {
    use crate::cluster::client;
    let (c, files, sasl_ssl, sasl_plain) = sasl_cluster(&[]);
    let ca = files.path().join("ca.crt").display().to_string();
    let b = c.bootstrap();
    crate::cluster::wait_for_brokers(&c, 3);
    let out = client(&[
        "add-scram-user",
        "--bootstrap",
        &b,
        "--user",
        "alice",
        "--password",
        "alice-secret",
    ]);
    eprintln!("{out}");
    assert!(
        out.contains("SCRAM_SHA_256") && out.contains("SCRAM_SHA_512"),
        "{out}"
    );
    for lib in ["kcat", "confluent", "kafka-python", "aiokafka"] {
        for mechanism in ["SCRAM-SHA-256", "SCRAM-SHA-512"] {
            let topic = format!("sasl-{lib}-{}", &mechanism[10..]);
            let out = client(&[
                "secure",
                "--client",
                lib,
                "--bootstrap",
                &sasl_ssl,
                "--topic",
                &topic,
                "--count",
                "20",
                "--security-protocol",
                "SASL_SSL",
                "--ssl-ca",
                &ca,
                "--sasl-mechanism",
                mechanism,
                "--user",
                "alice",
                "--password",
                "alice-secret",
            ]);
            eprintln!("{mechanism}: {out}");
            assert!(out.contains("\"messages\": 20"), "{lib} {mechanism}: {out}");
        }
    }
    let out = client(&[
        "secure",
        "--client",
        "confluent",
        "--bootstrap",
        &sasl_plain,
        "--topic",
        "sasl-plain",
        "--count",
        "20",
        "--security-protocol",
        "SASL_PLAINTEXT",
        "--sasl-mechanism",
        "PLAIN",
        "--user",
        "alice",
        "--password",
        "alice-secret",
    ]);
    assert!(out.contains("\"messages\": 20"), "PLAIN: {out}");
    // Refused with Kafka's error, which each client reports (librdkafka in its log and error
    // callback, the Python clients in their logs).
    for lib in ["kcat", "confluent", "kafka-python", "aiokafka"] {
        let out = client(&[
            "secure",
            "--client",
            lib,
            "--bootstrap",
            &sasl_ssl,
            "--expect-refused",
            "--refusal",
            "invalid credentials with SASL mechanism SCRAM-SHA-512",
            "--security-protocol",
            "SASL_SSL",
            "--ssl-ca",
            &ca,
            "--sasl-mechanism",
            "SCRAM-SHA-512",
            "--user",
            "alice",
            "--password",
            "wrong",
        ]);
        eprintln!("wrong password: {out}");
        let out = client(&[
            "secure",
            "--client",
            lib,
            "--bootstrap",
            &sasl_plain,
            "--expect-refused",
            "--refusal",
            "invalid credentials with SASL mechanism SCRAM-SHA-256",
            "--security-protocol",
            "SASL_PLAINTEXT",
            "--sasl-mechanism",
            "SCRAM-SHA-256",
            "--user",
            "mallory",
            "--password",
            "alice-secret",
        ]);
        eprintln!("unknown user: {out}");
    }
    // A client that skips SASL on a SASL port gets nothing, and the brokers serve on.
    client(&[
        "secure",
        "--client",
        "confluent",
        "--bootstrap",
        &sasl_plain,
        "--expect-refused",
    ]);
    let out = client(&[
        "secure",
        "--client",
        "kafka-python",
        "--bootstrap",
        &sasl_plain,
        "--topic",
        "sasl-after",
        "--count",
        "5",
        "--security-protocol",
        "SASL_PLAINTEXT",
        "--sasl-mechanism",
        "SCRAM-SHA-256",
        "--user",
        "alice",
        "--password",
        "alice-secret",
    ]);
    assert!(out.contains("\"messages\": 5"), "{out}");
}

/// `kmeta storage format --add-scram` gives a new cluster its first user, written once by the
/// first active controller; `kmeta users` adds, lists and removes more.
#[test]
fn a_user_given_at_format_time_gets_in_and_kmeta_users_manages_the_rest() {
    use crate::cluster::{try_client, BIN};
    let (c, files, sasl_ssl, sasl_plain) = sasl_cluster(&[
        "--add-scram",
        "SCRAM-SHA-512=[name=admin,password=\"admin,secret\",iterations=8192]",
    ]);
    let b = c.bootstrap();
    crate::cluster::wait_for_brokers(&c, 3);
    let sasl = |mechanism: &str, user: &str, password: &str, topic: &str| {
        try_client(&[
            "secure",
            "--client",
            "confluent",
            "--bootstrap",
            &sasl_plain,
            "--topic",
            topic,
            "--count",
            "5",
            "--security-protocol",
            "SASL_PLAINTEXT",
            "--sasl-mechanism",
            mechanism,
            "--user",
            user,
            "--password",
            password,
        ])
    };
    // The bootstrap credential, before anyone called AlterUserScramCredentials.
    let (ok, out) = sasl("SCRAM-SHA-512", "admin", "admin,secret", "boot-admin");
    assert!(ok, "{out}");
    let users = |args: &[&str]| {
        let out = std::process::Command::new(BIN)
            .arg("users")
            .args(args)
            .args(["--bootstrap-server", &b])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let add = std::process::Command::new(BIN)
        .args([
            "users",
            "add",
            "--user",
            "bob",
            "--password",
            "-",
            "--bootstrap-server",
            &b,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(b"bob-secret\n")?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(add.status.success(), "{add:?}");
    let (ok, listed) = users(&["list", "--output", "json"]);
    assert!(ok, "{listed}");
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(
        listed,
        serde_json::json!([
            {"user": "admin", "mechanism": "SCRAM-SHA-512", "iterations": 8192},
            {"user": "bob", "mechanism": "SCRAM-SHA-256", "iterations": 4096},
            {"user": "bob", "mechanism": "SCRAM-SHA-512", "iterations": 4096},
        ])
    );
    let (ok, out) = sasl("PLAIN", "bob", "bob-secret", "boot-bob");
    assert!(ok, "{out}");
    // Bad input gets Kafka's error and changes nothing.
    let (ok, out) = users(&[
        "add",
        "--user",
        "carol",
        "--password",
        "x",
        "--iterations",
        "100",
    ]);
    assert!(!ok && out.contains("UnacceptableCredential"), "{out}");
    let (ok, out) = users(&["remove", "--user", "carol"]);
    assert!(!ok && out.contains("ResourceNotFound"), "{out}");
    let (ok, out) = users(&["remove", "--user", "bob", "--mechanism", "SCRAM-SHA-256"]);
    assert!(ok, "{out}");
    let (ok, out) = users(&["list", "--user", "bob", "--output", "json"]);
    assert!(
        ok && out.contains("SCRAM-SHA-512") && !out.contains("SCRAM-SHA-256"),
        "{out}"
    );
    // The operator commands log in as Kafka's tools do (--command-config).
    let config = |password: &str| {
        let path = files
            .path()
            .join(format!("admin-{}.properties", password.len()));
        std::fs::write(
            &path,
            format!(
                "security.protocol=SASL_SSL\nssl.truststore.location={}\nsasl.mechanism=SCRAM-SHA-512\nsasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username=\"admin\" password=\"{password}\";\n",
                files.path().join("ca.crt").display()
            ),
        )
        .unwrap();
        path.display().to_string()
    };
    let secured = |password: &str| {
        let out = std::process::Command::new(BIN)
            .args([
                "users",
                "list",
                "--output",
                "json",
                "--bootstrap-server",
                &sasl_ssl,
            ])
            .args(["--command-config", &config(password)])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = secured("admin,secret");
    assert!(ok && out.contains("\"bob\""), "{out}");
    let (ok, out) = secured("wrong");
    assert!(
        !ok && out.contains("invalid credentials with SASL mechanism SCRAM-SHA-512"),
        "{out}"
    );
    // A restart of every node keeps the users, and the bootstrap is not written again.
    let mut c = c;
    c.restart_all();
    crate::cluster::wait_for_brokers(&c, 3);
    let (ok, out) = sasl("SCRAM-SHA-512", "bob", "bob-secret", "boot-bob-again");
    assert!(ok, "{out}");
    let written = c
        .controllers
        .keys()
        .filter(|id| c.log_contains(**id, "bootstrap records written"))
        .count();
    assert_eq!(
        written, 0,
        "the bootstrap was written again after a restart"
    );
}

/// Credentials of one user, for listener-level tests.
struct OneUser(kmeta_metadata::record::UserScramCredentialRecord);

impl kmeta::sasl::Credentials for OneUser {
    fn scram(
        &self,
        user: &str,
        mechanism: kmeta_metadata::record::ScramMechanism,
    ) -> Option<kmeta_metadata::record::UserScramCredentialRecord> {
        (user == self.0.name && mechanism == self.0.mechanism).then(|| self.0.clone())
    }
}

/// Serves on 127.0.0.1 behind SASL (`mechanisms`; one user, alice, password "pw", with a
/// SCRAM-SHA-256 credential): ApiVersions, SaslHandshake, SaslAuthenticate and `more` are
/// answered by [`Versions`]. Returns the address.
async fn sasl_listener(
    mechanisms: Vec<kmeta::sasl::Mechanism>,
    more: Vec<(ApiKey, kafka_protocol::protocol::VersionRange)>,
    limits: Limits,
) -> String {
    use kafka_protocol::messages::{SaslAuthenticateRequest, SaslHandshakeRequest};
    use kmeta_metadata::record::ScramMechanism;
    let credential = kmeta::sasl::scram::credential(ScramMechanism::Sha256, "alice", "pw", 4096);
    let sasl = Arc::new(kmeta::sasl::SaslServer::new(
        mechanisms,
        Arc::new(OneUser(credential)),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let mut apis = vec![
        (ApiKey::ApiVersions, ApiVersionsRequest::VERSIONS),
        (ApiKey::SaslHandshake, SaslHandshakeRequest::VERSIONS),
        (ApiKey::SaslAuthenticate, SaslAuthenticateRequest::VERSIONS),
    ];
    apis.extend(more);
    tokio::spawn(serve(
        listener,
        Arc::new(Versions(ApiSet::new(apis))),
        limits,
        kmeta::kafka::listener::Security {
            tls: None,
            sasl: Some(sasl),
        },
        std::future::pending(),
    ));
    addr
}

/// Both SASL framings: after SaslHandshake v1 the tokens ride in SaslAuthenticate requests;
/// after v0 (what older clients send) they come as bare frames and each answer is a bare
/// frame, an empty one for PLAIN. Either way the connection then serves requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_tokens_are_exchanged_in_both_of_kafkas_framings() {
    use kafka_protocol::messages::{SaslAuthenticateRequest, SaslHandshakeRequest};
    use kmeta::sasl::Mechanism;
    use kmeta_metadata::record::ScramMechanism;
    // Metadata is served, so that only the rule of authenticating first refuses it below.
    let addr = sasl_listener(
        vec![Mechanism::Plain, Mechanism::Scram(ScramMechanism::Sha256)],
        vec![(
            ApiKey::Metadata,
            kafka_protocol::messages::MetadataRequest::VERSIONS,
        )],
        Limits::default(),
    )
    .await;
    let id = StrBytes::from_static_str("framing-test");
    /// Sends a frame and reads the answer frame (`None`: closed or reset), within 5 s.
    async fn send(s: &mut TcpStream, payload: Vec<u8>) -> Option<Bytes> {
        write_frame(s, &payload).await.ok()?;
        tokio::time::timeout(Duration::from_secs(5), read_frame(s, 1 << 20))
            .await
            .expect("no answer within 5 s")
            .ok()
            .flatten()
    }
    // v0: the handshake, then PLAIN's token bare; an empty bare frame answers it.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let handshake = |version| {
        encode_request(
            &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN")),
            version,
            1,
            &id,
        )
        .unwrap()
        .to_vec()
    };
    let answer = send(&mut s, handshake(0)).await.unwrap();
    let r = decode_response::<SaslHandshakeRequest>(answer, 0, 1).unwrap();
    assert_eq!(r.error_code, 0);
    let answer = send(&mut s, b"\0alice\0pw".to_vec()).await.unwrap();
    assert!(answer.is_empty(), "{answer:?}");
    api_versions(&mut s).await.unwrap();
    // v0 with a wrong password: the connection is closed.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    send(&mut s, handshake(0)).await.unwrap();
    assert!(send(&mut s, b"\0alice\0nope".to_vec()).await.is_none());
    // v1: the token inside SaslAuthenticate.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let answer = send(&mut s, handshake(1)).await.unwrap();
    assert_eq!(
        decode_response::<SaslHandshakeRequest>(answer, 1, 1)
            .unwrap()
            .error_code,
        0
    );
    let token = SaslAuthenticateRequest::default()
        .with_auth_bytes(bytes::Bytes::from_static(b"\0alice\0pw"));
    let answer = send(&mut s, encode_request(&token, 2, 2, &id).unwrap().to_vec())
        .await
        .unwrap();
    assert_eq!(
        decode_response::<SaslAuthenticateRequest>(answer, 2, 2)
            .unwrap()
            .error_code,
        0
    );
    api_versions(&mut s).await.unwrap();
    // A second handshake in one exchange: ILLEGAL_SASL_STATE (34), and the connection ends.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    send(&mut s, handshake(1)).await.unwrap();
    let answer = send(&mut s, handshake(1)).await.unwrap();
    assert_eq!(
        decode_response::<SaslHandshakeRequest>(answer, 1, 1)
            .unwrap()
            .error_code,
        34
    );
    assert!(send(&mut s, handshake(1)).await.is_none());
    // Before authenticating, only ApiVersions and SASL are answered.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    api_versions(&mut s).await.unwrap();
    let metadata = encode_request(
        &kafka_protocol::messages::MetadataRequest::default(),
        12,
        3,
        &id,
    )
    .unwrap()
    .to_vec();
    assert!(send(&mut s, metadata).await.is_none());
}

/// A refused SASL exchange's answer reaches the client ahead of the close, not with it: the
/// connection stays open for `connection.failed.authentication.delay.ms`, or until the
/// client closes it. kafka-python 3.0 reads its socket until it would block and drops what
/// it read when the end of the stream came in the same pass, so a refusal closely followed
/// by the close was lost, and the client saw only "socket disconnected" (seen on a loaded
/// machine in CI).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_sasl_client_reads_its_refusal_before_the_connection_closes() {
    use kafka_protocol::messages::{SaslAuthenticateRequest, SaslHandshakeRequest};
    use kmeta::sasl::Mechanism;
    use kmeta_metadata::record::ScramMechanism;
    let delay = Duration::from_secs(3);
    let addr = sasl_listener(
        vec![Mechanism::Scram(ScramMechanism::Sha256)],
        Vec::new(),
        Limits {
            failed_authentication_delay: delay,
            ..Limits::default()
        },
    )
    .await;
    let id = StrBytes::from_static_str("refusal-test");
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let handshake =
        SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("SCRAM-SHA-256"));
    write_frame(&mut s, &encode_request(&handshake, 1, 1, &id).unwrap())
        .await
        .unwrap();
    let answer = read_frame(&mut s, 1 << 20).await.unwrap().unwrap();
    assert_eq!(
        decode_response::<SaslHandshakeRequest>(answer, 1, 1)
            .unwrap()
            .error_code,
        0
    );
    // An unknown user: refused at the first token, with no work to do first.
    let first = SaslAuthenticateRequest::default()
        .with_auth_bytes(Bytes::from_static(b"n,,n=mallory,r=abcdefghijklmnop"));
    let started = std::time::Instant::now();
    write_frame(&mut s, &encode_request(&first, 2, 2, &id).unwrap())
        .await
        .unwrap();
    // A slow client: everything the server sends meanwhile is waiting when it reads.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let answer = read_frame(&mut s, 1 << 20).await.unwrap().unwrap();
    let refusal = decode_response::<SaslAuthenticateRequest>(answer, 2, 2).unwrap();
    assert_eq!(refusal.error_code, 58, "SASL_AUTHENTICATION_FAILED");
    assert!(refusal
        .error_message
        .as_deref()
        .is_some_and(|m| m.contains("invalid credentials with SASL mechanism SCRAM-SHA-256")));
    // Nothing behind the refusal yet: no end of stream.
    let mut rest = [0u8; 1];
    match s.try_read(&mut rest) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        other => panic!("the close came with the refusal: {other:?}"),
    }
    // Then the server closes it, after the delay.
    let end = tokio::time::timeout(Duration::from_secs(30), read_frame(&mut s, 1 << 20))
        .await
        .expect("the refused connection was never closed");
    assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
    assert!(
        started.elapsed() >= delay,
        "closed after {:?}",
        started.elapsed()
    );
}

/// Records the principal of each request it answers.
struct Principals(ApiSet, std::sync::Mutex<Vec<String>>);

impl Service for Principals {
    fn apis(&self) -> &ApiSet {
        &self.0
    }

    async fn handle(&self, request: Request) -> Result<Bytes, String> {
        self.1.lock().unwrap().push(request.principal.to_string());
        versions_answer(&self.0, request)
    }
}

/// A client that presents a certificate is `User:` and its subject (Kafka's default
/// principal mapping); one without is `User:ANONYMOUS`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificates_subject_is_its_principal() {
    let dir = tempfile::tempdir().unwrap();
    let ca = authority(dir.path());
    let tls = ServerTls::load(ssl_config(&format!(
        "ssl.keystore.location={}\nssl.truststore.location={}\nssl.client.auth=requested\n",
        dir.path().join("server.pem").display(),
        dir.path().join("ca.crt").display(),
    )))
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let service = Arc::new(Principals(
        ApiSet::new(vec![(ApiKey::ApiVersions, ApiVersionsRequest::VERSIONS)]),
        Default::default(),
    ));
    tokio::spawn(serve(
        listener,
        service.clone(),
        Limits::default(),
        kmeta::kafka::listener::Security {
            tls: Some(tls),
            sasl: None,
        },
        std::future::pending(),
    ));
    let ca_pem = ca.cert_pem();
    assert!(answered(&addr, &ca_pem, Some(&ca.client("alice").unwrap())).await);
    assert!(answered(&addr, &ca_pem, None).await);
    assert_eq!(
        *service.1.lock().unwrap(),
        vec!["User:CN=alice".to_string(), "User:ANONYMOUS".to_string()]
    );
}
