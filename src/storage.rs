//! A node's log directory identity: `meta.properties`, written by `kmeta storage format`.
//!
//! Like Kafka's, it holds `version`, `cluster.id`, `node.id` and a `directory.id`. A server
//! refuses to start on an unformatted directory or one formatted for another cluster or node,
//! and `format` refuses to overwrite another cluster's directory.

use crate::config::{parse_properties, NodeConfig};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The identity of a formatted log directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaProperties {
    /// The cluster this directory belongs to.
    pub cluster_id: String,
    /// The node that owns it.
    pub node_id: u64,
    /// A UUID for this directory.
    pub directory_id: String,
}

fn meta_path(log_dir: &Path) -> PathBuf {
    log_dir.join("meta.properties")
}

/// Reads `meta.properties`; `Ok(None)` when the directory is not formatted.
pub fn read_meta(log_dir: &Path) -> Result<Option<MetaProperties>, String> {
    let path = meta_path(log_dir);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let props = parse_properties(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let get = |k: &str| {
        props
            .get(k)
            .cloned()
            .ok_or_else(|| format!("{}: missing {k}", path.display()))
    };
    Ok(Some(MetaProperties {
        cluster_id: get("cluster.id")?,
        node_id: get("node.id")?
            .parse()
            .map_err(|_| format!("{}: node.id is not a number", path.display()))?,
        directory_id: get("directory.id")?,
    }))
}

/// Checks a cluster id: Kafka's form is a UUID in URL-safe base64 (22 characters); any
/// non-empty id of URL-safe characters is accepted.
pub fn validate_cluster_id(id: &str) -> Result<(), String> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!(
            "cluster id {id:?} is invalid: use `kmeta storage random-uuid` to make one"
        ));
    }
    Ok(())
}

fn bootstrap_path(log_dir: &Path) -> PathBuf {
    log_dir.join("bootstrap.records")
}

const BOOTSTRAP_MAGIC: &[u8; 8] = b"KMBOOT01";

/// Writes the records a new cluster starts with (`--add-scram`): a magic, each record's
/// length and encoding, and a CRC-32 of all before it. The first active controller appends
/// them to the log once (`kmeta_metadata::controller::scram::bootstrap`).
pub fn write_bootstrap(
    log_dir: &Path,
    records: &[kmeta_metadata::MetadataRecord],
) -> Result<(), String> {
    let mut out = BOOTSTRAP_MAGIC.to_vec();
    for r in records {
        let bytes = r.encode();
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(&bytes);
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    let path = bootstrap_path(log_dir);
    crate::raft::state_file::write_plain_atomic(&path, &out)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The bootstrap records of a formatted directory (none when it has no file).
pub fn read_bootstrap(log_dir: &Path) -> Result<Vec<kmeta_metadata::MetadataRecord>, String> {
    let path = bootstrap_path(log_dir);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let bad = |why: &str| format!("{} is damaged: {why}", path.display());
    if bytes.len() < BOOTSTRAP_MAGIC.len() + 4 || !bytes.starts_with(BOOTSTRAP_MAGIC) {
        return Err(bad("no bootstrap header"));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32fast::hash(body).to_le_bytes() != crc {
        return Err(bad("checksum mismatch"));
    }
    let mut rest = &body[BOOTSTRAP_MAGIC.len()..];
    let mut records = Vec::new();
    while !rest.is_empty() {
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            return Err(bad("a truncated length"));
        };
        let len = u32::from_le_bytes(*len) as usize;
        if tail.len() < len {
            return Err(bad("a truncated record"));
        }
        let record = kmeta_metadata::MetadataRecord::decode(&tail[..len])
            .map_err(|e| bad(&e.to_string()))?;
        records.push(record);
        rest = &tail[len..];
    }
    Ok(records)
}

/// Formats the node's log directory for `cluster_id`, with `bootstrap` records for a new
/// cluster (`--add-scram`). Formatting again for the same cluster and node is refused unless
/// `ignore_formatted`; another cluster's directory always is.
pub fn format(
    config: &NodeConfig,
    cluster_id: &str,
    ignore_formatted: bool,
    bootstrap: &[kmeta_metadata::MetadataRecord],
) -> Result<String, String> {
    validate_cluster_id(cluster_id)?;
    let dir = &config.log_dir;
    if let Some(existing) = read_meta(dir)? {
        if existing.cluster_id != cluster_id || existing.node_id != config.node_id {
            return Err(format!(
                "{} already belongs to cluster {} node {}; refusing to format it for cluster {cluster_id} node {}",
                dir.display(),
                existing.cluster_id,
                existing.node_id,
                config.node_id
            ));
        }
        if ignore_formatted {
            return Ok(format!(
                "{} is already formatted; nothing to do",
                dir.display()
            ));
        }
        return Err(format!(
            "{} is already formatted (use --ignore-formatted to accept that)",
            dir.display()
        ));
    }
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let text = format!(
        "#kmeta\nversion=1\ncluster.id={cluster_id}\nnode.id={}\ndirectory.id={}\n",
        config.node_id,
        crate::random_cluster_id()
    );
    if !bootstrap.is_empty() {
        write_bootstrap(dir, bootstrap)?;
    }
    // meta.properties last: a directory is formatted once everything is in it.
    crate::raft::state_file::write_plain_atomic(&meta_path(dir), text.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", meta_path(dir).display()))?;
    Ok(format!(
        "Formatted {} for cluster {cluster_id}, node {}",
        dir.display(),
        config.node_id
    ))
}

/// The identity a server needs before starting: formatted, for this node.
pub fn check_formatted(config: &NodeConfig) -> Result<MetaProperties, String> {
    let dir = &config.log_dir;
    let meta = read_meta(dir)?.ok_or_else(|| {
        format!(
            "{} is not formatted: run `kmeta storage format --config FILE --cluster-id ID` first",
            dir.display()
        )
    })?;
    if meta.node_id != config.node_id {
        return Err(format!(
            "{} belongs to node {}, but node.id is {}",
            dir.display(),
            meta.node_id,
            config.node_id
        ));
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_records_read_back_and_a_damaged_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_bootstrap(dir.path()).unwrap(), Vec::new());
        let records = vec![
            kmeta_metadata::MetadataRecord::UserScramCredential(crate::sasl::scram::credential(
                kmeta_metadata::record::ScramMechanism::Sha256,
                "admin",
                "secret",
                4096,
            )),
            kmeta_metadata::MetadataRecord::NoOp,
        ];
        write_bootstrap(dir.path(), &records).unwrap();
        assert_eq!(read_bootstrap(dir.path()).unwrap(), records);
        let path = bootstrap_path(dir.path());
        let mut bytes = fs::read(&path).unwrap();
        for at in [0, 9, bytes.len() / 2, bytes.len() - 1] {
            bytes[at] ^= 1;
            fs::write(&path, &bytes).unwrap();
            assert!(
                read_bootstrap(dir.path()).is_err(),
                "a flipped byte at {at}"
            );
            bytes[at] ^= 1;
        }
        fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        assert!(read_bootstrap(dir.path()).is_err());
    }
}
