//! Pixel formats and the per-slot frame layout (planes, pitches, sizes).

use crate::error::LayoutError;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Largest width or height accepted (16K video and then some).
pub const MAX_DIMENSION: u32 = 32_768;
/// Most planes a format may have.
pub const MAX_PLANES: usize = 4;

/// Pixel formats a stream can carry. The numbers are part of the protocol.
///
/// ```
/// use cuframes_core::PixelFormat;
/// assert_eq!(PixelFormat::Nv12.plane_count(), 2);
/// assert_eq!(PixelFormat::from_u32(PixelFormat::Rgb24 as u32), Some(PixelFormat::Rgb24));
/// ```
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PixelFormat {
    /// 8-bit Y plane, then interleaved UV at half resolution.
    Nv12 = 1,
    /// 10-bit in 16-bit words, NV12 arrangement (Y, then interleaved UV).
    P010 = 2,
    /// 8-bit luma only.
    Gray8 = 3,
    /// Packed 8-bit R, G, B.
    Rgb24 = 4,
    /// Packed 8-bit R, G, B, A.
    Rgba8 = 5,
    /// Packed 8-bit B, G, R.
    Bgr24 = 6,
}

impl PixelFormat {
    /// Every format.
    pub const ALL: [PixelFormat; 6] = [
        Self::Nv12,
        Self::P010,
        Self::Gray8,
        Self::Rgb24,
        Self::Rgba8,
        Self::Bgr24,
    ];

    /// The format for a protocol number.
    pub fn from_u32(v: u32) -> Option<Self> {
        Self::ALL.iter().copied().find(|f| *f as u32 == v)
    }

    /// Lower-case name (`nv12`, `p010`, ...), as used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Nv12 => "nv12",
            Self::P010 => "p010",
            Self::Gray8 => "gray8",
            Self::Rgb24 => "rgb24",
            Self::Rgba8 => "rgba8",
            Self::Bgr24 => "bgr24",
        }
    }

    /// Parses a lower-case name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|f| f.name() == name)
    }

    /// Number of planes.
    pub fn plane_count(self) -> usize {
        match self {
            Self::Nv12 | Self::P010 => 2,
            _ => 1,
        }
    }

    /// Bytes per sample element (1, or 2 for P010).
    pub fn bytes_per_element(self) -> u32 {
        match self {
            Self::P010 => 2,
            _ => 1,
        }
    }

    /// `(row_bytes, rows, channels)` of plane `i` for a `width` x `height` frame,
    /// or `None` if the plane does not exist or the size overflows.
    pub fn plane_shape(self, i: usize, width: u32, height: u32) -> Option<(u32, u32, u32)> {
        let (per_pixel, rows, channels) = match (self, i) {
            (Self::Nv12, 0) | (Self::Gray8, 0) => (1, height, 1),
            (Self::Nv12, 1) => (1, height / 2, 2),
            (Self::P010, 0) => (2, height, 1),
            (Self::P010, 1) => (2, height / 2, 2),
            (Self::Rgb24, 0) | (Self::Bgr24, 0) => (3, height, 3),
            (Self::Rgba8, 0) => (4, height, 4),
            _ => return None,
        };
        // Chroma planes of NV12/P010 carry width/2 pairs: width bytes per row.
        Some((width.checked_mul(per_pixel)?, rows, channels))
    }

    /// Whether width and height must be even (4:2:0 chroma subsampling).
    ///
    /// ```
    /// # use cuframes_core::PixelFormat;
    /// assert!(PixelFormat::Nv12.needs_even_dimensions());
    /// assert!(!PixelFormat::Rgb24.needs_even_dimensions());
    /// ```
    pub fn needs_even_dimensions(self) -> bool {
        matches!(self, Self::Nv12 | Self::P010)
    }
}

/// One plane inside a slot. Part of the shared-memory layout.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct PlaneLayout {
    /// Byte offset of the plane's first row from the start of the slot.
    pub offset: u64,
    /// Bytes from one row to the next (>= `row_bytes`).
    pub pitch: u32,
    /// Number of rows.
    pub rows: u32,
    /// Meaningful bytes per row.
    pub row_bytes: u32,
    /// Zero.
    pub reserved: u32,
}

