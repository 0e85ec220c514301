//! Shared helpers for the std integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// A private shm directory for this test binary, named after `tag` and the
/// process, set as `CUFRAMES_SHM_DIR` (process-wide, so one per binary).
/// Removed on drop; a binary that keeps it in a static leaves it behind,
/// and the next run of that binary removes the ones of dead processes.
pub struct ShmDir(pub PathBuf);

impl ShmDir {
    pub fn new(tag: &str) -> Self {
        let tmp = std::env::temp_dir();
        let prefix = format!("cuframes-{tag}-");
        for e in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let dead = name
                .strip_prefix(&prefix)
                .and_then(|p| p.parse::<u32>().ok())
                .is_some_and(|pid| cuframes::process_start_time(pid).is_none());
            if dead {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let dir = tmp.join(format!("{prefix}{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::env::set_var("CUFRAMES_SHM_DIR", &dir);
        Self(dir)
    }
}

impl Drop for ShmDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
