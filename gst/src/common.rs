//! What both elements share: the debug category, pixel format and codec
//! mapping, error text, property enums and Annex B parsing.

use cuframes::{Codec, FrameLayout, PixelFormat};
use gst::glib;
use std::sync::LazyLock;

pub(crate) static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "cuframes",
        gst::DebugColorFlags::empty(),
        Some("cuframes shared-memory video elements"),
    )
});

/// Raw formats both elements speak, in GStreamer's names and cuframes'.
pub(crate) const FORMATS: [(gst_video::VideoFormat, PixelFormat); 6] = [
    (gst_video::VideoFormat::Nv12, PixelFormat::Nv12),
    (gst_video::VideoFormat::P01010le, PixelFormat::P010),
    (gst_video::VideoFormat::Gray8, PixelFormat::Gray8),
    (gst_video::VideoFormat::Rgb, PixelFormat::Rgb24),
    (gst_video::VideoFormat::Rgba, PixelFormat::Rgba8),
    (gst_video::VideoFormat::Bgr, PixelFormat::Bgr24),
];

pub(crate) fn to_cuframes(f: gst_video::VideoFormat) -> Option<PixelFormat> {
    FORMATS.iter().find(|(g, _)| *g == f).map(|(_, c)| *c)
}

pub(crate) fn to_gst(f: PixelFormat) -> gst_video::VideoFormat {
    FORMATS
        .iter()
        .find(|(_, c)| *c == f)
        .map(|(g, _)| *g)
        .unwrap_or(gst_video::VideoFormat::Unknown)
}

/// Pad template caps: every raw format at any size and rate, plus H.264
/// and H.265 access units.
pub(crate) fn template_caps(with_encoded: bool) -> gst::Caps {
    let formats: Vec<gst_video::VideoFormat> = FORMATS.iter().map(|(g, _)| *g).collect();
    let mut caps = gst_video::VideoCapsBuilder::new()
        .format_list(formats)
        .build();
    if with_encoded {
        let caps = caps.make_mut();
        caps.append(
            gst::Caps::builder("video/x-h264")
                .field("stream-format", gst::List::new(["byte-stream", "avc"]))
                .field("alignment", "au")
                .build(),
        );
        caps.append(
            gst::Caps::builder("video/x-h265")
                .field(
                    "stream-format",
                    gst::List::new(["byte-stream", "hvc1", "hev1"]),
                )
                .field("alignment", "au")
                .build(),
        );
    }
    caps
}

/// A cuframes error as GStreamer shows it: the message with the stable
/// name and number (`Timeout/1`), as the CLI prints them.
pub(crate) fn describe(e: &cuframes::Error) -> String {
    format!(
        "{e} [cuframes error {}/{}]",
        e.code().name(),
        e.code() as i32
    )
}

/// Offsets and strides of the planes of a ring layout, as `GstVideoMeta`
/// wants them.
pub(crate) fn meta_planes(layout: &FrameLayout) -> (Vec<usize>, Vec<i32>) {
    layout
        .planes()
        .iter()
        .map(|p| (p.offset as usize, p.pitch as i32))
        .unzip()
}

/// Whether the ring layout is GStreamer's default layout for `info`
/// (same offsets and strides): then a buffer needs no `GstVideoMeta` to be
/// read right.
pub(crate) fn is_default_layout(layout: &FrameLayout, info: &gst_video::VideoInfo) -> bool {
    layout.planes().len() == info.n_planes() as usize
        && layout.planes().iter().enumerate().all(|(i, p)| {
            info.offset()[i] as u64 == p.offset && info.stride()[i] as i64 == i64::from(p.pitch)
        })
}

/// The codec of encoded caps (`video/x-h264`, `video/x-h265`).
pub(crate) fn codec_of(s: &gst::StructureRef) -> Option<Codec> {
    match s.name().as_str() {
        "video/x-h264" => Some(Codec::H264),
        "video/x-h265" => Some(Codec::Hevc),
        _ => None,
    }
}

