//! A small MPEG-2 transport stream (ISO/IEC 13818-1) demuxer and muxer for
//! one H.264 or H.265 video stream, with no dependencies.
//!
//! Why not a library: the CLI only needs to move *encoded* access units
//! between ffmpeg and a cuframes packet stream. ffmpeg does all container
//! work (`ffmpeg -i FILE -map 0:v:0 -c copy -f mpegts pipe:1` into the
//! [`Demuxer`]; the [`Muxer`] into `ffmpeg -f mpegts -i pipe:0 -c copy
//! out.mp4`), and MPEG-TS is the one container both ends can stream through
//! a pipe without seeking. What remains is a few hundred lines of TS/PES
//! framing, which is cheaper to own than a codec-library dependency.
//!
//! Scope: the first H.264 (`stream_type` 0x1b) or HEVC (0x24) stream of the
//! first program that has one; one access unit per PES packet, which is what
//! ffmpeg's muxer writes for video. Everything else in the multiplex (audio,
//! SDT, null packets) is skipped.
//!
//! Robustness: the demuxer parses untrusted bytes, so no input makes it
//! panic or grow without bound; malformed structures are skipped (PSI with a
//! bad CRC or a length past the end) or reported as a [`DemuxError`] (a
//! malformed PES header, a PES over the size cap).

mod demux;
mod mux;
mod nal;

pub use demux::{DemuxError, Demuxer, EsPacket};
pub use mux::Muxer;
pub use nal::{avcc_parameter_sets, length_prefixed_to_annexb, parameter_sets};

/// Video codecs the TS layer knows (stream_type 0x1b and 0x24).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TsCodec {
    H264,
    Hevc,
}

impl TsCodec {
    /// The PMT `stream_type` of this codec (ISO/IEC 13818-1 table 2-34).
    pub fn stream_type(self) -> u8 {
        match self {
            TsCodec::H264 => 0x1b,
            TsCodec::Hevc => 0x24,
        }
    }

    /// The codec of a PMT `stream_type`, if it is one this module handles.
    pub fn from_stream_type(stream_type: u8) -> Option<Self> {
        match stream_type {
            0x1b => Some(TsCodec::H264),
            0x24 => Some(TsCodec::Hevc),
            _ => None,
        }
    }

    /// Short name, as ffmpeg spells it.
    pub fn name(self) -> &'static str {
        match self {
            TsCodec::H264 => "h264",
            TsCodec::Hevc => "hevc",
        }
    }
}

/// Every TS packet is 188 bytes (no 192-byte M2TS timecode prefix here).
pub(crate) const TS_PACKET_SIZE: usize = 188;
/// The first byte of every TS packet.
pub(crate) const SYNC_BYTE: u8 = 0x47;
/// PTS, DTS and the PCR base are 33-bit counters of a 90 kHz clock.
pub(crate) const TS_WRAP: i64 = 1 << 33;

