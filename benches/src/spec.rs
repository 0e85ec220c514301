//! Workloads, peers and the spec a child process is started with.

use crate::proto::parse_kv;
use cuframes::{FrameLayout, PixelFormat};
use std::fmt;

/// A payload shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workload {
    /// Short name (`4KiB`, `1080p`, `4K`).
    pub name: &'static str,
    /// Width in pixels (NV12) or bytes per row (GRAY8).
    pub width: u32,
    /// Rows.
    pub height: u32,
    /// NV12 (video frame) or GRAY8 (an opaque small payload).
    pub nv12: bool,
    /// An encoded packet stream instead of frames (width and height are
    /// then the coded picture size, for the record).
    pub packets: Option<PacketShape>,
}

/// An encoded packet stream: its bit rate, frame rate and GOP, the ring
/// that carries it, and whether the case measures join time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketShape {
    /// Bits per second.
    pub bitrate: u64,
    /// Packets (pictures) per second.
    pub fps: u32,
    /// Packets from one keyframe to the next.
    pub gop: u32,
    /// Size of a keyframe over the mean P-frame.
    pub key_factor: u32,
    /// Slots of the cuframes ring.
    pub slots: u32,
    /// A join-time case: subscribers connect at random moments and the
    /// time to their first (decodable) packet is measured.
    pub join: bool,
}

impl PacketShape {
    /// Microseconds from one packet to the next at the stream's rate.
    pub fn interval_us(&self) -> u64 {
        1_000_000 / self.fps as u64
    }
    /// Nanoseconds of one GOP at the stream's rate.
    pub fn gop_ns(&self) -> u64 {
        self.gop as u64 * 1_000_000_000 / self.fps as u64
    }
}

/// 20 Mbit/s 4K: 30 fps, GOP 30 (a keyframe a second).
const PKT_4K: PacketShape = PacketShape {
    bitrate: 20_000_000,
    fps: 30,
    gop: 30,
    key_factor: 8,
    slots: 64,
    join: false,
};

/// 1 Mbit/s 720p: 30 fps, GOP 60.
const PKT_1M: PacketShape = PacketShape {
    bitrate: 1_000_000,
    fps: 30,
    gop: 60,
    key_factor: 8,
    slots: 64,
    join: false,
};

/// A join-time case over the 1 Mbit/s stream with GOP `gop` and `slots`.
const fn join(gop: u32, slots: u32) -> Option<PacketShape> {
    Some(PacketShape {
        gop,
        slots,
        join: true,
        ..PKT_1M
    })
}

const fn join_workload(name: &'static str, gop: u32, slots: u32) -> Workload {
    Workload {
        name,
        width: 1280,
        height: 720,
        nv12: false,
        packets: join(gop, slots),
    }
}

impl Workload {
    /// A small message: 4096 bytes (64x64 GRAY8 in cuframes).
    pub const SMALL: Workload = Workload {
        name: "4KiB",
        width: 64,
        height: 64,
        nv12: false,
        packets: None,
    };
    /// 1080p NV12: 3,110,400 bytes.
    pub const HD: Workload = Workload {
        name: "1080p",
        width: 1920,
        height: 1080,
        nv12: true,
        packets: None,
    };
    /// 4K NV12: 12,441,600 bytes.
    pub const UHD: Workload = Workload {
        name: "4K",
        width: 3840,
        height: 2160,
        nv12: true,
        packets: None,
    };
    /// Encoded packets of a 4K stream at 20 Mbit/s, 30 fps, GOP 30.
    pub const PKT_4K: Workload = Workload {
        name: "pkt-4k-20mbit",
        width: 3840,
        height: 2160,
        nv12: false,
        packets: Some(PKT_4K),
    };
    /// Encoded packets of a 720p stream at 1 Mbit/s, 30 fps, GOP 60.
    pub const PKT_1M: Workload = Workload {
        name: "pkt-1mbit",
        width: 1280,
        height: 720,
        nv12: false,
        packets: Some(PKT_1M),
    };
    /// Join time, GOP 15 (the 1 Mbit/s stream, 64-slot ring).
    pub const JOIN_15: Workload = join_workload("join-gop15", 15, 64);
    /// Join time, GOP 30.
    pub const JOIN_30: Workload = join_workload("join-gop30", 30, 64);
    /// Join time, GOP 60.
    pub const JOIN_60: Workload = join_workload("join-gop60", 60, 64);
    /// Join time, GOP 120: longer than the 64-slot ring.
    pub const JOIN_120: Workload = join_workload("join-gop120", 120, 64);
    /// Join time, GOP 60 in a 16-slot ring: a late joiner may find the
    /// keyframe gone and wait for the next one.
    pub const JOIN_60_RING16: Workload = join_workload("join-gop60-ring16", 60, 16);

