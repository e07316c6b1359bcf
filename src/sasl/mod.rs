//! SASL on the Kafka listeners (issue 15): PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512, on
//! `SASL_PLAINTEXT://` and `SASL_SSL://` listeners.
//!
//! A connection authenticates before anything else: until it has, only ApiVersions,
//! SaslHandshake (v1) and SaslAuthenticate are answered, and any other request closes it, as
//! Kafka does. SCRAM credentials live in the metadata log (`kmeta users`, or Kafka's
//! AlterUserScramCredentials); PLAIN checks the password against the same credentials, so
//! there is one user store (Kafka's PLAIN reads its users from a JAAS file instead).

pub mod scram;

use crate::config::ConfigError;
use kmeta_metadata::record::{ScramMechanism, UserScramCredentialRecord};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A SASL mechanism kmeta offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    /// PLAIN (RFC 4616): the password in the clear, so only inside TLS in earnest.
    Plain,
    /// SCRAM-SHA-256 or SCRAM-SHA-512.
    Scram(ScramMechanism),
}

impl Mechanism {
    /// The mechanism's SASL name.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Scram(m) => m.name(),
        }
    }

    /// The mechanism named `name`.
    pub fn parse(name: &str) -> Option<Mechanism> {
        if name == "PLAIN" {
            return Some(Mechanism::Plain);
        }
        ScramMechanism::from_name(name).map(Mechanism::Scram)
    }
}

/// `sasl.enabled.mechanisms` (or `listener.name.<name>.sasl.enabled.mechanisms`) of listener
/// `name`. Kafka's default is GSSAPI, which kmeta does not offer; kmeta's default is both
/// SCRAM mechanisms.
pub fn enabled_mechanisms(
    props: &BTreeMap<String, String>,
    name: &str,
) -> Result<Vec<Mechanism>, ConfigError> {
    let scoped = format!(
        "listener.name.{}.sasl.enabled.mechanisms",
        name.to_lowercase()
    );
    let (key, value) = match props.get(&scoped) {
        Some(v) => (scoped.as_str(), v.as_str()),
        None => (
            "sasl.enabled.mechanisms",
            props
                .get("sasl.enabled.mechanisms")
                .map_or("SCRAM-SHA-256,SCRAM-SHA-512", String::as_str),
        ),
    };
    let mut out = Vec::new();
    for m in value.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        let mechanism = Mechanism::parse(m).ok_or_else(|| {
            ConfigError(format!(
                "{key}: {m:?} is not offered (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512)"
            ))
        })?;
        if !out.contains(&mechanism) {
            out.push(mechanism);
        }
    }
    if out.is_empty() {
        return Err(ConfigError(format!(
            "{key}: listener {name} uses SASL but enables no mechanism"
        )));
    }
    Ok(out)
}

/// Parses one `--add-scram` value of `kmeta storage format`, as `kafka-storage format` takes
/// it: `SCRAM-SHA-256=[name=alice,password=alice-secret]`, with `iterations=N` (default 4096)
/// optional; a value may be double-quoted to hold ',' or ']'. The password is salted here.
pub fn parse_add_scram(spec: &str) -> Result<UserScramCredentialRecord, String> {
    let bad = |why: &str| format!("--add-scram {spec:?}: {why}");
    let (mechanism, rest) = spec
        .split_once('=')
        .ok_or_else(|| bad("expected MECHANISM=[name=...,password=...]"))?;
    let mechanism = ScramMechanism::from_name(mechanism.trim())
        .ok_or_else(|| bad("the mechanism is not SCRAM-SHA-256 or SCRAM-SHA-512"))?;
    let inner = rest
        .trim()
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .ok_or_else(|| bad("the settings must be in [ ]"))?;
    let mut fields = BTreeMap::new();
    let mut chars = inner.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            for c in chars.by_ref() {
                if c == '"' {
                    break;
                }
                value.push(c);
            }
            if chars.peek() == Some(&',') {
                chars.next();
            }
        } else {
            value = chars.by_ref().take_while(|c| *c != ',').collect();
        }
        if fields.insert(key.trim().to_string(), value).is_some() {
            return Err(bad(&format!("{} is given twice", key.trim())));
        }
    }
    let name = fields
        .remove("name")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| bad("name= is required"))?;
    let password = fields
        .remove("password")
        .filter(|p| !p.is_empty())
        .ok_or_else(|| bad("password= is required"))?;
    let iterations = match fields.remove("iterations") {
        None => ScramMechanism::MIN_ITERATIONS,
        Some(i) => i
            .parse::<u32>()
            .ok()
            .filter(|i| {
                (ScramMechanism::MIN_ITERATIONS..=ScramMechanism::MAX_ITERATIONS).contains(i)
            })
            .ok_or_else(|| bad("iterations= must be a number from 4096 to 16384"))?,
    };
    if let Some(other) = fields.keys().next() {
        return Err(bad(&format!(
            "{other}= is not known (name, password, iterations)"
        )));
    }
    Ok(scram::credential(mechanism, &name, &password, iterations))
}