/// CRC-32/MPEG-2 (polynomial 0x04C11DB7, MSB first, initial value all ones,
/// no final xor) as PSI sections carry it (ISO/IEC 13818-1 annex A). Run
/// over a whole section including its CRC field it yields 0, which is how
/// the demuxer checks one.
pub(crate) fn crc32_mpeg(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &byte in data {
        crc ^= u32::from(byte) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04c1_1db7
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    //! Mux ↔ demux round trips on synthetic streams, hostile input, and
    //! comparisons with ffmpeg/ffprobe on real encoder output (skipped only
    //! when `ffmpeg` is not on PATH).

    use super::demux::PMT_SEARCH_PACKETS;
    use super::nal::{is_keyframe, nal_type, nal_units};
    use super::*;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// xorshift64: reproducible noise without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }

        /// Bytes 1..=255: no accidental start codes in synthetic NAL units.
        fn nonzero_bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| 1 + self.below(255) as u8).collect()
        }
    }

    /// One access unit as given to the muxer: data, pts, dts, key.
    type Au = (Vec<u8>, i64, Option<i64>, bool);

    /// Access units shaped like an encoder's: AUD first, parameter sets and
    /// an IDR/IRAP slice on keys (every 10th), B-frame style timestamps
    /// (some with dts == pts, written as PTS only), sizes from a few bytes
    /// to several TS packets, and one large picture.
    fn synthetic(codec: TsCodec, count: usize, seed: u64) -> Vec<Au> {
        let mut rng = Rng(seed);
        let nal = |rng: &mut Rng, header: &[u8], len: usize| {
            let mut v = vec![0, 0, 0, 1];
            v.extend_from_slice(header);
            v.extend(rng.nonzero_bytes(len));
            v
        };
        (0..count)
            .map(|i| {
                let key = i % 10 == 0;
                let mut data = Vec::new();
                match codec {
                    TsCodec::H264 => {
                        data.extend(nal(&mut rng, &[0x09], 1));
                        if key {
                            data.extend(nal(&mut rng, &[0x67], 12));
                            data.extend(nal(&mut rng, &[0x68], 4));
                        }
                    }
                    TsCodec::Hevc => {
                        data.extend(nal(&mut rng, &[0x46, 0x01], 1));
                        if key {
                            data.extend(nal(&mut rng, &[0x40, 0x01], 20));
                            data.extend(nal(&mut rng, &[0x42, 0x01], 30));
                            data.extend(nal(&mut rng, &[0x44, 0x01], 5));
                        }
                    }
                }
                let size = match i {
                    7 => 150_000,
                    _ if key => 2_000 + rng.below(3_000),
                    _ => rng.below(700),
                };
                let slice: &[u8] = match (codec, key) {
                    (TsCodec::H264, true) => &[0x65],
                    (TsCodec::H264, false) => &[0x41],
                    (TsCodec::Hevc, true) => &[0x26, 0x01], // IDR_W_RADL
                    (TsCodec::Hevc, false) => &[0x02, 0x01], // TRAIL_R
                };
                data.extend(nal(&mut rng, slice, size));
                let dts = 126_000 + 3_600 * i as i64;
                let pts = if i % 4 == 3 { dts } else { dts + 7_200 };
                (data, pts, Some(dts), key)
            })
            .collect()
    }

    fn mux(codec: TsCodec, aus: &[Au]) -> Vec<u8> {
        let mut m = Muxer::new(Vec::new(), codec);
        for (data, pts, dts, key) in aus {
            m.write(data, *pts, *dts, *key).unwrap();
        }
        m.finish().unwrap()
    }

    /// What the demuxer should give back for muxed access units.
    fn expected(aus: &[Au]) -> Vec<EsPacket> {
        aus.iter()
            .enumerate()
            .map(|(i, (data, pts, dts, key))| EsPacket {
                data: data.clone(),
                pts: Some(*pts),
                dts: Some(dts.unwrap_or(*pts)),
                duration: aus
                    .get(i + 1)
                    .map(|next| next.2.unwrap_or(next.1) - dts.unwrap_or(*pts)),
                key: *key,
                discontinuity: false,
            })
            .collect()
    }

    /// Demuxes `bytes` pushed `chunk` bytes at a time; after an error it
    /// goes on (an empty push continues after the offending packet).
    fn demux_all(
        bytes: &[u8],
        chunk: usize,
        mut demuxer: Demuxer,
    ) -> (Vec<EsPacket>, Vec<DemuxError>, Option<TsCodec>) {
        let mut out = Vec::new();
        let mut errors = Vec::new();
        for piece in bytes.chunks(chunk.max(1)) {
            let mut r = demuxer.push(piece, &mut out);
            while let Err(e) = r {
                errors.push(e);
                r = demuxer.push(&[], &mut out);
            }
        }
        demuxer.finish(&mut out);
        (out, errors, demuxer.codec())
    }

    fn demux(bytes: &[u8], chunk: usize) -> Vec<EsPacket> {
        let (out, errors, _) = demux_all(bytes, chunk, Demuxer::new());
        assert_eq!(errors, vec![], "chunk {chunk}");
        out
    }

    /// Compares packet lists, printing a short line per packet on failure
    /// (not megabytes of data).
    fn assert_packets(got: &[EsPacket], want: &[EsPacket], context: &str) {
        let line = |p: &EsPacket| {
            let sum = p
                .data
                .iter()
                .fold(0u32, |h, &b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
            format!(
                "{} bytes (sum {sum:08x}) pts {:?} dts {:?} dur {:?} key {} disc {}",
                p.data.len(),
                p.pts,
                p.dts,
                p.duration,
                p.key,
                p.discontinuity
            )
        };
        if got != want {
            let g: Vec<String> = got.iter().map(line).collect();
            let w: Vec<String> = want.iter().map(line).collect();
            panic!("{context}: got\n{}\nwant\n{}", g.join("\n"), w.join("\n"));
        }
    }

    fn pid_of(packet: &[u8]) -> u16 {
        u16::from(packet[1] & 0x1f) << 8 | u16::from(packet[2])
    }

    /// Checks the muxer's TS framing; returns (random_access_indicator, PCR
    /// base) of each PES's first packet.
    fn check_structure(ts: &[u8]) -> Vec<(bool, i64)> {
        assert_eq!(ts.len() % TS_PACKET_SIZE, 0);
        let mut cc: std::collections::HashMap<u16, u8> = Default::default();
        let mut starts = Vec::new();
        for (i, p) in ts.chunks(TS_PACKET_SIZE).enumerate() {
            assert_eq!(p[0], SYNC_BYTE, "packet {i}");
            let pid = pid_of(p);
            assert!(
                [0, mux::PMT_PID, mux::VIDEO_PID].contains(&pid),
                "packet {i}: pid {pid:#x}"
            );
            // Every packet has a payload, so every counter steps by one.
            assert_ne!(p[3] & 0x10, 0);
            if let Some(last) = cc.insert(pid, p[3] & 0x0f) {
                assert_eq!(p[3] & 0x0f, (last + 1) & 0x0f, "packet {i}: continuity");
            }
            let af = if p[3] & 0x20 != 0 {
                usize::from(p[4]) + 1
            } else {
                0
            };
            assert!(4 + af <= TS_PACKET_SIZE);
            if pid != mux::VIDEO_PID {
                assert_ne!(p[1] & 0x40, 0);
                assert_eq!(af, 0);
                let len = 3 + (usize::from(p[6] & 0x0f) << 8 | usize::from(p[7]));
                assert_eq!(crc32_mpeg(&p[5..5 + len]), 0, "packet {i}: CRC");
                assert!(p[5 + len..].iter().all(|&b| b == 0xff));
            } else if p[1] & 0x40 != 0 {
                assert!(
                    af >= 8 && p[5] & 0x10 != 0,
                    "packet {i}: PCR in the first packet"
                );
                let pcr = (i64::from(p[6]) << 25)
                    | (i64::from(p[7]) << 17)
                    | (i64::from(p[8]) << 9)
                    | (i64::from(p[9]) << 1)
                    | (i64::from(p[10]) >> 7);
                starts.push((p[5] & 0x40 != 0, pcr));
                // Stuffing only at the end of the field.
                assert_eq!(&p[4 + af..4 + af + 3], [0, 0, 1]);
            }
        }
        // PAT and PMT come first.
        assert_eq!(pid_of(ts), 0);
        assert_eq!(pid_of(&ts[TS_PACKET_SIZE..]), mux::PMT_PID);
        starts
    }

    #[test]
    fn synthetic_round_trip_in_any_chunking() {
        for codec in [TsCodec::H264, TsCodec::Hevc] {
            let aus = synthetic(codec, 60, 7);
            let ts = mux(codec, &aus);
            let starts = check_structure(&ts);
            assert_eq!(starts.len(), aus.len());
            for ((rai, pcr), (_, _, dts, key)) in starts.iter().zip(&aus) {
                assert_eq!(*rai, *key);
                assert_eq!(*pcr, dts.unwrap() - 63_000);
            }
            // PAT/PMT every 100 ms at least: 60 frames at 25 fps is 2.4 s.
            let pats = ts.chunks(TS_PACKET_SIZE).filter(|p| pid_of(p) == 0).count();
            assert!((24..=30).contains(&pats), "{pats} PATs");
            let want = expected(&aus);
            for chunk in [1, 7, 188, 189, 4096, ts.len()] {
                let (got, errors, got_codec) = demux_all(&ts, chunk, Demuxer::new());
                assert_eq!(errors, vec![]);
                assert_eq!(got_codec, Some(codec));
                assert_packets(&got, &want, &format!("{codec:?} chunk {chunk}"));
            }
        }
    }

    #[test]
    fn every_stuffing_length() {
        // Payload sizes around one and two packets' room hit every amount of
        // stuffing, including the 1-byte adaptation field (length 0 only).
        for codec in [TsCodec::H264, TsCodec::Hevc] {
            for size in 0..420 {
                let mut data = match codec {
                    TsCodec::H264 => vec![0, 0, 0, 1, 0x09, 0xf0, 0, 0, 1, 0x65],
                    TsCodec::Hevc => vec![0, 0, 0, 1, 0x46, 0x01, 0x50, 0, 0, 1, 0x26, 0x01],
                };
                data.extend(Rng(size as u64 + 1).nonzero_bytes(size));
                let mut delta = data.clone();
                match codec {
                    TsCodec::H264 => delta[9] = 0x41,
                    TsCodec::Hevc => delta[10] = 0x02,
                }
                let aus = vec![
                    (data, 90_000, Some(86_400), true),
                    (delta, 93_600, None, false),
                ];
                let ts = mux(codec, &aus);
                check_structure(&ts);
                assert_packets(&demux(&ts, 188), &expected(&aus), &format!("size {size}"));
            }
        }
    }

    #[test]
    fn timestamps_unwrap_across_33_bits() {
        let codec = TsCodec::H264;
        let mut aus = synthetic(codec, 40, 3);
        let base = TS_WRAP - 20 * 3_600;
        for (i, au) in aus.iter_mut().enumerate() {
            let dts = base + 3_600 * i as i64;
            *au = (au.0.clone(), dts + 3_600, Some(dts), au.3);
        }
        let got = demux(&mux(codec, &aus), 4096);
        assert_packets(&got, &expected(&aus), "wrap");
        assert!(got.last().unwrap().dts.unwrap() > TS_WRAP);
    }

    #[test]
    fn delimiter_and_parameter_sets_are_added() {
        // H.264 without an AUD: one is put in front.
        let idr = vec![0, 0, 0, 1, 0x65, 0x88, 0x84];
        let got = demux(&mux(TsCodec::H264, &[(idr.clone(), 0, None, true)]), 188);
        assert_eq!(got[0].data, [&[0, 0, 0, 1, 0x09, 0xf0][..], &idr].concat());
        assert!(got[0].key);
        let hevc = vec![0, 0, 1, 0x02, 0x01, 0x7f];
        let got = demux(&mux(TsCodec::Hevc, &[(hevc.clone(), 0, None, false)]), 188);
        assert_eq!(
            got[0].data,
            [&[0, 0, 0, 1, 0x46, 0x01, 0x50][..], &hevc].concat()
        );
        assert!(!got[0].key);

        // Parameter sets go after the AUD of keyframes that lack them, and
        // only there.
        let ps = vec![0, 0, 0, 1, 0x67, 0x42, 0, 0, 0, 1, 0x68, 0xce];
        let aud = [0, 0, 0, 1, 0x09, 0xf0];
        let key = [&aud[..], &idr].concat();
        let delta = [&aud[..], &[0, 0, 1, 0x41, 0x9a]].concat();
        let with_ps = [&aud[..], &ps, &idr].concat();
        let mut m = Muxer::new(Vec::new(), TsCodec::H264);
        m.set_parameter_sets(Some(ps.clone()));
        m.write(&key, 0, None, true).unwrap();
        m.write(&delta, 3_600, None, false).unwrap();
        m.write(&with_ps, 7_200, None, true).unwrap();
        m.write(&idr, 10_800, None, true).unwrap();
        let got = demux(&m.finish().unwrap(), 100);
        let data: Vec<&[u8]> = got.iter().map(|p| &p.data[..]).collect();
        assert_eq!(data[0], &with_ps[..]);
        assert_eq!(data[1], &delta[..]);
        assert_eq!(data[2], &with_ps[..]);
        assert_eq!(data[3], &with_ps[..]);
        assert_eq!(parameter_sets(TsCodec::H264, data[0]), Some(ps.clone()));

        // Parameter sets a caller put in front of an access unit with its
        // own delimiter: the delimiter moves to the front, and stays one.
        let got = demux(
            &mux(TsCodec::H264, &[([&ps[..], &key].concat(), 0, None, true)]),
            188,
        );
        assert_eq!(got[0].data, with_ps);
        let hevc_aud = [0, 0, 0, 1, 0x46, 0x01, 0x50];
        let hevc_ps = [0, 0, 0, 1, 0x40, 0x01, 0xaa, 0, 0, 0, 1, 0x42, 0x01, 0xbb];
        let cra = [0, 0, 0, 1, 0x2a, 0x01, 0xcc];
        let got = demux(
            &mux(
                TsCodec::Hevc,
                &[([&hevc_ps[..], &hevc_aud, &cra].concat(), 0, None, true)],
            ),
            188,
        );
        assert_eq!(got[0].data, [&hevc_aud[..], &hevc_ps, &cra].concat());
        assert!(got[0].key);
    }

    #[test]
    fn resyncs_when_joined_mid_packet() {
        let codec = TsCodec::H264;
        let aus = synthetic(codec, 30, 11);
        let ts = mux(codec, &aus);
        let want = expected(&aus);
        // Garbage in front (with sync bytes in it): nothing is lost.
        let mut noisy = vec![0x47, 1, 2, 0x47, 0x47, 9];
        noisy.extend_from_slice(&ts);
        assert_packets(&demux(&noisy, 7), &want, "garbage in front");
        // Cut inside the first packets: the PAT is gone until its repeat
        // (100 ms on, or at a keyframe); from there on, all is as muxed.
        for cut in [1, 100, 188 + 50, 3 * 188 + 1, 5_000] {
            let got = demux(&ts[cut..], 61);
            assert!(!got.is_empty() && got.len() < want.len(), "cut {cut}");
            assert_packets(&got, &want[want.len() - got.len()..], &format!("cut {cut}"));
        }
    }

    #[test]
    fn lost_packets_mark_a_discontinuity() {
        let codec = TsCodec::H264;
        let aus = synthetic(codec, 20, 5);
        let ts = mux(codec, &aus);
        let packets: Vec<&[u8]> = ts.chunks(TS_PACKET_SIZE).collect();
        // The 150 kB access unit 7 spans hundreds of packets: drop one of
        // its middle ones.
        let mut starts = packets
            .iter()
            .enumerate()
            .filter(|(_, p)| pid_of(p) == mux::VIDEO_PID && p[1] & 0x40 != 0)
            .map(|(i, _)| i);
        let start7 = starts.nth(7).unwrap();
        let damaged: Vec<u8> = packets
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != start7 + 100)
            .flat_map(|(_, p)| p.iter().copied())
            .collect();
        let got = demux(&damaged, 1000);
        assert_eq!(got.len(), aus.len());
        for (i, p) in got.iter().enumerate() {
            // 7 lost bytes; 8 follows the loss.
            assert_eq!(p.discontinuity, i == 7 || i == 8, "packet {i}");
            assert_eq!(p.data.len() == aus[i].0.len(), i != 7);
        }
        assert_eq!(got[7].duration, None);
        // Dropping the start of 8: 7 gets 8's tail appended (no start code
        // tells them apart), 8 is gone, and 9 is marked; the timing across
        // the gap is not trusted.
        let start8 = packets
            .iter()
            .enumerate()
            .filter(|(_, p)| pid_of(p) == mux::VIDEO_PID && p[1] & 0x40 != 0)
            .nth(8)
            .unwrap()
            .0;
        let damaged: Vec<u8> = packets
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != start8)
            .flat_map(|(_, p)| p.iter().copied())
            .collect();
        let got = demux(&damaged, 1000);
        assert_eq!(got.len(), aus.len() - 1);
        let marked: Vec<usize> = (0..got.len()).filter(|&i| got[i].discontinuity).collect();
        assert_eq!(marked, vec![7, 8]);
        assert_eq!(got[8].dts, aus[9].2);
        assert_eq!(got[7].duration, None);
    }

    /// A TS with PAT and the given PMT body (after last_section_number),
    /// then `extra` null packets.
    fn ts_with_pmt(pmt_body: &[u8], extra: usize) -> Vec<u8> {
        let mut ts = Vec::new();
        let (mut cc0, mut cc1) = (0, 0);
        let pat = mux::section(0, 1, &[0, 1, 0xf0, 0x00]);
        mux::push_section_packet(&mut ts, 0, &mut cc0, &pat);
        let pmt = mux::section(2, 1, pmt_body);
        mux::push_section_packet(&mut ts, mux::PMT_PID, &mut cc1, &pmt);
        for _ in 0..extra {
            ts.extend_from_slice(&[0x47, 0x1f, 0xff, 0x10]);
            ts.resize(ts.len() + 184, 0xff);
        }
        ts
    }

    #[test]
    fn pmt_without_usable_video_is_an_error() {
        // AAC audio only.
        let audio = ts_with_pmt(&[0xe1, 0x01, 0xf0, 0, 0x0f, 0xe1, 0x01, 0xf0, 0], 0);
        let (_, errors, codec) = demux_all(&audio, 188, Demuxer::new());
        assert_eq!(
            errors,
            vec![DemuxError::NoVideoInProgram {
                stream_types: vec![0x0f]
            }]
        );
        assert_eq!(codec, None);
        // MPEG-2 video and AAC.
        let mpeg2 = ts_with_pmt(
            &[
                0xe1, 0x00, 0xf0, 0, 0x0f, 0xe1, 0x01, 0xf0, 0, 0x02, 0xe1, 0x00, 0xf0, 0,
            ],
            0,
        );
        let (_, errors, _) = demux_all(&mpeg2, 188, Demuxer::new());
        assert_eq!(
            errors,
            vec![DemuxError::UnsupportedCodec { stream_type: 0x02 }]
        );
        assert!(
            errors[0].to_string().contains("MPEG-2 video"),
            "{}",
            errors[0]
        );
        // HEVC after MPEG-2 in the same PMT: the first usable one is taken.
        let hevc = ts_with_pmt(
            &[
                0xe1, 0x00, 0xf0, 0, 0x02, 0xe1, 0x00, 0xf0, 0, 0x24, 0xe1, 0x02, 0xf0, 0,
            ],
            0,
        );
        let (_, errors, codec) = demux_all(&hevc, 188, Demuxer::new());
        assert_eq!((errors, codec), (vec![], Some(TsCodec::Hevc)));
        // A PMT whose CRC is wrong is ignored; then no PMT is found at all.
        let mut bad_crc = ts_with_pmt(
            &[0xe1, 0x00, 0xf0, 0, 0x1b, 0xe1, 0x00, 0xf0, 0],
            PMT_SEARCH_PACKETS as usize,
        );
        bad_crc[188 + 5 + 10] ^= 1;
        let (_, errors, codec) = demux_all(&bad_crc, 4096, Demuxer::new());
        assert_eq!(
            errors,
            vec![DemuxError::NoVideoStream {
                packets: PMT_SEARCH_PACKETS
            }]
        );
        assert_eq!(codec, None);
        for e in [
            DemuxError::NoVideoInProgram {
                stream_types: vec![],
            },
            DemuxError::PesHeader { reason: "x" },
            DemuxError::PesTooLarge { limit: 1 },
            DemuxError::NoVideoStream { packets: 1 },
        ] {
            assert!(e.to_string().len() > 20);
        }
    }

    #[test]
    fn oversized_and_malformed_pes_are_errors_and_the_stream_goes_on() {
        let codec = TsCodec::H264;
        let aus = synthetic(codec, 12, 9);
        let ts = mux(codec, &aus);
        // Access unit 7 is 150 kB: over a 100 kB cap.
        let (got, errors, _) = demux_all(&ts, 4096, Demuxer::new().with_max_pes_size(100_000));
        assert_eq!(errors, vec![DemuxError::PesTooLarge { limit: 100_000 }]);
        let mut want = expected(&aus);
        want.remove(7);
        // 6 keeps its duration: 7's header (its DTS) was read before 7 grew
        // too large.
        want[7].discontinuity = true;
        assert_packets(&got, &want, "PES over the cap");

        // A video PES that does not start with 00 00 01.
        let mut broken = ts.clone();
        let start3 = broken
            .chunks(TS_PACKET_SIZE)
            .enumerate()
            .filter(|(_, p)| pid_of(p) == mux::VIDEO_PID && p[1] & 0x40 != 0)
            .nth(3)
            .unwrap()
            .0;
        let p = start3 * TS_PACKET_SIZE;
        let payload = p + 4 + 1 + usize::from(broken[p + 4]);
        broken[payload + 2] = 2;
        let (got, errors, _) = demux_all(&broken, 500, Demuxer::new());
        assert_eq!(errors.len(), 1);
        assert!(
            matches!(errors[0], DemuxError::PesHeader { .. }),
            "{:?}",
            errors[0]
        );
        assert_eq!(got.len(), aus.len() - 1);
        assert!(got[3].discontinuity && got[3].dts == aus[4].2);
    }

    /// Feeds `data` in random chunks; the demuxer must neither panic nor
    /// return more than the input could hold.
    /// What the hostile passes ran into, to show they reach the parsers.
    #[derive(Debug, Default)]
    struct Tally {
        packets: usize,
        keys: usize,
        discontinuities: usize,
        pes_header: usize,
        no_video: usize,
        unsupported: usize,
        other_errors: usize,
    }

    fn hostile_pass(data: &[u8], rng: &mut Rng, tally: &mut Tally) {
        let mut demuxer = Demuxer::new().with_max_pes_size(1 << 20);
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < data.len() {
            let max = if rng.below(2) == 0 { 16 } else { 3000 };
            let n = 1 + rng.below(max);
            let piece = &data[pos..(pos + n).min(data.len())];
            pos += piece.len();
            let mut r = demuxer.push(piece, &mut out);
            while let Err(e) = r {
                match e {
                    DemuxError::PesHeader { .. } => tally.pes_header += 1,
                    DemuxError::NoVideoInProgram { .. } => tally.no_video += 1,
                    DemuxError::UnsupportedCodec { .. } => tally.unsupported += 1,
                    _ => tally.other_errors += 1,
                }
                r = demuxer.push(&[], &mut out);
            }
        }
        demuxer.finish(&mut out);
        tally.packets += out.len();
        tally.keys += out.iter().filter(|p| p.key).count();
        tally.discontinuities += out.iter().filter(|p| p.discontinuity).count();
        let total: usize = out.iter().map(|p| p.data.len()).sum();
        assert!(total <= data.len());
        assert!(out.len() <= data.len() / TS_PACKET_SIZE + 1);
    }

    /// Damages a TS a few times over: bit flips (most in packet headers,
    /// adaptation and PES headers, where the parsing is), byte runs set to
    /// 0x00/0xff/0x47, cuts, repeats and truncation.
    fn mutate(ts: &[u8], rng: &mut Rng) -> Vec<u8> {
        let mut v = ts.to_vec();
        for _ in 0..1 + rng.below(6) {
            if v.is_empty() {
                break;
            }
            let at = if rng.below(3) > 0 {
                (rng.below(v.len() / TS_PACKET_SIZE + 1) * TS_PACKET_SIZE + rng.below(24))
                    .min(v.len() - 1)
            } else {
                rng.below(v.len())
            };
            match rng.below(6) {
                0 | 1 => v[at] ^= 1 << rng.below(8),
                2 => {
                    let fill = [0x00, 0xff, 0x47][rng.below(3)];
                    let end = (at + 1 + rng.below(8)).min(v.len());
                    v[at..end].fill(fill);
                }
                3 => {
                    let end = (at + rng.below(400)).min(v.len());
                    v.drain(at..end);
                }
                4 => {
                    let end = (at + rng.below(400)).min(v.len());
                    let copy = v[at..end].to_vec();
                    v.splice(at..at, copy);
                }
                _ => v.truncate(at),
            }
        }
        v
    }

    #[test]
    fn hostile_input_never_panics() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut tally = Tally::default();
        // Pure noise, and noise framed as TS packets on the PIDs in play.
        for _ in 0..200 {
            let n = rng.below(20_000);
            let noise: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            hostile_pass(&noise, &mut rng, &mut tally);
            let mut framed = Vec::new();
            for _ in 0..rng.below(60) {
                let pid = [0u16, mux::PMT_PID, mux::VIDEO_PID][rng.below(3)];
                framed.extend_from_slice(&[
                    0x47,
                    (rng.next() as u8 & 0xe0) | (pid >> 8) as u8,
                    pid as u8,
                ]);
                framed.extend((0..185).map(|_| rng.next() as u8));
            }
            hostile_pass(&framed, &mut rng, &mut tally);
        }
        // PMTs with a valid CRC: random bodies, and well-formed ones of
        // random streams with lengths sometimes off: the PMT parser and the
        // stream choice.
        let kinds = [0x1b, 0x24, 0x02, 0x0f, 0x06, 0xea, 0x81];
        for _ in 0..2_000 {
            let mut body = vec![0xe1, 0x00];
            if rng.below(4) == 0 {
                let n = rng.below(40);
                body.extend((0..n).map(|_| rng.next() as u8));
            } else {
                let info = rng.below(4);
                body.extend_from_slice(&[0xf0, info as u8]);
                body.extend((0..info).map(|_| rng.next() as u8));
                for _ in 0..rng.below(4) {
                    let es_info = rng.below(4);
                    let pid = [0x100, 0, 0x1fff, 0x1000, rng.below(0x2000) as u16][rng.below(5)];
                    let stated = if rng.below(8) == 0 {
                        rng.below(300)
                    } else {
                        es_info
                    };
                    body.extend_from_slice(&[
                        kinds[rng.below(kinds.len())],
                        0xe0 | (pid >> 8) as u8,
                        pid as u8,
                    ]);
                    body.extend_from_slice(&[0xf0 | (stated >> 8) as u8, stated as u8]);
                    body.extend((0..es_info).map(|_| rng.next() as u8));
                }
            }
            hostile_pass(&ts_with_pmt(&body, 2), &mut rng, &mut tally);
        }
        // A valid PAT/PMT, then random video PES headers and fields.
        for _ in 0..500 {
            let mut ts = ts_with_pmt(&[0xe1, 0x00, 0xf0, 0, 0x1b, 0xe1, 0x00, 0xf0, 0], 0);
            for cc in 0..rng.below(12) {
                let mut p = vec![
                    0x47,
                    0x01 | (rng.below(2) as u8) << 6,
                    0x00,
                    rng.next() as u8 & 0x30 | cc as u8,
                ];
                p.extend_from_slice(&[rng.below(200) as u8, rng.next() as u8]);
                if rng.below(2) == 0 {
                    p.extend_from_slice(&[0, 0, 1, 0xe0, rng.next() as u8, rng.next() as u8, 0x80]);
                }
                p.extend((p.len()..TS_PACKET_SIZE).map(|_| rng.next() as u8));
                ts.extend_from_slice(&p);
            }
            hostile_pass(&ts, &mut rng, &mut tally);
        }
        // Mutations of valid streams: ours for both codecs...
        for codec in [TsCodec::H264, TsCodec::Hevc] {
            let aus = synthetic(codec, 14, 1);
            // Leave out the 150 kB access unit: short inputs, many rounds.
            let ts = mux(codec, &[&aus[..7], &aus[8..]].concat());
            for _ in 0..1_500 {
                hostile_pass(&mutate(&ts, &mut rng), &mut rng, &mut tally);
            }
        }
        // ...and ffmpeg's, where there is one.
        if let Some(dir) = ffmpeg_dir("hostile") {
            let src = encode(&dir, "h264", &["-c:v", "libx264"]);
            let ts = std::fs::read(src).unwrap();
            let head = &ts[..(80 * TS_PACKET_SIZE).min(ts.len())];
            for _ in 0..1_500 {
                hostile_pass(&mutate(head, &mut rng), &mut rng, &mut tally);
            }
            hostile_pass(&mutate(&ts, &mut rng), &mut rng, &mut tally);
        }
        eprintln!("{tally:?}");
        assert!(tally.packets > 10_000 && tally.keys > 1_000 && tally.discontinuities > 100);
        assert!(tally.pes_header > 100 && tally.no_video > 10 && tally.unsupported > 10);
    }

    // ---- against ffmpeg ----

    /// A fresh directory removed on drop.
    struct TempDir(PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A temporary directory for an ffmpeg test, or None (with a note) when
    /// there is no `ffmpeg` on PATH.
    fn ffmpeg_dir(tag: &str) -> Option<TempDir> {
        if Command::new("ffmpeg").arg("-version").output().is_err() {
            eprintln!("note: ffmpeg is not on PATH; skipping the ffmpeg part of this test");
            return None;
        }
        let dir =
            std::env::temp_dir().join(format!("cuframes-mpegts-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Some(TempDir(dir))
    }

    /// Runs a command; panics unless it succeeds with nothing on stderr.
    fn run_quiet(program: &str, args: &[&str]) -> String {
        let out = Command::new(program).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "{program} {args:?}: {}\n{stderr}",
            out.status
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn arg(path: &Path) -> &str {
        path.to_str().unwrap()
    }

    /// 4 s of testsrc at 25 fps (100 frames), GOP 25, 2 B-frames, as TS.
    fn encode(dir: &TempDir, name: &str, codec_args: &[&str]) -> PathBuf {
        let path = dir.0.join(format!("{name}.ts"));
        let mut args = vec![
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x240:rate=25",
            "-t",
            "4",
        ];
        args.extend_from_slice(codec_args);
        args.extend_from_slice(&["-g", "25", "-bf", "2", "-f", "mpegts", arg(&path)]);
        run_quiet("ffmpeg", &args);
        path
    }

    /// ffprobe's view of the video packets: (pts, dts, size, key).
    fn ffprobe_packets(path: &Path) -> Vec<(Option<i64>, Option<i64>, usize, bool)> {
        let csv = run_quiet(
            "ffprobe",
            &[
                "-v",
                "error",
                "-select_streams",
                "v:0",
                "-show_packets",
                "-show_entries",
                "packet=pts,dts,size,flags",
                "-of",
                "csv=p=0",
                arg(path),
            ],
        );
        // Lines may carry side data after the four fields; some are empty.
        csv.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|line| {
                let f: Vec<&str> = line.split(',').collect();
                assert!(f.len() >= 4, "{line}");
                (
                    f[0].parse().ok(),
                    f[1].parse().ok(),
                    f[2].parse().unwrap(),
                    f[3].starts_with('K'),
                )
            })
            .collect()
    }

    fn has_encoder(name: &str) -> bool {
        let out = Command::new("ffmpeg")
            .args(["-hide_banner", "-encoders"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .any(|w| w == name)
    }

    fn ours(packets: &[EsPacket]) -> Vec<(Option<i64>, Option<i64>, usize, bool)> {
        packets
            .iter()
            .map(|p| (p.pts, p.dts, p.data.len(), p.key))
            .collect()
    }

    /// Demuxes ffmpeg's TS in odd chunkings and compares with ffprobe.
    fn matches_ffprobe(codec: TsCodec, encoder: &str, extra: &[&str]) {
        let Some(dir) = ffmpeg_dir(codec.name()) else {
            return;
        };
        if !has_encoder(encoder) {
            eprintln!("note: this ffmpeg has no {encoder}; skipping");
            return;
        }
        let src = encode(
            &dir,
            codec.name(),
            &[&["-c:v", encoder][..], extra].concat(),
        );
        let ts = std::fs::read(&src).unwrap();
        let probe = ffprobe_packets(&src);
        assert_eq!(probe.len(), 100);
        let reference = demux(&ts, ts.len());
        for chunk in [1, 7, 4096] {
            let (got, errors, got_codec) = demux_all(&ts, chunk, Demuxer::new());
            assert_eq!(errors, vec![]);
            assert_eq!(got_codec, Some(codec));
            assert_eq!(got, reference, "chunk {chunk}");
        }
        // ffmpeg's HEVC parser counts the first zero of a 4-byte start code
        // as the end of the access unit before (trailing_zero_8bits), so
        // its sizes are one more where the next access unit starts with
        // one, and one less where this one does (but not the first).
        // ffmpeg's H.264 parser keeps the 4-byte start codes whole.
        let starts4 = |p: &EsPacket| p.data.starts_with(&[0, 0, 0, 1]);
        let mut want = ours(&reference);
        if codec == TsCodec::Hevc {
            for i in 0..want.len() {
                let plus = reference.get(i + 1).is_some_and(starts4);
                let minus = i > 0 && starts4(&reference[i]);
                want[i].2 = want[i].2 + usize::from(plus) - usize::from(minus);
            }
        }
        assert_eq!(want, probe);
        assert!(reference.iter().all(|p| !p.discontinuity));
        // 25 fps: every duration is 3600 but the last.
        assert!(reference[..99].iter().all(|p| p.duration == Some(3_600)));
        assert_eq!(reference[99].duration, None);
        let ps =
            parameter_sets(codec, &reference[0].data).expect("parameter sets in the first packet");
        let types: Vec<u8> = nal_units(&ps).filter_map(|n| nal_type(codec, n)).collect();
        match codec {
            TsCodec::H264 => assert_eq!(types, [7, 8]),
            TsCodec::Hevc => assert_eq!(types, [32, 33, 34]),
        }
        assert!(is_keyframe(codec, &reference[0].data));
    }

    #[test]
    fn h264_from_ffmpeg_matches_ffprobe() {
        matches_ffprobe(TsCodec::H264, "libx264", &[]);
    }

    #[test]
    fn hevc_from_ffmpeg_matches_ffprobe() {
        matches_ffprobe(
            TsCodec::Hevc,
            "libx265",
            &["-x265-params", "log-level=error"],
        );
    }

    /// ffmpeg's TS → our demuxer → our muxer → ffmpeg remuxes it to MP4
    /// and Matroska and decodes it without a word, frame for frame.
    fn round_trip_through_ffmpeg(codec: TsCodec, encoder: &str, extra: &[&str]) {
        let Some(dir) = ffmpeg_dir(&format!("rt-{}", codec.name())) else {
            return;
        };
        if !has_encoder(encoder) {
            eprintln!("note: this ffmpeg has no {encoder}; skipping");
            return;
        }
        let src = encode(
            &dir,
            codec.name(),
            &[&["-c:v", encoder][..], extra].concat(),
        );
        let packets = demux(&std::fs::read(&src).unwrap(), 4096);
        assert_eq!(packets.len(), 100);

        let ours_path = dir.0.join("ours.ts");
        let file = std::io::BufWriter::new(std::fs::File::create(&ours_path).unwrap());
        let mut m = Muxer::new(file, codec);
        for p in &packets {
            m.write(&p.data, p.pts.unwrap(), p.dts, p.key).unwrap();
        }
        m.finish().unwrap();
        let ours_ts = std::fs::read(&ours_path).unwrap();
        check_structure(&ours_ts);
        // Our demuxer reads our TS back exactly.
        assert_eq!(demux(&ours_ts, 7), packets);
        // ffprobe sees the same packets in ours as in ffmpeg's.
        assert_eq!(ffprobe_packets(&ours_path), ffprobe_packets(&src));

        for container in ["mp4", "mkv"] {
            let out = dir.0.join(format!("out.{container}"));
            run_quiet(
                "ffmpeg",
                &[
                    "-v",
                    "error",
                    "-y",
                    "-f",
                    "mpegts",
                    "-i",
                    arg(&ours_path),
                    "-c",
                    "copy",
                    arg(&out),
                ],
            );
            run_quiet(
                "ffmpeg",
                &["-v", "error", "-i", arg(&out), "-f", "null", "-"],
            );
            let frames = run_quiet(
                "ffprobe",
                &[
                    "-v",
                    "error",
                    "-count_frames",
                    "-select_streams",
                    "v:0",
                    "-show_entries",
                    "stream=nb_read_frames",
                    "-of",
                    "csv=p=0",
                    arg(&out),
                ],
            );
            assert_eq!(frames.trim(), "100", "{container}");
        }
        run_quiet(
            "ffmpeg",
            &["-v", "error", "-i", arg(&ours_path), "-f", "null", "-"],
        );
    }

    #[test]
    fn h264_round_trip_through_ffmpeg() {
        round_trip_through_ffmpeg(TsCodec::H264, "libx264", &[]);
    }

    #[test]
    fn hevc_round_trip_through_ffmpeg() {
        round_trip_through_ffmpeg(
            TsCodec::Hevc,
            "libx265",
            &["-x265-params", "log-level=error"],
        );
    }
}
