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

/// Formats the node's log directory for `cluster_id`. Formatting again for the same cluster
/// and node is refused unless `ignore_formatted`; another cluster's directory always is.
pub fn format(
    config: &NodeConfig,
    cluster_id: &str,
    ignore_formatted: bool,
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
