//! What crosses the network: a fixed header in front of each frame or
//! packet, and the stream's description (JSON) beside the data.
//!
//! Key expressions under `cuframes/<name>`: `data` (header + payload, one
//! sample per frame or packet), `meta` (the [`Meta`], published at every
//! change and answered to queries, so a late importer learns it), and the
//! liveliness token `alive` (held by the exporter while it runs).

use serde::{Deserialize, Serialize};

/// First bytes of every data sample.
pub const MAGIC: [u8; 4] = *b"CFZB";
/// Version of the header and of [`Meta`]; a peer with another one is
/// refused with a clear error rather than misread.
pub const WIRE_VERSION: u16 = 1;
/// Bytes of the encoded [`Header`].
pub const HEADER_LEN: usize = 72;

/// The key expressions of one bridged stream.
#[derive(Debug, Clone)]
pub struct Keys {
    /// Frames or packets.
    pub data: String,
    /// The stream's [`Meta`].
    pub meta: String,
    /// The exporter's liveliness token.
    pub alive: String,
}

impl Keys {
    /// The keys under `cuframes/<name>`.
    ///
    /// ```
    /// let k = cuframes_bridge::wire::Keys::new("cam0");
    /// assert_eq!(k.data, "cuframes/cam0/data");
    /// ```
    pub fn new(name: &str) -> Self {
        Self {
            data: format!("cuframes/{name}/data"),
            meta: format!("cuframes/{name}/meta"),
            alive: format!("cuframes/{name}/alive"),
        }
    }
}

/// What a data sample carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A raw frame: its planes packed (rows back to back, planes in order).
    Frame = 1,
    /// An encoded packet (access unit).
    Packet = 2,
    /// The stream ended after the samples before it (no payload; `flags`
    /// is 1 for closed, 2 for gone): in order with the data, so a
    /// lossless importer publishes everything before it first.
    End = 3,
}

/// How the payload is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// As is.
    #[default]
    None = 0,
    /// LZ4 block format (`lz4_flex`), the raw length in the header.
    Lz4 = 1,
}

/// The fixed header of a data sample (little-endian, [`HEADER_LEN`] bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Frame or packet.
    pub kind: Kind,
    /// Payload compression.
    pub compression: Compression,
    /// The exporter-side stream's epoch: a new one means a new stream.
    pub epoch: u64,
    /// The frame's or packet's seq in the exporter-side ring.
    pub seq: u64,
    /// Presentation time (ns), as published.
    pub pts_ns: i64,
    /// Packets: decode time (ns).
    pub dts_ns: i64,
    /// Packets: duration (ns, 0 unknown).
    pub duration_ns: u64,
    /// Packets: `cuframes::packet` flags (KEY, DISCONTINUITY).
    pub flags: u64,
    /// Payload bytes before compression.
    pub len: u64,
    /// When the exporter sent it (`cuframes::now_ns`, CLOCK_MONOTONIC):
    /// latency on one host; meaningless across hosts.
    pub sent_ns: u64,
}

/// Why a data sample was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// Shorter than a header.
    Short(usize),
    /// Not a cuframes bridge sample.
    Magic,
    /// Another wire version.
    Version(u16),
    /// Unknown kind or compression byte.
    Field(&'static str, u8),
    /// The payload does not decompress to the length the header names.
    Payload(String),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Short(n) => write!(f, "sample of {n} bytes is shorter than a header"),
            Self::Magic => write!(f, "not a cuframes bridge sample"),
            Self::Version(v) => write!(
                f,
                "wire version {v}, this bridge speaks {WIRE_VERSION}: upgrade the older side"
            ),
            Self::Field(what, v) => write!(f, "unknown {what} {v}"),
            Self::Payload(why) => write!(f, "bad payload: {why}"),
        }
    }
}

impl std::error::Error for WireError {}

impl Header {
    /// Appends the encoded header to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&WIRE_VERSION.to_le_bytes());
        out.push(self.kind as u8);
        out.push(self.compression as u8);
        for w in [
            self.epoch,
            self.seq,
            self.pts_ns as u64,
            self.dts_ns as u64,
            self.duration_ns,
            self.flags,
            self.len,
            self.sent_ns,
        ] {
            out.extend_from_slice(&w.to_le_bytes());
        }
    }

    /// Splits a sample into its header and payload.
    ///
    /// ```
    /// use cuframes_bridge::wire::*;
    /// let h = Header { kind: Kind::Packet, compression: Compression::None, epoch: 7, seq: 3,
    ///     pts_ns: -5, dts_ns: -9, duration_ns: 40, flags: 1, len: 2, sent_ns: 11 };
    /// let mut sample = Vec::new();
    /// h.encode(&mut sample);
    /// sample.extend_from_slice(b"hi");
    /// assert_eq!(Header::decode(&sample), Ok((h, &b"hi"[..])));
    /// sample[4] = 9;
    /// assert_eq!(Header::decode(&sample), Err(WireError::Version(9)));
    /// ```
    pub fn decode(sample: &[u8]) -> Result<(Self, &[u8]), WireError> {
        if sample.len() < HEADER_LEN {
            return Err(WireError::Short(sample.len()));
        }
        if sample[..4] != MAGIC {
            return Err(WireError::Magic);
        }
        let version = u16::from_le_bytes([sample[4], sample[5]]);
        if version != WIRE_VERSION {
            return Err(WireError::Version(version));
        }
        let kind = match sample[6] {
            1 => Kind::Frame,
            2 => Kind::Packet,
            3 => Kind::End,
            k => return Err(WireError::Field("kind", k)),
        };
        let compression = match sample[7] {
            0 => Compression::None,
            1 => Compression::Lz4,
            c => return Err(WireError::Field("compression", c)),
        };
        let w = |i: usize| {
            let at = 8 + 8 * i;
            u64::from_le_bytes(sample[at..at + 8].try_into().expect("8 bytes"))
        };
        Ok((
            Self {
                kind,
                compression,
                epoch: w(0),
                seq: w(1),
                pts_ns: w(2) as i64,
                dts_ns: w(3) as i64,
                duration_ns: w(4),
                flags: w(5),
                len: w(6),
                sent_ns: w(7),
            },
            &sample[HEADER_LEN..],
        ))
    }
}

