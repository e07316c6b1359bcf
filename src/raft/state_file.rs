//! Small files replaced atomically: write a temporary file, fsync it, rename it over the old
//! one, fsync the directory. A reader sees the old content or the new, never a mix; a
//! checksum catches anything else.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

/// `bytes` followed by their CRC32 (the form [`read_checked`] reads).
fn with_crc(bytes: &[u8]) -> Vec<u8> {
    let mut framed = Vec::with_capacity(bytes.len() + 4);
    framed.extend_from_slice(bytes);
    framed.extend_from_slice(&crc32fast::hash(bytes).to_le_bytes());
    framed
}

/// Replaces `path` with `bytes` through a temporary file and a rename; with `durable`, the
/// file is fsynced before the rename and the directory after it.
fn replace(path: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        if durable {
            file.sync_all()?;
        }
    }
    fs::rename(&tmp, path)?;
    if durable {
        File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()?;
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically and durably, with a trailing CRC32.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace(path, &with_crc(bytes), true)
}

/// Writes `bytes` to `path` atomically and durably, without a checksum (for human-readable
/// files such as `meta.properties`).
pub fn write_plain_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace(path, bytes, true)
}

/// Replaces `path` atomically (rename) with a CRC-framed `bytes`, without fsync: for hints
/// whose loss in a crash is harmless. Read it back with [`read_checked`].
pub fn write_unsynced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace(path, &with_crc(bytes), false)
}

/// Reads a file written by [`write_atomic`]; `Ok(None)` when it does not exist.
pub fn read_checked(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let mut bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if bytes.len() < 4 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: too short", path.display()),
        ));
    }
    let body_len = bytes.len() - 4;
    let crc = u32::from_le_bytes(bytes[body_len..].try_into().expect("4 bytes"));
    bytes.truncate(body_len);
    if crc32fast::hash(&bytes) != crc {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: checksum mismatch", path.display()),
        ));
    }
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_content_reads_back_and_corruption_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        assert_eq!(read_checked(&path).unwrap(), None);
        write_atomic(&path, b"hello").unwrap();
        write_atomic(&path, b"world!").unwrap();
        assert_eq!(
            read_checked(&path).unwrap().as_deref(),
            Some(&b"world!"[..])
        );
        let mut raw = fs::read(&path).unwrap();
        raw[0] ^= 1;
        fs::write(&path, raw).unwrap();
        assert!(read_checked(&path).is_err());
    }
}
