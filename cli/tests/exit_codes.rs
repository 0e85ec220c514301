//! Exit statuses of the command line: a command line that does not parse
//! is 64 (never 2, which is `NotFound`), `--help`/`--version` are 0, a
//! build without the benchmark harness or the bridge program says how to
//! get it (69), and
//! docs/errors.md lists every status the command can end with.

mod common;
use common::*;

fn run(args: &[&str]) -> std::process::Output {
    cuframes().args(args).output().unwrap()
}

#[test]
fn usage_errors_exit_64_with_the_message_on_stderr() {
    shm();
    for args in [
        &[][..],
        &["no-such-command"],
        &["ls", "--no-such-option"],
        &["stat"],
        &["stat", "a", "b"],
        &["subscribe", "--key", "k", "--mode", "sideways"],
        &["subscribe", "--key", "k", "--frames", "many"],
        &["publish", "--key", "k"],
        &["gc", "--force"],
    ] {
        let out = run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(
            stderr.contains("error:") || stderr.contains("Usage:"),
            "{args:?}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn help_and_version_exit_0_on_stdout() {
    for args in [
        &["--help"][..],
        &["-h"],
        &["help"],
        &["help", "gc"],
        &["--version"],
        &["-V"],
        &["gc", "--help"],
        &["ls", "--help"],
        &["stat", "--help"],
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(!out.stdout.is_empty(), "{args:?}");
    }
    let help = String::from_utf8(run(&["--help"]).stdout).unwrap();
    for command in ["gc", "ls", "stat", "bench", "exporter"] {
        assert!(help.contains(command), "{command} missing:\n{help}");
    }
    assert!(help.contains("[alias: clean]"), "{help}");
}

#[test]
fn errors_after_parsing_keep_their_codes() {
    shm();
    let out = run(&["stat", &key("absent")]);
    assert_eq!(out.status.code(), Some(2), "NotFound, not a usage error");
    let out = run(&["stat", "../x"]);
    assert_eq!(out.status.code(), Some(5), "InvalidArgument");
}

#[cfg(not(feature = "bench"))]
#[test]
fn bench_without_the_feature_says_how_to_get_it() {
    for args in [&["bench"][..], &["bench", "--quick"], &["bench", "--help"]] {
        let out = run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(69), "{args:?}: {stderr}");
        assert!(
            stderr.contains("cargo install --path cli --features bench")
                && stderr.contains("cargo run --release --features bench -- bench"),
            "{stderr}"
        );
    }
}

/// `cuframes bridge` runs the cuframes-bridge program beside it (the
/// usage errors are then its own, 64 too); a `cuframes` without it says
/// how to get it (69).
#[test]
fn bridge_runs_the_bridge_program_or_says_how_to_get_it() {
    let exe = std::path::PathBuf::from(env!("CARGO_BIN_EXE_cuframes"));
    if exe.with_file_name("cuframes-bridge").is_file() {
        let out = run(&["bridge", "export", "--help"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0));
        assert!(stdout.contains("Usage: cuframes bridge export"), "{stdout}");
        assert_eq!(
            run(&["bridge", "export", "--bogus"]).status.code(),
            Some(64)
        );
    } else {
        eprintln!("cuframes-bridge not built beside cuframes: its run is not checked");
    }
    let alone = std::env::temp_dir().join(format!("cuframes-alone-{}", std::process::id()));
    std::fs::create_dir_all(&alone).unwrap();
    let copy = alone.join("cuframes");
    std::fs::copy(&exe, &copy).unwrap();
    let out = std::process::Command::new(&copy)
        .args(["bridge", "export", "--key", "k"])
        .env("PATH", &alone)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&alone);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{stderr}");
    assert!(stderr.contains("cargo install --path bridge"), "{stderr}");
}

/// The statuses listed in docs/errors.md: the first cell of each table
/// row, as a number (`1-16` counts each).
fn documented_statuses() -> (String, Vec<String>) {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/errors.md")).unwrap();
    let section = doc
        .split("## Exit status of the `cuframes` command")
        .nth(1)
        .expect("docs/errors.md has an exit status section")
        .to_owned();
    let firsts = section
        .lines()
        .filter_map(|l| l.strip_prefix("| ")?.split(" |").next())
        .map(str::to_owned)
        .collect();
    (doc, firsts)
}

#[test]
fn docs_list_every_exit_status() {
    let (doc, statuses) = documented_statuses();
    // Every error code, with its name, in the code table...
    for code in cuframes::ErrorCode::ALL {
        let row = format!("| {} | {} |", code as i32, code.name());
        assert!(doc.contains(&row), "{row} missing from docs/errors.md");
    }
    // ...and the exit statuses beyond them.
    for want in ["0", "1-16", "11", "10", "14", "64", "69", "101", "128+n"] {
        assert!(
            statuses.iter().any(|s| s == want),
            "exit status {want} not listed: {statuses:?}"
        );
    }
}

#[test]
fn ls_of_a_missing_shm_directory_is_not_found() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cuframes"))
        .arg("ls")
        .env("CUFRAMES_SHM_DIR", "/nonexistent/cuframes-shm")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/cuframes-shm"));
}
