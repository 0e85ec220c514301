//! Encoded packet streams: `PacketPublisher` writes the packets of an
//! H.264/HEVC/AV1/... stream, with their timestamps and keyframe flags,
//! into host shared memory; `PacketSubscriber` reads them in place as
//! `Packet`s. Every sequence a subscriber hands out is decodable: its first
//! packet is a keyframe, and after any skip the next packet is a keyframe.
//!
//! Packets follow the frames' rules (see `frame.rs`): a packet's slot stays
//! held until `release()` (or a `with` block's end, or garbage collection)
//! *and* until every view made of it is gone — the memoryview of
//! `packet.data` and whatever was sliced from it, `packet.numpy()`, a
//! DLPack capsule and the array or tensor made from it — so a view never
//! shows a slot the publisher reuses. After `release()` every accessor but
//! `released`, `release()` and `repr()` raises `CuframesReleasedError`.
//!
//! The limited C API of an abi3-py39 module has no buffer protocol (it came
//! with Python 3.11), so `Packet` cannot be an exporter itself:
//! `packet.data` is a read-only memoryview whose exporter is a `ctypes`
//! array over the slot that carries the packet's hold (`bytes(packet)`
//! copies).

use crate::dlpack::{self, DLPackView, DlDevice, Keep, Owner, Request, TensorSpec, DEVICE_CPU};
use crate::enums::{PyLosslessPolicy, PySubscriberMode};
use crate::errors::{raise, IntoPy};
use crate::holds::{Holding, Holds, Item, Pin, Via};
use crate::publisher::{ring_options, Open};
use crate::subscriber::{Connect, Handle, Session};
use cuframes::{packet, Codec, ErrorCode, PacketMeta, PacketStream, SubscriberStats};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyMemoryView, PySlice, PyTuple};
use std::sync::Arc;
use std::time::Duration;

/// Largest packet when Python code does not say: 1 MiB per slot, room for
/// a 1080p keyframe (a 4K H.264 keyframe can be bigger).
const DEFAULT_MAX_PACKET: u64 = 1 << 20;

/// What a `packet.data` memoryview's hold is called.
const HELD_BY_MEMORYVIEW: &str = "a memoryview (packet.data) or a view sliced from it";
/// What a `packet.numpy()` array's hold is called.
const HELD_BY_NUMPY: &str = "a numpy array (packet.numpy()) or a view of it";
/// What a DLPack export's hold is called.
const HELD_BY_DLPACK: &str =
    "a DLPack capsule (packet.__dlpack__()) or the array or tensor made from it";

/// A codec from its name, or `InvalidArgument` listing the names.
fn codec_named(name: &str) -> PyResult<Codec> {
    Codec::from_name(&name.to_ascii_lowercase()).ok_or_else(|| {
        let names: Vec<&str> = Codec::ALL.iter().map(|c| c.name()).collect();
        raise(
            ErrorCode::InvalidArgument,
            &format!(
                "unknown codec {name:?}: use one of {} (\"h265\" is accepted for \"hevc\")",
                names.join(", ")
            ),
        )
    })
}

/// The bytes of any object with the buffer protocol (bytes, bytearray,
/// memoryview, a numpy array), in C order, without copying `bytes`.
fn bytes_of<'py>(data: &Bound<'py, PyAny>, what: &str) -> PyResult<Bound<'py, PyBytes>> {
    if let Ok(b) = data.cast::<PyBytes>() {
        return Ok(b.clone());
    }
    let view = PyMemoryView::from(data).map_err(|_| {
        raise(
            ErrorCode::InvalidArgument,
            &format!(
                "{what} must be a bytes-like object (bytes, bytearray, memoryview, a numpy \
                 array); got {}",
                data.get_type()
                    .name()
                    .map_or_else(|_| "?".to_owned(), |n| n.to_string())
            ),
        )
    })?;
    Ok(view.call_method0("tobytes")?.cast_into::<PyBytes>()?)
}

impl Keep for cuframes::Packet {}

impl Item for Arc<cuframes::Packet> {
    const CLASS: &'static str = "Packet";
    const NOUN: &'static str = "packet";

    fn owner(&self) -> Owner {
        self.clone()
    }
}

/// Keeps a packet's slot held while the `ctypes` array under a
/// `packet.data` memoryview lives (it is an attribute of that array).
#[pyclass(name = "_PacketHold", module = "cuframes._native", frozen)]
struct PacketHold {
    /// The hold.
    _hold: Arc<Pin>,
}

