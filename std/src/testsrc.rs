//! A moving test pattern whose every frame carries its own seq and a
//! checksum, so any reader can prove a frame is intact (not torn, not
//! reused, not reordered). Used by `cuframes demo`/`publish --testsrc`, the
//! integrity tests, and the Python and C tests through the CLI.

use crate::FrameLayout;

/// Marks a stamped frame.
pub const STAMP_MAGIC: u32 = u32::from_le_bytes(*b"CFTP");
/// Bytes of the stamp at the start of plane 0.
pub const STAMP_LEN: usize = 24;

/// Why a frame failed verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// Plane 0's first row is too short to hold a stamp.
    TooSmall,
    /// No stamp magic: not a test-pattern frame.
    NoStamp,
    /// The stamp names another seq than the ring handed out.
    WrongSeq {
        /// Seq in the stamp.
        stamped: u64,
    },
    /// Pixels do not match the stamp's checksum: torn or overwritten.
    Checksum,
}

/// Fills a slot with the pattern for `seq`: diagonal luma bands moving
/// with time, chroma bands, then the stamp.
///
/// ```
/// use cuframes::{FrameLayout, PixelFormat, testsrc};
/// let layout = FrameLayout::new(PixelFormat::Nv12, 64, 32, 64).unwrap();
/// let mut slot = vec![0u8; layout.slot_bytes as usize];
/// testsrc::fill(&layout, &mut slot, 42);
/// assert_eq!(testsrc::verify(&layout, &slot, 42), Ok(()));
/// slot[70] ^= 1;
/// assert_eq!(testsrc::verify(&layout, &slot, 42), Err(testsrc::Damage::Checksum));
/// ```
pub fn fill(layout: &FrameLayout, slot: &mut [u8], seq: u64) {
    let ramp: Vec<u8> = (0..layout
        .planes()
        .iter()
        .map(|p| p.row_bytes as usize)
        .max()
        .unwrap_or(0)
        + 256)
        .map(|i| i as u8)
        .collect();
    for (i, p) in layout.planes().iter().enumerate() {
        let rb = p.row_bytes as usize;
        for r in 0..p.rows as usize {
            let start = p.offset as usize + r * p.pitch as usize;
            let shift = (r + seq as usize * (3 + i)) % 256;
            slot[start..start + rb].copy_from_slice(&ramp[shift..shift + rb]);
        }
    }
    if layout
        .planes()
        .first()
        .is_some_and(|p| p.row_bytes as usize >= STAMP_LEN)
    {
        let sum = checksum(layout, slot);
        let at = layout.planes[0].offset as usize;
        slot[at..at + 4].copy_from_slice(&STAMP_MAGIC.to_le_bytes());
        slot[at + 4..at + 8].copy_from_slice(&[0; 4]);
        slot[at + 8..at + 16].copy_from_slice(&seq.to_le_bytes());
        slot[at + 16..at + 24].copy_from_slice(&sum.to_le_bytes());
    }
}

/// Checks a slot filled by [`fill`] for `seq`.
pub fn verify(layout: &FrameLayout, slot: &[u8], seq: u64) -> Result<(), Damage> {
    if layout
        .planes()
        .first()
        .is_none_or(|p| (p.row_bytes as usize) < STAMP_LEN)
    {
        return Err(Damage::TooSmall);
    }
    let at = layout.planes[0].offset as usize;
    let word = |o: usize| u64::from_le_bytes(slot[at + o..at + o + 8].try_into().expect("8 bytes"));
    if slot[at..at + 4] != STAMP_MAGIC.to_le_bytes() {
        return Err(Damage::NoStamp);
    }
    let stamped = word(8);
    if stamped != seq {
        return Err(Damage::WrongSeq { stamped });
    }
    if word(16) != checksum(layout, slot) {
        return Err(Damage::Checksum);
    }
    Ok(())
}

/// FNV-style hash over every plane's meaningful bytes, skipping the stamp.
fn checksum(layout: &FrameLayout, slot: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for (i, p) in layout.planes().iter().enumerate() {
        for r in 0..p.rows as usize {
            let start = p.offset as usize + r * p.pitch as usize;
            let skip = if i == 0 && r == 0 { STAMP_LEN } else { 0 };
            let row = &slot[start + skip..start + p.row_bytes as usize];
            let mut words = row.chunks_exact(8);
            for w in &mut words {
                h = (h ^ u64::from_le_bytes(w.try_into().expect("8 bytes")))
                    .wrapping_mul(0x0100_0000_01b3);
            }
            for &b in words.remainder() {
                h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    h
}
