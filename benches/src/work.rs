//! What a subscriber does with a frame in the consumer-workload rows, and
//! what the publisher writes so that the work can be checked: every byte
//! after the header is the frame's sequence number (low byte), so a
//! checksum of the whole frame is known in advance and a torn or recycled
//! frame shows up as `damaged`.

use crate::proto::HEADER;
use crate::spec::{Work, Workload};

/// Writes frame `seq`'s pattern over `payload[HEADER..]` (a `memset`: the
/// publisher of a consumer row produces every byte, as a decoder would).
pub fn fill(payload: &mut [u8], seq: u64) {
    payload[HEADER..].fill(seq as u8);
}

/// Wrapping sum of the little-endian `u64` words of `bytes` (a tail shorter
/// than a word is added byte by byte). Four independent sums so that the
/// loop is bound by memory, not by one chain of additions.
pub fn checksum(bytes: &[u8]) -> u64 {
    let mut acc = [0u64; 4];
    let mut blocks = bytes.chunks_exact(32);
    for b in &mut blocks {
        for (a, w) in acc.iter_mut().zip(b.chunks_exact(8)) {
            *a = a.wrapping_add(u64::from_le_bytes(w.try_into().expect("8 bytes")));
        }
    }
    let mut sum = acc.iter().fold(0u64, |s, a| s.wrapping_add(*a));
    let rest = blocks.remainder();
    let mut words = rest.chunks_exact(8);
    for w in &mut words {
        sum = sum.wrapping_add(u64::from_le_bytes(w.try_into().expect("8 bytes")));
    }
    words
        .remainder()
        .iter()
        .fold(sum, |s, &b| s.wrapping_add(b as u64))
}

/// The [`checksum`] of `len` bytes filled by [`fill`] with `seq`.
pub fn expected(len: usize, seq: u64) -> u64 {
    let byte = seq as u8 as u64;
    let words = (len / 8) as u64;
    let tail = (len % 8) as u64;
    words
        .wrapping_mul(byte.wrapping_mul(0x0101_0101_0101_0101))
        .wrapping_add(tail * byte)
}

/// The chroma terms of one pixel pair (BT.601 limited range, x256).
fn chroma(u: u8, v: u8) -> [i32; 3] {
    let (d, e) = (u as i32 - 128, v as i32 - 128);
    [409 * e + 128, -100 * d - 208 * e + 128, 516 * d + 128]
}

/// One RGB pixel from its luma and its pair's chroma terms.
fn pixel(l: u8, c: [i32; 3], out: &mut [u8]) {
    let y = 298 * (l as i32 - 16);
    for (o, c) in out.iter_mut().zip(c) {
        *o = ((y + c) >> 8).clamp(0, 255) as u8;
    }
}

/// Converts a packed NV12 picture (`w` x `h` luma bytes, then `w` x `h/2`
/// interleaved chroma) to packed RGB24 in `rgb`: BT.601 limited range,
/// integer arithmetic, the conversion a detector's pre-processing does.
pub fn nv12_to_rgb(src: &[u8], w: usize, h: usize, rgb: &mut [u8]) {
    let (luma, chroma_plane) = src.split_at(w * h);
    for (y, (lrow, out)) in luma
        .chunks_exact(w)
        .zip(rgb.chunks_exact_mut(w * 3))
        .enumerate()
    {
        let crow = &chroma_plane[(y / 2) * w..(y / 2) * w + w];
        for ((l2, c2), o6) in lrow
            .chunks_exact(2)
            .zip(crow.chunks_exact(2))
            .zip(out.chunks_exact_mut(6))
        {
            let c = chroma(c2[0], c2[1]);
            pixel(l2[0], c, &mut o6[..3]);
            pixel(l2[1], c, &mut o6[3..]);
        }
    }
}

/// A subscriber's side of a consumer workload: does the work on each frame
/// it holds and says whether the frame was intact.
pub struct Consumer {
    work: Work,
    workload: Workload,
    rgb: Vec<u8>,
}

impl Consumer {
    /// The consumer of `work` on frames of `workload`.
    pub fn new(work: Work, workload: Workload) -> Self {
        let rgb = match work {
            Work::Rgb => vec![0; workload.width as usize * workload.height as usize * 3],
            _ => Vec::new(),
        };
        Self {
            work,
            workload,
            rgb,
        }
    }

    /// Does the work on frame `seq` (the whole payload, header first).
    /// False if the frame did not hold what frame `seq` was given: with
    /// [`Work::Checksum`] every byte is checked; [`Work::Rgb`] converts
    /// every byte and checks the first byte after the header and the last,
    /// and their pixels.
    pub fn consume(&mut self, payload: &[u8], seq: u64) -> bool {
        match self.work {
            Work::Handoff => true,
            Work::Checksum => checksum(&payload[HEADER..]) == expected(payload.len() - HEADER, seq),
            Work::Rgb => {
                let (w, h) = (self.workload.width as usize, self.workload.height as usize);
                nv12_to_rgb(payload, w, h, &mut self.rgb);
                // The first pixel after the header and the last one: luma
                // and chroma all `seq`'s byte.
                let b = seq as u8;
                let mut want = [0u8; 3];
                pixel(b, chroma(b, b), &mut want);
                let last = self.rgb.len() - 3;
                let ends = [payload[HEADER], payload[payload.len() - 1]];
                ends == [b; 2]
                    && self.rgb[HEADER * 3..HEADER * 3 + 3] == want
                    && self.rgb[last..] == want
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_a_filled_frame_is_known_and_a_changed_byte_shows() {
        for len in [HEADER + 8, HEADER + 37, 4096, Workload::HD.bytes()] {
            let mut f = vec![0u8; len];
            fill(&mut f, 0x1_23);
            assert_eq!(
                checksum(&f[HEADER..]),
                expected(len - HEADER, 0x1_23),
                "{len}"
            );
            f[len - 1] ^= 1;
            assert_ne!(
                checksum(&f[HEADER..]),
                expected(len - HEADER, 0x1_23),
                "{len}"
            );
        }
    }

    #[test]
    fn consumers_accept_their_frame_and_refuse_another() {
        let w = Workload::HD;
        for work in [Work::Checksum, Work::Rgb] {
            let mut c = Consumer::new(work, w);
            let mut f = vec![0u8; w.bytes()];
            fill(&mut f, 7);
            assert!(c.consume(&f, 7), "{work:?}");
            assert!(!c.consume(&f, 8), "{work:?}");
            let last = f.len() - 1;
            f[last] = 9;
            assert!(!c.consume(&f, 7), "{work:?}: a torn tail");
        }
    }

    #[test]
    fn rgb_of_known_colours() {
        // Black, white and mid grey in limited range; one 2x2 picture each.
        for (l, want) in [(16u8, [0u8; 3]), (235, [255; 3]), (126, [128; 3])] {
            let src = [l, l, l, l, 128, 128];
            let mut rgb = [0u8; 12];
            nv12_to_rgb(&src, 2, 2, &mut rgb);
            assert!(rgb.chunks(3).all(|p| p == want), "{l}: {rgb:?}");
        }
    }
}