/// What stays readable about a packet without touching its memory.
#[derive(Clone, Copy, Debug)]
struct Info {
    /// Sequence number.
    seq: u64,
    /// The publisher's metadata (`len`, timestamps, flags).
    meta: PacketMeta,
    /// Monotonic commit time.
    commit_ns: u64,
    /// Commit-to-handout latency.
    latency_ns: u64,
}

/// The `ctypes` array type (`c_ubyte * slot_bytes`) a subscriber's
/// `packet.data` views are made with, made on first use.
struct ViewType {
    /// Bytes of a slot.
    slot_bytes: u64,
    /// The type.
    class: PyOnceLock<Py<PyAny>>,
}

impl ViewType {
    /// `ctypes.c_ubyte * slot_bytes`.
    fn get<'py>(&self, py: Python<'py>) -> PyResult<&Bound<'py, PyAny>> {
        let class = self.class.get_or_try_init(py, || {
            py.import("ctypes")?
                .getattr("c_ubyte")?
                .mul(self.slot_bytes)
                .map(Bound::unbind)
        })?;
        Ok(class.bind(py))
    }
}

/// An encoded packet from `PacketSubscriber.next_packet`, held in place in
/// shared memory: the publisher cannot reuse its slot until `release()`,
/// the end of a `with` block, or garbage collection, and until every view
/// of it (`data`, `numpy()`, DLPack) is gone. After `release()` every
/// property and method but `released`, `release()` and `repr()` raises
/// `CuframesReleasedError`; views made before stay valid.
#[pyclass(name = "Packet", module = "cuframes._native", frozen)]
pub struct PyPacket {
    /// The packet and this object's hold on it, until released.
    held: Holding<Arc<cuframes::Packet>>,
    /// The subscriber's view type.
    view_type: Arc<ViewType>,
    /// What stays readable without the packet's memory.
    info: Info,
}

impl PyPacket {
    /// Wraps a packet just taken by a subscriber.
    fn new(
        packet: Arc<cuframes::Packet>,
        latency_ns: u64,
        holds: Arc<Holds>,
        view_type: Arc<ViewType>,
    ) -> Self {
        let info = Info {
            seq: packet.seq(),
            meta: *packet.meta(),
            commit_ns: packet.commit_ns(),
            latency_ns,
        };
        Self {
            held: Holding::new(packet, info.seq, holds),
            view_type,
            info,
        }
    }

    /// The metadata, or `CuframesReleasedError`.
    fn info(&self) -> PyResult<&Info> {
        self.held.get().map(|_| &self.info)
    }

    /// A read-only DLPack view of the packet's bytes (one dimension of
    /// uint8) held by `what`, or `CuframesReleasedError`.
    fn dlpack_view(&self, what: &'static str) -> PyResult<DLPackView> {
        let (packet, hold) = self.held.pin(Via::Named(what), "")?;
        let data = packet.data();
        let spec = TensorSpec {
            data: data.as_ptr() as usize,
            device: DlDevice {
                device_type: DEVICE_CPU,
                device_id: 0,
            },
            bits: 8,
            ndim: 1,
            shape: [data.len() as i64, 0, 0],
            strides: [1, 0, 0],
            read_only: true,
        };
        Ok(DLPackView::new(spec, hold))
    }
}