    /// Every workload.
    pub const ALL: [Workload; 10] = [
        Self::SMALL,
        Self::HD,
        Self::UHD,
        Self::PKT_4K,
        Self::PKT_1M,
        Self::JOIN_15,
        Self::JOIN_30,
        Self::JOIN_60,
        Self::JOIN_120,
        Self::JOIN_60_RING16,
    ];

    /// Looks a workload up by name.
    pub fn by_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|w| w.name == name)
    }

    /// Whether this is a join-time case.
    pub fn is_join(&self) -> bool {
        self.packets.is_some_and(|p| p.join)
    }

    /// Payload bytes: the packed frame, or the mean packet of a packet
    /// stream.
    pub fn bytes(&self) -> usize {
        if let Some(p) = self.packets {
            return (p.bitrate / 8 / p.fps as u64) as usize;
        }
        let px = self.width as usize * self.height as usize;
        if self.nv12 {
            px * 3 / 2
        } else {
            px
        }
    }

    /// The pixel format: NV12, or GRAY8 for the small payload.
    pub fn format(&self) -> PixelFormat {
        if self.nv12 {
            PixelFormat::Nv12
        } else {
            PixelFormat::Gray8
        }
    }

    /// The cuframes layout: rows are multiples of 64 bytes, so the slot is
    /// exactly [`bytes`](Self::bytes) long.
    pub fn layout(&self) -> cuframes::Result<FrameLayout> {
        Ok(FrameLayout::new(
            self.format(),
            self.width,
            self.height,
            64,
        )?)
    }
}

/// Who moves the frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Peer {
    /// cuframes, Rust subscribers, host memory, zero-copy loans.
    Cuframes,
    /// iceoryx2 publish-subscribe, zero-copy loans.
    Iceoryx2,
    /// A copy of the frame over a SOCK_STREAM unix socket to each subscriber.
    UnixSocket,
    /// Python `multiprocessing.shared_memory`, copied in and out.
    PythonShm,
    /// A cuframes publisher, Python `cuframes` subscribers.
    PythonCuframes,
    /// cuframes with frames in CUDA device memory.
    CuframesCuda,
    /// `torch.multiprocessing` sharing CUDA tensors.
    TorchMp,
}

impl Peer {
    /// Every peer, in table order.
    pub const ALL: [Peer; 7] = [
        Peer::Cuframes,
        Peer::Iceoryx2,
        Peer::UnixSocket,
        Peer::PythonShm,
        Peer::PythonCuframes,
        Peer::CuframesCuda,
        Peer::TorchMp,
    ];

