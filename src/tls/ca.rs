//! A certificate authority made on the spot: for `kmeta dev --secure` and the tests, never for
//! production (its key lives only in the directory it is written to).

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

/// A CA that signs server and client certificates.
pub struct Authority {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate and its private key, in PEM.
pub struct Issued {
    /// The certificate chain: the certificate, then the CA's.
    pub chain_pem: String,
    /// The unencrypted PKCS#8 private key.
    pub key_pem: String,
}

impl Issued {
    /// Writes `<stem>.pem` (key and chain in one file, for `ssl.keystore.location`),
    /// `<stem>.crt` (the chain) and `<stem>.key` (the key) into `dir`; returns the first.
    pub fn write(&self, dir: &Path, stem: &str) -> std::io::Result<PathBuf> {
        let both = dir.join(format!("{stem}.pem"));
        write_private(&both, &format!("{}{}", self.key_pem, self.chain_pem))?;
        std::fs::write(dir.join(format!("{stem}.crt")), &self.chain_pem)?;
        write_private(&dir.join(format!("{stem}.key")), &self.key_pem)?;
        Ok(both)
    }
}

/// Writes a file only its owner may read.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    // A rename, so that a listener watching the file never reads half of it.
    std::fs::rename(&tmp, path)
}

fn err(e: rcgen::Error) -> String {
    format!("certificate generation: {e}")
}

impl Authority {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Result<Authority, String> {
        let key = KeyPair::generate().map_err(err)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).map_err(err)?;
        Ok(Authority { cert, key })
    }

    /// The CA's certificate, for `ssl.truststore.location`.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// A server certificate for `hosts` (names or IP addresses) with common name `name`.
    pub fn server(&self, name: &str, hosts: &[&str]) -> Result<Issued, String> {
        self.issue(
            name,
            hosts.iter().map(|h| h.to_string()).collect(),
            vec![ExtendedKeyUsagePurpose::ServerAuth],
        )
    }

    /// A node's certificate, for `hosts`, with common name `name`: it serves the node's TLS
    /// listeners and is presented when the node connects to others (its principal is
    /// `User:CN=<name>`).
    pub fn node(&self, name: &str, hosts: &[&str]) -> Result<Issued, String> {
        self.issue(
            name,
            hosts.iter().map(|h| h.to_string()).collect(),
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )
    }

    /// A client certificate with common name `name` (its principal is `User:CN=<name>`).
    pub fn client(&self, name: &str) -> Result<Issued, String> {
        self.issue(name, Vec::new(), vec![ExtendedKeyUsagePurpose::ClientAuth])
    }

    fn issue(
        &self,
        name: &str,
        hosts: Vec<String>,
        usages: Vec<ExtendedKeyUsagePurpose>,
    ) -> Result<Issued, String> {
        let key = KeyPair::generate().map_err(err)?;
        let mut params = CertificateParams::new(hosts).map_err(err)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = usages;
        let cert = params.signed_by(&key, &self.cert, &self.key).map_err(err)?;
        Ok(Issued {
            chain_pem: format!("{}{}", cert.pem(), self.cert.pem()),
            key_pem: key.serialize_pem(),
        })
    }
}