#[pymethods]
impl PyPacket {
    /// Sequence number: consecutive packets have consecutive seqs.
    #[getter]
    fn seq(&self) -> PyResult<u64> {
        Ok(self.info()?.seq)
    }
    /// Presentation timestamp, nanoseconds.
    #[getter]
    fn pts_ns(&self) -> PyResult<i64> {
        Ok(self.info()?.meta.pts_ns)
    }
    /// Decode timestamp, nanoseconds (the pts unless the publisher said).
    #[getter]
    fn dts_ns(&self) -> PyResult<i64> {
        Ok(self.info()?.meta.dts_ns)
    }
    /// Duration, nanoseconds (0: unknown).
    #[getter]
    fn duration_ns(&self) -> PyResult<u64> {
        Ok(self.info()?.meta.duration_ns)
    }
    /// Raw flags: bit 0 keyframe, bit 1 discontinuity.
    #[getter]
    fn flags(&self) -> PyResult<u64> {
        Ok(self.info()?.meta.flags)
    }
    /// Whether the packet is a keyframe (a decoder can start here).
    #[getter]
    fn is_key(&self) -> PyResult<bool> {
        Ok(self.info()?.meta.flags & packet::KEY != 0)
    }
    /// Whether the source lost something before this packet (a decoder
    /// should resynchronise).
    #[getter]
    fn discontinuity(&self) -> PyResult<bool> {
        Ok(self.info()?.meta.flags & packet::DISCONTINUITY != 0)
    }
    /// Monotonic clock reading at commit, nanoseconds.
    #[getter]
    fn commit_ns(&self) -> PyResult<u64> {
        Ok(self.info()?.commit_ns)
    }
    /// Commit-to-handout latency of this packet, nanoseconds.
    #[getter]
    fn latency_ns(&self) -> PyResult<u64> {
        Ok(self.info()?.latency_ns)
    }
    /// Bytes of the packet.
    #[getter]
    fn nbytes(&self) -> PyResult<u64> {
        Ok(self.info()?.meta.len)
    }
    /// Whether `release()` was called.
    #[getter]
    fn released(&self) -> bool {
        self.held.released()
    }

    /// The packet's bytes as a read-only memoryview of exactly `nbytes`
    /// bytes, in place (no copy). The view, and every view sliced from it,
    /// keeps the slot held until it is gone (or `memoryview.release()`d),
    /// even after `release()`.
    #[getter]
    fn data<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (packet, hold) = self.held.pin(Via::Named(HELD_BY_MEMORYVIEW), "")?;
        let data = packet.data();
        let (address, len) = (data.as_ptr() as usize, data.len());
        // The exporter is a `ctypes` array over the whole slot (the packet
        // starts at the slot's first byte and is at most a slot long): the
        // slot stays mapped and unreused while the array lives, because the
        // array carries the hold, and the memoryview keeps the array alive.
        // Only the read-only slice of the packet's bytes is handed out.
        let array = self
            .view_type
            .get(py)?
            .call_method1("from_address", (address,))?;
        array.setattr(
            "_cuframes_hold",
            Bound::new(py, PacketHold { _hold: hold })?,
        )?;
        PyMemoryView::from(&array)?
            .call_method1("cast", ("B",))?
            .get_item(PySlice::new(py, 0, len as isize, 1))?
            .call_method0("toreadonly")
    }

    /// The packet's bytes as a read-only one-dimensional numpy array of
    /// uint8, in place (no copy); it keeps the slot held as `data` does.
    fn numpy<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        dlpack::to_numpy(py, self.dlpack_view(HELD_BY_NUMPY)?)
    }

    /// A copy of the packet's bytes.
    fn to_bytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let packet = self.held.get()?;
        Ok(PyBytes::new(py, packet.data()))
    }

    /// `bytes(packet)`: a copy of the packet's bytes.
    fn __bytes__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        self.to_bytes(py)
    }

    /// The DLPack protocol over the packet's bytes (one dimension of
    /// uint8, read-only, host memory): `numpy.from_dlpack(packet)`,
    /// `torch.from_dlpack(packet)`.
    #[pyo3(signature = (*, stream=None, max_version=None, dl_device=None, copy=None))]
    fn __dlpack__<'py>(
        &self,
        py: Python<'py>,
        stream: Option<&Bound<'py, PyAny>>,
        max_version: Option<(u32, u32)>,
        dl_device: Option<(i32, i32)>,
        copy: Option<bool>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.dlpack_view(HELD_BY_DLPACK)?
            .answer(py, Request::new(stream, max_version, dl_device, copy))
    }

    /// `(1, 0)`: packets live in host memory.
    fn __dlpack_device__(&self) -> PyResult<(i32, i32)> {
        self.info()?;
        Ok((DEVICE_CPU, 0))
    }

    /// Gives the slot back to the publisher (once no view of it remains).
    /// Idempotent.
    fn release(&self, py: Python<'_>) {
        self.held.release(py);
    }

    /// `with packet:` releases the packet at the end of the block.
    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Releases the packet.
    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> bool {
        self.release(py);
        false
    }

    /// The packet's properties as a dict.
    #[pyo3(name = "info")]
    fn info_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let i = self.info()?;
        let d = PyDict::new(py);
        d.set_item("seq", i.seq)?;
        d.set_item("nbytes", i.meta.len)?;
        d.set_item("pts_ns", i.meta.pts_ns)?;
        d.set_item("dts_ns", i.meta.dts_ns)?;
        d.set_item("duration_ns", i.meta.duration_ns)?;
        d.set_item("flags", i.meta.flags)?;
        d.set_item("is_key", i.meta.flags & packet::KEY != 0)?;
        d.set_item("discontinuity", i.meta.flags & packet::DISCONTINUITY != 0)?;
        d.set_item("commit_ns", i.commit_ns)?;
        d.set_item("latency_ns", i.latency_ns)?;
        Ok(d)
    }

    /// `Packet(seq=…, nbytes=…, key, pts_ns=…)`, usable after release.
    fn __repr__(&self) -> String {
        let i = &self.info;
        format!(
            "Packet(seq={}, nbytes={}{}, pts_ns={}{})",
            i.seq,
            i.meta.len,
            if i.meta.flags & packet::KEY != 0 {
                ", key"
            } else {
                ""
            },
            i.meta.pts_ns,
            if self.released() { ", released" } else { "" }
        )
    }
}

