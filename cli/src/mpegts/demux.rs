//! Transport stream → access units of the first H.264/HEVC stream.
//!
//! The layers, per ISO/IEC 13818-1: 188-byte TS packets (2.4.3.2) with an
//! optional adaptation field (2.4.3.4: discontinuity and random-access
//! flags); PSI sections (2.4.4) carried with a `pointer_field`, of which the
//! PAT (PID 0) names each program's PMT PID and the PMT names the
//! elementary streams and their `stream_type`; and PES packets (2.4.3.6)
//! whose header holds PTS/DTS and whose payload is the Annex B access unit.
//! A video PES usually has `PES_packet_length` 0 (unbounded), so one ends
//! only when the next one starts (`payload_unit_start_indicator`).

use super::nal::is_keyframe;
use super::{crc32_mpeg, TsCodec, SYNC_BYTE, TS_PACKET_SIZE, TS_WRAP};
use std::fmt;
use std::mem;

/// The largest PES (one access unit plus its header) kept by default.
/// Video PES packets are unbounded by the format, so a stream that never
/// starts a new one (corrupt, hostile, or not video) would otherwise grow
/// the buffer forever. 64 MiB is far above any real access unit (an 8K
/// intra frame at a high bitrate is a few MiB).
pub const DEFAULT_MAX_PES_SIZE: usize = 64 << 20;

/// After this many TS packets without a PMT that names a video stream the
/// input is reported as [`DemuxError::NoVideoStream`]. ffmpeg writes PAT
/// and PMT first and repeats them every 100 ms, so a real stream has them
/// within a few packets; 10 000 packets (1.9 MB) leaves room for a stream
/// joined mid-way at a high bitrate.
pub const PMT_SEARCH_PACKETS: u64 = 10_000;

/// `section_length` is at most 1021 for PAT and PMT (2.4.4.3, 2.4.4.8).
const MAX_SECTION_LENGTH: usize = 1021;

/// A PAT names at most this many programs here (one section of 1021 bytes
/// holds 253); bounds memory against a hostile PAT repeated with new PIDs.
const MAX_PROGRAMS: usize = 256;

/// The null packet PID: stuffing, never data.
const NULL_PID: u16 = 0x1fff;

/// One access unit of the first video stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EsPacket {
    /// Annex B bytes of the PES payload, exactly as muxed.
    pub data: Vec<u8>,
    /// 90 kHz, unwrapped across the 33-bit wrap (monotone extension).
    pub pts: Option<i64>,
    /// 90 kHz; = pts when the PES has only a PTS.
    pub dts: Option<i64>,
    /// 90 kHz: next packet's dts minus this one's (None for the last, and
    /// when the next one follows a discontinuity or its dts does not move
    /// forward, where the difference would mean nothing).
    pub duration: Option<i64>,
    /// random_access_indicator set OR an IDR (h264 nal 5) / IRAP (hevc nal
    /// 16..=23) in the data.
    pub key: bool,
    /// discontinuity_indicator or a continuity-counter gap seen before this
    /// packet. A gap inside a packet (TS packets of it lost, so its data is
    /// incomplete) marks it and the next one. A decoder should resume at
    /// the next keyframe.
    pub discontinuity: bool,
}

/// Why the demuxer could not go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DemuxError {
    /// No PMT naming an H.264/HEVC stream within this many TS packets.
    NoVideoStream { packets: u64 },
    /// Every program's PMT was read and none lists a video stream; these
    /// are the stream types they do list.
    NoVideoInProgram { stream_types: Vec<u8> },
    /// The video stream is of a codec this module does not handle.
    UnsupportedCodec { stream_type: u8 },
    /// The video PES header cannot be parsed; that PES is dropped.
    PesHeader { reason: &'static str },
    /// A video PES grew past the cap without a new one starting; it is
    /// dropped.
    PesTooLarge { limit: usize },
}