    /// The name in the table and CSV.
    pub fn name(self) -> &'static str {
        match self {
            Peer::Cuframes => "cuframes",
            Peer::Iceoryx2 => "iceoryx2",
            Peer::UnixSocket => "unix-socket",
            Peer::PythonShm => "python-shm",
            Peer::PythonCuframes => "python-cuframes",
            Peer::CuframesCuda => "cuframes-cuda",
            Peer::TorchMp => "torch-mp",
        }
    }

    /// Looks a peer up by name.
    pub fn by_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == s)
    }

    /// The wake-up modes it has: busy-poll and/or blocking.
    pub fn wakes(self) -> &'static [Wake] {
        match self {
            Peer::Cuframes | Peer::Iceoryx2 => &[Wake::Spin, Wake::Block],
            _ => &[Wake::Block],
        }
    }

    /// The delivery modes it has.
    pub fn modes(self) -> &'static [Mode] {
        match self {
            Peer::Cuframes | Peer::Iceoryx2 | Peer::PythonCuframes | Peer::CuframesCuda => {
                &[Mode::Newest, Mode::Queue]
            }
            _ => &[Mode::Queue],
        }
    }

    /// Whether its frames live in GPU memory (it needs a CUDA device).
    pub fn gpu(self) -> bool {
        matches!(self, Peer::CuframesCuda | Peer::TorchMp)
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a subscriber waits for the next frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Spins on a non-blocking take (`try_next`, iceoryx2 `receive`).
    Spin,
    /// Sleeps in the kernel until woken (futex for cuframes, iceoryx2's
    /// event service, a blocking `read` for sockets and pipes).
    Block,
}

impl Wake {
    /// Name in the table.
    pub fn name(self) -> &'static str {
        match self {
            Wake::Spin => "busy-poll",
            Wake::Block => "blocking",
        }
    }
    fn by_name(s: &str) -> Option<Self> {
        [Wake::Spin, Wake::Block]
            .into_iter()
            .find(|w| w.name() == s)
    }
}

/// Which frames a subscriber gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Only the newest frame (NEWEST_ONLY; iceoryx2: buffer 1 with safe
    /// overflow).
    Newest,
    /// Every frame in order; the publisher waits for the slowest reader
    /// (QUEUE with policy Block; iceoryx2: RetryUntilDelivered).
    Queue,
}

impl Mode {
    /// Name in the table.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Newest => "newest",
            Mode::Queue => "queue",
        }
    }
    fn by_name(s: &str) -> Option<Self> {
        [Mode::Newest, Mode::Queue]
            .into_iter()
            .find(|m| m.name() == s)
    }
    /// The cuframes mode.
    pub fn cuframes(self) -> cuframes::Mode {
        match self {
            Mode::Newest => cuframes::Mode::NewestOnly,
            Mode::Queue => cuframes::Mode::Queue,
        }
    }
}

/// Phase lengths of one run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Phases {
    /// Paced frames whose latency is measured.
    pub latency_frames: u64,
    /// Interval between them, microseconds.
    pub latency_interval_us: u64,
    /// Length of the throughput phase, milliseconds.
    pub throughput_ms: u64,
    /// Interval between throughput frames, microseconds: 0 for flat out;
    /// a frame rate for the real-time rows (a camera: it never waits, a
    /// frame a subscriber misses is dropped).
    pub throughput_interval_us: u64,
}

/// What each subscriber does with a frame while it holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Reads the header only: the handoff alone.
    Handoff,
    /// Checksums every byte (and checks it: the publisher writes a known
    /// pattern over the whole frame).
    Checksum,
    /// Converts NV12 to packed RGB24 into its own buffer.
    Rgb,
}

impl Work {
    /// Name in the table and CSV.
    pub fn name(self) -> &'static str {
        match self {
            Work::Handoff => "-",
            Work::Checksum => "sum",
            Work::Rgb => "rgb",
        }
    }
    fn by_name(s: &str) -> Option<Self> {
        [Work::Handoff, Work::Checksum, Work::Rgb]
            .into_iter()
            .find(|w| w.name() == s)
    }
}

/// One measured configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Case {
    /// Who moves the frames.
    pub peer: Peer,
    /// How subscribers wait.
    pub wake: Wake,
    /// Which frames they get.
    pub mode: Mode,
    /// Payload.
    pub workload: Workload,
    /// What subscribers do with each frame.
    pub work: Work,
    /// Subscriber processes.
    pub subscribers: usize,
    /// Phase lengths.
    pub phases: Phases,
}

/// Slots in the cuframes ring (more with many subscribers: each may hold
/// one frame, and two more are the writer's and the newest); iceoryx2
/// subscribers buffer `RING_SLOTS - 2` samples in queue mode.
pub const RING_SLOTS: u32 = 8;

