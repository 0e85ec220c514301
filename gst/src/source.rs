//! `cuframessrc`: a live source that reads a cuframes stream (raw frames
//! or encoded packets, host memory) and pushes buffers that wrap the held
//! frames in place.

use crate::common::{self, describe, ReadMode, CAT};
use cuframes::{
    Content, ErrorCode, Frame, FrameLayout, MemoryKind, Mode, Packet, PacketSubscriber, Subscriber,
    SubscriberOptions,
};
use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::base_src::CreateSuccess;
use gst_base::subclass::prelude::*;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

glib::wrapper! {
    pub struct CuframesSrc(ObjectSubclass<imp::CuframesSrc>) @extends gst_base::PushSrc, gst_base::BaseSrc, gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "cuframessrc",
        gst::Rank::NONE,
        CuframesSrc::static_type(),
    )
}

const DEFAULT_MAX_HELD: u32 = 3;
/// Timestamps this far behind the running time (a stall) or ahead of it
/// (a publisher whose clock jumped) re-anchor the mapping.
const MAX_BEHIND: gst::ClockTime = gst::ClockTime::from_seconds(1);
const MAX_AHEAD: gst::ClockTime = gst::ClockTime::from_seconds(10);
/// Drops are reported at most this often.
const DROP_REPORT_EVERY: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
struct Settings {
    key: Option<String>,
    subscriber_name: Option<String>,
    mode: ReadMode,
    timeout_ms: u64,
    reconnect: bool,
    max_held: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            key: None,
            subscriber_name: None,
            mode: ReadMode::Newest,
            timeout_ms: 0,
            reconnect: false,
            max_held: DEFAULT_MAX_HELD,
        }
    }
}

enum Conn {
    Frames(Subscriber),
    Packets(PacketSubscriber),
}

impl Conn {
    fn epoch(&self) -> u64 {
        match self {
            Conn::Frames(s) => s.epoch(),
            Conn::Packets(s) => s.segment_info().header.epoch,
        }
    }
    fn dropped(&self) -> u64 {
        match self {
            Conn::Frames(s) => s.stats().dropped,
            Conn::Packets(s) => s.stats().dropped,
        }
    }
}

enum Item {
    Frame(Frame),
    Packet(Packet),
}

#[derive(Default)]
struct State {
    conn: Option<Conn>,
    connects: u64,
    /// Frame pts (packets: dts) and running time of the mapping's anchor.
    anchor: Option<(i64, gst::ClockTime)>,
    /// The last timestamp pushed (mapped): the mapping never goes back.
    last_out: Option<gst::ClockTime>,
    /// The next buffer is a discontinuity (first, after a reconnect or drops).
    discont: bool,
    /// Byte-stream packets: the next keyframe gets the codec configuration
    /// in front.
    send_extradata: bool,
    /// Subscriber drop counter when last looked at.
    seen_dropped: u64,
    unreported_drops: u64,
    last_report: Option<Instant>,
    /// Layout and default-layout info of the current frame stream.
    layout: Option<(FrameLayout, gst_video::VideoInfo)>,
    /// The max-held the subscription was registered with (lowered at
    /// connect when the ring has too few slots for the property's).
    max_held: u32,
}

/// A held frame or packet as a buffer's memory: released when GStreamer
/// frees the memory.
struct Held {
    item: Item,
    live: Arc<AtomicUsize>,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        match &self.item {
            Item::Frame(f) => f.data(),
            Item::Packet(p) => p.data(),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::AcqRel);
    }
}

mod imp {
    use super::*;

    #[derive(Default)]
    pub struct CuframesSrc {
        settings: Mutex<Settings>,
        state: Mutex<State>,
        /// Caps for the next negotiation (from the connected stream).
        caps: Mutex<Option<gst::Caps>>,
        flushing: AtomicBool,
        /// Downstream takes `GstVideoMeta` (allocation query).
        video_meta: AtomicBool,
        /// Zero-copy buffers alive downstream.
        live: Arc<AtomicUsize>,
        zero_copy: AtomicU64,
        copied: AtomicU64,
        dropped: AtomicU64,
        reconnects: AtomicU64,
    }

    #[glib::object_subclass]
    impl ObjectSubclass for CuframesSrc {
        const NAME: &'static str = "GstCuframesSrc";
        type Type = super::CuframesSrc;
        type ParentType = gst_base::PushSrc;
    }

