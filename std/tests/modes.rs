//! File modes do not depend on the umask: a stream shared with the group
//! (mode 0660) has a segment and a lock file the group can open, so a group
//! member can subscribe and, after the publisher exits, publish the key.

use cuframes::*;
use std::os::unix::fs::PermissionsExt;

#[test]
fn group_mode_survives_a_narrow_umask() {
    let dir = std::env::temp_dir().join(format!("cuframes-modes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::env::set_var("CUFRAMES_SHM_DIR", &dir);
    // SAFETY: umask has no memory-safety preconditions; this test binary
    // runs no other test that creates files.
    unsafe { libc::umask(0o077) };
    let layout = FrameLayout::new(PixelFormat::Gray8, 16, 16, 64).unwrap();
    let opts = PublisherOptions {
        mode: 0o660,
        ..Default::default()
    };
    let p = Publisher::create("modes", layout, opts).unwrap();
    let mode = |name: &str| {
        std::fs::metadata(dir.join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("cuframes.modes"), 0o660, "segment");
    assert_eq!(mode(".cuframes.modes.lock"), 0o660, "lock file");
    drop(p);
    // A publisher that closes takes its lock file with it (a dead one's is
    // left for `cuframes gc`).
    assert!(
        !dir.join(".cuframes.modes.lock").exists(),
        "lock file left behind"
    );
    assert!(!dir.join("cuframes.modes").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
