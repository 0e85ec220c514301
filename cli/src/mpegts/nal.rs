//! Annex B NAL unit helpers for H.264 (ITU-T H.264 7.3.1, annex B) and
//! H.265 (ITU-T H.265 7.3.1.2, annex B), and the conversion from the
//! length-prefixed form MP4/Matroska store (ISO/IEC 14496-15: avcC, hvcC).
//!
//! Only NAL unit headers are read: no emulation-prevention removal, no
//! bitstream parsing. That is all keyframe detection and parameter-set
//! extraction need.

use super::TsCodec;
use std::fmt;

/// The NAL units of an Annex B byte stream: the bytes after each start code
/// (`00 00 01`, or `00 00 00 01`, which is the same with a leading zero) up
/// to the next one, without trailing zero bytes (`trailing_zero_8bits`, and
/// the first zero of a 4-byte start code). A NAL unit never ends in a zero
/// byte (its last byte holds the RBSP stop bit, and a trailing
/// `cabac_zero_word` gets a `03` appended), so the trimming is exact. Bytes
/// before the first start code and empty NAL units are skipped.
pub fn nal_units(data: &[u8]) -> NalUnits<'_> {
    NalUnits(NalSpans::new(data))
}

/// Iterator returned by [`nal_units`].
#[derive(Debug, Clone)]
pub struct NalUnits<'a>(NalSpans<'a>);

impl<'a> Iterator for NalUnits<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let span = self.0.next()?;
        Some(&self.0.data[span.start..span.end])
    }
}

/// Where a NAL unit lies in an Annex B byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NalSpan {
    /// The first byte of its `00 00 01` start code.
    pub code: usize,
    /// Its first byte (the NAL unit header).
    pub start: usize,
    /// Just after its last non-zero byte.
    pub end: usize,
}

/// The spans of the NAL units [`nal_units`] yields.
#[derive(Debug, Clone)]
pub(crate) struct NalSpans<'a> {
    data: &'a [u8],
    /// The next start code: (its first byte, the byte after it).
    next: Option<(usize, usize)>,
}

impl<'a> NalSpans<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        NalSpans {
            data,
            next: find_start_code(data, 0),
        }
    }
}

impl Iterator for NalSpans<'_> {
    type Item = NalSpan;

    fn next(&mut self) -> Option<NalSpan> {
        while let Some((code, start)) = self.next {
            self.next = find_start_code(self.data, start);
            let limit = self
                .next
                .map_or(self.data.len(), |(next_code, _)| next_code);
            let end = start + trim_trailing_zeros(&self.data[start..limit]).len();
            if end > start {
                return Some(NalSpan { code, start, end });
            }
        }
        None
    }
}

/// The first `00 00 01` at or after `from`: (index of its first byte, index
/// just after it).
fn find_start_code(data: &[u8], from: usize) -> Option<(usize, usize)> {
    let tail = data.get(from..)?;
    tail.windows(3)
        .position(|w| w == [0, 0, 1])
        .map(|i| (from + i, from + i + 3))
}

pub(crate) fn trim_trailing_zeros(nal: &[u8]) -> &[u8] {
    let len = nal.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    &nal[..len]
}

/// The `nal_unit_type` of a NAL unit (its header's first byte): 5 bits in
/// H.264, 6 bits after the forbidden bit in H.265. None for an empty slice.
pub fn nal_type(codec: TsCodec, nal: &[u8]) -> Option<u8> {
    let &first = nal.first()?;
    Some(match codec {
        TsCodec::H264 => first & 0x1f,
        TsCodec::Hevc => (first >> 1) & 0x3f,
    })
}

/// Whether a NAL unit type carries slice data (a VCL NAL unit): H.264 types
/// 1..=5, H.265 types 0..=31.
fn is_vcl(codec: TsCodec, nal_type: u8) -> bool {
    match codec {
        TsCodec::H264 => (1..=5).contains(&nal_type),
        TsCodec::Hevc => nal_type <= 31,
    }
}