impl Handle for cuframes::PacketSubscriber {
    type Item = Arc<cuframes::Packet>;
    const WHO: &'static str = "packet subscriber";
    const NEXT: &'static str = "next_packet()";
    const HOLDER: &'static str = "Packet";
    const FIX: &'static str = "release packets you are done with (packet.release() or `with \
                               packet:`) and drop their views (`del view`, `view.release()`) \
                               before the next next_packet(); copy what must live longer \
                               (bytes(packet))";
    const STATS: [&'static str; 2] = ["packets_received", "last_pts_ns"];

    fn next(&mut self, timeout: Duration, stop: impl Fn() -> bool) -> cuframes::Result<Self::Item> {
        self.next_packet_unless(timeout, stop).map(Arc::new)
    }

    fn try_next(&mut self) -> cuframes::Result<Option<Self::Item>> {
        Ok(cuframes::PacketSubscriber::try_next(self)?.map(Arc::new))
    }

    fn stats(&self) -> SubscriberStats {
        cuframes::PacketSubscriber::stats(self)
    }

    fn budget_message(_key: &str, e: &cuframes::Error, asked: u32, defaulted: bool) -> String {
        format!(
            "{e}. This subscriber asked for max_held={asked}; the ring must cover every \
             subscriber's max_held plus 2: start the publisher with more slots \
             (PacketPublisher(..., slots=N)){}",
            if defaulted {
                ""
            } else {
                ", or ask for a smaller max_held"
            }
        )
    }
}

/// What a packet stream carries besides its packets, as its publisher
/// gave it.
struct Described {
    /// The codec.
    codec: Codec,
    /// The codec configuration.
    extradata: Vec<u8>,
    /// Largest packet, bytes.
    max_packet: u64,
    /// Coded `(width, height)` (0: unknown).
    dimensions: (u32, u32),
}

impl Described {
    /// What subscriber `sub` was told at connect.
    fn of(sub: &cuframes::PacketSubscriber) -> Self {
        Self {
            codec: sub.codec(),
            extradata: sub.extradata().to_vec(),
            max_packet: sub.max_packet(),
            dimensions: sub.dimensions(),
        }
    }
}

/// Reads the encoded packets of one stream, from a keyframe on.
///
/// NEWEST_ONLY joins at the newest keyframe and, when it falls behind a
/// newer keyframe, jumps to it; QUEUE is lossless from the newest keyframe
/// at connect when the ring still holds it and every packet after it
/// (else from the next keyframe). Either way the packets handed out decode from the first:
/// it is a keyframe, and so is the packet after any skip.
///
/// Thread-safety as `CuframesSubscriber`: calls that take a packet are
/// serialised; `close()` makes a pending `next_packet` in another thread
/// return with `CuframesClosedError`; packets may be released from any
/// thread and stay valid after the subscriber is closed.
#[pyclass(name = "PacketSubscriber", module = "cuframes._native", frozen)]
pub struct PyPacketSubscriber {
    /// The connection.
    session: Session<cuframes::PacketSubscriber>,
    /// The `ctypes` type of `packet.data` views.
    view_type: Arc<ViewType>,
    /// The codec, its configuration as of connect, the sizes.
    stream: Described,
}

impl PyPacketSubscriber {
    /// Wraps a packet just taken, with its latency.
    fn wrap(&self, (packet, latency_ns): (Arc<cuframes::Packet>, u64)) -> PyPacket {
        let holds = self.session.holds().clone();
        PyPacket::new(packet, latency_ns, holds, self.view_type.clone())
    }
}

#[pymethods]
impl PyPacketSubscriber {
    /// Connects to the packet stream `key` as `consumer_name`, waiting up
    /// to `connect_timeout_ms` for it to appear (GIL released meanwhile).
    /// A stream of decoded frames raises `CuframesIncompatibleError`
    /// (read it with `cuframes.subscribe`).
    ///
    /// `max_held` is how many packets (counting the views of each) may be
    /// held at once; `None` asks for 2 and falls back to 1, with a
    /// warning, when the ring has room for only one more.
    #[new]
    #[pyo3(signature = (key, consumer_name, mode=PySubscriberMode::NEWEST_ONLY, connect_timeout_ms=2000, max_held=None, allow_other_owner=false))]
    fn new(
        py: Python<'_>,
        key: &str,
        consumer_name: &str,
        mode: PySubscriberMode,
        connect_timeout_ms: u64,
        max_held: Option<u32>,
        allow_other_owner: bool,
    ) -> PyResult<Self> {
        let asked = Connect {
            key,
            name: consumer_name,
            mode,
            connect_timeout_ms,
            max_held,
            allow_other_owner,
        };
        let connect =
            |options| cuframes::PacketSubscriber::connect(key, consumer_name, mode.into(), options);
        let (session, stream) = Session::connect(py, &asked, connect, Described::of)?;
        Ok(Self {
            view_type: Arc::new(ViewType {
                slot_bytes: stream.max_packet,
                class: PyOnceLock::new(),
            }),
            session,
            stream,
        })
    }

