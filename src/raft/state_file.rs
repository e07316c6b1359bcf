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

/// Replaces `path` with `bytes` through a temporary file and a rename, durably: the file is
/// fsynced before the rename and the directory after it.
fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()?;
    Ok(())
}

/// Writes `bytes` to `path` atomically and durably, with a trailing CRC32.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace(path, &with_crc(bytes))
}

/// Writes `bytes` to `path` atomically and durably, without a checksum (for human-readable
/// files such as `meta.properties`).
pub fn write_plain_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace(path, bytes)
}

/// A small file rewritten in place, without fsync or rename: for a hint written often
/// whose loss in a crash is harmless (Raft's committed log id, once per commit). Read it back
/// with [`read_checked`]; a torn write fails its checksum and reads as an error, which the
/// caller takes as no hint.
///
/// Not through a temporary file and a rename: ext4 flushes a file renamed over another to
/// disk at the rename (`auto_da_alloc`), so each commit cost the controllers a second disk
/// write beside the log's fdatasync (`docs/BENCHMARKS.md`, issue 14).
pub struct HintFile {
    file: File,
    len: u64,
}

impl HintFile {
    /// Opens (creating) the hint at `path`, keeping what it holds until the first write.
    pub fn open(path: &Path) -> io::Result<HintFile> {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        let len = file.metadata()?.len();
        Ok(HintFile { file, len })
    }

    /// Replaces the hint with `bytes` (and their CRC32) in place.
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let framed = with_crc(bytes);
        self.file.write_all_at(&framed, 0)?;
        if framed.len() as u64 != self.len {
            self.file.set_len(framed.len() as u64)?;
            self.len = framed.len() as u64;
        }
        Ok(())
    }
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

    #[test]
    fn a_hint_rewritten_in_place_reads_back_longer_or_shorter() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hint");
        let mut hint = HintFile::open(&path).unwrap();
        for body in [&b"a longer hint"[..], b"short", b"", b"longer again!!"] {
            hint.write(body).unwrap();
            assert_eq!(read_checked(&path).unwrap().as_deref(), Some(body));
        }
        // Reopened, it keeps what it holds until written.
        drop(hint);
        let _reopened = HintFile::open(&path).unwrap();
        assert_eq!(
            read_checked(&path).unwrap().as_deref(),
            Some(&b"longer again!!"[..])
        );
    }
}
