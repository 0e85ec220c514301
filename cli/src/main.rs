//! `cuframes`: run a demo, publish and subscribe from the shell, inspect
//! live streams, check the machine, benchmark.

mod bench;
mod demo;
mod inspect;
mod latency;
mod live;
mod publish;
mod subscribe;

use clap::{Parser, Subcommand};
use cuframes::{Error, ErrorCode};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "cuframes",
    version,
    about = "Zero-copy video frame sharing between processes"
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
    /// List live streams.
    Ls,
    /// Show one stream in detail.
    Stat {
        /// Stream key.
        key: String,
    },
    /// Check this machine: shared memory, permissions, futex, CUDA, ffmpeg.
    Doctor,
    /// Benchmark handoff latency and throughput against baselines.
    Bench(bench::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(a) => demo::run(a),
        Command::Publish(a) => publish::run(a),
        Command::Subscribe(a) => subscribe::run(a),
        Command::Ls => inspect::ls(),
        Command::Stat { key } => inspect::stat(&key),
        Command::Doctor => inspect::doctor(),
        Command::Bench(a) => bench::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error[{}/{}]: {}", e.code().name(), e.code() as i32, e);
            // The exit status is the error code, so scripts can branch on it.
            ExitCode::from(e.code() as u8)
        }
    }
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

pub(crate) fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorCode::InvalidArgument, msg)
}
