//! Stream keys and where their segments live.

use crate::{Error, ErrorCode, Result};
use std::path::PathBuf;

/// Longest key.
pub const MAX_KEY_LEN: usize = 64;
/// File name prefix of every segment in the shm directory.
pub const PREFIX: &str = "cuframes.";

/// Checks a stream key: 1 to 64 characters from `[A-Za-z0-9._-]`, not
/// starting with a dot, so it can never name a path outside the shm
/// directory (`..`, `/`, NUL and non-ASCII are all refused).
///
/// ```
/// use cuframes::validate_key;
/// assert!(validate_key("cam0.main_1080p-v2").is_ok());
/// for bad in ["", "../x", "a/b", ".hidden", "é", &"k".repeat(65)] {
///     assert!(validate_key(bad).is_err(), "{bad:?}");
/// }
/// ```
pub fn validate_key(key: &str) -> Result<()> {
    let ok_char = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-');
    if key.is_empty()
        || key.len() > MAX_KEY_LEN
        || key.starts_with('.')
        || !key.bytes().all(ok_char)
    {
        return Err(Error::new(
            ErrorCode::InvalidArgument,
            format!("invalid key {key:?}: use 1-{MAX_KEY_LEN} characters from [A-Za-z0-9._-], not starting with '.'"),
        ));
    }
    Ok(())
}

/// The shm directory: `$CUFRAMES_SHM_DIR` if set (tests, containers with a
/// different tmpfs), else `/dev/shm`.
pub fn shm_dir() -> PathBuf {
    std::env::var_os("CUFRAMES_SHM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/dev/shm"))
}

/// Path of a key's segment. The key must be valid.
pub(crate) fn segment_path(key: &str) -> PathBuf {
    shm_dir().join(format!("{PREFIX}{key}"))
}
