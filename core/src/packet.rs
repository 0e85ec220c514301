//! Encoded packets: one packet per slot, with the metadata a decoder or a
//! muxer needs, and the keyframe rules that keep every reader decodable.
//!
//! A packet ring is a frame ring whose slots hold variable-size packets (up
//! to `layout.slot_bytes`) and whose slot headers carry [`PacketMeta`]. The
//! leases, the reclaim of dead holders and the lossless policies are the
//! frame ring's; what differs is which packet a reader may take next (and a
//! pin/loan handshake for lossless readers that start behind the head, see
//! `docs/protocol.md`). A decoder can start only at a keyframe and cannot skip a packet
//! after it, so a packet is handed out only if it is a keyframe or directly
//! follows the reader's last one:
//!
//! - NEWEST_ONLY readers join at the newest keyframe and then read in order;
//!   when a newer keyframe is published while they are still behind it (or
//!   their next packet was overwritten), they jump to that keyframe. They
//!   never see a gap inside a group of pictures.
//! - QUEUE readers are lossless from the newest keyframe at registration on
//!   when the ring still holds it and every packet after it (else from the
//!   next keyframe); after an eviction they rejoin at the head.
//!   Under drop-oldest, a reader whose next packet was overwritten skips to
//!   the next keyframe still in the ring (or waits for one).
//!
//! ```
//! use cuframes_core::*;
//! let ctl = ControlBlock::new();
//! let slots: Vec<SlotHeader> = (0..8).map(|_| SlotHeader::new()).collect();
//! let index: Vec<IndexEntry> = (0..16).map(|_| IndexEntry::new(0)).collect();
//! let subs: Vec<SubscriberRecord> = (0..2).map(|_| SubscriberRecord::new()).collect();
//! let ring = Ring::new(&ctl, &slots, &index, &subs, LosslessPolicy::Block)
//!     .unwrap()
//!     .for_packets(1 << 20);
//! let mut writer = Writer::new(&ring);
//! let meta = |key: bool| PacketMeta { len: 100, flags: if key { packet::KEY } else { 0 }, ..PacketMeta::default() };
//! for key in [true, false, false, true, false] {
//!     writer.begin().unwrap();
//!     writer.commit_packet(&meta(key), 0).unwrap();
//! }
//! // A late joiner starts at the newest keyframe (seq 4), not at the head.
//! let req = Register { mode: Mode::NewestOnly, max_held: 1, pid: 1, start_time: 0, pid_ns: 0, heartbeat_ns: 0, name: b"recorder" };
//! let sub = Subscription::register(&ring, &req).unwrap();
//! let first = sub.try_read().unwrap();
//! assert_eq!((first.seq(), first.is_key(), first.len()), (4, true, 100));
//! first.release();
//! assert_eq!(sub.try_read().unwrap().seq(), 5);
//! ```

use crate::layout::*;
use crate::reader::ReadError;
use crate::ring::Ring;
use crate::sync::Ordering::*;

/// The packet is a keyframe (a random access point: IDR, IRAP, intra).
pub const KEY: u64 = 1 << 0;
/// Something was lost before this packet at the source (a decoder should
/// resynchronise).
pub const DISCONTINUITY: u64 = 1 << 1;
/// Every flag this protocol version defines. Other bits are carried as
/// the publisher set them (a later minor version may define them); readers
/// must ignore the ones they do not know.
pub const KNOWN_FLAGS: u64 = KEY | DISCONTINUITY;

/// Largest packet a stream may be configured for (256 MiB).
pub const MAX_PACKET_BYTES: u64 = 256 << 20;
/// Largest codec configuration (extradata) a stream may carry.
pub const MAX_EXTRADATA: u32 = 1 << 20;

/// Video codecs of a packet stream. The numbers are part of the protocol.
///
/// ```
/// use cuframes_core::Codec;
/// assert_eq!(Codec::from_name("h265"), Some(Codec::Hevc));
/// assert_eq!(Codec::from_u32(Codec::H264 as u32).map(Codec::name), Some("h264"));
/// ```
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// H.264 / AVC.
    H264 = 1,
    /// H.265 / HEVC.
    Hevc = 2,
    /// AV1.
    Av1 = 3,
    /// VP9.
    Vp9 = 4,
    /// VP8.
    Vp8 = 5,
    /// Motion JPEG (every packet a keyframe).
    Mjpeg = 6,
}

impl Codec {
    /// Every codec.
    pub const ALL: [Codec; 6] = [
        Self::H264,
        Self::Hevc,
        Self::Av1,
        Self::Vp9,
        Self::Vp8,
        Self::Mjpeg,
    ];

    /// The codec for a protocol number.
    pub fn from_u32(v: u32) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| *c as u32 == v)
    }

    /// Lower-case name, as ffmpeg spells it (`h264`, `hevc`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::H264 => "h264",
            Self::Hevc => "hevc",
            Self::Av1 => "av1",
            Self::Vp9 => "vp9",
            Self::Vp8 => "vp8",
            Self::Mjpeg => "mjpeg",
        }
    }

    /// Parses a name (`h265` is accepted for HEVC).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "h265" => Some(Self::Hevc),
            _ => Self::ALL.iter().copied().find(|c| c.name() == name),
        }
    }
}