impl fmt::Display for DemuxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DemuxError::NoVideoStream { packets } => write!(
                f,
                "no H.264 or HEVC video stream found: no PAT/PMT naming one in the first \
                 {packets} transport stream packets (is the input MPEG-TS?)"
            ),
            DemuxError::NoVideoInProgram { stream_types } => {
                write!(
                    f,
                    "the transport stream has no video stream (its PMT lists stream types"
                )?;
                if stream_types.is_empty() {
                    write!(f, " none")?;
                }
                for t in stream_types {
                    write!(f, " {t:#04x}")?;
                }
                write!(f, ")")
            }
            DemuxError::UnsupportedCodec { stream_type } => write!(
                f,
                "the transport stream's video is {} (stream_type {stream_type:#04x}); only H.264 \
                 (0x1b) and HEVC (0x24) are supported",
                video_stream_type_name(*stream_type).unwrap_or("an unknown codec")
            ),
            DemuxError::PesHeader { reason } => {
                write!(f, "malformed PES header in the video stream: {reason}")
            }
            DemuxError::PesTooLarge { limit } => write!(
                f,
                "a video PES packet grew past {limit} bytes without the next one starting; \
                 the stream is corrupt"
            ),
        }
    }
}

impl std::error::Error for DemuxError {}

/// Video `stream_type`s other than H.264/HEVC (ISO/IEC 13818-1 table 2-34
/// and common registered private ones), to tell "unsupported video" from
/// "no video".
fn video_stream_type_name(stream_type: u8) -> Option<&'static str> {
    Some(match stream_type {
        0x01 => "MPEG-1 video",
        0x02 => "MPEG-2 video",
        0x10 => "MPEG-4 part 2 video",
        0x1b => "H.264",
        0x1f => "H.264 SVC",
        0x20 => "H.264 MVC",
        0x21 => "JPEG 2000",
        0x24 => "HEVC",
        0x33 => "VVC",
        0x42 => "AVS video",
        0xd1 => "Dirac",
        0xd2 => "AVS2",
        0xd4 => "AVS3",
        0xea => "VC-1",
        _ => return None,
    })
}

/// A PES header's timestamps (raw 33-bit values) and payload extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PesHeader {
    pts: Option<i64>,
    dts: Option<i64>,
    /// Offset of the first payload byte in the PES.
    payload_start: usize,
    /// 6 + `PES_packet_length` when that is not 0 (then it bounds the
    /// payload).
    end: Option<usize>,
}

/// Parses a PES header from the start of a PES (2.4.3.6, 2.4.3.7): Ok(None)
/// while more bytes are needed, Err on bytes no valid header has.
fn parse_pes_header(buf: &[u8]) -> Result<Option<PesHeader>, &'static str> {
    if buf.len() < 6 {
        return Ok(None);
    }
    if buf[..3] != [0, 0, 1] {
        return Err("no packet_start_code_prefix (00 00 01) at the start of the PES");
    }
    // program_stream_map, padding, private_stream_2, ECM, EMM, DSMCC,
    // H.222.1 type E, directory: no optional header, never video.
    if matches!(
        buf[3],
        0xbc | 0xbe | 0xbf | 0xf0 | 0xf1 | 0xf2 | 0xf8 | 0xff
    ) {
        return Err("the stream_id has no PES header fields (not a video PES)");
    }
    let packet_length = usize::from(buf[4]) << 8 | usize::from(buf[5]);
    if buf.len() < 9 {
        return Ok(None);
    }
    if buf[6] & 0xc0 != 0x80 {
        return Err("the bits after PES_packet_length are not '10'");
    }
    let header_data_length = usize::from(buf[8]);
    let payload_start = 9 + header_data_length;
    let end = (packet_length != 0).then_some(6 + packet_length);
    if end.is_some_and(|end| end < payload_start) {
        return Err("PES_packet_length is shorter than the PES header");
    }
    let Some(optional) = buf.get(9..payload_start) else {
        return Ok(None);
    };
    let (pts, dts) = match buf[7] >> 6 {
        0b00 => (None, None),
        0b01 => return Err("PTS_DTS_flags is '01', which is forbidden"),
        0b10 => {
            let Some(pts) = optional.get(..5) else {
                return Err("PES_header_data_length is too short for the PTS");
            };
            (Some(read_timestamp(pts)), None)
        }
        _ => {
            let Some(both) = optional.get(..10) else {
                return Err("PES_header_data_length is too short for the PTS and DTS");
            };
            (
                Some(read_timestamp(&both[..5])),
                Some(read_timestamp(&both[5..])),
            )
        }
    };
    Ok(Some(PesHeader {
        pts,
        dts,
        payload_start,
        end,
    }))
}