/// Whether a NAL unit type is a picture a decoder can start at: an IDR
/// slice (H.264 type 5) or an IRAP picture (H.265 types 16..=23: BLA, IDR,
/// CRA and the reserved IRAP types).
fn is_random_access(codec: TsCodec, nal_type: u8) -> bool {
    match codec {
        TsCodec::H264 => nal_type == 5,
        TsCodec::Hevc => (16..=23).contains(&nal_type),
    }
}

/// The type of an access unit's first VCL NAL unit. All slices of one
/// picture share IDR/IRAP-ness, so the first one decides, and the scan stops
/// there instead of running through the picture's slice data.
fn first_vcl_type(codec: TsCodec, data: &[u8]) -> Option<u8> {
    nal_units(data)
        .filter_map(|nal| nal_type(codec, nal))
        .find(|&t| is_vcl(codec, t))
}

/// Whether an Annex-B access unit holds an IDR/IRAP picture.
pub fn is_keyframe(codec: TsCodec, data: &[u8]) -> bool {
    first_vcl_type(codec, data).is_some_and(|t| is_random_access(codec, t))
}

/// The NAL unit types [`parameter_sets`] collects, and which of them is the
/// SPS (without which the rest is useless to a decoder).
fn parameter_set_types(codec: TsCodec) -> (&'static [u8], u8) {
    match codec {
        TsCodec::H264 => (&[7, 8], 7),
        TsCodec::Hevc => (&[32, 33, 34], 33),
    }
}

/// Annex-B parameter sets (h264: SPS 7 + PPS 8; hevc: VPS 32 + SPS 33 +
/// PPS 34), each with a 4-byte start code, in order, found in `data`; None
/// if it holds no SPS.
///
/// A subscriber that joins mid-stream needs them before the first keyframe
/// it decodes; ffmpeg's TS output carries them in-band in every keyframe's
/// access unit, and this is how a publisher picks them out.
pub fn parameter_sets(codec: TsCodec, data: &[u8]) -> Option<Vec<u8>> {
    let (types, sps) = parameter_set_types(codec);
    let mut out = Vec::new();
    let mut has_sps = false;
    for nal in nal_units(data) {
        let Some(t) = nal_type(codec, nal) else {
            continue;
        };
        if types.contains(&t) {
            has_sps |= t == sps;
            out.extend_from_slice(&[0, 0, 0, 1]);
            out.extend_from_slice(nal);
        }
    }
    has_sps.then_some(out)
}

/// Whether an access unit carries its own SPS ahead of its first slice.
pub(crate) fn has_sps(codec: TsCodec, data: &[u8]) -> bool {
    let (_, sps) = parameter_set_types(codec);
    nal_units(data)
        .filter_map(|nal| nal_type(codec, nal))
        .take_while(|&t| !is_vcl(codec, t))
        .any(|t| t == sps)
}

/// The access unit delimiter (H.264 type 9, H.265 type 35) of an access
/// unit, if it has one ahead of its first slice; H.222.0 (2.14.1, 2.17.1)
/// wants it first in a TS. With whether it is the first NAL unit.
pub(crate) fn find_aud(codec: TsCodec, data: &[u8]) -> Option<(NalSpan, bool)> {
    let aud = match codec {
        TsCodec::H264 => 9,
        TsCodec::Hevc => 35,
    };
    NalSpans::new(data)
        .enumerate()
        .map(|(i, span)| (i, span, nal_type(codec, &data[span.start..span.end])))
        .take_while(|&(_, _, t)| !t.is_some_and(|t| is_vcl(codec, t)))
        .find(|&(_, _, t)| t == Some(aud))
        .map(|(i, span, _)| (span, i == 0))
}

/// Big-endian u16 at `pos`, if there.
fn be16(data: &[u8], pos: usize) -> Option<usize> {
    let b = data.get(pos..pos.checked_add(2)?)?;
    Some(usize::from(b[0]) << 8 | usize::from(b[1]))
}