    /// Waits up to `timeout_ms` for the next packet (GIL released). Raises
    /// `CuframesTimeoutError` (counted in `timeouts`), `CuframesClosedError`
    /// (stream closed and drained, or subscriber closed),
    /// `CuframesPublisherGoneError`, `CuframesLaggedError` (a QUEUE reader
    /// evicted for lagging; the next call goes on, from a keyframe),
    /// `CuframesCapacityError` (already holding `max_held` packets).
    #[pyo3(signature = (timeout_ms=1000))]
    fn next_packet(&self, py: Python<'_>, timeout_ms: u64) -> PyResult<PyPacket> {
        Ok(self.wrap(self.session.take(py, timeout_ms, true)?))
    }

    /// The next packet if one is ready now, else `None`.
    fn try_next(&self, py: Python<'_>) -> PyResult<Option<PyPacket>> {
        Ok(self.session.try_take(py)?.map(|p| self.wrap(p)))
    }

    /// Leaves the stream. Idempotent; a `next_packet` waiting in another
    /// thread returns with `CuframesClosedError`. Packets still held stay
    /// valid until released.
    fn close(&self, py: Python<'_>) {
        self.session.close(py);
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.session.closed()
    }

    /// `with cuframes.subscribe_packets(...) as sub:` closes it at the end.
    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Closes the subscriber.
    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> bool {
        self.close(py);
        false
    }

    /// `for packet in sub:` (see `__next__`).
    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Iteration waits as long as it takes; it ends when the stream closes
    /// (or the subscriber is closed) and raises other errors.
    fn __next__(&self, py: Python<'_>) -> PyResult<Option<PyPacket>> {
        Ok(self.session.iterate(py)?.map(|p| self.wrap(p)))
    }