/// A 33-bit PTS/DTS from its 5-byte field: 4-bit prefix, 3 bits, marker,
/// 15 bits, marker, 15 bits, marker. Marker bits are not checked (ffmpeg
/// does not either; a wrong one is harmless).
fn read_timestamp(b: &[u8]) -> i64 {
    (i64::from(b[0] >> 1) & 0x07) << 30
        | i64::from(b[1]) << 22
        | i64::from(b[2] >> 1) << 15
        | i64::from(b[3]) << 7
        | i64::from(b[4] >> 1)
}

/// The value ≡ `raw` (mod 2^33) nearest to `reference`: timestamps count
/// on past the 33-bit wrap (every 26.5 hours) instead of jumping back, and a
/// PTS a little before the reference DTS (B-frames) stays before it.
fn unwrap_near(raw: i64, reference: Option<i64>) -> i64 {
    let Some(reference) = reference else {
        return raw;
    };
    // Wrapping arithmetic is exact here: 2^33 divides 2^64.
    let mut delta = raw.wrapping_sub(reference).rem_euclid(TS_WRAP);
    if delta >= TS_WRAP / 2 {
        delta -= TS_WRAP;
    }
    reference.saturating_add(delta)
}

/// The video PES being reassembled.
#[derive(Debug)]
struct Pes {
    buf: Vec<u8>,
    /// Parsed as soon as its bytes are in, with unwrapped timestamps.
    header: Option<PesHeader>,
    /// random_access_indicator on the packet that started it.
    rai: bool,
    discontinuity: bool,
}

/// A PSI section being reassembled on one PID.
#[derive(Debug)]
struct Section {
    pid: u16,
    buf: Vec<u8>,
    /// Whether `buf` holds the start of a section (bytes of a section whose
    /// start was missed are dropped).
    active: bool,
}

impl Section {
    fn reset(&mut self) {
        self.buf.clear();
        self.active = false;
    }

    /// Moves every complete section out of `buf`; stops at stuffing (0xff
    /// where a table_id would be: the rest of the packet is padding) and
    /// drops a section whose length is out of range.
    fn take_complete(&mut self, out: &mut Vec<Vec<u8>>) {
        loop {
            if self.buf.first() == Some(&0xff) {
                self.reset();
                return;
            }
            if self.buf.len() < 3 {
                return;
            }
            let length = usize::from(self.buf[1] & 0x0f) << 8 | usize::from(self.buf[2]);
            if length > MAX_SECTION_LENGTH {
                self.reset();
                return;
            }
            if self.buf.len() < 3 + length {
                return;
            }
            out.push(self.buf.drain(..3 + length).collect());
        }
    }
}

/// What a program's PMT said, while no video stream is chosen.
#[derive(Debug)]
struct Program {
    number: u16,
    pmt_pid: u16,
    /// The stream types of its PMT once read (it had no H.264/HEVC).
    stream_types: Option<Vec<u8>>,
}

/// The elementary streams of a PMT body (the bytes after
/// `last_section_number`, before the CRC): (stream_type, PID) in order;
/// None if a length runs past the end.
fn parse_pmt(body: &[u8]) -> Option<Vec<(u8, u16)>> {
    let be12 = |pos: usize| -> Option<usize> {
        let b = body.get(pos..pos + 2)?;
        Some(usize::from(b[0] & 0x0f) << 8 | usize::from(b[1]))
    };
    // PCR_PID (2 bytes), then program_info_length and its descriptors.
    let mut pos = 4 + be12(2)?;
    if pos > body.len() {
        return None;
    }
    let mut streams = Vec::new();
    while pos < body.len() {
        let stream_type = body[pos];
        let pid = body.get(pos + 1..pos + 3)?;
        let pid = u16::from(pid[0] & 0x1f) << 8 | u16::from(pid[1]);
        pos += 5 + be12(pos + 3)?;
        if pos > body.len() {
            return None;
        }
        streams.push((stream_type, pid));
    }
    Some(streams)
}

/// Where the next TS packet starts, when looking for sync.
enum Sync {
    /// At this offset, confirmed by a sync byte one packet later (or the
    /// stream ends there).
    Found(usize),
    /// A candidate at this offset needs more bytes to be confirmed.
    NeedMore(usize),
    /// No candidate in the bytes at hand.
    None,
}

