//! How a frame's planes look as arrays: shape, strides and element width
//! per pixel format, from the validated layout.

use crate::dlpack::{DlDevice, TensorSpec};
use cuframes::{FrameLayout, PixelFormat};

/// Where a slot's bytes are and how they may be used.
#[derive(Clone, Copy, Debug)]
pub struct Slot {
    /// Sizes, pitches and plane offsets.
    pub layout: FrameLayout,
    /// Pixel format (decides element width and channels).
    pub format: PixelFormat,
    /// Address of the slot's first byte.
    pub base: usize,
    /// Host or GPU memory.
    pub device: DlDevice,
    /// Whether views must be read-only (subscriber frames).
    pub read_only: bool,
}

impl Slot {
    /// Plane `i`: `(rows, width)` for luma, gray and packed-RGB channels
    /// last, `(rows, width/2, 2)` for interleaved chroma.
    pub fn plane(&self, i: usize) -> Option<TensorSpec> {
        let p = *self.layout.planes().get(i)?;
        let (row_bytes, rows, channels) =
            self.format
                .plane_shape(i, self.layout.width, self.layout.height)?;
        let elem = i64::from(self.format.bytes_per_element());
        let (rows, pitch) = (i64::from(rows), i64::from(p.pitch) / elem);
        let cols = i64::from(row_bytes) / elem / i64::from(channels);
        let (ndim, shape, strides) = if channels == 1 {
            (2, [rows, cols, 0], [pitch, 1, 0])
        } else {
            let c = i64::from(channels);
            (3, [rows, cols, c], [pitch, c, 1])
        };
        Some(self.spec(p.offset, ndim, shape, strides))
    }

    /// The whole picture as one array: the single plane, or for NV12/P010
    /// the `(height * 3/2, width)` array the usual NV12 converters take,
    /// when the chroma rows follow the luma rows at the same pitch.
    pub fn whole(&self) -> Option<TensorSpec> {
        let planes = self.layout.planes();
        match planes {
            [_] => self.plane(0),
            [y, uv]
                if uv.pitch == y.pitch
                    && uv.offset == y.offset + u64::from(y.pitch) * u64::from(y.rows) =>
            {
                let elem = i64::from(self.format.bytes_per_element());
                let rows = i64::from(y.rows + uv.rows);
                let cols = i64::from(self.layout.width);
                let pitch = i64::from(y.pitch) / elem;
                Some(self.spec(y.offset, 2, [rows, cols, 0], [pitch, 1, 0]))
            }
            _ => None,
        }
    }

    /// The array at `offset` with the given shape and strides (elements).
    fn spec(&self, offset: u64, ndim: usize, shape: [i64; 3], strides: [i64; 3]) -> TensorSpec {
        TensorSpec {
            data: self.base + offset as usize,
            device: self.device,
            bits: (self.format.bytes_per_element() * 8) as u8,
            ndim,
            shape,
            strides,
            read_only: self.read_only,
        }
    }
}