/// Frame geometry: format, size and where each plane lies in a slot.
/// Part of the shared-memory layout (120 bytes).
///
/// ```
/// use cuframes_core::{FrameLayout, PixelFormat};
/// let l = FrameLayout::new(PixelFormat::Nv12, 1920, 1080, 64).unwrap();
/// assert_eq!(l.planes[0].pitch, 1920);
/// assert_eq!(l.planes[1].rows, 540);
/// assert_eq!(l.slot_bytes, 1920 * 1080 * 3 / 2);
/// assert!(FrameLayout::new(PixelFormat::Nv12, 1919, 1080, 64).is_err());
/// ```
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct FrameLayout {
    /// [`PixelFormat`] number.
    pub format: u32,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Planes in use.
    pub plane_count: u32,
    /// Plane placement; unused entries are zero.
    pub planes: [PlaneLayout; MAX_PLANES],
    /// Bytes of a slot the planes need (end of the last plane).
    pub slot_bytes: u64,
}

const _: () = assert!(core::mem::size_of::<PlaneLayout>() == 24);
const _: () = assert!(core::mem::size_of::<FrameLayout>() == 120);

fn align_up(v: u64, align: u64) -> Option<u64> {
    debug_assert!(align.is_power_of_two());
    Some(v.checked_add(align - 1)? & !(align - 1))
}

impl FrameLayout {
    /// Packs the planes of `format` one after another, each row padded to a
    /// multiple of `pitch_align` bytes (a power of two: 64 for host memory
    /// and SIMD, 512 for CUDA pitched allocations).
    pub fn new(
        format: PixelFormat,
        width: u32,
        height: u32,
        pitch_align: u32,
    ) -> Result<Self, LayoutError> {
        if pitch_align == 0 || !pitch_align.is_power_of_two() || pitch_align > 1 << 20 {
            return Err(LayoutError::Overflow);
        }
        check_dimensions(format, width, height)?;
        let mut planes = [PlaneLayout::default(); MAX_PLANES];
        let mut end = 0u64;
        for (i, plane) in planes.iter_mut().enumerate().take(format.plane_count()) {
            let (row_bytes, rows, _) = format
                .plane_shape(i, width, height)
                .ok_or(LayoutError::Overflow)?;
            let pitch = align_up(u64::from(row_bytes), u64::from(pitch_align))
                .and_then(|p| u32::try_from(p).ok())
                .ok_or(LayoutError::Overflow)?;
            let offset = align_up(end, u64::from(pitch_align)).ok_or(LayoutError::Overflow)?;
            end = offset
                .checked_add(u64::from(pitch) * u64::from(rows))
                .ok_or(LayoutError::Overflow)?;
            *plane = PlaneLayout {
                offset,
                pitch,
                rows,
                row_bytes,
                reserved: 0,
            };
        }
        Ok(Self {
            format: format as u32,
            width,
            height,
            plane_count: format.plane_count() as u32,
            planes,
            slot_bytes: end,
        })
    }

    /// Checks a layout that came from untrusted bytes: known format, sane
    /// dimensions, each plane shaped as the format demands, pitch >= row
    /// bytes, planes inside `slot_bytes` and not overlapping. Checked
    /// arithmetic throughout.
    ///
    /// ```
    /// use cuframes_core::{FrameLayout, PixelFormat};
    /// let mut l = FrameLayout::new(PixelFormat::Gray8, 640, 480, 64).unwrap();
    /// assert!(l.validate().is_ok());
    /// l.planes[0].pitch = 100; // narrower than a row
    /// assert!(l.validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<PixelFormat, LayoutError> {
        let format =
            PixelFormat::from_u32(self.format).ok_or(LayoutError::UnknownFormat(self.format))?;
        check_dimensions(format, self.width, self.height)?;
        let n = format.plane_count();
        if self.plane_count as usize != n {
            return Err(LayoutError::PlaneCount(self.plane_count));
        }
        let mut prev_end = 0u64;
        for (i, p) in self.planes.iter().enumerate() {
            let idx = i as u8;
            if i >= n {
                if *p != PlaneLayout::default() {
                    return Err(LayoutError::Plane(idx));
                }
                continue;
            }
            let (row_bytes, rows, _) = format
                .plane_shape(i, self.width, self.height)
                .ok_or(LayoutError::Overflow)?;
            if p.row_bytes != row_bytes || p.rows != rows || p.pitch < row_bytes || p.reserved != 0
            {
                return Err(LayoutError::Plane(idx));
            }
            // Planes ascend and do not overlap: [offset, offset + pitch*rows).
            let len = u64::from(p.pitch) * u64::from(p.rows);
            let end = p.offset.checked_add(len).ok_or(LayoutError::Overflow)?;
            if p.offset < prev_end || end > self.slot_bytes {
                return Err(LayoutError::PlaneBounds(idx));
            }
            prev_end = end;
        }
        Ok(format)
    }

    /// The pixel format, if the number is known.
    pub fn pixel_format(&self) -> Option<PixelFormat> {
        PixelFormat::from_u32(self.format)
    }

    /// Planes in use.
    pub fn planes(&self) -> &[PlaneLayout] {
        &self.planes[..(self.plane_count as usize).min(MAX_PLANES)]
    }

    /// Byte range `[start, end)` of plane `i` inside a slot.
    pub fn plane_range(&self, i: usize) -> Option<(u64, u64)> {
        let p = self.planes().get(i)?;
        let len = u64::from(p.pitch).checked_mul(u64::from(p.rows))?;
        Some((p.offset, p.offset.checked_add(len)?))
    }

    /// Each row of the picture as `(slot_offset, packed_offset, len)`: where
    /// it lies in a slot (pitched) and in a tightly packed copy. The one walk
    /// behind every packed <-> pitched copy.
    ///
    /// ```
    /// use cuframes_core::{FrameLayout, PixelFormat};
    /// let l = FrameLayout::new(PixelFormat::Gray8, 3, 2, 64).unwrap();
    /// let rows: Vec<_> = l.packed_rows().collect();
    /// assert_eq!(rows, [(0, 0, 3), (64, 3, 3)]);
    /// ```
    pub fn packed_rows(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        let mut packed = 0u64;
        self.planes().iter().flat_map(move |p| {
            let start = packed;
            let rb = u64::from(p.row_bytes);
            packed = packed.saturating_add(rb.saturating_mul(u64::from(p.rows)));
            (0..u64::from(p.rows)).map(move |r| {
                let slot = p.offset.saturating_add(r * u64::from(p.pitch));
                (slot, start.saturating_add(r * rb), rb)
            })
        })
    }

    /// Tightly packed size of the picture (rows of `row_bytes`, no pitch
    /// padding): what `publish_from` expects. Saturates on a layout that
    /// did not validate (read from hostile bytes) instead of overflowing.
    pub fn packed_bytes(&self) -> u64 {
        self.planes().iter().fold(0u64, |sum, p| {
            // u32 * u32 always fits in u64; only the sum can overflow.
            sum.saturating_add(u64::from(p.row_bytes) * u64::from(p.rows))
        })
    }
}

