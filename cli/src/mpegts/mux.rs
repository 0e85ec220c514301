//! Access units → MPEG-TS, the way ffmpeg's own muxer lays out a single
//! video stream, so that `ffmpeg -f mpegts -i pipe:0 -c copy out.mp4` (or
//! any player) takes it as it would ffmpeg's output.
//!
//! Layout: PAT (PID 0, program 1 → PMT PID 0x1000) and PMT (video PID
//! 0x100, also the PCR PID) before the first access unit and again every
//! ~100 ms and at every keyframe (so a reader that starts mid-file finds
//! them before the picture it can start at); then one PES per access unit,
//! with the PCR and, on keyframes, the random_access_indicator in the
//! adaptation field of its first TS packet. The last TS packet of a PES is
//! filled up with adaptation-field stuffing (0xff), not with payload
//! padding, because a video PES has no length to end it.

use super::nal::{find_aud, has_sps, trim_trailing_zeros};
use super::{crc32_mpeg, TsCodec, SYNC_BYTE, TS_PACKET_SIZE, TS_WRAP};
use std::io::{self, Write};

/// PID of the program map table.
pub const PMT_PID: u16 = 0x1000;
/// PID of the video elementary stream, which also carries the PCR.
pub const VIDEO_PID: u16 = 0x100;
/// PSI is repeated at least this often, in 90 kHz ticks of DTS: 100 ms, the
/// longest PAT/PMT interval DVB (ETSI TR 101 290) allows.
const PSI_INTERVAL: i64 = 9_000;
/// The PCR runs this far behind the DTS (700 ms, ffmpeg's default
/// `max_delay`): the system clock says each access unit arrived that long
/// before it is to be decoded, which is what a decoder's buffer model
/// needs. Clamped at 0 for timestamps that start near 0.
const PCR_LEAD: i64 = 63_000;
/// stream_id of the first video stream (ISO/IEC 13818-1 table 2-22).
const STREAM_ID_VIDEO: u8 = 0xe0;

/// Continuity counter slots.
const CC_PAT: usize = 0;
const CC_PMT: usize = 1;
const CC_VIDEO: usize = 2;

/// Writes one H.264 or HEVC stream as MPEG-TS. Nothing is buffered between
/// calls: each [`Muxer::write`] goes out whole, with one `write_all`.
#[derive(Debug)]
pub struct Muxer<W: Write> {
    out: W,
    codec: TsCodec,
    cc: [u8; 3],
    /// DTS at which PAT/PMT were last written; None before the first.
    last_psi_dts: Option<i64>,
    /// Put in front of keyframes that lack an SPS.
    parameter_sets: Option<Vec<u8>>,
    /// The PES being packetized (reused).
    pes: Vec<u8>,
    /// The TS packets of one write (reused).
    buf: Vec<u8>,
}

impl<W: Write> Muxer<W> {
    /// Writes PAT/PMT (PID 0x1000 PMT, video PID 0x100, PCR on the video
    /// PID) before the first packet and again every ~100 ms of dts.
    pub fn new(out: W, codec: TsCodec) -> Self {
        Muxer {
            out,
            codec,
            cc: [0; 3],
            last_psi_dts: None,
            parameter_sets: None,
            pes: Vec::new(),
            buf: Vec::new(),
        }
    }

    /// Annex-B parameter sets (as [`super::parameter_sets`] or
    /// [`super::avcc_parameter_sets`] give them) to put in front of every
    /// keyframe that has no SPS of its own, after its access unit
    /// delimiter. Packets from a source that keeps them out of band (MP4,
    /// an encoder's extradata) are then decodable from any keyframe.
    pub fn set_parameter_sets(&mut self, parameter_sets: Option<Vec<u8>>) {
        self.parameter_sets = parameter_sets;
    }