    impl ObjectImpl for CuframesSrc {
        fn properties() -> &'static [glib::ParamSpec] {
            static PROPS: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
                vec![
                    glib::ParamSpecString::builder("key")
                        .nick("Key")
                        .blurb("Stream key to read (required)")
                        .mutable_ready()
                        .build(),
                    glib::ParamSpecString::builder("subscriber-name")
                        .nick("Subscriber name")
                        .blurb("Name this reader registers with, shown by `cuframes ls/stat` (up to 32 bytes; default: the element's name)")
                        .mutable_ready()
                        .build(),
                    glib::ParamSpecEnum::builder_with_default("mode", ReadMode::Newest)
                        .nick("Mode")
                        .blurb("newest: the newest frame each time (skips are reported as drops); queue: every frame in order, lossless (the publisher's policy decides what a lagging reader costs). Encoded streams always start at a keyframe")
                        .mutable_ready()
                        .build(),
                    glib::ParamSpecUInt64::builder("timeout")
                        .nick("Timeout (ms)")
                        .blurb("Milliseconds to wait for the stream and then for each frame; 0 = forever. On expiry: an error (Timeout or NotFound), or with reconnect=true a cuframessrc-timeout element message and waiting goes on")
                        .default_value(0)
                        .mutable_ready()
                        .build(),
                    glib::ParamSpecBoolean::builder("reconnect")
                        .nick("Reconnect")
                        .blurb("When the publisher closes the stream, dies or restarts (new caps, new epoch): wait for the next one and renegotiate instead of ending with EOS (closed) or an error (died)")
                        .default_value(false)
                        .mutable_ready()
                        .build(),
                    glib::ParamSpecUInt::builder("max-held")
                        .nick("Max held")
                        .blurb("Frames this reader may hold in the ring at once: up to max-held - 1 buffers downstream wrap frames in place (zero copy); past that, frames are copied. The ring needs slots >= the sum over readers + 2 (lowered at connect when it has not)")
                        .minimum(1)
                        .maximum(64)
                        .default_value(DEFAULT_MAX_HELD)
                        .mutable_ready()
                        .build(),
                    glib::ParamSpecUInt64::builder("zero-copy-buffers")
                        .nick("Zero-copy buffers")
                        .blurb("Buffers pushed that wrap a held frame or packet in shared memory")
                        .read_only()
                        .build(),
                    glib::ParamSpecUInt64::builder("copied-buffers")
                        .nick("Copied buffers")
                        .blurb("Buffers pushed as copies (max-held reached, or a strided layout downstream cannot take)")
                        .read_only()
                        .build(),
                    glib::ParamSpecUInt64::builder("dropped")
                        .nick("Dropped")
                        .blurb("Frames skipped or lost by this reader (newest mode skips, drop-oldest losses, evictions), over all connections")
                        .read_only()
                        .build(),
                    glib::ParamSpecUInt64::builder("reconnects")
                        .nick("Reconnects")
                        .blurb("Connections after the first (publisher restarts followed)")
                        .read_only()
                        .build(),
                ]
            });
            PROPS.as_ref()
        }

        fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
            let mut s = self.settings.lock().unwrap_or_else(|e| e.into_inner());
            match pspec.name() {
                "key" => s.key = value.get().expect("type checked upstream"),
                "subscriber-name" => {
                    s.subscriber_name = value.get().expect("type checked upstream")
                }
                "mode" => s.mode = value.get().expect("type checked upstream"),
                "timeout" => s.timeout_ms = value.get().expect("type checked upstream"),
                "reconnect" => s.reconnect = value.get().expect("type checked upstream"),
                "max-held" => s.max_held = value.get().expect("type checked upstream"),
                other => gst::warning!(CAT, imp = self, "no writable property {other}"),
            }
        }

        fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
            let s = self.settings.lock().unwrap_or_else(|e| e.into_inner());
            match pspec.name() {
                "key" => s.key.to_value(),
                "subscriber-name" => s.subscriber_name.to_value(),
                "mode" => s.mode.to_value(),
                "timeout" => s.timeout_ms.to_value(),
                "reconnect" => s.reconnect.to_value(),
                "max-held" => s.max_held.to_value(),
                "zero-copy-buffers" => self.zero_copy.load(Ordering::Relaxed).to_value(),
                "copied-buffers" => self.copied.load(Ordering::Relaxed).to_value(),
                "dropped" => self.dropped.load(Ordering::Relaxed).to_value(),
                "reconnects" => self.reconnects.load(Ordering::Relaxed).to_value(),
                _ => pspec.default_value().clone(),
            }
        }

        fn constructed(&self) {
            self.parent_constructed();
            let obj = self.obj();
            obj.set_live(true);
            obj.set_format(gst::Format::Time);
            obj.set_do_timestamp(false);
        }
    }

    impl GstObjectImpl for CuframesSrc {}

    impl ElementImpl for CuframesSrc {
        fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
            static META: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
                gst::subclass::ElementMetadata::new(
                    "cuframes source",
                    "Source/Video",
                    "Reads a cuframes shared-memory stream (raw frames or H.264/H.265 packets) as a live source; buffers wrap the frames in place",
                    "cuframes developers",
                )
            });
            Some(&META)
        }

        fn pad_templates() -> &'static [gst::PadTemplate] {
            static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
                let mut caps = common::template_caps(true);
                caps.make_mut().append(
                    ["video/x-av1", "video/x-vp9", "video/x-vp8", "image/jpeg"]
                        .into_iter()
                        .map(gst::Structure::new_empty)
                        .collect::<gst::Caps>(),
                );
                vec![gst::PadTemplate::new(
                    "src",
                    gst::PadDirection::Src,
                    gst::PadPresence::Always,
                    &caps,
                )
                .expect("valid template")]
            });
            TEMPLATES.as_ref()
        }
    }

    impl BaseSrcImpl for CuframesSrc {
        fn start(&self) -> Result<(), gst::ErrorMessage> {
            let s = self.settings();
            let key = s.key.ok_or_else(|| {
                gst::error_msg!(
                    gst::ResourceError::Settings,
                    ("the key property is not set")
                )
            })?;
            cuframes::validate_key(&key)
                .map_err(|e| gst::error_msg!(gst::ResourceError::Settings, ("{}", describe(&e))))?;
            *self.state.lock().unwrap_or_else(|e| e.into_inner()) = State::default();
            *self.caps.lock().unwrap_or_else(|e| e.into_inner()) = None;
            for c in [
                &self.zero_copy,
                &self.copied,
                &self.dropped,
                &self.reconnects,
            ] {
                c.store(0, Ordering::Relaxed);
            }
            Ok(())
        }

        fn stop(&self) -> Result<(), gst::ErrorMessage> {
            // Frames still wrapped by buffers downstream keep their slots
            // (and the mapping) until those buffers are freed.
            *self.state.lock().unwrap_or_else(|e| e.into_inner()) = State::default();
            Ok(())
        }

        fn is_seekable(&self) -> bool {
            false
        }

        fn unlock(&self) -> Result<(), gst::ErrorMessage> {
            self.flushing.store(true, Ordering::SeqCst);
            Ok(())
        }

        fn unlock_stop(&self) -> Result<(), gst::ErrorMessage> {
            self.flushing.store(false, Ordering::SeqCst);
            Ok(())
        }

        fn negotiate(&self) -> Result<(), gst::LoggableError> {
            // Nothing to say before the stream is connected: caps come
            // from it (create() negotiates then).
            let caps = self.caps.lock().unwrap_or_else(|e| e.into_inner()).clone();
            match caps {
                Some(caps) => self
                    .obj()
                    .set_caps(&caps)
                    .map_err(|_| gst::loggable_error!(CAT, "downstream refused {caps}")),
                None => Ok(()),
            }
        }

        fn decide_allocation(
            &self,
            query: &mut gst::query::Allocation,
        ) -> Result<(), gst::LoggableError> {
            let meta = query
                .find_allocation_meta::<gst_video::VideoMeta>()
                .is_some();
            self.video_meta.store(meta, Ordering::Relaxed);
            gst::debug!(CAT, imp = self, "downstream takes GstVideoMeta: {meta}");
            self.parent_decide_allocation(query)
        }
    }

    impl PushSrcImpl for CuframesSrc {
        fn create(
            &self,
            _buffer: Option<&mut gst::BufferRef>,
        ) -> Result<CreateSuccess, gst::FlowError> {
            let settings = self.settings();
            let mut started = Instant::now();
            let timeout =
                (settings.timeout_ms > 0).then(|| Duration::from_millis(settings.timeout_ms));
            loop {
                if self.flushing.load(Ordering::SeqCst) {
                    return Err(gst::FlowError::Flushing);
                }
                let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                if state.conn.is_none() {
                    let deadline = timeout.map(|t| started + t);
                    match self.connect(&settings, &mut state, deadline)? {
                        true => {
                            drop(state);
                            // The wait for a frame starts now, not when the
                            // wait for the stream did.
                            started = Instant::now();
                            if !self.obj().negotiate() {
                                gst::element_imp_error!(
                                    self,
                                    gst::CoreError::Negotiation,
                                    ("downstream refused the stream's caps")
                                );
                                return Err(gst::FlowError::NotNegotiated);
                            }
                            continue;
                        }
                        false => {
                            // Timed out waiting for a stream.
                            drop(state);
                            self.on_timeout(&settings, ErrorCode::NotFound)?;
                            started = Instant::now();
                            continue;
                        }
                    }
                }
                let wait = match timeout {
                    Some(t) => t.saturating_sub(started.elapsed()),
                    None => Duration::from_secs(1),
                };
                let flushing = || self.flushing.load(Ordering::SeqCst);
                let got = match state.conn.as_mut().expect("connected above") {
                    Conn::Frames(s) => s.next_frame_unless(wait, flushing).map(Item::Frame),
                    Conn::Packets(s) => s.next_packet_unless(wait, flushing).map(Item::Packet),
                };
                match got {
                    Ok(item) => {
                        self.note_drops(&mut state);
                        let buffer = self.buffer(&mut state, item, &settings)?;
                        return Ok(CreateSuccess::NewBuffer(buffer));
                    }
                    Err(_) if self.flushing.load(Ordering::SeqCst) => {
                        return Err(gst::FlowError::Flushing);
                    }
                    Err(e) => match e.code() {
                        ErrorCode::Timeout => {
                            if timeout.is_some_and(|t| started.elapsed() >= t) {
                                drop(state);
                                self.on_timeout(&settings, ErrorCode::Timeout)?;
                                started = Instant::now();
                            }
                        }
                        ErrorCode::Lagged => {
                            gst::warning!(CAT, imp = self, "{}", describe(&e));
                            self.note_drops(&mut state);
                            state.discont = true;
                        }
                        ErrorCode::Capacity => {
                            // Holding max-held frames: cannot happen with
                            // the accounting in buffer(), but wait it out.
                            drop(state);
                            std::thread::sleep(Duration::from_millis(2));
                        }
                        ErrorCode::Closed if !settings.reconnect => {
                            gst::info!(CAT, imp = self, "publisher closed the stream: EOS");
                            state.conn = None;
                            return Err(gst::FlowError::Eos);
                        }
                        ErrorCode::Closed | ErrorCode::PublisherGone | ErrorCode::NotFound
                            if settings.reconnect =>
                        {
                            gst::info!(
                                CAT,
                                imp = self,
                                "stream ended ({}); reconnecting",
                                describe(&e)
                            );
                            state.conn = None;
                        }
                        _ => {
                            state.conn = None;
                            gst::element_imp_error!(
                                self,
                                gst::ResourceError::Read,
                                (
                                    "reading {:?} failed: {}",
                                    settings.key.as_deref().unwrap_or(""),
                                    describe(&e)
                                )
                            );
                            return Err(gst::FlowError::Error);
                        }
                    },
                }
            }
        }
    }

    impl CuframesSrc {
        fn settings(&self) -> Settings {
            self.settings
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        }

        /// Timed out (no stream, or no frame): an error, or with
        /// `reconnect` a message and waiting goes on.
        fn on_timeout(&self, settings: &Settings, code: ErrorCode) -> Result<(), gst::FlowError> {
            let key = settings.key.clone().unwrap_or_default();
            if settings.reconnect {
                let s = gst::Structure::builder("cuframessrc-timeout")
                    .field("key", &key)
                    .field("timeout-ms", settings.timeout_ms)
                    .field("connected", code == ErrorCode::Timeout)
                    .build();
                let _ = self
                    .obj()
                    .post_message(gst::message::Element::builder(s).src(&*self.obj()).build());
                return Ok(());
            }
            let e = cuframes::Error::new(
                code,
                if code == ErrorCode::Timeout {
                    format!("no frame from {key:?} within {} ms", settings.timeout_ms)
                } else {
                    format!("no stream {key:?} within {} ms", settings.timeout_ms)
                },
            );
            gst::element_imp_error!(self, gst::ResourceError::Read, ("{}", describe(&e)));
            Err(gst::FlowError::Error)
        }

        /// Connects, waiting for the stream until `deadline` (forever with
        /// `None`); `Ok(false)` when the deadline passed. Sets the caps to
        /// negotiate.
        fn connect(
            &self,
            settings: &Settings,
            state: &mut State,
            deadline: Option<Instant>,
        ) -> Result<bool, gst::FlowError> {
            let key = settings.key.clone().unwrap_or_default();
            let name = settings
                .subscriber_name
                .clone()
                .unwrap_or_else(|| self.obj().name().to_string());
            let mode = match settings.mode {
                ReadMode::Newest => Mode::NewestOnly,
                ReadMode::Queue => Mode::Queue,
            };
            let mut max_held = settings.max_held.max(1);
            let mut logged = false;
            loop {
                if self.flushing.load(Ordering::SeqCst) {
                    return Err(gst::FlowError::Flushing);
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(false);
                }
                let options = SubscriberOptions {
                    connect_timeout: Duration::from_millis(50),
                    max_held,
                    ..Default::default()
                };
                let attempt = cuframes::stream_status(&key).and_then(|st| {
                    if st.info.content == Content::Packets {
                        PacketSubscriber::connect(&key, &name, mode, options).map(Conn::Packets)
                    } else if st.info.memory != MemoryKind::Host {
                        Err(cuframes::Error::new(
                            ErrorCode::Incompatible,
                            format!("stream {key:?} keeps its frames in {} memory; cuframessrc reads host-memory streams", st.info.memory.name()),
                        ))
                    } else {
                        Subscriber::connect(&key, &name, mode, options).map(Conn::Frames)
                    }
                });
                match attempt {
                    Ok(conn) => {
                        self.connected(settings, state, conn, max_held);
                        return Ok(true);
                    }
                    Err(e)
                        if matches!(
                            e.code(),
                            ErrorCode::NotFound
                                | ErrorCode::PublisherGone
                                | ErrorCode::Closed
                                | ErrorCode::Timeout
                        ) =>
                    {
                        if !logged {
                            gst::debug!(
                                CAT,
                                imp = self,
                                "waiting for stream {key:?}: {}",
                                describe(&e)
                            );
                            logged = true;
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) if e.code() == ErrorCode::Capacity && max_held > 1 => {
                        // Not enough slots for our max-held beside the
                        // other readers' (or every record is taken).
                        max_held -= 1;
                        gst::debug!(
                            CAT,
                            imp = self,
                            "{}; trying max-held {max_held}",
                            describe(&e)
                        );
                    }
                    Err(e) => {
                        gst::element_imp_error!(
                            self,
                            gst::ResourceError::OpenRead,
                            ("cannot subscribe to {key:?}: {}", describe(&e))
                        );
                        return Err(gst::FlowError::Error);
                    }
                }
            }
        }

        fn connected(&self, settings: &Settings, state: &mut State, conn: Conn, max_held: u32) {
            state.max_held = max_held;
            let key = settings.key.clone().unwrap_or_default();
            let caps = match &conn {
                Conn::Frames(s) => {
                    let layout = *s.layout();
                    let format = layout
                        .pixel_format()
                        .map(common::to_gst)
                        .unwrap_or(gst_video::VideoFormat::Unknown);
                    let info = gst_video::VideoInfo::builder(format, layout.width, layout.height)
                        .fps(gst::Fraction::new(0, 1))
                        .build()
                        .expect("a validated layout makes valid video info");
                    let caps = info.to_caps().expect("valid video info has caps");
                    state.layout = Some((layout, info));
                    caps
                }
                Conn::Packets(s) => {
                    let (w, h) = s.dimensions();
                    state.layout = None;
                    state.send_extradata =
                        s.extradata().first() != Some(&1) && !s.extradata().is_empty();
                    common::packet_caps(s.codec(), s.extradata(), w, h)
                }
            };
            state.connects += 1;
            if state.connects > 1 {
                self.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            gst::info!(
                CAT,
                imp = self,
                "connected to {key:?} (epoch {:016x}, max-held {max_held}): {caps}",
                conn.epoch()
            );
            let msg = gst::Structure::builder("cuframessrc-connected")
                .field("key", &key)
                .field("epoch", format!("{:016x}", conn.epoch()))
                .field("reconnects", state.connects - 1)
                .field("caps", &caps)
                .build();
            let _ = self.obj().post_message(
                gst::message::Element::builder(msg)
                    .src(&*self.obj())
                    .build(),
            );
            state.seen_dropped = conn.dropped();
            state.conn = Some(conn);
            state.anchor = None;
            state.discont = true;
            *self.caps.lock().unwrap_or_else(|e| e.into_inner()) = Some(caps);
        }

        /// Counts what the reader skipped since the last look; reports it
        /// as a `cuframessrc-dropped` element message (at most every
        /// 100 ms) and flags the next buffer DISCONT.
        fn note_drops(&self, state: &mut State) {
            let Some(conn) = &state.conn else { return };
            let now = conn.dropped();
            let delta = now.saturating_sub(state.seen_dropped);
            state.seen_dropped = now;
            if delta > 0 {
                state.unreported_drops += delta;
                state.discont = true;
                self.dropped.fetch_add(delta, Ordering::Relaxed);
            }
            if state.unreported_drops > 0
                && state
                    .last_report
                    .is_none_or(|t| t.elapsed() >= DROP_REPORT_EVERY)
            {
                let s = gst::Structure::builder("cuframessrc-dropped")
                    .field("key", self.settings().key.unwrap_or_default())
                    .field("dropped", state.unreported_drops)
                    .field("total-dropped", self.dropped.load(Ordering::Relaxed))
                    .build();
                gst::debug!(CAT, imp = self, "{s}");
                let _ = self
                    .obj()
                    .post_message(gst::message::Element::builder(s).src(&*self.obj()).build());
                state.unreported_drops = 0;
                state.last_report = Some(Instant::now());
            }
        }

        /// Maps a stream timestamp to this pipeline's running time: the
        /// first one after (re)connecting is stamped with the running time
        /// of its arrival, later ones keep their distance to it. The
        /// mapping re-anchors (never going backwards) when a timestamp
        /// goes back, falls more than a second behind the running time
        /// (a stall), or runs more than ten seconds ahead of it.
        fn map_time(&self, state: &mut State, ts: i64) -> Option<gst::ClockTime> {
            let now = self
                .obj()
                .current_running_time()
                .unwrap_or(gst::ClockTime::ZERO);
            if let Some((t0, rt0)) = state.anchor {
                let mapped = rt0.nseconds() as i128 + (ts as i128 - t0 as i128);
                let now_ns = now.nseconds() as i128;
                let last = state.last_out.map_or(-1, |t| t.nseconds() as i128);
                if mapped > last
                    && mapped >= now_ns - MAX_BEHIND.nseconds() as i128
                    && mapped <= now_ns + MAX_AHEAD.nseconds() as i128
                {
                    let t = gst::ClockTime::from_nseconds(mapped as u64);
                    state.last_out = Some(t);
                    return Some(t);
                }
                gst::debug!(CAT, imp = self, "timestamps jumped: re-anchoring");
            }
            let rt = match state.last_out {
                Some(last) if last >= now => last + gst::ClockTime::from_nseconds(1),
                _ => now,
            };
            state.anchor = Some((ts, rt));
            state.last_out = Some(rt);
            Some(rt)
        }

        fn buffer(
            &self,
            state: &mut State,
            item: Item,
            _settings: &Settings,
        ) -> Result<gst::Buffer, gst::FlowError> {
            // What the subscription may really hold, not the property: it
            // may have been lowered at connect.
            let max_held = state.max_held.max(1) as usize;
            let zero_copy_ok = self.live.load(Ordering::Acquire) + 1 < max_held;
            let mut buffer = match item {
                Item::Frame(frame) => {
                    let (layout, info) =
                        state.layout.clone().ok_or(gst::FlowError::NotNegotiated)?;
                    let pts = frame.pts_ns();
                    let strided_ok = self.video_meta.load(Ordering::Relaxed)
                        || common::is_default_layout(&layout, &info);
                    let mut buffer = if zero_copy_ok && strided_ok {
                        self.zero_copy.fetch_add(1, Ordering::Relaxed);
                        self.wrap(Item::Frame(frame))
                    } else if strided_ok {
                        self.copied.fetch_add(1, Ordering::Relaxed);
                        gst::Buffer::from_mut_slice(frame.data().to_vec())
                    } else {
                        self.copied.fetch_add(1, Ordering::Relaxed);
                        gst::Buffer::from_mut_slice(repack(&frame, &layout, &info))
                    };
                    let b = buffer.get_mut().expect("a new buffer");
                    if strided_ok {
                        let (offsets, strides) = common::meta_planes(&layout);
                        let _ = gst_video::VideoMeta::add_full(
                            b,
                            gst_video::VideoFrameFlags::empty(),
                            info.format(),
                            info.width(),
                            info.height(),
                            &offsets,
                            &strides,
                        );
                    }
                    if !self.obj().does_timestamp() {
                        let t = self.map_time(state, pts);
                        b.set_pts(t);
                    }
                    buffer
                }
                Item::Packet(packet) => {
                    let (pts, dts, dur, key) = (
                        packet.pts_ns(),
                        packet.dts_ns(),
                        packet.duration_ns(),
                        packet.is_key(),
                    );
                    let discontinuity = packet.flags() & cuframes::packet::DISCONTINUITY != 0;
                    let extradata = match (&state.conn, state.send_extradata && key) {
                        (Some(Conn::Packets(s)), true) => Some(s.extradata().to_vec()),
                        _ => None,
                    };
                    let mut buffer = if zero_copy_ok {
                        self.zero_copy.fetch_add(1, Ordering::Relaxed);
                        self.wrap(Item::Packet(packet))
                    } else {
                        self.copied.fetch_add(1, Ordering::Relaxed);
                        gst::Buffer::from_mut_slice(packet.data().to_vec())
                    };
                    let b = buffer.get_mut().expect("a new buffer");
                    if let Some(x) = extradata {
                        // The parameter sets in front of the first keyframe,
                        // as their own memory: the packet is not copied.
                        b.prepend_memory(gst::Memory::from_mut_slice(x));
                        state.send_extradata = false;
                    }
                    // Packets keep their pts/dts spacing (reordering) even
                    // with do-timestamp.
                    let mapped_dts = self.map_time(state, dts);
                    let shift = |t: i64| {
                        mapped_dts.and_then(|m| {
                            let v = m.nseconds() as i128 + (t as i128 - dts as i128);
                            (v >= 0).then(|| gst::ClockTime::from_nseconds(v as u64))
                        })
                    };
                    b.set_dts(mapped_dts);
                    b.set_pts(shift(pts));
                    // u64::MAX is GStreamer's "none" (a publisher copying
                    // GST_BUFFER_DURATION may send it): no duration.
                    if dur > 0 && dur != u64::MAX {
                        b.set_duration(gst::ClockTime::from_nseconds(dur));
                    }
                    if !key {
                        b.set_flags(gst::BufferFlags::DELTA_UNIT);
                    }
                    if discontinuity {
                        b.set_flags(gst::BufferFlags::DISCONT);
                    }
                    buffer
                }
            };
            if std::mem::take(&mut state.discont) {
                buffer
                    .get_mut()
                    .expect("a new buffer")
                    .set_flags(gst::BufferFlags::DISCONT);
            }
            Ok(buffer)
        }

        fn wrap(&self, item: Item) -> gst::Buffer {
            self.live.fetch_add(1, Ordering::AcqRel);
            gst::Buffer::from_slice(Held {
                item,
                live: self.live.clone(),
            })
        }
    }

    /// The frame in GStreamer's default layout (for a downstream that
    /// cannot take `GstVideoMeta`).
    fn repack(frame: &Frame, layout: &FrameLayout, info: &gst_video::VideoInfo) -> Vec<u8> {
        let data = frame.data();
        let mut out = vec![0u8; info.size()];
        for (i, p) in layout.planes().iter().enumerate() {
            let (off, stride) = (info.offset()[i], info.stride()[i] as usize);
            let rb = p.row_bytes as usize;
            for r in 0..p.rows as usize {
                let s = p.offset as usize + r * p.pitch as usize;
                let d = off + r * stride;
                if s + rb <= data.len() && d + rb <= out.len() {
                    out[d..d + rb].copy_from_slice(&data[s..s + rb]);
                }
            }
        }
        out
    }
}