    /// The stream key.
    #[getter]
    fn key(&self) -> &str {
        self.session.key()
    }
    /// The name this subscriber shows in `cuframes ls`.
    #[getter]
    fn consumer_name(&self) -> &str {
        self.session.name()
    }
    /// How it reads.
    #[getter]
    fn mode(&self) -> PySubscriberMode {
        self.session.mode()
    }
    /// Most packets (with their views) held at once.
    #[getter]
    fn max_held(&self) -> u32 {
        self.session.max_held()
    }
    /// The codec, as ffmpeg names it: `"h264"`, `"hevc"`, `"av1"`, `"vp9"`,
    /// `"vp8"`, `"mjpeg"`.
    #[getter]
    fn codec(&self) -> &'static str {
        self.stream.codec.name()
    }
    /// The codec configuration the publisher gave (Annex-B parameter sets
    /// or an avcC/hvcC record; empty if none), for the decoder's
    /// `extradata`.
    #[getter]
    fn extradata<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.stream.extradata)
    }
    /// Largest packet the stream carries, bytes.
    #[getter]
    fn max_packet(&self) -> u64 {
        self.stream.max_packet
    }
    /// Coded width the publisher gave (0: unknown).
    #[getter]
    fn width(&self) -> u32 {
        self.stream.dimensions.0
    }
    /// Coded height the publisher gave (0: unknown).
    #[getter]
    fn height(&self) -> u32 {
        self.stream.dimensions.1
    }
    /// Packets handed out.
    #[getter]
    fn packets_received(&self) -> u64 {
        self.session.snapshot().frames_received
    }
    /// Waits that ran out of the time the caller gave (`next_packet`);
    /// iteration's internal waits do not count.
    #[getter]
    fn timeouts(&self) -> u64 {
        self.session.snapshot().timeouts
    }
    /// Seq of the last packet (0: none yet).
    #[getter]
    fn last_seq(&self) -> u64 {
        self.session.snapshot().last_seq
    }
    /// Packets skipped to reach a keyframe (NEWEST_ONLY falling behind, or
    /// QUEUE losing packets), as counted in shared memory.
    #[getter]
    fn dropped(&self) -> u64 {
        self.session.snapshot().dropped
    }

    /// All counters as a dict (for health reports). While another thread
    /// waits in `next_packet`, they are as of its previous call.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.session.stats(py)
    }

    /// `PacketSubscriber(key=…, consumer_name=…, codec=…, mode=…)`.
    fn __repr__(&self) -> String {
        format!(
            "PacketSubscriber(key={:?}, consumer_name={:?}, codec={}, mode=SubscriberMode.{}{})",
            self.session.key(),
            self.session.name(),
            self.stream.codec.name(),
            self.session.mode().name(),
            if self.closed() { ", closed" } else { "" }
        )
    }
}

/// Creates an encoded packet stream and publishes packets into it.
///
/// Every subscriber gets the codec and `extradata` at connect. Packets are
/// copied into a slot of at most `max_packet` bytes each (size it for the
/// largest keyframe); a bigger one raises `CuframesInvalidArgumentError`
/// and nothing is published. Mark keyframes (`key=True`): subscribers
/// start at a keyframe and skip to one after a loss. `slots` bounds how far
/// back a late NEWEST_ONLY subscriber can start: with fewer slots than a
/// group of pictures it waits for the next keyframe.
#[pyclass(name = "PacketPublisher", module = "cuframes._native", frozen)]
pub struct PyPacketPublisher {
    /// The publisher, until closed.
    publisher: Open<cuframes::PacketPublisher>,
    /// The stream key.
    key: String,
    /// The codec, its configuration, the sizes.
    stream: Described,
}