    /// One access unit (Annex B). pts/dts in 90 kHz (dts defaults to pts);
    /// sets random_access_indicator on keys; continuity counters correct;
    /// PES header with PTS or PTS+DTS; stuffing via adaptation field in the
    /// last TS packet; PES_packet_length 0 for video.
    ///
    /// Timestamps are written modulo 2^33 as given (no offset is added);
    /// negative ones wrap, so give non-negative ones. An access unit that
    /// does not begin with an access unit delimiter gets one, which H.222.0
    /// requires of H.264/HEVC in a TS (2.14.1, 2.17.1) and ffmpeg's muxer
    /// adds as well (one behind parameter sets is moved to the front).
    /// Err(InvalidInput) for data that is not Annex B (no
    /// start code at the front: convert AVCC with
    /// [`super::length_prefixed_to_annexb`]).
    pub fn write(&mut self, data: &[u8], pts: i64, dts: Option<i64>, key: bool) -> io::Result<()> {
        let zeros = data.iter().take_while(|&&b| b == 0).count();
        if zeros < 2 || data.get(zeros) != Some(&1) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the access unit is not Annex B (it does not begin with a 00 00 01 start code)",
            ));
        }
        let dts = dts.unwrap_or(pts);
        self.buf.clear();
        let psi_due = match self.last_psi_dts {
            None => true,
            Some(last) => key || dts < last || dts.saturating_sub(last) >= PSI_INTERVAL,
        };
        if psi_due {
            self.push_psi();
            self.last_psi_dts = Some(dts);
        }

        // The PES: header (2.4.3.6), then [AUD] [parameter sets] data.
        let pes = &mut self.pes;
        pes.clear();
        pes.extend_from_slice(&[0, 0, 1, STREAM_ID_VIDEO, 0, 0]);
        // '10', not scrambled, data_alignment_indicator: the payload starts
        // with an access unit (its delimiter).
        pes.push(0x84);
        if dts == pts {
            pes.extend_from_slice(&[0x80, 5]);
            push_timestamp(pes, 0b0010, pts);
        } else {
            pes.extend_from_slice(&[0xc0, 10]);
            push_timestamp(pes, 0b0011, pts);
            push_timestamp(pes, 0b0001, dts);
        }
        let parameter_sets = self
            .parameter_sets
            .as_deref()
            .filter(|_| key && !has_sps(self.codec, data));
        // The delimiter goes first, then the parameter sets, then the rest;
        // a delimiter found later (after parameter sets a caller put in
        // front) is moved, as two would make two access units.
        let (before, after) = match find_aud(self.codec, data) {
            Some((aud, true)) => {
                pes.extend_from_slice(&data[..aud.end]);
                (&[][..], &data[aud.end..])
            }
            Some((aud, false)) => {
                pes.extend_from_slice(&[0, 0, 0, 1]);
                pes.extend_from_slice(&data[aud.start..aud.end]);
                (trim_trailing_zeros(&data[..aud.code]), &data[aud.end..])
            }
            None => {
                pes.extend_from_slice(match self.codec {
                    // primary_pic_type 7 (any slice type), stop bit.
                    TsCodec::H264 => &[0, 0, 0, 1, 0x09, 0xf0],
                    // nal type 35, layer 0, temporal id 1; pic_type 2, stop bit.
                    TsCodec::Hevc => &[0, 0, 0, 1, 0x46, 0x01, 0x50],
                });
                (&[][..], data)
            }
        };
        if let Some(ps) = parameter_sets {
            pes.extend_from_slice(ps);
        }
        pes.extend_from_slice(before);
        pes.extend_from_slice(after);

        let pcr = dts.saturating_sub(PCR_LEAD).max(0).rem_euclid(TS_WRAP);
        packetize(&mut self.buf, &self.pes, &mut self.cc[CC_VIDEO], key, pcr);
        self.out.write_all(&self.buf)
    }

    /// Flushes and returns the writer. A stream with no access unit still
    /// gets its PAT and PMT, so that it is recognisably an (empty) TS.
    pub fn finish(mut self) -> io::Result<W> {
        if self.last_psi_dts.is_none() {
            self.buf.clear();
            self.push_psi();
            self.out.write_all(&self.buf)?;
        }
        self.out.flush()?;
        Ok(self.out)
    }

    /// PAT and PMT, one TS packet each.
    fn push_psi(&mut self) {
        // PAT (2.4.4.3): transport_stream_id 1; program 1 → PMT_PID.
        let pat = section(
            0x00,
            1,
            &[0x00, 0x01, 0xe0 | (PMT_PID >> 8) as u8, PMT_PID as u8],
        );
        push_section_packet(&mut self.buf, 0, &mut self.cc[CC_PAT], &pat);
        // PMT (2.4.4.8): program 1, PCR_PID, no program descriptors, one
        // stream without descriptors.
        let pid_hi = 0xe0 | (VIDEO_PID >> 8) as u8;
        let pid_lo = VIDEO_PID as u8;
        let pmt = section(
            0x02,
            1,
            &[
                pid_hi,
                pid_lo,
                0xf0,
                0x00,
                self.codec.stream_type(),
                pid_hi,
                pid_lo,
                0xf0,
                0x00,
            ],
        );
        push_section_packet(&mut self.buf, PMT_PID, &mut self.cc[CC_PMT], &pmt);
    }
}

