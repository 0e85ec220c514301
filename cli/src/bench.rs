//! `cuframes bench`: handoff latency, frames/s, CPU and memory through real
//! processes, against iceoryx2, a unix socket and Python shared memory.
//! The harness itself is the `cuframes-bench` crate.

use cuframes::{Error, ErrorCode, Result};
use cuframes_bench::{Options, Peer, Size};
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Reduced set: 1 subscriber, 1080p and 4 KiB, every available peer
    /// (about a minute).
    #[arg(long)]
    pub quick: bool,
    /// Smallest set (4 KiB, short phases), for tests.
    #[arg(long, hide = true, conflicts_with = "quick")]
    pub smoke: bool,
    /// Where to write bench.csv and bench.svg.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
    /// Only these peers, comma-separated (cuframes, iceoryx2, unix-socket,
    /// python-shm, python-cuframes, cuframes-cuda, torch-mp).
    #[arg(long, value_delimiter = ',', value_parser = parse_peer)]
    pub peers: Vec<Peer>,
    /// Runs one publisher or subscriber process of the harness.
    #[arg(long, hide = true)]
    pub child: Option<String>,
}

pub fn run(args: Args) -> Result<()> {
    let failed = |e: String| Error::new(ErrorCode::Internal, e);
    if let Some(spec) = args.child {
        return cuframes_bench::child_main(&spec).map_err(failed);
    }
    let exe = std::env::current_exe().map_err(|e| Error::io("find own executable", e))?;
    let size = match (args.smoke, args.quick) {
        (true, _) => Size::Smoke,
        (_, true) => Size::Quick,
        _ => Size::Full,
    };
    let opts = Options {
        size,
        out: args.out,
        exe,
        child_prefix: vec!["bench".into(), "--child".into()],
        peers: args.peers,
    };
    eprintln!("cuframes bench ({size:?}) on {}", cuframes_bench::machine());
    let outcome = cuframes_bench::run(&opts, |line| eprintln!("  {line}")).map_err(failed)?;
    println!("{}", outcome.table);
    println!(
        "wrote {} and {}",
        outcome.csv.display(),
        outcome.svg.display()
    );
    let failures: Vec<_> = outcome
        .rows
        .iter()
        .filter(|r| r.status == "failed")
        .collect();
    if !failures.is_empty() {
        return Err(Error::new(
            ErrorCode::Internal,
            format!("{} cases failed (see the table)", failures.len()),
        ));
    }
    Ok(())
}

fn parse_peer(s: &str) -> std::result::Result<Peer, String> {
    Peer::by_name(s).ok_or_else(|| {
        let names: Vec<_> = Peer::ALL.iter().map(|p| p.name()).collect();
        format!("unknown peer {s:?}; one of {}", names.join(", "))
    })
}