/// Where a listener finds users' credentials (a broker: its metadata image).
pub trait Credentials: Send + Sync + 'static {
    /// `user`'s credential for `mechanism`.
    fn scram(&self, user: &str, mechanism: ScramMechanism) -> Option<UserScramCredentialRecord>;
}

/// A listener's SASL: the mechanisms it offers and where credentials come from.
pub struct SaslServer {
    mechanisms: Vec<Mechanism>,
    credentials: Arc<dyn Credentials>,
}

/// One connection's exchange in progress.
pub enum Exchange {
    /// PLAIN: one message.
    Plain,
    /// SCRAM: two messages.
    Scram(scram::ScramServer),
}

impl Exchange {
    /// The mechanism exchanged.
    pub fn mechanism(&self) -> &'static str {
        match self {
            Exchange::Plain => "PLAIN",
            Exchange::Scram(s) => match s {
                scram::ScramServer::Start(m) => m.name(),
                scram::ScramServer::Sent { credential, .. } => credential.mechanism.name(),
                scram::ScramServer::Done => "SCRAM",
            },
        }
    }
}

impl SaslServer {
    /// A server offering `mechanisms`, checking against `credentials`.
    pub fn new(mechanisms: Vec<Mechanism>, credentials: Arc<dyn Credentials>) -> SaslServer {
        SaslServer {
            mechanisms,
            credentials,
        }
    }

    /// The mechanisms' names, for SaslHandshake answers.
    pub fn mechanism_names(&self) -> Vec<&'static str> {
        self.mechanisms.iter().map(|m| m.name()).collect()
    }

    /// An exchange of the mechanism a client asked for in SaslHandshake, if offered.
    pub fn start(&self, name: &str) -> Option<Exchange> {
        let mechanism = Mechanism::parse(name).filter(|m| self.mechanisms.contains(m))?;
        Some(match mechanism {
            Mechanism::Plain => Exchange::Plain,
            Mechanism::Scram(m) => Exchange::Scram(scram::ScramServer::new(m)),
        })
    }

    /// Takes the client's next SaslAuthenticate bytes.
    pub fn step(
        &self,
        exchange: &mut Exchange,
        token: &[u8],
    ) -> Result<scram::Step, scram::Failed> {
        match exchange {
            Exchange::Scram(s) => s.step(token, |user, m| self.credentials.scram(user, m)),
            Exchange::Plain => {
                // authzid NUL authcid NUL password (RFC 4616).
                let mut parts = token.split(|b| *b == 0);
                let (Some(authzid), Some(user), Some(password), None) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    return Err(scram::Failed("malformed PLAIN message".into()));
                };
                let (Ok(authzid), Ok(user), Ok(password)) = (
                    std::str::from_utf8(authzid),
                    std::str::from_utf8(user),
                    std::str::from_utf8(password),
                ) else {
                    return Err(scram::Failed("a PLAIN message is not UTF-8".into()));
                };
                if !authzid.is_empty() && authzid != user {
                    return Err(scram::Failed(
                        "authorization id must be empty or the user's own".into(),
                    ));
                }
                // Any of the user's SCRAM credentials holds the password.
                let known = ScramMechanism::ALL
                    .into_iter()
                    .find_map(|m| self.credentials.scram(user, m));
                // PBKDF2 of 4096 or more rounds: milliseconds, off this runtime thread's
                // other tasks.
                let matches = |c: &UserScramCredentialRecord| {
                    crate::cpu_bound(|| scram::password_matches(c, password))
                };
                match known {
                    Some(c) if matches(&c) => Ok(scram::Step::Authenticated {
                        user: user.to_string(),
                        reply: Vec::new(),
                    }),
                    Some(_) => Err(scram::Failed(format!(
                        "invalid credentials for user {user:?}"
                    ))),
                    None => Err(scram::Failed(format!("unknown user {user:?}"))),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_scram_takes_kafka_storage_formats_syntax() {
        let c = parse_add_scram("SCRAM-SHA-512=[name=admin,password=\"a,b]c\",iterations=8192]")
            .unwrap();
        assert_eq!(
            (c.name.as_str(), c.mechanism, c.iterations),
            ("admin", ScramMechanism::Sha512, 8192)
        );
        assert!(scram::password_matches(&c, "a,b]c"));
        let c = parse_add_scram("SCRAM-SHA-256=[name=alice,password=secret]").unwrap();
        assert_eq!(c.iterations, 4096);
        assert!(scram::password_matches(&c, "secret"));
        for bad in [
            "SCRAM-SHA-1=[name=a,password=b]",
            "SCRAM-SHA-256=name=a,password=b",
            "SCRAM-SHA-256=[name=a]",
            "SCRAM-SHA-256=[password=b]",
            "SCRAM-SHA-256=[name=a,password=b,iterations=10]",
            "SCRAM-SHA-256=[name=a,password=b,salt=x]",
        ] {
            assert!(parse_add_scram(bad).is_err(), "{bad}");
        }
    }
}