/// A long-form PSI section: table_id, section_syntax_indicator with
/// section_length, the 16-bit id (transport_stream_id or program_number),
/// version 0 / current, section 0 of 0, the body, CRC-32.
pub(super) fn section(table_id: u8, id: u16, body: &[u8]) -> Vec<u8> {
    let length = 5 + body.len() + 4;
    let mut s = vec![table_id, 0xb0 | (length >> 8) as u8, length as u8];
    s.extend_from_slice(&id.to_be_bytes());
    s.extend_from_slice(&[0xc1, 0x00, 0x00]);
    s.extend_from_slice(body);
    let crc = crc32_mpeg(&s);
    s.extend_from_slice(&crc.to_be_bytes());
    s
}

/// One TS packet holding a whole section (pointer_field 0), padded with
/// 0xff, which ends the section list.
pub(super) fn push_section_packet(buf: &mut Vec<u8>, pid: u16, cc: &mut u8, section: &[u8]) {
    let start = buf.len();
    buf.extend_from_slice(&[SYNC_BYTE, 0x40 | (pid >> 8) as u8, pid as u8, 0x10 | *cc, 0]);
    *cc = (*cc + 1) & 0x0f;
    buf.extend_from_slice(section);
    buf.resize(start + TS_PACKET_SIZE, 0xff);
}

/// A 5-byte PTS/DTS field: 4-bit prefix, then the 33-bit value (modulo
/// 2^33) in pieces of 3, 15 and 15 bits, each followed by a marker bit.
fn push_timestamp(out: &mut Vec<u8>, prefix: u8, ts: i64) {
    let ts = ts.rem_euclid(TS_WRAP) as u64;
    out.extend_from_slice(&[
        prefix << 4 | ((ts >> 29) & 0x0e) as u8 | 1,
        (ts >> 22) as u8,
        ((ts >> 14) & 0xfe) as u8 | 1,
        (ts >> 7) as u8,
        ((ts << 1) & 0xfe) as u8 | 1,
    ]);
}

