//! `cuframes-bridge` (also run as `cuframes bridge`): export a local
//! stream to Zenoh, import one into a local ring, or route between them.

use clap::{Args, Parser, Subcommand};
use cuframes_bridge::export::{export, ExportOptions};
use cuframes_bridge::import::{import, ImportOptions};
use cuframes_bridge::net::NetOptions;
use cuframes_bridge::wire::Compression;
use cuframes_bridge::Mode;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Carries cuframes streams between hosts over Zenoh.
#[derive(Parser)]
#[command(name = "cuframes-bridge", bin_name = "cuframes bridge", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Publish a local stream on Zenoh as `cuframes/<NAME>`
    Export(ExportArgs),
    /// Subscribe to `cuframes/<NAME>` and republish it into a local stream
    Import(ImportArgs),
    /// Run a Zenoh router that exporters and importers connect to
    Router(NetArgs),
}

#[derive(Args)]
struct NetArgs {
    /// Zenoh configuration file (JSON5): TLS, authentication, routers. The
    /// flags below override its fields
    #[arg(long, value_name = "FILE")]
    zenoh_config: Option<PathBuf>,
    /// Connect to this endpoint (repeatable), e.g. tcp/10.0.0.5:7447
    #[arg(long, value_name = "ENDPOINT")]
    connect: Vec<String>,
    /// Listen on this endpoint (repeatable), e.g. tcp/127.0.0.1:7447.
    /// Without it (and without a config file) nothing listens
    #[arg(long, value_name = "ENDPOINT")]
    listen: Vec<String>,
    /// Zenoh mode: peer (default), client or router
    #[arg(long, value_parser = ["peer", "client", "router"])]
    zenoh_mode: Option<String>,
}

impl NetArgs {
    fn options(&self) -> NetOptions {
        NetOptions {
            config: self.zenoh_config.clone(),
            connect: self.connect.clone(),
            listen: self.listen.clone(),
            mode: self.zenoh_mode.clone(),
        }
    }
}

#[derive(Args)]
struct ExportArgs {
    /// Local stream key
    #[arg(long)]
    key: String,
    /// Name to publish as (default: the key)
    #[arg(long = "as", value_name = "NAME")]
    name: Option<String>,
    /// newest (drop under congestion) or lossless (backpressure end to end)
    #[arg(long, default_value = "newest", value_parser = parse_mode)]
    mode: Mode,
    /// Compress raw frames: none or lz4 (packets are sent as they are)
    #[arg(long, default_value = "none", value_parser = parse_compression)]
    compress: Compression,
    #[command(flatten)]
    net: NetArgs,
}

#[derive(Args)]
struct ImportArgs {
    /// Name the exporter publishes as
    #[arg(long)]
    remote: String,
    /// Local stream key to create
    #[arg(long)]
    key: String,
    /// newest (keep the latest) or lossless (backpressure end to end)
    #[arg(long, default_value = "newest", value_parser = parse_mode)]
    mode: Mode,
    /// Slots of the local ring, 2-64 (default: as many as the exporter's)
    #[arg(long, value_parser = clap::value_parser!(u32).range(2..=64))]
    slots: Option<u32>,
    /// The largest local ring a remote stream may make this host reserve
    /// (slots times frame or packet size), MiB
    #[arg(long, default_value_t = 4096)]
    max_ring_mb: u64,
    #[command(flatten)]
    net: NetArgs,
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    Mode::from_name(s).ok_or_else(|| format!("unknown mode {s:?}: newest or lossless"))
}

fn parse_compression(s: &str) -> Result<Compression, String> {
    match s {
        "none" => Ok(Compression::None),
        "lz4" => Ok(Compression::Lz4),
        _ => Err(format!("unknown compression {s:?}: none or lz4")),
    }
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,zenoh=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // As the cuframes CLI: 64 (EX_USAGE) for a bad command line.
            return ExitCode::from(if e.use_stderr() { 64 } else { 0 });
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // The first signal stops cleanly; a second one (say, while a
        // client waits for its router) ends the process at once.
        let registered = signal_hook::flag::register_conditional_shutdown(sig, 1, stop.clone())
            .and_then(|_| signal_hook::flag::register(sig, stop.clone()));
        if let Err(e) = registered {
            eprintln!("error: cannot install a signal handler: {e}");
            return ExitCode::FAILURE;
        }
    }
    let result = match cli.command {
        Command::Export(a) => {
            let opts = ExportOptions {
                name: a.name.clone().unwrap_or_else(|| a.key.clone()),
                key: a.key,
                mode: a.mode,
                compression: a.compress,
                net: a.net.options(),
            };
            export(&opts, &stop).map(|s| {
                println!(
                    "exported {} frames/packets, {} bytes ({} on the wire), {} local streams",
                    s.sent, s.bytes, s.wire_bytes, s.streams
                )
            })
        }
        Command::Import(a) => {
            let opts = ImportOptions {
                remote: a.remote,
                key: a.key,
                mode: a.mode,
                slots: a.slots,
                max_ring_bytes: a.max_ring_mb.saturating_mul(1 << 20),
                net: a.net.options(),
            };
            import(&opts, &stop).map(|s| {
                let latency = s.latency_ns_sum.checked_div(s.latency_samples).unwrap_or(0);
                println!(
                    "imported {} frames/packets, {} skipped, {} gaps, {} local streams, {} refused, mean latency {} us",
                    s.published, s.skipped, s.gaps, s.streams, s.refused, latency / 1000
                )
            })
        }
        Command::Router(net) => {
            let mut options = net.options();
            options.mode.get_or_insert_with(|| "router".into());
            options.open().map(|session| {
                eprintln!("router {} running", session.zid());
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The exit status is the error code, as for the cuframes CLI;
            // a network or configuration failure is Io.
            let code = e
                .downcast_ref::<cuframes::Error>()
                .map_or(cuframes::ErrorCode::Io, |e| e.code());
            eprintln!("error[{}/{}]: {e}", code.name(), code as i32);
            ExitCode::from(code as u8)
        }
    }
}