/// Finds a 0x47 followed by another one 188 bytes on. One sync byte alone
/// would match one byte in 256 of payload; two in a row rarely do by chance.
fn find_sync(data: &[u8], at_end: bool) -> Sync {
    for (i, &b) in data.iter().enumerate() {
        if b != SYNC_BYTE {
            continue;
        }
        match data.get(i + TS_PACKET_SIZE) {
            Some(&SYNC_BYTE) => return Sync::Found(i),
            Some(_) => {}
            None if !at_end => return Sync::NeedMore(i),
            None if data.len() - i == TS_PACKET_SIZE => return Sync::Found(i),
            None => return Sync::None,
        }
    }
    Sync::None
}

/// MPEG-TS → access units of the first H.264/HEVC stream. See the module
/// documentation for the format; feed it bytes with [`Demuxer::push`].
#[derive(Debug)]
pub struct Demuxer {
    /// Bytes not yet processed: a partial packet, or a sync candidate
    /// waiting for confirmation, or what followed a packet that errored.
    pending: Vec<u8>,
    synced: bool,
    /// Sync was lost since the last video packet: bytes of it may be gone.
    sync_lost: bool,
    packets: u64,
    reported_no_video: bool,
    programs: Vec<Program>,
    sections: Vec<Section>,
    /// The chosen stream: (PID, codec).
    video: Option<(u16, TsCodec)>,
    last_cc: Option<u8>,
    pes: Option<Pes>,
    /// The last complete access unit, held until the next one's DTS gives
    /// its duration.
    held: Option<EsPacket>,
    /// Mark the next PES as following a discontinuity.
    next_discontinuity: bool,
    /// random_access_indicator seen on an adaptation-field-only packet,
    /// for the PES that starts next.
    next_rai: bool,
    /// The last DTS, which timestamps are unwrapped against.
    ts_reference: Option<i64>,
    max_pes_size: usize,
}

impl Default for Demuxer {
    fn default() -> Self {
        Self::new()
    }
}

impl Demuxer {
    pub fn new() -> Self {
        Demuxer {
            pending: Vec::new(),
            synced: false,
            sync_lost: false,
            packets: 0,
            reported_no_video: false,
            programs: Vec::new(),
            sections: Vec::new(),
            video: None,
            last_cc: None,
            pes: None,
            held: None,
            next_discontinuity: false,
            next_rai: false,
            ts_reference: None,
            max_pes_size: DEFAULT_MAX_PES_SIZE,
        }
    }

    /// The same with another cap on one PES ([`DEFAULT_MAX_PES_SIZE`]).
    pub fn with_max_pes_size(mut self, bytes: usize) -> Self {
        self.max_pes_size = bytes;
        self
    }

    /// The video codec, known once the PMT was read.
    pub fn codec(&self) -> Option<TsCodec> {
        self.video.map(|(_, codec)| codec)
    }