/// Appends `count` NAL units stored as (u16 length, bytes) from `pos`, each
/// with a 4-byte start code; returns the position after them, or None if a
/// length runs past the end.
fn copy_u16_nals(
    record: &[u8],
    mut pos: usize,
    count: usize,
    codec: TsCodec,
    out: &mut Vec<u8>,
    types: &mut Vec<u8>,
) -> Option<usize> {
    for _ in 0..count {
        let len = be16(record, pos)?;
        let nal = record.get(pos + 2..pos + 2 + len)?;
        pos += 2 + len;
        if let Some(t) = nal_type(codec, nal) {
            out.extend_from_slice(&[0, 0, 0, 1]);
            out.extend_from_slice(nal);
            types.push(t);
        }
    }
    Some(pos)
}

/// If `extradata` is an avcC/hvcC record (first byte 1), the Annex-B
/// parameter sets it holds, and the NAL length size; else None.
///
/// MP4 and Matroska keep the parameter sets out of band in this record (and
/// the access units length-prefixed), so a file remuxed to Annex B needs
/// them put back in front of its first keyframe. Layouts per ISO/IEC
/// 14496-15: avcC 5.3.3.1 (SPS and PPS lists), hvcC 8.3.3.1 (arrays of NAL
/// units by type). Every NAL unit of an hvcC's arrays is returned, SEI
/// included, as ffmpeg's `hevc_mp4toannexb` does. None too if the record is
/// truncated or holds no SPS.
pub fn avcc_parameter_sets(codec: TsCodec, extradata: &[u8]) -> Option<(Vec<u8>, usize)> {
    if extradata.first() != Some(&1) {
        return None;
    }
    let mut out = Vec::new();
    let mut types = Vec::new();
    let len_size = match codec {
        TsCodec::H264 => {
            // version, profile, compatibility, level, 6 bits reserved +
            // lengthSizeMinusOne, 3 bits reserved + numOfSequenceParameterSets.
            let len_size = usize::from(extradata.get(4)? & 3) + 1;
            let num_sps = usize::from(extradata.get(5)? & 0x1f);
            let pos = copy_u16_nals(extradata, 6, num_sps, codec, &mut out, &mut types)?;
            let num_pps = usize::from(*extradata.get(pos)?);
            copy_u16_nals(extradata, pos + 1, num_pps, codec, &mut out, &mut types)?;
            len_size
        }
        TsCodec::Hevc => {
            // 22 bytes of profile/tier/level and format fields; byte 21 ends
            // in lengthSizeMinusOne; byte 22 is numOfArrays.
            let len_size = usize::from(extradata.get(21)? & 3) + 1;
            let num_arrays = usize::from(*extradata.get(22)?);
            let mut pos = 23;
            for _ in 0..num_arrays {
                // array_completeness, reserved, NAL_unit_type; numNalus.
                let count = be16(extradata, pos + 1)?;
                pos = copy_u16_nals(extradata, pos + 3, count, codec, &mut out, &mut types)?;
            }
            len_size
        }
    };
    let (_, sps) = parameter_set_types(codec);
    types.contains(&sps).then_some((out, len_size))
}

/// Why [`length_prefixed_to_annexb`] failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LengthPrefixError {
    /// The NAL length field size is not 1, 2, 3 or 4 bytes.
    LengthSize(usize),
    /// A length field, or the NAL unit it announces, runs past the end.
    PastEnd {
        /// Where the length field starts.
        offset: usize,
        /// The announced NAL unit length (0 if the field itself is cut).
        length: usize,
        /// Bytes left after the length field (or for it, if it is cut).
        available: usize,
    },
}

