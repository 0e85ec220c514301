//! `cuframes`: run a demo, publish and subscribe from the shell, inspect
//! live streams, clean up after dead ones, check the machine, benchmark.
//!
//! Exit status: 0 on success; the [`ErrorCode`] (1..=16) of a failure;
//! [`EXIT_USAGE`] for a command line that does not parse;
//! [`EXIT_UNAVAILABLE`] for a subcommand left out of this build. The full
//! table is in `docs/errors.md`.

mod bench;
mod bridge;
mod demo;
mod encoded;
mod exporter;
mod gc;
mod inspect;
mod latency;
mod live;
mod mpegts;
mod publish;
mod subscribe;

use clap::{Parser, Subcommand};
use cuframes::{Error, ErrorCode};
use std::process::ExitCode;

/// Exit status of a command line that does not parse (an unknown
/// subcommand or flag, a missing or malformed argument): `EX_USAGE` of
/// `sysexits.h`, apart from every [`ErrorCode`] (`NotFound` is 2, which is
/// also what clap would use by default).
pub const EXIT_USAGE: u8 = 64;

/// Exit status of a subcommand this build does not contain (`bench`
/// without the `bench` feature): `EX_UNAVAILABLE` of `sysexits.h`.
pub const EXIT_UNAVAILABLE: u8 = 69;

#[derive(Parser)]
#[command(
    name = "cuframes",
    version,
    about = "Zero-copy video frame sharing between processes",
    after_help = "Exit status: 0 success, 1-16 the error code (docs/errors.md), \
                  64 bad command line, 69 subcommand not in this build."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Publisher with a moving test pattern plus N subscriber processes;
    /// live fps, handoff latency and drops.
    Demo(demo::Args),
    /// Publish a test pattern or a decoded video file.
    Publish(publish::Args),
    /// Subscribe to a stream and print per-second statistics.
    Subscribe(subscribe::Args),
    /// List streams (stale ones, whose publisher died, are marked stale).
    Ls(inspect::LsArgs),
    /// Show one stream in detail.
    Stat(inspect::StatArgs),
    /// Remove what dead publishers left in the shm directory: stale
    /// segments, lock files, temporary files. Never touches a live stream.
    #[command(visible_alias = "clean")]
    Gc(gc::Args),
    /// Check this machine: shared memory, a publish-subscribe round trip, liveness locks, CUDA, ffmpeg.
    Doctor,
    /// Serve every stream's counters as Prometheus / OpenMetrics text on
    /// `GET /metrics`.
    Exporter(exporter::Args),
    /// Benchmark handoff latency and throughput against baselines (needs
    /// the `bench` feature: cargo install --path cli --features bench).
    Bench(bench::Args),
    /// Carry streams between hosts over Zenoh: export, import, router
    /// (runs the cuframes-bridge program: cargo install --path bridge).
    #[command(disable_help_flag = true)]
    Bridge(bridge::Args),
}

/// Why a command failed: a library error (its code is the exit status) or
/// a subcommand missing from this build.
pub(crate) enum Failure {
    /// A cuframes error; the exit status is its code.
    Error(Error),
    /// The subcommand is not in this build; the message says how to get it.
    Unavailable(String),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Self::Error(e)
    }
}

fn main() -> ExitCode {
    exporter::init_logging();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    if matches!(
        cli.command,
        Command::Ls(_) | Command::Stat(_) | Command::Gc(_) | Command::Doctor
    ) {
        die_quietly_on_sigpipe();
    }
    let result: Result<(), Failure> = match cli.command {
        Command::Demo(a) => demo::run(a).map_err(Failure::from),
        Command::Publish(a) => publish::run(a).map_err(Failure::from),
        Command::Subscribe(a) => subscribe::run(a).map_err(Failure::from),
        Command::Ls(a) => inspect::ls(&a).map_err(Failure::from),
        Command::Stat(a) => inspect::stat(&a).map_err(Failure::from),
        Command::Gc(a) => gc::run(&a).map_err(Failure::from),
        Command::Doctor => inspect::doctor().map_err(Failure::from),
        Command::Exporter(a) => exporter::run(a).map_err(Failure::from),
        Command::Bench(a) => bench::run(a),
        Command::Bridge(a) => bridge::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Error(e)) => {
            eprintln!("error[{}/{}]: {}", e.code().name(), e.code() as i32, e);
            // The exit status is the error code, so scripts can branch on it.
            ExitCode::from(e.code() as u8)
        }
        Err(Failure::Unavailable(msg)) => {
            eprintln!("error[Unavailable/{EXIT_UNAVAILABLE}]: {msg}");
            ExitCode::from(EXIT_UNAVAILABLE)
        }
    }
}

/// Prints clap's message: `--help` and `--version` to stdout with status 0,
/// anything else (a usage error) to stderr with [`EXIT_USAGE`].
fn usage_error(e: &clap::Error) -> ExitCode {
    // Printing fails only if stdout/stderr is gone; the status still tells.
    let _ = e.print();
    if e.use_stderr() {
        ExitCode::from(EXIT_USAGE)
    } else {
        ExitCode::SUCCESS
    }
}

/// Restores the default action of `SIGPIPE` (Rust ignores it, so a write
/// to a closed pipe panics): `cuframes ls | head -1` then ends quietly, by
/// the signal, like other Unix tools. Only for the commands that just
/// print; the long-running ones keep the default and clean up on exit.
fn die_quietly_on_sigpipe() {
    // SAFETY: signal(2) with SIG_DFL installs no handler; nothing else in
    // this process has changed SIGPIPE's disposition.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

/// Parses `WxH`.
pub(crate) fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s
        .split_once('x')
        .ok_or_else(|| format!("{s:?}: expected WxH, e.g. 1920x1080"))?;
    Ok((
        w.parse().map_err(|e| format!("width: {e}"))?,
        h.parse().map_err(|e| format!("height: {e}"))?,
    ))
}

/// Parses a pixel format name.
pub(crate) fn parse_format(s: &str) -> Result<cuframes::PixelFormat, String> {
    cuframes::PixelFormat::from_name(s).ok_or_else(|| {
        let names: Vec<_> = cuframes::PixelFormat::ALL
            .iter()
            .map(|f| f.name())
            .collect();
        format!("unknown format {s:?}; one of {}", names.join(", "))
    })
}

/// Installs SIGINT/SIGTERM handlers that set the returned flag.
pub(crate) fn stop_flag() -> Result<std::sync::Arc<std::sync::atomic::AtomicBool>, Error> {
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, flag.clone())
            .map_err(|e| Error::io("install signal handler", e))?;
    }
    Ok(flag)
}

/// Whether stdout is a terminal (live `\r` lines) or not (plain lines).
pub(crate) fn stdout_is_tty() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal()
}

/// An `InvalidArgument` error with `msg`.
pub(crate) fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorCode::InvalidArgument, msg)
}