    /// Feed any chunking of the byte stream (resync on 0x47 if the stream
    /// starts mid-packet); complete packets of the first H.264/HEVC stream
    /// in the PMT are appended to `out`. A packet is complete when the next
    /// PES of that PID starts (payload_unit_start_indicator) or at finish().
    ///
    /// An error concerns one TS packet (or the stream as a whole, for the
    /// PMT errors); the bytes after that packet are kept, so the demuxer
    /// stays usable: the next push (an empty one will do) goes on from there.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<EsPacket>) -> Result<(), DemuxError> {
        if self.pending.is_empty() {
            // The common case with large chunks: no copy of the input.
            let (used, result) = self.process(bytes, out, false);
            self.pending.extend_from_slice(&bytes[used..]);
            result
        } else {
            let mut buf = mem::take(&mut self.pending);
            buf.extend_from_slice(bytes);
            let (used, result) = self.process(&buf, out, false);
            buf.drain(..used);
            self.pending = buf;
            result
        }
    }

    /// The end of the stream: the last PES is complete (a final packet that
    /// errors is dropped, as a truncated last PES is), and the held access
    /// unit goes out with no duration.
    pub fn finish(&mut self, out: &mut Vec<EsPacket>) {
        let buf = mem::take(&mut self.pending);
        let mut from = 0;
        loop {
            let (used, result) = self.process(&buf[from..], out, true);
            from += used;
            if result.is_ok() || used == 0 {
                break;
            }
        }
        if let Some(pes) = self.pes.take() {
            let _ = self.complete(pes, out);
        }
        if let Some(held) = self.held.take() {
            out.push(held);
        }
        self.synced = false;
    }

    /// Handles the whole TS packets in `data`; returns how many bytes were
    /// used (the rest is a partial packet or unconfirmed sync), stopping
    /// after a packet that errs.
    fn process(
        &mut self,
        data: &[u8],
        out: &mut Vec<EsPacket>,
        at_end: bool,
    ) -> (usize, Result<(), DemuxError>) {
        let mut pos = 0;
        loop {
            if !self.synced {
                match find_sync(&data[pos..], at_end) {
                    Sync::Found(offset) => {
                        pos += offset;
                        self.synced = true;
                    }
                    Sync::NeedMore(offset) => return (pos + offset, Ok(())),
                    Sync::None => return (data.len(), Ok(())),
                }
            }
            let Some(packet) = data.get(pos..pos + TS_PACKET_SIZE) else {
                return (pos, Ok(()));
            };
            if packet[0] != SYNC_BYTE {
                self.synced = false;
                self.sync_lost = true;
                continue;
            }
            pos += TS_PACKET_SIZE;
            if let Err(e) = self.packet(packet, out) {
                return (pos, Err(e));
            }
        }
    }

    /// One TS packet (2.4.3.2), with the give-up check for a missing PMT.
    fn packet(&mut self, packet: &[u8], out: &mut Vec<EsPacket>) -> Result<(), DemuxError> {
        self.packets += 1;
        self.packet_fields(packet, out)?;
        if self.video.is_none() && !self.reported_no_video && self.packets >= PMT_SEARCH_PACKETS {
            self.reported_no_video = true;
            return Err(DemuxError::NoVideoStream {
                packets: self.packets,
            });
        }
        Ok(())
    }

    fn packet_fields(&mut self, packet: &[u8], out: &mut Vec<EsPacket>) -> Result<(), DemuxError> {
        let transport_error = packet[1] & 0x80 != 0;
        let unit_start = packet[1] & 0x40 != 0;
        let pid = u16::from(packet[1] & 0x1f) << 8 | u16::from(packet[2]);
        let scrambled = packet[3] & 0xc0 != 0;
        let adaptation_field_control = (packet[3] >> 4) & 3;
        let cc = packet[3] & 0x0f;
        let is_video = self.video.is_some_and(|(video, _)| video == pid);

        // The adaptation field: its length byte, then flags.
        let mut payload_start = 4;
        let (mut discontinuity, mut rai) = (false, false);
        let mut malformed = false;
        if adaptation_field_control & 2 != 0 {
            let length = usize::from(packet[4]);
            if length > TS_PACKET_SIZE - 5 {
                malformed = true;
            } else {
                if length > 0 {
                    discontinuity = packet[5] & 0x80 != 0;
                    rai = packet[5] & 0x40 != 0;
                }
                payload_start = 5 + length;
            }
        }
        // A packet the transmitter flagged as corrupt, one we cannot read
        // (scrambled), one with a reserved adaptation_field_control or an
        // adaptation field past its end: treated as lost.
        if transport_error
            || scrambled
            || adaptation_field_control == 0
            || malformed
            || pid == NULL_PID
        {
            if is_video {
                self.mark_discontinuity();
            }
            return Ok(());
        }
        let has_payload = adaptation_field_control & 1 != 0;
        let payload = if has_payload {
            &packet[payload_start..]
        } else {
            &[][..]
        };

        if is_video {
            return self.video_packet(
                unit_start,
                has_payload,
                cc,
                discontinuity,
                rai,
                payload,
                out,
            );
        }
        if has_payload && (pid == 0 || self.programs.iter().any(|p| p.pmt_pid == pid)) {
            return self.psi_packet(pid, unit_start, payload);
        }
        Ok(())
    }

    /// Flags the PES in progress, or else the next one.
    fn mark_discontinuity(&mut self) {
        match &mut self.pes {
            Some(pes) => pes.discontinuity = true,
            None => self.next_discontinuity = true,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn video_packet(
        &mut self,
        unit_start: bool,
        has_payload: bool,
        cc: u8,
        discontinuity_indicator: bool,
        rai: bool,
        payload: &[u8],
        out: &mut Vec<EsPacket>,
    ) -> Result<(), DemuxError> {
        if !has_payload {
            // The counter does not advance without a payload (2.4.3.3).
            if discontinuity_indicator {
                self.mark_discontinuity();
            }
            self.next_rai |= rai;
            return Ok(());
        }
        let mut gap = false;
        if let (Some(last), false) = (self.last_cc, discontinuity_indicator) {
            if cc == last {
                // A duplicate packet (allowed once, 2.4.3.3): same bytes.
                return Ok(());
            }
            gap = cc != (last + 1) & 0x0f;
        }
        self.last_cc = Some(cc);
        let lost = gap || mem::take(&mut self.sync_lost);

        if unit_start {
            let mut result = Ok(());
            if let Some(mut pes) = self.pes.take() {
                // Packets lost just before this one may have been its tail.
                pes.discontinuity |= lost;
                result = self.complete(pes, out);
            }
            let discontinuity =
                discontinuity_indicator || lost || mem::take(&mut self.next_discontinuity);
            let rai = rai || mem::take(&mut self.next_rai);
            if payload.len() > self.max_pes_size {
                self.next_discontinuity = true;
                return result.and(Err(DemuxError::PesTooLarge {
                    limit: self.max_pes_size,
                }));
            }
            self.pes = Some(Pes {
                buf: payload.to_vec(),
                header: None,
                rai,
                discontinuity,
            });
            let header = self.parse_header(out);
            return result.and(header);
        }

        let Some(pes) = &mut self.pes else {
            // The middle of a PES whose start we did not see (the stream
            // was joined mid-way, or its start was dropped): skipped.
            if discontinuity_indicator || lost {
                self.next_discontinuity = true;
            }
            return Ok(());
        };
        pes.discontinuity |= discontinuity_indicator || lost;
        // What follows the lost bytes is damaged too (whatever referenced
        // this picture).
        self.next_discontinuity |= lost;
        if pes.buf.len() + payload.len() > self.max_pes_size {
            self.pes = None;
            self.next_discontinuity = true;
            return Err(DemuxError::PesTooLarge {
                limit: self.max_pes_size,
            });
        }
        pes.buf.extend_from_slice(payload);
        if pes.header.is_none() {
            return self.parse_header(out);
        }
        Ok(())
    }

    /// Parses the header of the PES in progress once its bytes are in. Its
    /// DTS completes the held access unit's duration, which then goes out.
    fn parse_header(&mut self, out: &mut Vec<EsPacket>) -> Result<(), DemuxError> {
        let Demuxer {
            pes: Some(pes),
            held,
            ts_reference,
            next_discontinuity,
            ..
        } = self
        else {
            return Ok(());
        };
        let mut header = match parse_pes_header(&pes.buf) {
            Ok(None) => return Ok(()),
            Ok(Some(header)) => header,
            Err(reason) => {
                self.pes = None;
                *next_discontinuity = true;
                return Err(DemuxError::PesHeader { reason });
            }
        };
        if let Some(raw) = header.dts.or(header.pts) {
            let dts = unwrap_near(raw, *ts_reference);
            header.pts = header.pts.map(|pts| unwrap_near(pts, Some(dts)));
            header.dts = Some(dts);
            *ts_reference = Some(dts);
        }
        if let Some(mut previous) = held.take() {
            if let (Some(a), Some(b)) = (previous.dts, header.dts) {
                if b > a && !pes.discontinuity {
                    previous.duration = Some(b - a);
                }
            }
            out.push(previous);
        }
        pes.header = Some(header);
        Ok(())
    }

    /// A PES is complete: it becomes the held access unit.
    fn complete(&mut self, pes: Pes, out: &mut Vec<EsPacket>) -> Result<(), DemuxError> {
        let Some(header) = pes.header else {
            self.next_discontinuity = true;
            return Err(DemuxError::PesHeader {
                reason: "the PES ended before its header was complete",
            });
        };
        let mut data = pes.buf;
        let end = header.end.map_or(data.len(), |end| end.min(data.len()));
        data.truncate(end);
        data.drain(..header.payload_start.min(end));
        let key = pes.rai || self.codec().is_some_and(|codec| is_keyframe(codec, &data));
        let packet = EsPacket {
            data,
            pts: header.pts,
            dts: header.dts.or(header.pts),
            duration: None,
            key,
            discontinuity: pes.discontinuity,
        };
        // Only if the PES after the held one had no parsable header.
        if let Some(previous) = self.held.replace(packet) {
            out.push(previous);
        }
        Ok(())
    }

    /// A TS packet of PSI (2.4.4.1): sections, possibly several per packet
    /// and spanning packets, located with the pointer_field.
    fn psi_packet(&mut self, pid: u16, unit_start: bool, payload: &[u8]) -> Result<(), DemuxError> {
        let index = match self.sections.iter().position(|s| s.pid == pid) {
            Some(index) => index,
            None => {
                self.sections.push(Section {
                    pid,
                    buf: Vec::new(),
                    active: false,
                });
                self.sections.len() - 1
            }
        };
        let section = &mut self.sections[index];
        let mut complete = Vec::new();
        let mut data = payload;
        if unit_start {
            let Some((&pointer, rest)) = data.split_first() else {
                section.reset();
                return Ok(());
            };
            let pointer = usize::from(pointer);
            if pointer > rest.len() {
                section.reset();
                return Ok(());
            }
            // The bytes before the pointer end the section in progress.
            if section.active {
                section.buf.extend_from_slice(&rest[..pointer]);
                section.take_complete(&mut complete);
            }
            section.buf.clear();
            section.active = true;
            data = &rest[pointer..];
        } else if !section.active {
            return Ok(());
        }
        section.buf.extend_from_slice(data);
        section.take_complete(&mut complete);
        if section.buf.is_empty() {
            // No section starts in a packet without unit_start.
            section.active = false;
        }
        let mut result = Ok(());
        for s in complete {
            let r = self.section(pid, &s);
            if result.is_ok() {
                result = r;
            }
        }
        result
    }

    /// A complete section: checked (CRC, syntax, current), then PAT or PMT.
    fn section(&mut self, pid: u16, s: &[u8]) -> Result<(), DemuxError> {
        // 3 bytes to section_length, 5 to last_section_number, 4 of CRC.
        if s.len() < 12 || crc32_mpeg(s) != 0 || s[1] & 0x80 == 0 || s[5] & 1 == 0 {
            return Ok(());
        }
        let body = &s[8..s.len() - 4];
        match (s[0], pid) {
            (0x00, 0) => {
                self.pat(body);
                Ok(())
            }
            (0x02, pid) if pid != 0 => {
                let number = u16::from(s[3]) << 8 | u16::from(s[4]);
                self.pmt(pid, number, body)
            }
            _ => Ok(()),
        }
    }

    /// PAT (2.4.4.3): (program_number, PMT PID) pairs; program 0 is the
    /// network PID, not a program.
    fn pat(&mut self, body: &[u8]) {
        for entry in body.chunks_exact(4) {
            let number = u16::from(entry[0]) << 8 | u16::from(entry[1]);
            let pmt_pid = u16::from(entry[2] & 0x1f) << 8 | u16::from(entry[3]);
            if number == 0
                || pmt_pid == 0
                || pmt_pid == NULL_PID
                || self.programs.len() >= MAX_PROGRAMS
            {
                continue;
            }
            if !self
                .programs
                .iter()
                .any(|p| p.number == number && p.pmt_pid == pmt_pid)
            {
                self.programs.push(Program {
                    number,
                    pmt_pid,
                    stream_types: None,
                });
            }
        }
    }

    /// PMT (2.4.4.8): the first H.264/HEVC stream is chosen, for good (a
    /// later PMT version does not switch streams mid-way).
    fn pmt(&mut self, pid: u16, number: u16, body: &[u8]) -> Result<(), DemuxError> {
        if self.video.is_some() {
            return Ok(());
        }
        let Some(program) = self
            .programs
            .iter_mut()
            .find(|p| p.pmt_pid == pid && p.number == number)
        else {
            return Ok(());
        };
        let Some(streams) = parse_pmt(body) else {
            return Ok(());
        };
        let video = streams.iter().find_map(|&(stream_type, es_pid)| {
            let codec = TsCodec::from_stream_type(stream_type)?;
            (es_pid != 0 && es_pid != NULL_PID).then_some((es_pid, codec))
        });
        if video.is_some() {
            self.video = video;
            return Ok(());
        }
        program.stream_types = Some(streams.iter().map(|&(t, _)| t).collect());
        // Only when no program is left that might have video.
        if self.programs.iter().any(|p| p.stream_types.is_none()) {
            return Ok(());
        }
        let stream_types: Vec<u8> = self
            .programs
            .iter()
            .flat_map(|p| p.stream_types.iter().flatten().copied())
            .collect();
        match stream_types
            .iter()
            .find(|&&t| video_stream_type_name(t).is_some())
        {
            Some(&stream_type) => Err(DemuxError::UnsupportedCodec { stream_type }),
            None => Err(DemuxError::NoVideoInProgram { stream_types }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_unwrap_to_the_nearest() {
        assert_eq!(unwrap_near(5, None), 5);
        assert_eq!(unwrap_near(100, Some(90)), 100);
        // Just past the wrap: counts on.
        assert_eq!(unwrap_near(10, Some(TS_WRAP - 10)), TS_WRAP + 10);
        // A PTS before the DTS reference across the wrap: stays before.
        assert_eq!(unwrap_near(TS_WRAP - 10, Some(TS_WRAP + 10)), TS_WRAP - 10);
        assert_eq!(unwrap_near(TS_WRAP - 10, Some(5)), -10);
        // Extreme references do not overflow.
        assert_eq!(unwrap_near(0, Some(i64::MAX)), i64::MAX);
        let _ = unwrap_near(TS_WRAP - 1, Some(i64::MIN));
    }

    #[test]
    fn pes_header_fields() {
        // PTS and DTS, PES_packet_length 0.
        let h = [
            0, 0, 1, 0xe0, 0, 0, 0x80, 0xc0, 0x0a, 0x31, 0x00, 0x09, 0x10, 0xa1, 0x11, 0x00, 0x07,
            0xd8, 0x61, 0xaa,
        ];
        let parsed = parse_pes_header(&h).unwrap().unwrap();
        assert_eq!(parsed.pts, Some(133_200));
        assert_eq!(parsed.dts, Some(126_000));
        assert_eq!(parsed.payload_start, 19);
        assert_eq!(parsed.end, None);
        for cut in 0..19 {
            assert_eq!(parse_pes_header(&h[..cut]), Ok(None), "cut {cut}");
        }
        let mut bad = h;
        bad[2] = 2;
        assert!(parse_pes_header(&bad).is_err());
        let mut bad = h;
        bad[7] = 0x40;
        assert!(parse_pes_header(&bad).is_err());
        let mut bad = h;
        bad[8] = 4; // too short for PTS + DTS
        assert!(parse_pes_header(&bad).is_err());
        let mut bad = h;
        bad[5] = 2; // PES_packet_length shorter than the header
        assert!(parse_pes_header(&bad).is_err());
        let mut bad = h;
        bad[3] = 0xbe; // padding stream
        assert!(parse_pes_header(&bad).is_err());
        let mut bounded = h;
        bounded[5] = 14; // 6 + 14 = 20 bytes in all
        assert_eq!(parse_pes_header(&bounded).unwrap().unwrap().end, Some(20));
    }

    #[test]
    fn pmt_lengths_are_checked() {
        // PCR PID, program_info_length 0, one H.264 stream.
        let body = [0xe1, 0x00, 0xf0, 0x00, 0x1b, 0xe1, 0x00, 0xf0, 0x00];
        assert_eq!(parse_pmt(&body), Some(vec![(0x1b, 0x100)]));
        for cut in 0..body.len() {
            let r = parse_pmt(&body[..cut]);
            assert!(r.is_none() || r == Some(vec![]), "cut {cut}: {r:?}");
        }
        let mut long_info = body;
        long_info[3] = 0x40;
        assert_eq!(parse_pmt(&long_info), None);
        let mut long_es_info = body;
        long_es_info[8] = 1;
        assert_eq!(parse_pmt(&long_es_info), None);
    }

    #[test]
    fn sync_search() {
        let mut two = vec![0u8; 2 * TS_PACKET_SIZE];
        two[0] = SYNC_BYTE;
        two[TS_PACKET_SIZE] = SYNC_BYTE;
        assert!(matches!(find_sync(&two, false), Sync::Found(0)));
        assert!(matches!(find_sync(&two[1..], false), Sync::NeedMore(187)));
        assert!(matches!(find_sync(&two[1..], true), Sync::Found(187)));
        assert!(matches!(find_sync(&two[1..100], true), Sync::None));
        assert!(matches!(find_sync(&[1, 2, 3], false), Sync::None));
    }
}