/// Splits a PES into TS packets on the video PID. The first has an
/// adaptation field with the PCR (and random_access_indicator on a key);
/// the last has one grown to fill the packet when the payload runs short.
fn packetize(buf: &mut Vec<u8>, pes: &[u8], cc: &mut u8, key: bool, pcr: i64) {
    let mut rest = pes;
    let mut first = true;
    while !rest.is_empty() {
        // The adaptation field after its length byte; None: no field.
        let mut field: Option<Vec<u8>> = None;
        if first {
            let base = pcr as u64;
            let flags = 0x10 | if key { 0x40 } else { 0 };
            // program_clock_reference_base (33 bits), 6 reserved bits,
            // extension (9 bits, 0: the 27 MHz remainder of a 90 kHz clock).
            field = Some(vec![
                flags,
                (base >> 25) as u8,
                (base >> 17) as u8,
                (base >> 9) as u8,
                (base >> 1) as u8,
                ((base & 1) << 7) as u8 | 0x7e,
                0,
            ]);
        }
        let field_size = |field: &Option<Vec<u8>>| field.as_ref().map_or(0, |f| 1 + f.len());
        let room = TS_PACKET_SIZE - 4 - field_size(&field);
        let n = rest.len().min(room);
        let stuffing = room - n;
        if stuffing > 0 {
            match &mut field {
                Some(f) => f.resize(f.len() + stuffing, 0xff),
                // One byte: a field of length 0. More: flags 0, then 0xff.
                None if stuffing == 1 => field = Some(Vec::new()),
                None => {
                    let mut f = vec![0u8];
                    f.resize(stuffing - 1, 0xff);
                    field = Some(f);
                }
            }
        }
        let control = if field.is_some() { 0x30 } else { 0x10 };
        let start = buf.len();
        buf.extend_from_slice(&[
            SYNC_BYTE,
            if first { 0x40 } else { 0 } | (VIDEO_PID >> 8) as u8,
            VIDEO_PID as u8,
            control | *cc,
        ]);
        *cc = (*cc + 1) & 0x0f;
        if let Some(f) = &field {
            buf.push(f.len() as u8);
            buf.extend_from_slice(f);
        }
        buf.extend_from_slice(&rest[..n]);
        debug_assert_eq!(buf.len() - start, TS_PACKET_SIZE);
        rest = &rest[n..];
        first = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psi_matches_ffmpeg_byte_for_byte() {
        // ffmpeg 5.1's PAT and PMT for one H.264 stream (ffmpeg's defaults
        // are the same PIDs and ids), CRC included.
        let mut m = Muxer::new(Vec::new(), TsCodec::H264);
        m.push_psi();
        let pat = &m.buf[..TS_PACKET_SIZE];
        let pmt = &m.buf[TS_PACKET_SIZE..];
        assert_eq!(
            &pat[..21],
            [
                0x47, 0x40, 0x00, 0x10, 0x00, 0x00, 0xb0, 0x0d, 0x00, 0x01, 0xc1, 0x00, 0x00, 0x00,
                0x01, 0xf0, 0x00, 0x2a, 0xb1, 0x04, 0xb2
            ]
        );
        assert_eq!(
            &pmt[..26],
            [
                0x47, 0x50, 0x00, 0x10, 0x00, 0x02, 0xb0, 0x12, 0x00, 0x01, 0xc1, 0x00, 0x00, 0xe1,
                0x00, 0xf0, 0x00, 0x1b, 0xe1, 0x00, 0xf0, 0x00, 0x15, 0xbd, 0x4d, 0x56
            ]
        );
        assert!(pmt[26..].iter().all(|&b| b == 0xff));
    }

    #[test]
    fn timestamps_encode_like_ffmpeg() {
        // From ffmpeg's first H.264 PES: PTS 133200, DTS 126000.
        let mut v = Vec::new();
        push_timestamp(&mut v, 0b0011, 133_200);
        push_timestamp(&mut v, 0b0001, 126_000);
        assert_eq!(
            v,
            [0x31, 0x00, 0x09, 0x10, 0xa1, 0x11, 0x00, 0x07, 0xd8, 0x61]
        );
        // All 33 bits, and modulo 2^33.
        let mut v = Vec::new();
        push_timestamp(&mut v, 0b0010, TS_WRAP - 1);
        assert_eq!(v, [0x2f, 0xff, 0xff, 0xff, 0xff]);
        let mut w = Vec::new();
        push_timestamp(&mut w, 0b0010, -1);
        assert_eq!(v, w);
    }

    #[test]
    fn not_annex_b_is_refused() {
        let mut m = Muxer::new(Vec::new(), TsCodec::H264);
        for data in [
            &[][..],
            &[0, 0, 0, 5, 0x65, 1],
            &[0, 1, 0x65],
            &[1, 0, 0, 1],
        ] {
            let e = m.write(data, 0, None, true).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        }
        assert!(m.write(&[0, 0, 1, 0x65, 1], 0, None, true).is_ok());
        // Extreme timestamps are written modulo 2^33, without overflow.
        for (pts, dts) in [(i64::MAX, i64::MIN), (i64::MIN, i64::MAX), (-1, -1)] {
            m.write(&[0, 0, 1, 0x41, 1], pts, Some(dts), false).unwrap();
        }
    }
}
