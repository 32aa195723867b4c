//! Crash-safe file replacement: after a crash at any moment, a path holds either nothing,
//! its previous content, or the whole new content — never a torn mix.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Suffix of temporaries; whatever carries it at start-up is a leftover and is removed.
pub const TEMP_SUFFIX: &str = ".tmp";

/// Writes `bytes` to `path`: into a temporary in the same folder, fsynced, renamed over
/// `path`, then the folder fsynced so the rename itself survives a power loss. Creates the
/// folder if needed. The temporary is removed on failure.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "a path without a folder"))?;
    fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(
        ".{name}.{}.{}{TEMP_SUFFIX}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut file = File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&temp);
        return Err(e);
    }
    sync_dir(dir)
}

/// Makes a folder's entries (renames, removals) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_files_and_leaves_no_temporaries() {
        let dir = std::env::temp_dir().join(format!("mlx-serve-durable-{}", std::process::id()));
        let path = dir.join("sub").join("f.bin");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second, longer").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second, longer");
        let names: Vec<_> = fs::read_dir(dir.join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["f.bin"]);
        // A folder in the way: the write fails and leaves nothing behind.
        fs::create_dir_all(dir.join("sub").join("d")).unwrap();
        assert!(write_atomic(&dir.join("sub").join("d"), b"x").is_err());
        assert_eq!(fs::read_dir(dir.join("sub")).unwrap().count(), 2);
        fs::remove_dir_all(&dir).unwrap();
    }
}