/// What the publisher says about one packet. Times are nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PacketMeta {
    /// Payload bytes written into the slot.
    pub len: u64,
    /// Presentation timestamp.
    pub pts_ns: i64,
    /// Decode timestamp (equal to `pts_ns` without reordering).
    pub dts_ns: i64,
    /// Duration (0: unknown).
    pub duration_ns: u64,
    /// [`KEY`], [`DISCONTINUITY`].
    pub flags: u64,
}

impl PacketMeta {
    /// Whether the packet is a keyframe.
    pub fn is_key(&self) -> bool {
        self.flags & KEY != 0
    }
}

/// Why a packet could not be committed. The loan stays pending: fix the
/// packet and commit again, or abort.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitError {
    /// No slot is loaned.
    NoLoan,
    /// The ring carries frames, not packets.
    NotPackets,
    /// The packet is larger than the stream's maximum.
    TooLarge {
        /// Bytes of the packet.
        len: u64,
        /// The stream's maximum.
        max: u64,
    },
}

impl Ring<'_> {
    /// Whether this ring carries packets.
    pub fn is_packets(&self) -> bool {
        self.packet_max.is_some()
    }

    /// The newest keyframe `(seq, slot)`; seq 0 if none yet.
    pub fn last_key(&self) -> (u64, u32) {
        unpack(self.ctl.last_key.load(Acquire))
    }

    /// Whether a reader whose last packet was `last` may take `seq` next:
    /// a keyframe always, anything else only right after its predecessor.
    /// `flags` must be read while the packet is held.
    pub(crate) fn continues(last: u64, seq: u64, flags: u64) -> bool {
        flags & KEY != 0 || (last != 0 && last.checked_add(1) == Some(seq))
    }

    /// The oldest keyframe in the ring after `after`, up to `head`. Flags
    /// are read without holding, so the caller re-checks after its hold.
    pub(crate) fn next_key_after(&self, after: u64, head: u64) -> Option<u64> {
        self.slots
            .iter()
            .filter(|s| s.flags.load(Relaxed) & KEY != 0)
            .map(|s| s.seq.load(Acquire))
            .filter(|&s| s > after && s <= head)
            .min()
    }

    /// Where a lossless packet reader starts: the newest keyframe, if it is
    /// newer than what the reader has and it and every packet after it up
    /// to `head` are still in the ring (lossless from a keyframe means the
    /// whole run); else the head (and the read path then waits for the next
    /// keyframe).
    pub(crate) fn packet_start(&self, rec: &SubscriberRecord, head: u64) -> u64 {
        let (key, _) = self.last_key();
        if key != 0 && key > rec.last_seq.load(Relaxed) && self.run_present(key, head) {
            key
        } else {
            head.max(1)
        }
    }

    /// Whether packets `from..=to` are all in the ring and none is being
    /// rewritten (a run longer than the ring cannot be).
    pub(crate) fn run_present(&self, from: u64, to: u64) -> bool {
        if from == 0 || from > to || to - from >= self.slots.len() as u64 {
            return false;
        }
        (from..=to).all(|seq| {
            let (s, slot) = self.indexed(seq);
            s == seq
                && self.slots.get(slot as usize).is_some_and(|h| {
                    h.lease.load(Acquire) & WRITER == 0 && h.seq.load(Acquire) == seq
                })
        })
    }

    /// NEWEST_ONLY for packets: the newest keyframe when a newer group of
    /// pictures began (or on joining), else the packet after the last one;
    /// if that one is gone, wait for the next keyframe.
    pub(crate) fn acquire_packet_newest(
        &self,
        rec: &SubscriberRecord,
        bit: u64,
        withdrew: &mut bool,
    ) -> Result<(u32, u64), ReadError> {
        // Hostile memory may hold anything here: no overflow on it.
        let last = rec.last_seq.load(Relaxed);
        let next = last.saturating_add(1);
        let mut seen_head = None;
        for _ in 0..crate::reader::MAX_RETRIES {
            let closed = self.is_closed();
            let (head, _) = self.head();
            if seen_head == Some(head) {
                break;
            }
            seen_head = Some(head);
            let (key, key_slot) = self.last_key();
            if key != 0 && key <= head && (key > next || last == 0) {
                if let Some(got) = self.hold_if(key_slot, key, bit, withdrew, |f| f & KEY != 0)? {
                    if last != 0 {
                        rec.dropped.fetch_add(key - next, Relaxed);
                    }
                    return Ok(got);
                }
            }
            if last != 0 && next <= head {
                let (seq, slot) = self.indexed(next);
                if seq == next {
                    if let Some(got) = self.hold_if(slot, next, bit, withdrew, |_| true)? {
                        return Ok(got);
                    }
                }
            }
            if closed {
                return Err(ReadError::Closed);
            }
            crate::sync::spin_hint();
        }
        Err(ReadError::WouldBlock)
    }

    /// Holds `slot` if it still has `seq` and its flags pass `ok` (read
    /// under the hold); otherwise leaves it as it was.
    pub(crate) fn hold_if(
        &self,
        slot: u32,
        seq: u64,
        bit: u64,
        withdrew: &mut bool,
        ok: impl Fn(u64) -> bool,
    ) -> Result<Option<(u32, u64)>, ReadError> {
        if !self.try_hold(slot, seq, bit, withdrew)? {
            return Ok(None);
        }
        if ok(self.slots[slot as usize].flags.load(Relaxed)) {
            return Ok(Some((slot, seq)));
        }
        self.withdraw(slot, bit, withdrew);
        Ok(None)
    }
}
