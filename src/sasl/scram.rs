//! SCRAM (RFC 5802, with SHA-256 per RFC 7677 and SHA-512 as Kafka offers it): deriving a
//! credential from a password, and the server's side of the exchange.
//!
//! Nothing here logs or returns a password, a salted password or a key.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use kmeta_metadata::record::{ScramMechanism, UserScramCredentialRecord};
use ring::{digest, hmac, pbkdf2, rand::SecureRandom};
use std::num::NonZeroU32;

fn hmac_algorithm(m: ScramMechanism) -> hmac::Algorithm {
    match m {
        ScramMechanism::Sha256 => hmac::HMAC_SHA256,
        ScramMechanism::Sha512 => hmac::HMAC_SHA512,
    }
}

fn digest_algorithm(m: ScramMechanism) -> &'static digest::Algorithm {
    match m {
        ScramMechanism::Sha256 => &digest::SHA256,
        ScramMechanism::Sha512 => &digest::SHA512,
    }
}

fn pbkdf2_algorithm(m: ScramMechanism) -> pbkdf2::Algorithm {
    match m {
        ScramMechanism::Sha256 => pbkdf2::PBKDF2_HMAC_SHA256,
        ScramMechanism::Sha512 => pbkdf2::PBKDF2_HMAC_SHA512,
    }
}

fn hmac_of(m: ScramMechanism, key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac_algorithm(m), key), data)
        .as_ref()
        .to_vec()
}

/// SaltedPassword = Hi(password, salt, iterations) (PBKDF2 with the mechanism's HMAC).
pub fn salted_password(
    m: ScramMechanism,
    password: &[u8],
    salt: &[u8],
    iterations: u32,
) -> Vec<u8> {
    let mut out = vec![0u8; digest_algorithm(m).output_len()];
    let iterations = NonZeroU32::new(iterations.max(1)).expect("at least 1");
    pbkdf2::derive(pbkdf2_algorithm(m), iterations, salt, password, &mut out);
    out
}

/// StoredKey and ServerKey from a salted password: what a server keeps.
pub fn keys(m: ScramMechanism, salted: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let client_key = hmac_of(m, salted, b"Client Key");
    let stored_key = digest::digest(digest_algorithm(m), &client_key)
        .as_ref()
        .to_vec();
    (stored_key, hmac_of(m, salted, b"Server Key"))
}

/// Random bytes from the operating system.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    ring::rand::SystemRandom::new()
        .fill(&mut out)
        .expect("the operating system's random source failed");
    out
}