impl fmt::Display for LengthPrefixError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LengthPrefixError::LengthSize(n) => {
                write!(f, "a NAL length field of {n} bytes is not valid (1 to 4)")
            }
            LengthPrefixError::PastEnd {
                offset,
                length,
                available,
            } => write!(
                f,
                "the NAL unit length at byte {offset} ({length} bytes) runs past the end \
                 of the access unit ({available} bytes left)"
            ),
        }
    }
}

impl std::error::Error for LengthPrefixError {}

/// Length-prefixed (AVCC/HVCC, `len_size` bytes big endian) access unit to
/// Annex B; Err on a length that runs past the end.
///
/// Every NAL unit gets a 4-byte start code; zero-length NAL units are
/// dropped (a bare start code would be an empty NAL unit).
pub fn length_prefixed_to_annexb(
    data: &[u8],
    len_size: usize,
) -> Result<Vec<u8>, LengthPrefixError> {
    if !(1..=4).contains(&len_size) {
        return Err(LengthPrefixError::LengthSize(len_size));
    }
    let mut out = Vec::with_capacity(data.len() + 16);
    let mut pos = 0;
    while pos < data.len() {
        let left = data.len() - pos;
        let Some(field) = data.get(pos..pos + len_size) else {
            return Err(LengthPrefixError::PastEnd {
                offset: pos,
                length: 0,
                available: left,
            });
        };
        let length = field.iter().fold(0usize, |n, &b| n << 8 | usize::from(b));
        let Some(nal) = data
            .get(pos + len_size..)
            .and_then(|rest| rest.get(..length))
        else {
            return Err(LengthPrefixError::PastEnd {
                offset: pos,
                length,
                available: left - len_size,
            });
        };
        if !nal.is_empty() {
            out.extend_from_slice(&[0, 0, 0, 1]);
            out.extend_from_slice(nal);
        }
        pos += len_size + length;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types(codec: TsCodec, data: &[u8]) -> Vec<u8> {
        nal_units(data).filter_map(|n| nal_type(codec, n)).collect()
    }

    #[test]
    fn splits_on_three_and_four_byte_start_codes() {
        let data = [
            9, 9, // garbage before the first start code
            0, 0, 0, 1, 0x09, 0xf0, // AUD, 4-byte start code
            0, 0, 1, 0x67, 1, 2, 0, 0, // SPS with trailing zeros
            0, 0, 1, // an empty NAL unit
            0, 0, 1, 0x68, 3, // PPS
            0, 0, 0, 1, 0x65, 4, 0, 0, 3, 0, // IDR (emulation prevention kept)
        ];
        let nals: Vec<&[u8]> = nal_units(&data).collect();
        assert_eq!(
            nals,
            vec![
                &[0x09, 0xf0][..],
                &[0x67, 1, 2],
                &[0x68, 3],
                &[0x65, 4, 0, 0, 3]
            ]
        );
        assert_eq!(types(TsCodec::H264, &data), vec![9, 7, 8, 5]);
        assert_eq!(nal_units(&[]).count(), 0);
        assert_eq!(nal_units(&[0, 0, 1]).count(), 0);
        assert_eq!(nal_units(&[1, 2, 3]).count(), 0);
    }

    #[test]
    fn keyframes_and_parameter_sets() {
        let h264_key = [
            0, 0, 0, 1, 0x09, 0xf0, 0, 0, 0, 1, 0x67, 0x42, 0, 0, 0, 1, 0x68, 0xce, 0, 0, 1, 0x65,
            0x88,
        ];
        let h264_p = [0, 0, 0, 1, 0x09, 0x30, 0, 0, 1, 0x41, 0x9a];
        assert!(is_keyframe(TsCodec::H264, &h264_key));
        assert!(!is_keyframe(TsCodec::H264, &h264_p));
        assert!(!is_keyframe(TsCodec::H264, &[]));
        // An IDR type byte after the first slice does not count.
        assert!(!is_keyframe(
            TsCodec::H264,
            &[0, 0, 1, 0x41, 1, 0, 0, 1, 0x65, 1]
        ));
        assert_eq!(
            parameter_sets(TsCodec::H264, &h264_key).unwrap(),
            vec![0, 0, 0, 1, 0x67, 0x42, 0, 0, 0, 1, 0x68, 0xce]
        );
        assert_eq!(parameter_sets(TsCodec::H264, &h264_p), None);
        // A PPS alone is no use.
        assert_eq!(parameter_sets(TsCodec::H264, &[0, 0, 1, 0x68, 1]), None);
        assert!(has_sps(TsCodec::H264, &h264_key));
        assert!(!has_sps(TsCodec::H264, &h264_p));
        let aud = NalSpan {
            code: 1,
            start: 4,
            end: 6,
        };
        assert_eq!(find_aud(TsCodec::H264, &h264_key), Some((aud, true)));
        assert_eq!(find_aud(TsCodec::H264, &h264_key[6..]), None);
        // After the parameter sets: found, not first.
        let late = [&h264_key[6..18], &h264_key[..6], &h264_key[18..]].concat();
        let late_aud = NalSpan {
            code: 13,
            start: 16,
            end: 18,
        };
        assert_eq!(find_aud(TsCodec::H264, &late), Some((late_aud, false)));
        // After the first slice it is another access unit's.
        assert_eq!(
            find_aud(TsCodec::H264, &[0, 0, 1, 0x65, 1, 0, 0, 1, 0x09, 0xf0]),
            None
        );

        // HEVC: AUD 35, VPS 32, SPS 33, PPS 34, CRA 21; TRAIL_R 1.
        let hevc_key = [
            0, 0, 0, 1, 0x46, 0x01, 0x50, 0, 0, 0, 1, 0x40, 0x01, 0xaa, 0, 0, 0, 1, 0x42, 0x01,
            0xbb, 0, 0, 0, 1, 0x44, 0x01, 0xcc, 0, 0, 1, 0x2a, 0x01, 0xdd,
        ];
        assert_eq!(types(TsCodec::Hevc, &hevc_key), vec![35, 32, 33, 34, 21]);
        assert!(is_keyframe(TsCodec::Hevc, &hevc_key));
        assert!(!is_keyframe(TsCodec::Hevc, &[0, 0, 1, 0x02, 0x01, 0xdd]));
        assert_eq!(
            parameter_sets(TsCodec::Hevc, &hevc_key).unwrap(),
            vec![
                0, 0, 0, 1, 0x40, 0x01, 0xaa, 0, 0, 0, 1, 0x42, 0x01, 0xbb, 0, 0, 0, 1, 0x44, 0x01,
                0xcc
            ]
        );
        assert!(find_aud(TsCodec::Hevc, &hevc_key).is_some_and(|(_, first)| first));
    }

    #[test]
    fn avcc_record() {
        let sps = [0x67, 0x64, 0x00, 0x0d, 0xac, 0xd9];
        let pps = [0x68, 0xeb, 0xe3, 0xcb];
        let mut avcc = vec![1, 0x64, 0x00, 0x0d, 0xfc | 3, 0xe0 | 1, 0, sps.len() as u8];
        avcc.extend_from_slice(&sps);
        avcc.extend_from_slice(&[1, 0, pps.len() as u8]);
        avcc.extend_from_slice(&pps);
        // High-profile trailer (chroma format etc.) is ignored.
        avcc.extend_from_slice(&[0xfd, 0xf8, 0xf8, 0]);
        let (ps, len_size) = avcc_parameter_sets(TsCodec::H264, &avcc).unwrap();
        assert_eq!(len_size, 4);
        let mut want = vec![0, 0, 0, 1];
        want.extend_from_slice(&sps);
        want.extend_from_slice(&[0, 0, 0, 1]);
        want.extend_from_slice(&pps);
        assert_eq!(ps, want);
        assert_eq!(parameter_sets(TsCodec::H264, &ps).unwrap(), want);

        // Not a record: Annex B extradata starts with 0.
        assert_eq!(avcc_parameter_sets(TsCodec::H264, &want), None);
        // Every truncation of the record is rejected, never a panic.
        for cut in 0..avcc.len() - 4 {
            assert_eq!(
                avcc_parameter_sets(TsCodec::H264, &avcc[..cut]),
                None,
                "cut {cut}"
            );
        }
        // A record without an SPS.
        assert_eq!(
            avcc_parameter_sets(TsCodec::H264, &[1, 0x64, 0, 0x0d, 0xff, 0xe0, 0]),
            None
        );
    }

    #[test]
    fn hvcc_record() {
        let vps = [0x40, 0x01, 0x0c];
        let sps = [0x42, 0x01, 0x01, 0x60];
        let pps = [0x44, 0x01, 0xc1];
        let mut hvcc = vec![1];
        hvcc.extend_from_slice(&[0; 20]);
        hvcc.push(0x0c | 1); // lengthSizeMinusOne = 1 → 2-byte lengths
        hvcc.push(3);
        for (t, nal) in [(32u8, &vps[..]), (33, &sps[..]), (34, &pps[..])] {
            hvcc.extend_from_slice(&[0x80 | t, 0, 1, 0, nal.len() as u8]);
            hvcc.extend_from_slice(nal);
        }
        let (ps, len_size) = avcc_parameter_sets(TsCodec::Hevc, &hvcc).unwrap();
        assert_eq!(len_size, 2);
        assert_eq!(types(TsCodec::Hevc, &ps), vec![32, 33, 34]);
        assert_eq!(parameter_sets(TsCodec::Hevc, &ps).unwrap(), ps);
        for cut in 0..hvcc.len() {
            assert_eq!(
                avcc_parameter_sets(TsCodec::Hevc, &hvcc[..cut]),
                None,
                "cut {cut}"
            );
        }
    }

    #[test]
    fn length_prefixed_to_annex_b() {
        let nal_a = [0x65, 1, 2, 3];
        let nal_b = [0x06, 5];
        for len_size in 1..=4usize {
            let mut au = Vec::new();
            for nal in [&nal_a[..], &[][..], &nal_b[..]] {
                let len = nal.len().to_be_bytes();
                au.extend_from_slice(&len[len.len() - len_size..]);
                au.extend_from_slice(nal);
            }
            let annexb = length_prefixed_to_annexb(&au, len_size).unwrap();
            assert_eq!(
                annexb,
                [0, 0, 0, 1, 0x65, 1, 2, 3, 0, 0, 0, 1, 0x06, 5],
                "len_size {len_size}"
            );
            // Cut anywhere inside: an error, not a panic and not garbage.
            for cut in 1..au.len() {
                let whole_nals = [len_size + 4, 2 * len_size + 4];
                match length_prefixed_to_annexb(&au[..cut], len_size) {
                    Ok(_) => assert!(whole_nals.contains(&cut), "cut {cut}"),
                    Err(LengthPrefixError::PastEnd { .. }) => {}
                    Err(e) => panic!("{e}"),
                }
            }
        }
        assert_eq!(length_prefixed_to_annexb(&[], 4).unwrap(), Vec::<u8>::new());
        assert_eq!(
            length_prefixed_to_annexb(&[0, 0, 0, 9, 1], 4),
            Err(LengthPrefixError::PastEnd {
                offset: 0,
                length: 9,
                available: 1
            })
        );
        assert_eq!(
            length_prefixed_to_annexb(&[1], 0),
            Err(LengthPrefixError::LengthSize(0))
        );
        assert_eq!(
            length_prefixed_to_annexb(&[1], 5),
            Err(LengthPrefixError::LengthSize(5))
        );
        assert!(!LengthPrefixError::LengthSize(5).to_string().is_empty());
        // A huge announced length on a 64-bit usize does not overflow.
        assert!(length_prefixed_to_annexb(&[0xff, 0xff, 0xff, 0xff, 0], 4).is_err());
    }
}
