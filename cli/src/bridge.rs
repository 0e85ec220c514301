//! `cuframes bridge ...`: runs the `cuframes-bridge` program (the Zenoh
//! bridge, a crate of its own so that this CLI does not build Zenoh),
//! found beside this executable or on `PATH`.

use crate::Failure;
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

/// Arguments passed on as they are (`--help` too: the bridge's own).
#[derive(clap::Args)]
pub struct Args {
    /// export, import or router, and their flags (`cuframes bridge --help`)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<OsString>,
}

const PROGRAM: &str = "cuframes-bridge";

/// Replaces this process with `cuframes-bridge ARGS` (so signals and the
/// exit status are the bridge's own).
pub fn run(a: Args) -> Result<(), Failure> {
    let Some(program) = locate() else {
        return Err(Failure::Unavailable(format!(
            "`cuframes bridge` runs the {PROGRAM} program, which is neither beside this \
             executable nor on PATH: cargo install --path bridge"
        )));
    };
    let e = std::process::Command::new(&program).args(a.args).exec();
    Err(Failure::Error(cuframes::Error::new(
        cuframes::ErrorCode::Io,
        format!("cannot run {}: {e}", program.display()),
    )))
}

fn locate() -> Option<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join(PROGRAM)));
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(PROGRAM));
    beside.into_iter().chain(on_path).find(|p| executable(p))
}

fn executable(p: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