fn check_dimensions(format: PixelFormat, width: u32, height: u32) -> Result<(), LayoutError> {
    let bad = width == 0
        || height == 0
        || width > MAX_DIMENSION
        || height > MAX_DIMENSION
        || (format.needs_even_dimensions() && (width % 2 != 0 || height % 2 != 0));
    if bad {
        Err(LayoutError::Dimensions { width, height })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_format_round_trips_through_validate() {
        for f in PixelFormat::ALL {
            for align in [1, 64, 512] {
                let l = FrameLayout::new(f, 642, 482, align).unwrap();
                assert_eq!(l.validate(), Ok(f));
                assert!(l.slot_bytes >= l.packed_bytes());
                assert_eq!(PixelFormat::from_name(f.name()), Some(f));
            }
        }
    }

    #[test]
    fn p010_uses_two_bytes_per_sample() {
        let l = FrameLayout::new(PixelFormat::P010, 64, 32, 64).unwrap();
        assert_eq!(l.planes[0].row_bytes, 128);
        assert_eq!(l.planes[1].rows, 16);
    }

    #[test]
    fn overlapping_planes_rejected() {
        let mut l = FrameLayout::new(PixelFormat::Nv12, 64, 64, 64).unwrap();
        l.planes[1].offset = 10;
        assert_eq!(l.validate(), Err(LayoutError::PlaneBounds(1)));
    }

    #[test]
    fn plane_past_slot_end_rejected() {
        let mut l = FrameLayout::new(PixelFormat::Rgb24, 64, 64, 64).unwrap();
        l.slot_bytes -= 1;
        assert_eq!(l.validate(), Err(LayoutError::PlaneBounds(0)));
    }

    #[test]
    fn huge_offsets_do_not_overflow() {
        let mut l = FrameLayout::new(PixelFormat::Gray8, 64, 64, 64).unwrap();
        l.planes[0].offset = u64::MAX - 5;
        l.slot_bytes = u64::MAX;
        assert_eq!(l.validate(), Err(LayoutError::Overflow));
    }

    #[test]
    fn odd_nv12_and_zero_sizes_rejected() {
        assert!(FrameLayout::new(PixelFormat::Nv12, 3, 2, 64).is_err());
        assert!(FrameLayout::new(PixelFormat::Gray8, 0, 2, 64).is_err());
        assert!(FrameLayout::new(PixelFormat::Gray8, 2, MAX_DIMENSION + 1, 64).is_err());
        assert!(FrameLayout::new(PixelFormat::Gray8, 2, 2, 3).is_err());
    }
}