/// The `flags` of an [`Kind::End`] sample for a stream's end state.
pub fn end_flags(state: State) -> u64 {
    match state {
        State::Gone => 2,
        _ => 1,
    }
}

/// The end state an [`Kind::End`] sample's `flags` name.
///
/// ```
/// use cuframes_bridge::wire::*;
/// assert_eq!(end_state(end_flags(State::Gone)), State::Gone);
/// assert_eq!(end_state(end_flags(State::Closed)), State::Closed);
/// ```
pub fn end_state(flags: u64) -> State {
    if flags == 2 {
        State::Gone
    } else {
        State::Closed
    }
}

/// Compresses `payload` after `out`'s header bytes.
pub fn append_payload(out: &mut Vec<u8>, payload: &[u8], compression: Compression) {
    match compression {
        Compression::None => out.extend_from_slice(payload),
        Compression::Lz4 => {
            let at = out.len();
            out.resize(
                at + lz4_flex::block::get_maximum_output_size(payload.len()),
                0,
            );
            let n = lz4_flex::block::compress_into(payload, &mut out[at..])
                .expect("sized by get_maximum_output_size");
            out.truncate(at + n);
        }
    }
}

/// The payload as published (decompressed when it was compressed).
///
/// ```
/// use cuframes_bridge::wire::*;
/// let frame = vec![7u8; 4096];
/// let mut sample = Vec::new();
/// append_payload(&mut sample, &frame, Compression::Lz4);
/// assert!(sample.len() < 100);
/// assert_eq!(payload(&sample, Compression::Lz4, 4096).unwrap(), frame);
/// assert!(payload(&sample, Compression::Lz4, 4097).is_err());
/// ```
pub fn payload(
    bytes: &[u8],
    compression: Compression,
    len: u64,
) -> Result<std::borrow::Cow<'_, [u8]>, WireError> {
    let bad = |why: String| Err(WireError::Payload(why));
    match compression {
        Compression::None if bytes.len() as u64 == len => Ok(bytes.into()),
        Compression::None => bad(format!("{} bytes, the header says {len}", bytes.len())),
        Compression::Lz4 => {
            // Bound what a hostile header may make us allocate.
            if len > MAX_PAYLOAD {
                return bad(format!("{len} bytes is more than {MAX_PAYLOAD}"));
            }
            let mut out = vec![0u8; len as usize];
            match lz4_flex::block::decompress_into(bytes, &mut out) {
                Ok(n) if n as u64 == len => Ok(out.into()),
                Ok(n) => bad(format!("decompressed to {n} bytes, the header says {len}")),
                Err(e) => bad(e.to_string()),
            }
        }
    }
}

/// The largest payload accepted (a 8K RGBA frame is 132 MB).
pub const MAX_PAYLOAD: u64 = 256 << 20;

/// The exporter's stream as the importer needs it to make the same ring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// [`WIRE_VERSION`].
    pub version: u16,
    /// The exporter-side stream's epoch.
    pub epoch: u64,
    /// Whether that stream is live, closed by its publisher, or gone
    /// (its publisher died).
    pub state: State,
    /// Slots of the exporter-side ring (the importer's default).
    pub slots: u32,
    /// Frames or packets, and their description.
    pub stream: Stream,
}

/// The state of the exporter-side stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Being published.
    Live,
    /// Closed by its publisher: importers close theirs (`Closed`).
    Closed,
    /// Its publisher died: importers end theirs as dead (`PublisherGone`).
    Gone,
}

/// What the stream carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "content", rename_all = "lowercase")]
pub enum Stream {
    /// Raw frames.
    Frames {
        /// Pixel format name (`nv12`, `p010`, `gray8`, `rgb24`, `rgba8`, `bgr24`).
        format: String,
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
    /// Encoded packets.
    Packets {
        /// Codec name (`h264`, `hevc`, ...).
        codec: String,
        /// The largest packet.
        max_packet: u64,
        /// Codec configuration, hex.
        extradata: String,
        /// Coded width (0 unknown).
        width: u32,
        /// Coded height (0 unknown).
        height: u32,
    },
}

impl Meta {
    /// JSON bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a Meta serializes")
    }

    /// Parses JSON bytes, refusing another wire version.
    ///
    /// ```
    /// use cuframes_bridge::wire::*;
    /// let m = Meta { version: WIRE_VERSION, epoch: 1, state: State::Live, slots: 8,
    ///     stream: Stream::Frames { format: "nv12".into(), width: 64, height: 32 } };
    /// assert_eq!(Meta::from_bytes(&m.to_bytes()).unwrap(), m);
    /// assert!(Meta::from_bytes(b"{}").is_err());
    /// ```
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, WireError> {
        let m: Self =
            serde_json::from_slice(bytes).map_err(|e| WireError::Payload(format!("meta: {e}")))?;
        if m.version != WIRE_VERSION {
            return Err(WireError::Version(m.version));
        }
        Ok(m)
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes from lower- or upper-case hex.
///
/// ```
/// use cuframes_bridge::wire::{hex, unhex};
/// assert_eq!(unhex(&hex(&[0, 1, 0xab])), Some(vec![0, 1, 0xab]));
/// assert_eq!(unhex("abc"), None);
/// ```
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}
