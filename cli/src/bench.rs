//! `cuframes bench`: handoff latency, frames/s, CPU and memory through real
//! processes, against iceoryx2, a unix socket and Python shared memory; and,
//! on a machine with a CUDA device, GPU frames through cuframes-cuda against
//! `torch.multiprocessing` (rows measured on the driver simulator are
//! labelled `sim`, never passed off as GPU figures); and encoded packet
//! streams (packets/s, handoff latency and join time against the GOP)
//! through cuframes and unix sockets.
//! The harness itself is the `cuframes-bench` crate, built only with the
//! `bench` feature of this crate, so that a plain install of the command
//! builds neither it nor iceoryx2. Without the feature the subcommand is
//! still there and says how to get it.

#[cfg(feature = "bench")]
pub use with_harness::{run, Args};

#[cfg(not(feature = "bench"))]
pub use without_harness::{run, Args};

#[cfg(feature = "bench")]
mod with_harness {
    use crate::Failure;
    use cuframes::{Error, ErrorCode};
    use cuframes_bench::{Options, Peer, Rows, Size};
    use std::path::PathBuf;

    /// Arguments of `cuframes bench`.
    #[derive(clap::Args, Debug, Clone)]
    pub struct Args {
        /// Reduced set: 1 subscriber, 1080p and 4 KiB, every available peer
        /// (about 30 s on 2 cores). Frames only, unless with --packets.
        #[arg(long)]
        pub quick: bool,
        /// Only the encoded-packet rows: a 20 Mbit/s 4K and a 1 Mbit/s
        /// stream to 1 and 4 subscribers (packets/s, handoff latency), and
        /// join time against the GOP length; cuframes and unix-socket. A
        /// full run has them after the frame rows.
        #[arg(long)]
        pub packets: bool,
        /// Smallest set (4 KiB, short phases), for tests.
        #[arg(long, hide = true, conflicts_with = "quick")]
        pub smoke: bool,
        /// Where to write bench.csv and bench.svg.
        #[arg(long, default_value = "target/bench")]
        pub out: PathBuf,
        /// Only these peers, comma-separated (cuframes, iceoryx2, unix-socket,
        /// python-shm, python-cuframes, cuframes-cuda, torch-mp). The GPU
        /// rows alone: `--quick --peers cuframes-cuda,torch-mp` (seconds).
        /// Packet rows have cuframes and unix-socket.
        #[arg(long, value_delimiter = ',', value_parser = parse_peer)]
        pub peers: Vec<Peer>,
        /// A directory on a tmpfs mounted with transparent huge pages
        /// (`mount -t tmpfs -o huge=always,size=1g none DIR`): the memory
        /// reference rows then measure a 4K ring there as well as in
        /// /dev/shm (first touch, page faults, write and read time).
        #[arg(long, value_name = "DIR")]
        pub huge_dir: Option<PathBuf>,
        /// Runs one publisher or subscriber process of the harness.
        #[arg(long, hide = true)]
        pub child: Option<String>,
    }

    /// Runs the harness (or, with `--child`, one of its processes). A
    /// failed case or a harness failure is an `Internal` error (14).
    pub fn run(args: Args) -> Result<(), Failure> {
        let failed = |e: String| Error::new(ErrorCode::Internal, e);
        if let Some(spec) = args.child {
            return Ok(cuframes_bench::child_main(&spec).map_err(failed)?);
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
            rows: if args.packets {
                Rows::Packets
            } else {
                Rows::default_for(size)
            },
            huge_dir: args.huge_dir,
        };
        eprintln!(
            "cuframes bench ({size:?}, {:?}) on {}",
            opts.rows,
            cuframes_bench::machine()
        );
        let outcome = cuframes_bench::run(&opts, |line| eprintln!("  {line}")).map_err(failed)?;
        println!("{}", outcome.table);
        println!(
            "wrote {} and {}",
            outcome.csv.display(),
            outcome.svg.display()
        );
        let failures = outcome.rows.iter().filter(|r| r.status == "failed").count();
        if failures > 0 {
            return Err(Error::new(
                ErrorCode::Internal,
                format!("{failures} cases failed (see the table)"),
            )
            .into());
        }
        Ok(())
    }

    fn parse_peer(s: &str) -> Result<Peer, String> {
        Peer::by_name(s).ok_or_else(|| {
            let names: Vec<_> = Peer::ALL.iter().map(|p| p.name()).collect();
            format!("unknown peer {s:?}; one of {}", names.join(", "))
        })
    }
}

#[cfg(not(feature = "bench"))]
mod without_harness {
    use crate::Failure;

    /// How to get a build with `cuframes bench` (also in `docs/cli.md`).
    pub const HOW_TO_GET: &str = "`cuframes bench` is not in this build: the benchmark \
harness (with iceoryx2) is behind the `bench` feature of cuframes-cli. From a checkout of \
cuframes, either install it with\n    cargo install --path cli --features bench\nor run it \
without installing:\n    cargo run --release --features bench -- bench --quick";

    /// Arguments of `cuframes bench` in a build without the harness: any,
    /// so that every invocation gets the same explanation.
    #[derive(clap::Args, Debug, Clone)]
    #[command(disable_help_flag = true)]
    pub struct Args {
        /// Whatever was passed (ignored).
        #[arg(
            num_args = 0..,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            hide = true
        )]
        pub ignored: Vec<String>,
    }

    /// Says how to get a build with the harness; exits with
    /// [`crate::EXIT_UNAVAILABLE`].
    pub fn run(_args: Args) -> Result<(), Failure> {
        Err(Failure::Unavailable(HOW_TO_GET.into()))
    }
}