/// A random nonce of letters and digits.
fn printable_nonce() -> String {
    random_bytes(24)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A credential for `user`'s `password`, with a new random salt.
pub fn credential(
    m: ScramMechanism,
    user: &str,
    password: &str,
    iterations: u32,
) -> UserScramCredentialRecord {
    let salt = random_bytes(32);
    let salted = salted_password(m, password.as_bytes(), &salt, iterations);
    let (stored_key, server_key) = keys(m, &salted);
    UserScramCredentialRecord {
        name: user.to_string(),
        mechanism: m,
        salt,
        stored_key,
        server_key,
        iterations,
    }
}

/// Whether `password` is `credential`'s (for SASL/PLAIN, which checks a password against the
/// SCRAM credentials kept for its user).
pub fn password_matches(credential: &UserScramCredentialRecord, password: &str) -> bool {
    let m = credential.mechanism;
    let salted = salted_password(
        m,
        password.as_bytes(),
        &credential.salt,
        credential.iterations,
    );
    let (stored_key, _) = keys(m, &salted);
    equal(&stored_key, &credential.stored_key)
}

/// Constant-time equality.
fn equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Decodes a SCRAM `saslname` (`=2C` is ',' and `=3D` is '='); `None` if malformed.
fn sasl_name(raw: &str) -> Option<String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(at) = rest.find('=') {
        out.push_str(&rest[..at]);
        match rest.get(at..at + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return None,
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Some(out)
}

/// A failed exchange: what the log may say (never a secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed(pub String);

/// The server's side of one SCRAM exchange.
pub enum ScramServer {
    /// Waiting for client-first-message.
    Start(ScramMechanism),
    /// server-first-message sent; waiting for client-final-message.
    Sent {
        /// The credential of the user the client named.
        credential: UserScramCredentialRecord,
        /// client-first-message-bare.
        client_first_bare: String,
        /// server-first-message.
        server_first: String,
        /// The GS2 header the client sent.
        gs2_header: String,
        /// The whole nonce.
        nonce: String,
    },
    /// Done (succeeded or failed); nothing more is accepted.
    Done,
}

/// What a step of the exchange produced.
pub enum Step {
    /// Send this and wait for the client's next message.
    Continue(Vec<u8>),
    /// The client is `user`; send this (server-final-message) and the exchange is done.
    Authenticated {
        /// The authenticated user name.
        user: String,
        /// server-final-message.
        reply: Vec<u8>,
    },
}

impl ScramServer {
    /// A new exchange for mechanism `m`.
    pub fn new(m: ScramMechanism) -> ScramServer {
        ScramServer::Start(m)
    }

    /// Takes the client's next message. `lookup` finds a user's credential.
    pub fn step(
        &mut self,
        message: &[u8],
        lookup: impl FnOnce(&str, ScramMechanism) -> Option<UserScramCredentialRecord>,
    ) -> Result<Step, Failed> {
        let message = std::str::from_utf8(message)
            .map_err(|_| Failed("a SCRAM message is not UTF-8".into()))?;
        match std::mem::replace(self, ScramServer::Done) {
            ScramServer::Start(m) => {
                let (gs2_header, bare) = split_gs2(message)?;
                let mut user = None;
                let mut client_nonce = None;
                for attr in bare.split(',') {
                    if let Some(v) = attr.strip_prefix("n=") {
                        user =
                            Some(sasl_name(v).ok_or_else(|| Failed("malformed user name".into()))?);
                    } else if let Some(v) = attr.strip_prefix("r=") {
                        client_nonce = Some(v.to_string());
                    } else if attr.starts_with("m=") {
                        return Err(Failed(
                            "mandatory SCRAM extensions are not supported".into(),
                        ));
                    }
                    // Other attributes are extensions (KIP-84's tokenauth): none is honoured.
                }
                let (Some(user), Some(client_nonce)) = (user, client_nonce) else {
                    return Err(Failed("client-first-message lacks n= or r=".into()));
                };
                if client_nonce.is_empty() || client_nonce.contains(',') {
                    return Err(Failed("malformed client nonce".into()));
                }
                let credential = lookup(&user, m)
                    .ok_or_else(|| Failed(format!("unknown user {user:?} for {}", m.name())))?;
                // Letters and digits only, as Kafka's own nonces: librdkafka did not echo back
                // a base64 nonce intact.
                let nonce = format!("{client_nonce}{}", printable_nonce());
                let server_first = format!(
                    "r={nonce},s={},i={}",
                    B64.encode(&credential.salt),
                    credential.iterations
                );
                let reply = server_first.clone().into_bytes();
                *self = ScramServer::Sent {
                    credential,
                    client_first_bare: bare.to_string(),
                    server_first,
                    gs2_header: gs2_header.to_string(),
                    nonce,
                };
                Ok(Step::Continue(reply))
            }
            ScramServer::Sent {
                credential,
                client_first_bare,
                server_first,
                gs2_header,
                nonce,
            } => {
                let m = credential.mechanism;
                let (without_proof, proof) = message
                    .rsplit_once(",p=")
                    .ok_or_else(|| Failed("client-final-message lacks p=".into()))?;
                let mut binding = None;
                let mut client_nonce = None;
                for attr in without_proof.split(',') {
                    if let Some(v) = attr.strip_prefix("c=") {
                        binding = Some(v);
                    } else if let Some(v) = attr.strip_prefix("r=") {
                        client_nonce = Some(v);
                    }
                }
                if binding.and_then(|b| B64.decode(b).ok()) != Some(gs2_header.into_bytes()) {
                    return Err(Failed(
                        "the channel binding does not match the GS2 header".into(),
                    ));
                }
                // Kafka's rule: the nonce must end with the server's. librdkafka sends its own
                // nonce once more in front of it (client nonce + server-first's whole r=), and
                // Kafka accepts that; the proof covers the message as sent either way.
                if !client_nonce.is_some_and(|n| n.ends_with(nonce.as_str())) {
                    return Err(Failed("the nonce does not match the server's".into()));
                }
                let proof = B64
                    .decode(proof)
                    .map_err(|_| Failed("the proof is not base64".into()))?;
                let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
                let signature = hmac_of(m, &credential.stored_key, auth_message.as_bytes());
                if proof.len() != signature.len() {
                    return Err(Failed(format!(
                        "invalid credentials for user {:?}",
                        credential.name
                    )));
                }
                let client_key: Vec<u8> =
                    proof.iter().zip(&signature).map(|(p, s)| p ^ s).collect();
                let stored = digest::digest(digest_algorithm(m), &client_key);
                if !equal(stored.as_ref(), &credential.stored_key) {
                    return Err(Failed(format!(
                        "invalid credentials for user {:?}",
                        credential.name
                    )));
                }
                let server_signature = hmac_of(m, &credential.server_key, auth_message.as_bytes());
                Ok(Step::Authenticated {
                    user: credential.name,
                    reply: format!("v={}", B64.encode(server_signature)).into_bytes(),
                })
            }
            ScramServer::Done => Err(Failed("the SCRAM exchange is already over".into())),
        }
    }
}

/// Splits a client-first-message into its GS2 header and the bare message. Channel binding
/// (`p=`) is refused: kmeta's TLS offers none to SCRAM.
fn split_gs2(message: &str) -> Result<(&str, &str), Failed> {
    let bad = || Failed("malformed GS2 header".into());
    let first = message.find(',').ok_or_else(bad)?;
    let second = first + 1 + message[first + 1..].find(',').ok_or_else(bad)?;
    let flag = &message[..first];
    if flag.starts_with("p=") {
        return Err(Failed("SCRAM channel binding is not supported".into()));
    }
    if flag != "n" && flag != "y" {
        return Err(bad());
    }
    let authzid = &message[first + 1..second];
    if !authzid.is_empty() && !authzid.starts_with("a=") {
        return Err(bad());
    }
    Ok((&message[..=second], &message[second + 1..]))
}

/// The client's side, for kmeta's own tools and tests.
pub struct ScramClient {
    mechanism: ScramMechanism,
    user: String,
    password: String,
    client_nonce: String,
    client_first_bare: String,
    server_signature: Option<Vec<u8>>,
}

impl ScramClient {
    /// A client for `user` with `password`.
    pub fn new(mechanism: ScramMechanism, user: &str, password: &str) -> ScramClient {
        let client_nonce = printable_nonce();
        let name = user.replace('=', "=3D").replace(',', "=2C");
        ScramClient {
            mechanism,
            user: user.to_string(),
            password: password.to_string(),
            client_first_bare: format!("n={name},r={client_nonce}"),
            client_nonce,
            server_signature: None,
        }
    }

    /// client-first-message.
    pub fn first(&self) -> Vec<u8> {
        format!("n,,{}", self.client_first_bare).into_bytes()
    }

    /// client-final-message, from server-first-message.
    pub fn finish(&mut self, server_first: &[u8]) -> Result<Vec<u8>, Failed> {
        let server_first = std::str::from_utf8(server_first)
            .map_err(|_| Failed("server-first-message is not UTF-8".into()))?;
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for attr in server_first.split(',') {
            if let Some(v) = attr.strip_prefix("r=") {
                nonce = Some(v);
            } else if let Some(v) = attr.strip_prefix("s=") {
                salt = B64.decode(v).ok();
            } else if let Some(v) = attr.strip_prefix("i=") {
                iterations = v.parse::<u32>().ok();
            }
        }
        let (Some(nonce), Some(salt), Some(iterations)) = (nonce, salt, iterations) else {
            return Err(Failed("malformed server-first-message".into()));
        };
        if !nonce.starts_with(&self.client_nonce) {
            return Err(Failed(
                "the server's nonce does not extend the client's".into(),
            ));
        }
        let m = self.mechanism;
        let salted = salted_password(m, self.password.as_bytes(), &salt, iterations);
        let client_key = hmac_of(m, &salted, b"Client Key");
        let stored_key = digest::digest(digest_algorithm(m), &client_key);
        let without_proof = format!("c={},r={nonce}", B64.encode("n,,"));
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let signature = hmac_of(m, stored_key.as_ref(), auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = hmac_of(m, &salted, b"Server Key");
        self.server_signature = Some(hmac_of(m, &server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
    }

    /// Checks server-final-message: the server knew the credential too.
    pub fn verify(&self, server_final: &[u8]) -> Result<(), Failed> {
        let text = std::str::from_utf8(server_final).unwrap_or("");
        let got = text.strip_prefix("v=").and_then(|v| B64.decode(v).ok());
        match (&self.server_signature, got) {
            (Some(want), Some(got)) if equal(want, &got) => Ok(()),
            _ => Err(Failed(format!(
                "the server did not prove it knows {}'s credential",
                self.user
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677's SCRAM-SHA-256 example: user "user", password "pencil".
    #[test]
    fn the_rfc_7677_example_exchange_checks_out() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let salted = salted_password(ScramMechanism::Sha256, b"pencil", &salt, 4096);
        let (stored_key, server_key) = keys(ScramMechanism::Sha256, &salted);
        let client_first_bare = "n=user,r=rOprNGfwEbeRWgbNEkqO";
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let without_proof = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let auth = format!("{client_first_bare},{server_first},{without_proof}");
        let client_key = hmac_of(ScramMechanism::Sha256, &salted, b"Client Key");
        let signature = hmac_of(ScramMechanism::Sha256, &stored_key, auth.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(k, s)| k ^ s)
            .collect();
        assert_eq!(
            B64.encode(proof),
            "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        let server_signature = hmac_of(ScramMechanism::Sha256, &server_key, auth.as_bytes());
        assert_eq!(
            B64.encode(server_signature),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    fn exchange(
        m: ScramMechanism,
        stored: &UserScramCredentialRecord,
        user: &str,
        password: &str,
    ) -> Result<String, Failed> {
        let mut client = ScramClient::new(m, user, password);
        let mut server = ScramServer::new(m);
        let lookup =
            |u: &str, mech| (u == stored.name && mech == stored.mechanism).then(|| stored.clone());
        let Step::Continue(first) = server.step(&client.first(), lookup)? else {
            panic!("done after one message");
        };
        let last = client.finish(&first)?;
        match server.step(&last, lookup)? {
            Step::Authenticated { user, reply } => {
                client.verify(&reply)?;
                Ok(user)
            }
            Step::Continue(_) => panic!("not done after two messages"),
        }
    }

    #[test]
    fn the_right_password_authenticates_and_others_do_not() {
        for m in ScramMechanism::ALL {
            let stored = credential(m, "al,i=ce", "secret", 4096);
            assert_eq!(
                exchange(m, &stored, "al,i=ce", "secret"),
                Ok("al,i=ce".into())
            );
            assert!(exchange(m, &stored, "al,i=ce", "Secret").is_err());
            assert!(exchange(m, &stored, "bob", "secret").is_err());
            assert!(password_matches(&stored, "secret"));
            assert!(!password_matches(&stored, "secret "));
        }
        let stored = credential(ScramMechanism::Sha256, "alice", "secret", 4096);
        assert!(exchange(ScramMechanism::Sha512, &stored, "alice", "secret").is_err());
    }

    #[test]
    fn malformed_messages_fail_without_panicking() {
        let stored = credential(ScramMechanism::Sha256, "alice", "secret", 4096);
        for bad in [
            &b""[..],
            b"n,,",
            b"p=tls-unique,,n=alice,r=abc",
            b"x,,n=alice,r=abc",
            b"n,,n=al=ZZice,r=abc",
            b"n,,n=alice",
            b"n,,n=alice,r=",
            &[0xff, 0xfe],
        ] {
            let mut server = ScramServer::new(ScramMechanism::Sha256);
            assert!(
                server.step(bad, |_, _| Some(stored.clone())).is_err(),
                "{bad:?}"
            );
        }
        let mut server = ScramServer::new(ScramMechanism::Sha256);
        assert!(server
            .step(b"n,,n=alice,r=abc", |_, _| Some(stored.clone()))
            .is_ok());
        for bad in [
            &b"c=biws,r=abc"[..],
            b"c=biws,r=abc,p=!!",
            b"c=eSws,r=abc,p=AAAA",
        ] {
            let mut s = ScramServer::new(ScramMechanism::Sha256);
            let _ = s.step(b"n,,n=alice,r=abc", |_, _| Some(stored.clone()));
            assert!(s.step(bad, |_, _| Some(stored.clone())).is_err(), "{bad:?}");
        }
    }
}
