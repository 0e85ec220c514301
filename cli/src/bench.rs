//! `cuframes bench`: handoff latency and throughput through real processes.

use crate::demo::Fleet;
use cuframes::Result;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Reduced set for CI and quick checks.
    #[arg(long)]
    pub quick: bool,
}

pub fn run(_args: Args) -> Result<()> {
    let _ = Fleet::spawn;
    Err(cuframes::Error::new(
        cuframes::ErrorCode::InvalidArgument,
        "bench: not built yet",
    ))
}
