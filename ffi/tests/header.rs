//! The checked-in `include/cuframes.h` must be what cbindgen makes of the
//! sources now. `CUFRAMES_BLESS=1 cargo test -p cuframes-ffi --test header`
//! rewrites it.

use std::path::Path;

#[test]
fn header_matches_the_sources() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_crate(dir)
        .with_config(config)
        .generate()
        .expect("cbindgen could not generate the header");
    let mut fresh = Vec::new();
    bindings.write(&mut fresh);
    let path = dir.join("include/cuframes.h");
    if std::env::var_os("CUFRAMES_BLESS").is_some_and(|v| v != "0") {
        std::fs::write(&path, &fresh).expect("write include/cuframes.h");
        return;
    }
    let current = std::fs::read(&path).unwrap_or_default();
    if current != fresh {
        let (current, fresh) = (
            String::from_utf8_lossy(&current),
            String::from_utf8_lossy(&fresh),
        );
        let first = current
            .lines()
            .zip(fresh.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(current.lines().count().min(fresh.lines().count()));
        panic!(
            "ffi/include/cuframes.h is out of date with ffi/src (first difference at line {}:\n  \
             checked in: {:?}\n  generated:  {:?}).\n\
             Regenerate it with:\n  CUFRAMES_BLESS=1 cargo test -p cuframes-ffi --test header\n\
             and commit the result.",
            first + 1,
            current.lines().nth(first).unwrap_or("<end of file>"),
            fresh.lines().nth(first).unwrap_or("<end of file>"),
        );
    }
}
