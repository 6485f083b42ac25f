//! Durable file writes whose errors name the operation and the path: a checkpoint that says
//! it is written is on the disk (`fsync`), and a full disk reads "cannot write FILE: No space
//! left on device", not a parse error.
use crate::{Error, Result};
use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` (created or truncated) and flushes it to the disk.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = std::fs::File::create(path).map_err(|e| Error::file_op("create", path, e))?;
    f.write_all(bytes)
        .map_err(|e| Error::file_op("write", path, e))?;
    f.sync_all().map_err(|e| Error::file_op("fsync", path, e))
}

/// Flushes a directory's entries (a rename into it, a file created in it) to the disk.
pub fn sync_dir(dir: &Path) -> Result<()> {
    let f = std::fs::File::open(dir).map_err(|e| Error::file_op("open", dir, e))?;
    f.sync_all().map_err(|e| Error::file_op("fsync", dir, e))
}

/// Renames `from` to `to` (atomic within one file system); the error names both.
pub fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|e| {
        Error::file_op(
            "rename",
            format!("{} to {}", from.display(), to.display()),
            e,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_into_a_missing_directory_names_the_operation_and_the_file() {
        let d = std::env::temp_dir().join(format!("alp-fsio-{}", std::process::id()));
        let p = d.join("no-such-dir").join("f");
        let e = write_synced(&p, b"x").unwrap_err().to_string();
        assert!(e.starts_with("cannot create "), "{e}");
        assert!(e.contains("no-such-dir/f"), "{e}");
    }

    #[test]
    fn a_written_file_holds_the_bytes_and_a_rename_moves_it() {
        let d = std::env::temp_dir().join(format!("alp-fsio-ok-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        write_synced(&d.join("a"), b"hello").unwrap();
        rename(&d.join("a"), &d.join("b")).unwrap();
        sync_dir(&d).unwrap();
        assert_eq!(std::fs::read(d.join("b")).unwrap(), b"hello");
        assert!(!d.join("a").exists());
        let e = rename(&d.join("a"), &d.join("c")).unwrap_err().to_string();
        assert!(e.starts_with("cannot rename ") && e.contains(" to "), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
