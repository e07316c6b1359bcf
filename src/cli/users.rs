//! `kmeta users`: SCRAM credentials, as Kafka's `kafka-configs.sh --entity-type users
//! --alter --add-config 'SCRAM-SHA-256=[...]'` sets them, through AlterUserScramCredentials
//! and DescribeUserScramCredentials. The salt is made and the password salted here; only the
//! salted password leaves this process, and nothing prints it.

use super::{print_json, print_table, Admin, Output};
use crate::kafka::wire::sb;
use kafka_protocol::messages::alter_user_scram_credentials_request::{
    ScramCredentialDeletion, ScramCredentialUpsertion,
};
use kafka_protocol::messages::describe_user_scram_credentials_request::UserName;
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, DescribeUserScramCredentialsRequest,
};
use kmeta_metadata::record::ScramMechanism;
use serde_json::json;

/// The mechanisms a `--mechanism` value names (`all` for both).
pub fn mechanisms(name: &str) -> Result<Vec<ScramMechanism>, String> {
    if name == "all" {
        return Ok(ScramMechanism::ALL.to_vec());
    }
    ScramMechanism::from_name(name)
        .map(|m| vec![m])
        .ok_or_else(|| format!("--mechanism: {name:?} is not SCRAM-SHA-256, SCRAM-SHA-512 or all"))
}

/// Sends AlterUserScramCredentials; the users it changed, or the first user's refusal.
async fn alter(
    admin: &mut Admin,
    request: AlterUserScramCredentialsRequest,
) -> Result<Vec<String>, String> {
    let response = admin.send(&request, 0).await?;
    let mut done = Vec::new();
    for r in response.results {
        if r.error_code != 0 {
            return Err(format!(
                "user {}: {}",
                &*r.user,
                super::error_text(r.error_code, r.error_message.as_ref())
            ));
        }
        done.push(r.user.to_string());
    }
    Ok(done)
}

/// Sets `user`'s password for `mechanisms`.
pub async fn add(
    admin: &mut Admin,
    user: &str,
    password: &str,
    mechanisms: &[ScramMechanism],
    iterations: u32,
    output: Output,
) -> Result<(), String> {
    if password.is_empty() {
        return Err("the password is empty".into());
    }
    let upsertions = mechanisms
        .iter()
        .map(|m| {
            let salt = crate::sasl::scram::random_bytes(32);
            let salted =
                crate::sasl::scram::salted_password(*m, password.as_bytes(), &salt, iterations);
            ScramCredentialUpsertion::default()
                .with_name(sb(user))
                .with_mechanism(m.id())
                .with_iterations(iterations as i32)
                .with_salt(salt.into())
                .with_salted_password(salted.into())
        })
        .collect();
    let done = alter(
        admin,
        AlterUserScramCredentialsRequest::default().with_upsertions(upsertions),
    )
    .await?;
    let names: Vec<&str> = mechanisms.iter().map(|m| m.name()).collect();
    match output {
        Output::Json => print_json(&json!({"users": done, "mechanisms": names})),
        Output::Table => println!("Set {} credentials of user {user}", names.join(" and ")),
    }
    Ok(())
}

/// Removes `user`'s credentials for `mechanisms`.
pub async fn remove(
    admin: &mut Admin,
    user: &str,
    mechanisms: &[ScramMechanism],
    output: Output,
) -> Result<(), String> {
    let deletions = mechanisms
        .iter()
        .map(|m| {
            ScramCredentialDeletion::default()
                .with_name(sb(user))
                .with_mechanism(m.id())
        })
        .collect();
    let done = alter(
        admin,
        AlterUserScramCredentialsRequest::default().with_deletions(deletions),
    )
    .await?;
    let names: Vec<&str> = mechanisms.iter().map(|m| m.name()).collect();
    match output {
        Output::Json => print_json(&json!({"removed": done, "mechanisms": names})),
        Output::Table => println!("Removed {} credentials of user {user}", names.join(" and ")),
    }
    Ok(())
}

/// Lists users and their mechanisms (all users, or `user`).
pub async fn list(admin: &mut Admin, user: Option<&str>, output: Output) -> Result<(), String> {
    let request = DescribeUserScramCredentialsRequest::default()
        .with_users(user.map(|u| vec![UserName::default().with_name(sb(u))]));
    let response = admin.send(&request, 0).await?;
    if response.error_code != 0 {
        return Err(super::error_text(
            response.error_code,
            response.error_message.as_ref(),
        ));
    }
    let mut rows = Vec::new();
    let mut out = Vec::new();
    for r in &response.results {
        if r.error_code != 0 {
            return Err(format!(
                "user {}: {}",
                &*r.user,
                super::error_text(r.error_code, r.error_message.as_ref())
            ));
        }
        for c in &r.credential_infos {
            let mechanism = ScramMechanism::from_id(c.mechanism).map_or("unknown", |m| m.name());
            rows.push(vec![
                r.user.to_string(),
                mechanism.to_string(),
                c.iterations.to_string(),
            ]);
            out.push(json!({"user": &*r.user, "mechanism": mechanism, "iterations": c.iterations}));
        }
    }
    match output {
        Output::Json => print_json(&json!(out)),
        Output::Table => print_table(&["USER", "MECHANISM", "ITERATIONS"], &rows),
    }
    Ok(())
}
