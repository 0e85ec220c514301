//! `ls --json` and `stat KEY --json`: the output parses, carries
//! `"schema": 1`, has exactly the fields `docs/cli.md` documents (with
//! their types), and its values describe the stream: publisher and
//! subscriber liveness, a stale stream once its publisher is killed.

mod common;
use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::{Child, Stdio};
use std::time::Duration;

/// `path -> type` from the field table of docs/cli.md.
fn documented() -> BTreeMap<String, String> {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/cli.md")).unwrap();
    doc.lines()
        .filter_map(|l| {
            let mut cells = l.strip_prefix("| `")?.split(" | ");
            let path = cells.next()?.strip_suffix('`')?;
            Some((path.to_owned(), cells.next()?.to_owned()))
        })
        .collect()
}

/// Every field of `v` as `path -> type` (array elements as `path[]`).
fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
    let join = |k: &str| {
        if prefix.is_empty() {
            k.to_owned()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let path = join(k);
                out.insert(path.clone(), type_of(v).into());
                flatten(&path, v, out);
            }
        }
        Value::Array(a) => {
            for v in a {
                flatten(&format!("{prefix}[]"), v, out);
            }
        }
        _ => {}
    }
}

fn type_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_u64() || n.is_i64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Checks the fields seen against the documented ones: each one seen is
/// documented with a matching type; each documented one under `within`
/// was seen (those are all present when every array has an element).
fn check_against_docs(seen: &BTreeMap<String, String>, within: &[&str]) {
    let doc = documented();
    for (path, ty) in seen {
        let want = doc
            .get(path)
            .unwrap_or_else(|| panic!("{path} is not documented in docs/cli.md"));
        let nullable = want.strip_suffix(" or null");
        let fits = want == ty
            || (want == "number" && ty == "integer")
            || nullable.is_some_and(|w| w == ty || ty == "null");
        assert!(fits, "{path}: documented as {want}, printed as {ty}");
    }
    for path in doc.keys() {
        let under = |w: &&str| {
            path == w || path.starts_with(&format!("{w}.")) || path.starts_with(&format!("{w}[]"))
        };
        if within.iter().any(under) {
            assert!(seen.contains_key(path), "documented {path} is not printed");
        }
    }
}

fn json(args: &[&str]) -> Value {
    let out = cuframes().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: {e}\n{}", String::from_utf8_lossy(&out.stdout)))
}

fn subscriber(key: &str, name: &str, mode: &str) -> Child {
    cuframes()
        .args(["subscribe", "--key", key, "--name", name, "--mode", mode])
        .args(["--hold-ms", "20"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn stat_and_ls_json_follow_the_documented_schema() {
    let key = key("json");
    let mut publisher = publisher(
        &key,
        "320x240@200",
        &[
            "--seconds",
            "60",
            "--format",
            "rgb24",
            "--slots",
            "6",
            "--policy",
            "drop-oldest",
        ],
    );
    let mut queue = subscriber(&key, "recorder", "queue");
    let mut newest = subscriber(&key, "preview", "newest");
    wait_for(Duration::from_secs(10), || {
        cuframes::stream_status(&key)
            .is_ok_and(|s| s.stats.active().filter(|r| r.received > 3).count() == 2)
    });
    // An unreadable segment beside it.
    let junk = key.replace("json", "junk");
    std::fs::write(shm().join(format!("cuframes.{junk}")), vec![0u8; 4096]).unwrap();

    let stat = json(&["stat", &key, "--json"]);
    assert_eq!(stat["schema"], 1);
    assert_eq!(stat["key"], key.as_str());
    assert_eq!(stat["state"], "open");
    assert_eq!(stat["stale"], false);
    assert_eq!(stat["format"], "rgb24");
    assert_eq!(
        (stat["width"].as_u64(), stat["height"].as_u64()),
        (Some(320), Some(240))
    );
    assert_eq!(stat["memory"], "host");
    assert_eq!(stat["policy"], "drop-oldest");
    assert_eq!(stat["slot_count"], 6);
    assert!(stat["published"].as_u64().unwrap() > 3);
    assert!(stat["fps"].as_f64().unwrap() >= 0.0, "a number");
    assert!(stat["occupancy"].as_u64().unwrap() <= 6);
    assert_eq!(stat["publisher"]["pid"], publisher.id());
    assert_eq!(stat["publisher"]["alive"], true);
    let subs = stat["subscribers"].as_array().unwrap();
    assert_eq!(subs.len(), 2, "{stat:#}");
    for (name, mode, child) in [
        ("recorder", "queue", &queue),
        ("preview", "newest", &newest),
    ] {
        let s = subs
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing: {stat:#}"));
        assert_eq!(s["mode"], mode);
        assert_eq!(s["pid"], child.id());
        assert_eq!(s["alive"], true);
        assert!(s["received"].as_u64().unwrap() > 3);
        assert!(s["heartbeat_age_ms"].as_u64().unwrap() < 5_000);
    }
    let mut seen = BTreeMap::new();
    flatten("", &stat, &mut seen);
    // `stat` prints a stream object plus `schema`: check it as one.
    let seen: BTreeMap<_, _> = seen
        .into_iter()
        .map(|(k, v)| {
            if k == "schema" {
                (k, v)
            } else {
                (format!("streams[].{k}"), v)
            }
        })
        .collect();
    check_against_docs(&seen, &["schema", "streams[]"]);

    let ls = json(&["ls", "--json"]);
    assert_eq!(ls["schema"], 1);
    assert_eq!(ls["shm_dir"], shm().to_str().unwrap());
    let listed = ls["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["key"] == key.as_str())
        .unwrap_or_else(|| panic!("{key} not listed: {ls:#}"));
    assert_eq!(listed["publisher"]["pid"], publisher.id());
    let bad = ls["unreadable"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["key"] == junk.as_str())
        .unwrap_or_else(|| panic!("{junk} not listed as unreadable: {ls:#}"));
    assert_eq!(bad["error"]["code"], 11);
    assert_eq!(bad["error"]["name"], "Corrupt");
    let mut seen = BTreeMap::new();
    flatten("", &ls, &mut seen);
    check_against_docs(&seen, &["schema", "shm_dir", "streams", "unreadable"]);

    // Killed publisher (its subscribers stopped first, then killed too, so
    // that none of them deregisters): stale, and nobody alive.
    signal(&queue, libc::SIGSTOP);
    signal(&newest, libc::SIGSTOP);
    publisher.kill().unwrap();
    publisher.wait().unwrap();
    for sub in [&mut queue, &mut newest] {
        sub.kill().unwrap();
        sub.wait().unwrap();
    }
    let stat = json(&["stat", &key, "--json"]);
    assert_eq!(stat["stale"], true, "{stat:#}");
    assert_eq!(stat["state"], "stale");
    assert_eq!(stat["publisher"]["alive"], false);
    let subs = stat["subscribers"].as_array().unwrap();
    assert_eq!(subs.len(), 2, "{stat:#}");
    assert!(subs.iter().all(|s| s["alive"] == false), "{stat:#}");
    let ls = json(&["ls", "--json"]);
    let listed = ls["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["key"] == key.as_str())
        .unwrap();
    assert_eq!(listed["stale"], true);
    let text = cuframes().args(["stat", &key]).output().unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("stale"));
}

#[test]
fn stat_json_of_a_missing_stream_prints_nothing_and_exits_not_found() {
    shm();
    let out = cuframes()
        .args(["stat", &key("absent"), "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NotFound"));
}