/// Caps for a packet stream: H.264/H.265 as byte-stream (Annex B) or, when
/// the codec configuration is an avcC/hvcC record, as length-prefixed
/// `avc`/`hvc1` with it as `codec_data`; access-unit aligned.
pub(crate) fn packet_caps(codec: Codec, extradata: &[u8], width: u32, height: u32) -> gst::Caps {
    let record = extradata.first() == Some(&1);
    let mut b = match codec {
        Codec::H264 | Codec::Hevc => {
            let (name, packed) = if codec == Codec::H264 {
                ("video/x-h264", "avc")
            } else {
                ("video/x-h265", "hvc1")
            };
            let b = gst::Caps::builder(name).field("alignment", "au");
            if record {
                b.field("stream-format", packed)
                    .field("codec_data", gst::Buffer::from_slice(extradata.to_vec()))
            } else {
                b.field("stream-format", "byte-stream")
            }
        }
        Codec::Av1 => gst::Caps::builder("video/x-av1"),
        Codec::Vp9 => gst::Caps::builder("video/x-vp9"),
        Codec::Vp8 => gst::Caps::builder("video/x-vp8"),
        Codec::Mjpeg => gst::Caps::builder("image/jpeg"),
    };
    if width > 0 && height > 0 {
        b = b
            .field("width", width as i32)
            .field("height", height as i32);
    }
    b.build()
}

/// The NAL units of an Annex B access unit (start codes removed).
pub(crate) fn annexb_nals(data: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            starts.push((i, i + 3));
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut nals = Vec::new();
    for (k, &(_, begin)) in starts.iter().enumerate() {
        let mut end = starts.get(k + 1).map_or(data.len(), |&(s, _)| s);
        // A 4-byte start code leaves its leading zero on the previous NAL.
        while end > begin && data[end - 1] == 0 && k + 1 < starts.len() {
            end -= 1;
        }
        if end > begin {
            nals.push(&data[begin..end]);
        }
    }
    nals
}

/// The parameter sets (H.264 SPS/PPS, H.265 VPS/SPS/PPS) of an Annex B
/// access unit, each behind a 4-byte start code: the codec configuration a
/// late joiner needs, taken from the first keyframe of a byte-stream.
pub(crate) fn parameter_sets(codec: Codec, au: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for nal in annexb_nals(au) {
        let is_param = match codec {
            Codec::H264 => matches!(nal[0] & 0x1f, 7 | 8),
            Codec::Hevc => matches!((nal[0] >> 1) & 0x3f, 32..=34),
            _ => false,
        };
        if is_param {
            out.extend_from_slice(&[0, 0, 0, 1]);
            out.extend_from_slice(nal);
        }
    }
    out
}

/// `policy` of `cuframessink`.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstCuframesPolicy")]
pub enum Policy {
    #[enum_value(
        name = "Block: wait (up to block-timeout) for a lagging queue-mode subscriber",
        nick = "block"
    )]
    Block = 1,
    #[enum_value(
        name = "Drop oldest: overwrite what a lagging queue-mode subscriber has not read",
        nick = "drop-oldest"
    )]
    DropOldest = 2,
}

/// `file-mode` of `cuframessink`.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstCuframesFileMode")]
pub enum FileMode {
    #[enum_value(name = "0600: the owner only", nick = "600")]
    Owner = 0o600,
    #[enum_value(name = "0660: the owner and the group", nick = "660")]
    Group = 0o660,
}

/// `mode` of `cuframessrc`.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstCuframesReadMode")]
pub enum ReadMode {
    #[enum_value(
        name = "Newest: the newest frame each time, skipping what was missed",
        nick = "newest"
    )]
    Newest = 1,
    #[enum_value(name = "Queue: every frame in order (lossless)", nick = "queue")]
    Queue = 2,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_sets_of_an_h264_access_unit() {
        let au = [
            0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 0, 1, 0x65, 9, 9, 0, 0, 1, 0x06, 5,
        ];
        assert_eq!(
            annexb_nals(&au),
            vec![&[0x67, 1, 2][..], &[0x68, 3], &[0x65, 9, 9], &[0x06, 5]]
        );
        assert_eq!(
            parameter_sets(Codec::H264, &au),
            [0, 0, 0, 1, 0x67, 1, 2, 0, 0, 0, 1, 0x68, 3]
        );
        // HEVC: VPS (32) and SPS (33) kept, IDR (19) not.
        let hevc = [0, 0, 1, 0x40, 1, 0, 0, 1, 0x42, 1, 0, 0, 1, 0x26, 1, 7];
        assert_eq!(
            parameter_sets(Codec::Hevc, &hevc),
            [0, 0, 0, 1, 0x40, 1, 0, 0, 0, 1, 0x42, 1]
        );
        assert!(annexb_nals(&[1, 2, 3]).is_empty());
    }

    #[test]
    fn formats_round_trip() {
        for (g, c) in FORMATS {
            assert_eq!(to_cuframes(g), Some(c));
            assert_eq!(to_gst(c), g);
        }
        assert_eq!(to_cuframes(gst_video::VideoFormat::I420), None);
    }
}
