//! The one reader of every file the configuration names (the file itself, secret files, the
//! Google key, certificate bundles, the links' key, the stored refresh token): a regular file
//! only, checked before it is opened (a FIFO would block the open, a device like `/dev/zero`
//! never ends), opened non-blocking in case it was swapped since, and read up to a cap that
//! fits its [`Kind`]. A leaf: config, pem, google, microsoft and links call it. Also says when
//! a secret file is readable by other users.

use std::fmt;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// What a file holds, and so how large it may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A client secret, a refresh token, an HMAC key: a line.
    Secret,
    /// A service-account key (JSON, about 2.3 KB).
    Key,
    /// PEM certificates (a CA bundle: the system's is about 220 KB).
    Certificates,
    /// The configuration file.
    Config,
}

impl Kind {
    pub(crate) fn max_bytes(self) -> u64 {
        match self {
            Kind::Secret => 64 * 1024,
            Kind::Key => 256 * 1024,
            Kind::Certificates => 4 * 1024 * 1024,
            Kind::Config => 1024 * 1024,
        }
    }
}

/// Why a file was not read. Its `Display` names the path; the caller names the key.
#[derive(Debug)]
pub enum FileError {
    Io(PathBuf, std::io::Error),
    /// A FIFO, a device, a socket, a directory.
    NotRegular(PathBuf, &'static str),
    TooLarge(PathBuf, u64),
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileError::Io(p, e) => write!(f, "cannot read {}: {e}", p.display()),
            FileError::NotRegular(p, what) => write!(
                f,
                "{} is {what}, not a regular file (it would block or never end)",
                p.display()
            ),
            FileError::TooLarge(p, max) => write!(
                f,
                "{} is larger than {max} bytes: not the file this key names",
                p.display()
            ),
        }
    }
}

impl std::error::Error for FileError {}

impl FileError {
    /// The file does not exist (some callers treat that as "none yet").
    pub(crate) fn is_not_found(&self) -> bool {
        matches!(self, FileError::Io(_, e) if e.kind() == std::io::ErrorKind::NotFound)
    }
}

fn what_it_is(t: std::fs::FileType) -> &'static str {
    if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_dir() {
        "a directory"
    } else {
        "not a file"
    }
}

/// Checks that `path` is a regular file of at most `kind`'s size, without opening it.
pub(crate) fn check(path: &Path, kind: Kind) -> Result<std::fs::Metadata, FileError> {
    let meta = std::fs::metadata(path).map_err(|e| FileError::Io(path.into(), e))?;
    if !meta.is_file() {
        return Err(FileError::NotRegular(
            path.into(),
            what_it_is(meta.file_type()),
        ));
    }
    if meta.len() > kind.max_bytes() {
        return Err(FileError::TooLarge(path.into(), kind.max_bytes()));
    }
    Ok(meta)
}

/// The bytes of `path`, a regular file of at most `kind`'s size.
pub(crate) fn read(path: &Path, kind: Kind) -> Result<Vec<u8>, FileError> {
    check(path, kind)?;
    let io = |e| FileError::Io(path.into(), e);
    // Non-blocking: if a FIFO replaced the file since the check, the open does not wait for a
    // writer, and the second check below refuses it.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(FileError::NotRegular(
            path.into(),
            what_it_is(meta.file_type()),
        ));
    }
    let max = kind.max_bytes();
    let mut bytes = Vec::with_capacity(meta.len().min(max) as usize);
    file.take(max + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > max {
        return Err(FileError::TooLarge(path.into(), max));
    }
    Ok(bytes)
}

/// The text of `path` (UTF-8), a regular file of at most `kind`'s size.
pub(crate) fn read_text(path: &Path, kind: Kind) -> Result<String, FileError> {
    String::from_utf8(read(path, kind)?).map_err(|_| {
        FileError::Io(
            path.into(),
            std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"),
        )
    })
}

/// `Some(mode)` when the file at `path` can be read by users other than its owner (group or
/// others have a read bit): a secret there is one `cat` away from anyone on the machine.
pub(crate) fn readable_by_others(path: &Path) -> Option<u32> {
    // A device or a FIFO is refused when read; its mode says nothing about a secret.
    let meta = std::fs::metadata(path)
        .ok()
        .filter(std::fs::Metadata::is_file)?;
    let mode = meta.permissions().mode() & 0o777;
    (mode & 0o044 != 0).then_some(mode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn devices_fifos_and_directories_are_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo only creates a file.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        for (path, what) in [
            (Path::new("/dev/zero"), "a character device"),
            (Path::new("/dev/null"), "a character device"),
            (fifo.as_path(), "a FIFO"),
            (dir.path(), "a directory"),
        ] {
            let started = Instant::now();
            let e = read(path, Kind::Secret).unwrap_err();
            assert!(started.elapsed() < Duration::from_secs(1));
            assert!(e.to_string().contains(what), "{e}");
            assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        }
    }

    #[test]
    fn a_file_over_its_kinds_cap_is_refused_and_one_at_the_cap_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        let max = Kind::Secret.max_bytes() as usize;
        std::fs::write(&path, vec![b'a'; max]).unwrap();
        assert_eq!(read(&path, Kind::Secret).unwrap().len(), max);
        std::fs::write(&path, vec![b'a'; max + 1]).unwrap();
        let e = read(&path, Kind::Secret).unwrap_err();
        assert!(matches!(e, FileError::TooLarge(..)), "{e}");
        assert!(read(&path, Kind::Certificates).is_ok());
        let missing = read(&dir.path().join("none"), Kind::Secret).unwrap_err();
        assert!(missing.is_not_found(), "{missing}");
    }

    #[test]
    fn group_or_world_readable_files_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "k").unwrap();
        for (mode, open) in [(0o600, false), (0o400, false), (0o640, true), (0o644, true)] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(readable_by_others(&path).is_some(), open, "{mode:o}");
        }
        assert_eq!(
            readable_by_others(Path::new("/dev/zero")),
            None,
            "not a file"
        );
    }
}