/// Slots of the cuframes ring for `subscribers` readers holding one frame
/// each.
pub fn ring_slots(subscribers: usize) -> u32 {
    RING_SLOTS.max(subscribers as u32 + 2)
}

/// What a child process is told: the case, the stream key, its role.
#[derive(Debug, Clone, PartialEq)]
pub struct ChildSpec {
    /// The case.
    pub case: Case,
    /// Stream key / service name / socket path stem.
    pub key: String,
    /// `pub` or `sub`.
    pub role: String,
    /// Subscriber index.
    pub idx: usize,
}

impl ChildSpec {
    /// The spec as one argument.
    pub fn encode(&self) -> String {
        let c = &self.case;
        format!(
            "peer={} wake={} mode={} workload={} work={} subs={} lat_frames={} lat_interval_us={} tput_ms={} tput_interval_us={} key={} role={} idx={}",
            c.peer.name(),
            c.wake.name(),
            c.mode.name(),
            c.workload.name,
            c.work.name(),
            c.subscribers,
            c.phases.latency_frames,
            c.phases.latency_interval_us,
            c.phases.throughput_ms,
            c.phases.throughput_interval_us,
            self.key,
            self.role,
            self.idx
        )
    }

    /// Parses [`encode`](Self::encode)'s output.
    pub fn decode(s: &str) -> Result<Self, String> {
        let kv = parse_kv(s);
        let get = |k: &str| kv.get(k).ok_or_else(|| format!("child spec lacks {k}"));
        let num = |k: &str| -> Result<u64, String> {
            get(k)?.parse().map_err(|e| format!("child spec {k}: {e}"))
        };
        let case = Case {
            peer: Peer::by_name(get("peer")?).ok_or("child spec: unknown peer")?,
            wake: Wake::by_name(get("wake")?).ok_or("child spec: unknown wake")?,
            mode: Mode::by_name(get("mode")?).ok_or("child spec: unknown mode")?,
            workload: Workload::by_name(get("workload")?).ok_or("child spec: unknown workload")?,
            work: Work::by_name(get("work")?).ok_or("child spec: unknown work")?,
            subscribers: num("subs")? as usize,
            phases: Phases {
                latency_frames: num("lat_frames")?,
                latency_interval_us: num("lat_interval_us")?,
                throughput_ms: num("tput_ms")?,
                throughput_interval_us: num("tput_interval_us")?,
            },
        };
        Ok(Self {
            case,
            key: get("key")?.clone(),
            role: get("role")?.clone(),
            idx: num("idx")? as usize,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_sizes() {
        assert_eq!(Workload::HD.bytes(), 3_110_400);
        assert_eq!(Workload::UHD.bytes(), 12_441_600);
        assert_eq!(Workload::SMALL.bytes(), 4096);
        for w in [Workload::SMALL, Workload::HD, Workload::UHD] {
            assert_eq!(w.layout().unwrap().slot_bytes as usize, w.bytes());
        }
    }

    #[test]
    fn workloads_are_found_by_name() {
        for w in Workload::ALL {
            assert_eq!(Workload::by_name(w.name), Some(w));
        }
        assert!(Workload::JOIN_60_RING16.is_join() && !Workload::PKT_4K.is_join());
        assert_eq!(Workload::PKT_4K.bytes(), 83_333);
        assert_eq!(Workload::JOIN_60.packets.unwrap().gop_ns(), 2_000_000_000);
    }

    #[test]
    fn spec_round_trip() {
        let spec = ChildSpec {
            case: Case {
                peer: Peer::Iceoryx2,
                wake: Wake::Spin,
                mode: Mode::Newest,
                workload: Workload::HD,
                work: Work::Rgb,
                subscribers: 4,
                phases: Phases {
                    latency_frames: 10,
                    latency_interval_us: 200,
                    throughput_ms: 300,
                    throughput_interval_us: 16_667,
                },
            },
            key: "bench-1-2".into(),
            role: "sub".into(),
            idx: 3,
        };
        assert_eq!(ChildSpec::decode(&spec.encode()).unwrap(), spec);
    }
}