#[pymethods]
impl PyPacketPublisher {
    /// Creates the packet stream `key` of `codec` (`"h264"`, `"hevc"` or
    /// `"h265"`, `"av1"`, `"vp9"`, `"vp8"`, `"mjpeg"`) whose packets are at
    /// most `max_packet` bytes, with the codec configuration `extradata`
    /// (any bytes-like object; up to 1 MiB) and the coded size if known.
    /// The ring options are the frame `Publisher`'s. Raises
    /// `CuframesAlreadyExistsError` if a live publisher has the key.
    #[new]
    #[pyo3(signature = (key, codec="h264", max_packet=DEFAULT_MAX_PACKET, *, extradata=None, width=0, height=0, slots=8, subscriber_capacity=16, policy=PyLosslessPolicy::BLOCK, block_timeout_ms=1000, mode=0o600, evict_lagging=true))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        key: &str,
        codec: &str,
        max_packet: u64,
        extradata: Option<&Bound<'_, PyAny>>,
        width: u32,
        height: u32,
        slots: u32,
        subscriber_capacity: u32,
        policy: PyLosslessPolicy,
        block_timeout_ms: u64,
        mode: u32,
        evict_lagging: bool,
    ) -> PyResult<Self> {
        let codec = codec_named(codec)?;
        let extradata = match extradata {
            Some(e) if !e.is_none() => bytes_of(e, "extradata")?.as_bytes().to_vec(),
            _ => Vec::new(),
        };
        let stream = PacketStream {
            codec,
            max_packet,
            extradata,
            width,
            height,
        };
        let options = ring_options(
            slots,
            subscriber_capacity,
            policy,
            block_timeout_ms,
            mode,
            evict_lagging,
        );
        let publisher = py
            .detach(|| cuframes::PacketPublisher::create(key, &stream, options))
            .py()?;
        Ok(Self {
            stream: Described {
                codec,
                max_packet: publisher.max_packet(),
                extradata: stream.extradata,
                dimensions: (width, height),
            },
            publisher: Open::new(publisher),
            key: key.to_owned(),
        })
    }

    /// Copies one packet from any bytes-like object (bytes, bytearray,
    /// memoryview, a numpy array) into a slot and publishes it; returns
    /// its seq. `dts_ns` defaults to `pts_ns`; `key=True` marks a
    /// keyframe, `discontinuity=True` a loss at the source before it.
    /// Waits (GIL released) for a slot as `Publisher.publish` does. A
    /// packet over `max_packet` bytes raises `CuframesInvalidArgumentError`
    /// and nothing is published.
    #[pyo3(signature = (data, pts_ns=0, dts_ns=None, duration_ns=0, key=false, discontinuity=false))]
    #[allow(clippy::too_many_arguments)]
    fn publish(
        &self,
        py: Python<'_>,
        data: &Bound<'_, PyAny>,
        pts_ns: i64,
        dts_ns: Option<i64>,
        duration_ns: u64,
        key: bool,
        discontinuity: bool,
    ) -> PyResult<u64> {
        let max_packet = self.stream.max_packet;
        let len = match data.cast::<PyBytes>() {
            Ok(b) => b.as_bytes().len(),
            Err(_) => PyMemoryView::from(data)
                .and_then(|v| v.getattr("nbytes")?.extract::<usize>())
                .unwrap_or(0),
        };
        if len as u64 > max_packet {
            return Err(raise(
                ErrorCode::InvalidArgument,
                &format!(
                    "packet of {len} bytes is larger than this stream's max_packet of \
                     {max_packet} bytes (PacketPublisher(..., max_packet=))"
                ),
            ));
        }
        // Bytes are immutable: read without the GIL while waiting for a
        // slot. Anything else is copied first (it could change meanwhile).
        let bytes = bytes_of(data, "the packet")?;
        let packet = bytes.as_bytes();
        let mut flags = 0;
        if key {
            flags |= packet::KEY;
        }
        if discontinuity {
            flags |= packet::DISCONTINUITY;
        }
        let meta = PacketMeta {
            len: packet.len() as u64,
            pts_ns,
            dts_ns: dts_ns.unwrap_or(pts_ns),
            duration_ns,
            flags,
        };
        self.publisher.with(py, |p| p.publish(packet, &meta)).py()
    }

    /// Closes the stream: subscribers drain what is left, then get
    /// `CuframesClosedError`; the segment is removed. Idempotent.
    fn close(&self, py: Python<'_>) {
        self.publisher.close(py);
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self, py: Python<'_>) -> bool {
        self.publisher.is_closed(py)
    }

    /// `with PacketPublisher(...) as pub:` closes the stream at the end.
    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Closes the stream.
    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> bool {
        self.close(py);
        false
    }

    /// The stream key.
    #[getter]
    fn key(&self) -> &str {
        &self.key
    }
    /// The codec, as ffmpeg names it (`"h264"`, `"hevc"`, ...).
    #[getter]
    fn codec(&self) -> &'static str {
        self.stream.codec.name()
    }
    /// Largest packet, bytes.
    #[getter]
    fn max_packet(&self) -> u64 {
        self.stream.max_packet
    }
    /// The codec configuration subscribers get.
    #[getter]
    fn extradata<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.stream.extradata)
    }
    /// Coded width (0: unknown).
    #[getter]
    fn width(&self) -> u32 {
        self.stream.dimensions.0
    }
    /// Coded height (0: unknown).
    #[getter]
    fn height(&self) -> u32 {
        self.stream.dimensions.1
    }

    /// Ring-wide counters from shared memory, with one dict per subscriber
    /// (waits for a `publish` blocked in another thread).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.publisher.with(py, |p| Ok(p.stats())).py()?;
        crate::streams::ring_stats_dict(py, &s)
    }

    /// `PacketPublisher(key=…, codec=…, max_packet=…)`.
    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "PacketPublisher(key={:?}, codec={}, max_packet={}{})",
            self.key,
            self.stream.codec.name(),
            self.stream.max_packet,
            if self.closed(py) { ", closed" } else { "" }
        )
    }
}
