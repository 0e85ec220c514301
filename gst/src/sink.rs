//! `cuframessink`: publishes raw video frames (host or GPU memory) or
//! H.264/H.265 access units into a cuframes stream.

use crate::common::{self, describe, FileMode, Policy, CAT};
use crate::pool::{PoolSetup, Shared, SlotPool, Target};
use cuframes::{
    packet, Codec, ErrorCode, FrameLayout, LosslessPolicy, PacketMeta, PacketPublisher,
    PacketStream, PixelFormat, Publisher, PublisherOptions,
};
use cuframes_cuda::{CudaPublisher, CudaPublisherOptions};
use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::prelude::*;
use gst_video::prelude::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

glib::wrapper! {
    pub struct CuframesSink(ObjectSubclass<imp::CuframesSink>) @extends gst_base::BaseSink, gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "cuframessink",
        gst::Rank::NONE,
        CuframesSink::static_type(),
    )
}

const DEFAULT_SLOTS: u32 = 0;
const DEFAULT_BLOCK_TIMEOUT_MS: u64 = 1000;
const DEFAULT_MAX_PACKET: u64 = 1 << 20;

#[derive(Debug, Clone)]
struct Settings {
    key: Option<String>,
    slots: u32,
    policy: Policy,
    block_timeout_ms: u64,
    file_mode: FileMode,
    cuda_device: i32,
    max_packet: u64,
    wait_subscribers: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            key: None,
            slots: DEFAULT_SLOTS,
            policy: Policy::Block,
            block_timeout_ms: DEFAULT_BLOCK_TIMEOUT_MS,
            file_mode: FileMode::Owner,
            cuda_device: -1,
            max_packet: DEFAULT_MAX_PACKET,
            wait_subscribers: 0,
        }
    }
}

impl Settings {
    fn options(&self, packets: bool) -> PublisherOptions {
        let slots = match self.slots {
            0 if packets => 64,
            0 => 8,
            n => n,
        };
        PublisherOptions {
            slot_count: slots,
            policy: match self.policy {
                Policy::Block => LosslessPolicy::Block,
                Policy::DropOldest => LosslessPolicy::DropOldest,
            },
            block_timeout: Duration::from_millis(self.block_timeout_ms),
            mode: self.file_mode as u32,
            ..Default::default()
        }
    }
}

/// What the negotiated caps say to publish.
enum Stream {
    Raw {
        info: gst_video::VideoInfo,
        format: PixelFormat,
    },
    Packets {
        codec: Codec,
        /// `codec_data` (avcC/hvcC) of length-prefixed caps; `None` for
        /// byte-stream, whose parameter sets come from the first keyframe.
        codec_data: Option<Vec<u8>>,
        width: u32,
        height: u32,
    },
}

#[derive(Default)]
struct State {
    caps: Option<gst::Caps>,
    stream: Option<Stream>,
    /// The current stream waited for `wait-subscribers` already.
    waited: bool,
    /// Packets: skip to the next keyframe (after one could not be
    /// published), which then carries DISCONTINUITY.
    skip_to_key: bool,
    /// Whether the last frame was zero copy (for the mode-change message).
    last_zero_copy: Option<bool>,
}

mod imp {
    use super::*;

    #[derive(Default)]
    pub struct CuframesSink {
        settings: Mutex<Settings>,
        state: Mutex<State>,
        ring: Arc<Shared>,
        unlocked: AtomicBool,
        zero_copy: AtomicU64,
        copied: AtomicU64,
        dropped: AtomicU64,
    }

    #[glib::object_subclass]
    impl ObjectSubclass for CuframesSink {
        const NAME: &'static str = "GstCuframesSink";
        type Type = super::CuframesSink;
        type ParentType = gst_base::BaseSink;
    }

    impl ObjectImpl for CuframesSink {
        fn properties() -> &'static [glib::ParamSpec] {
            static PROPS: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
                vec![
                    glib::ParamSpecString::builder("key")
                        .nick("Key")
                        .blurb("Stream key (required): the segment is <shm dir>/cuframes.<key>; letters, digits, '-', '_', '.'")
                        .mutable_ready()
                        .build(),
                    glib::ParamSpecUInt::builder("slots")
                        .nick("Slots")
                        .blurb("Slots in the ring (2-64); 0 = automatic: 8 for raw video, 64 for encoded streams (so a late reader finds a keyframe). Raw video in host memory gets one more, for a buffer kept after its render (a tee, a probe), up to 64 in all")
                        .maximum(64)
                        .default_value(DEFAULT_SLOTS)
                        .mutable_ready()
                        .build(),
                    glib::ParamSpecEnum::builder_with_default("policy", Policy::Block)
                        .nick("Policy")
                        .blurb("What a lagging queue-mode (lossless) subscriber does to the stream: block waits for it up to block-timeout, then evicts it; drop-oldest overwrites what it has not read")
                        .mutable_ready()
                        .build(),
                    glib::ParamSpecUInt64::builder("block-timeout")
                        .nick("Block timeout (ms)")
                        .blurb("Milliseconds a frame waits for a free slot; a frame still without one is dropped (counted in dropped-buffers)")
                        .default_value(DEFAULT_BLOCK_TIMEOUT_MS)
                        .mutable_ready()
                        .build(),
                    glib::ParamSpecEnum::builder_with_default("file-mode", FileMode::Owner)
                        .nick("File mode")
                        .blurb("Permissions of the shared-memory segment: 600 (owner only) or 660 (the group may subscribe too)")
                        .mutable_ready()
                        .build(),
                    glib::ParamSpecInt::builder("cuda-device")
                        .nick("CUDA device")
                        .blurb("-1: frames in host shared memory (zero copy with upstreams that take the sink's pool); N >= 0: frames in GPU memory on device N (each buffer is copied from system memory and uploaded; raw video only)")
                        .minimum(-1)
                        .default_value(-1)
                        .mutable_ready()
                        .build(),
                    glib::ParamSpecUInt64::builder("max-packet")
                        .nick("Max packet")
                        .blurb("Encoded streams: the largest access unit a slot holds, bytes (a larger one is an error)")
                        .minimum(1)
                        .maximum(cuframes::packet::MAX_PACKET_BYTES)
                        .default_value(DEFAULT_MAX_PACKET)
                        .mutable_ready()
                        .build(),
                    glib::ParamSpecUInt::builder("wait-subscribers")
                        .nick("Wait for subscribers")
                        .blurb("Hold the first frame of every stream (each caps) until this many subscribers are connected, so queue-mode readers get it from the start (0: do not wait; at most the ring's 16 subscriber records)")
                        .maximum(16)
                        .default_value(0)
                        .mutable_ready()
                        .build(),
                    glib::ParamSpecUInt64::builder("zero-copy-buffers")
                        .nick("Zero-copy buffers")
                        .blurb("Buffers published without a copy: upstream wrote them into the ring's slots through the sink's buffer pool")
                        .read_only()
                        .build(),
                    glib::ParamSpecUInt64::builder("copied-buffers")
                        .nick("Copied buffers")
                        .blurb("Buffers copied into a slot (not from the sink's pool, encoded packets, or uploaded to the GPU)")
                        .read_only()
                        .build(),
                    glib::ParamSpecUInt64::builder("dropped-buffers")
                        .nick("Dropped buffers")
                        .blurb("Buffers not published: no slot within block-timeout, or packets before the first keyframe")
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
                "slots" => s.slots = value.get().expect("type checked upstream"),
                "policy" => s.policy = value.get().expect("type checked upstream"),
                "block-timeout" => s.block_timeout_ms = value.get().expect("type checked upstream"),
                "file-mode" => s.file_mode = value.get().expect("type checked upstream"),
                "cuda-device" => s.cuda_device = value.get().expect("type checked upstream"),
                "max-packet" => s.max_packet = value.get().expect("type checked upstream"),
                "wait-subscribers" => {
                    s.wait_subscribers = value.get().expect("type checked upstream")
                }
                other => gst::warning!(CAT, imp = self, "no writable property {other}"),
            }
        }

        fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
            let s = self.settings.lock().unwrap_or_else(|e| e.into_inner());
            match pspec.name() {
                "key" => s.key.to_value(),
                "slots" => s.slots.to_value(),
                "policy" => s.policy.to_value(),
                "block-timeout" => s.block_timeout_ms.to_value(),
                "file-mode" => s.file_mode.to_value(),
                "cuda-device" => s.cuda_device.to_value(),
                "max-packet" => s.max_packet.to_value(),
                "wait-subscribers" => s.wait_subscribers.to_value(),
                "zero-copy-buffers" => self.zero_copy.load(Ordering::Relaxed).to_value(),
                "copied-buffers" => self.copied.load(Ordering::Relaxed).to_value(),
                "dropped-buffers" => self.dropped.load(Ordering::Relaxed).to_value(),
                _ => pspec.default_value().clone(),
            }
        }

        fn constructed(&self) {
            self.parent_constructed();
            // The last sample would keep a pool buffer (a slot) alive after
            // it was published, and the pool loans only when none is.
            self.obj().set_enable_last_sample(false);
        }
    }

    impl GstObjectImpl for CuframesSink {}

    impl ElementImpl for CuframesSink {
        fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
            static META: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
                gst::subclass::ElementMetadata::new(
                    "cuframes sink",
                    "Sink/Video",
                    "Publishes video frames or H.264/H.265 access units into a cuframes shared-memory ring, read in place by any number of subscribers (cuframessrc, the cuframes CLI, Rust, C, Python)",
                    "cuframes developers",
                )
            });
            Some(&META)
        }

        fn pad_templates() -> &'static [gst::PadTemplate] {
            static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
                vec![gst::PadTemplate::new(
                    "sink",
                    gst::PadDirection::Sink,
                    gst::PadPresence::Always,
                    &common::template_caps(true),
                )
                .expect("valid template")]
            });
            TEMPLATES.as_ref()
        }
    }

    impl BaseSinkImpl for CuframesSink {
        fn start(&self) -> Result<(), gst::ErrorMessage> {
            let s = self.settings();
            let Some(key) = s.key else {
                return Err(gst::error_msg!(
                    gst::ResourceError::Settings,
                    ("the key property is not set")
                ));
            };
            cuframes::validate_key(&key)
                .map_err(|e| gst::error_msg!(gst::ResourceError::Settings, ("{}", describe(&e))))?;
            if s.slots == 1 {
                return Err(gst::error_msg!(
                    gst::ResourceError::Settings,
                    ("slots is 0 (automatic) or 2-64, not 1")
                ));
            }
            *self.state.lock().unwrap_or_else(|e| e.into_inner()) = State::default();
            for c in [&self.zero_copy, &self.copied, &self.dropped] {
                c.store(0, Ordering::Relaxed);
            }
            Ok(())
        }

        fn stop(&self) -> Result<(), gst::ErrorMessage> {
            self.ring.lock().replace(Target::None);
            *self.state.lock().unwrap_or_else(|e| e.into_inner()) = State::default();
            Ok(())
        }

        fn unlock(&self) -> Result<(), gst::ErrorMessage> {
            self.unlocked.store(true, Ordering::SeqCst);
            self.ring.interrupts.fetch_add(1, Ordering::AcqRel);
            Ok(())
        }

        fn unlock_stop(&self) -> Result<(), gst::ErrorMessage> {
            self.unlocked.store(false, Ordering::SeqCst);
            Ok(())
        }

        fn set_caps(&self, caps: &gst::Caps) -> Result<(), gst::LoggableError> {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if state.caps.as_ref() == Some(caps) {
                return Ok(());
            }
            let stream = parse_caps(caps).map_err(|m| {
                // Said on the bus: not-negotiated alone does not say why.
                gst::element_imp_error!(
                    self,
                    gst::CoreError::Negotiation,
                    ("cannot publish {caps}: {m}")
                );
                gst::loggable_error!(CAT, "caps {caps}: {m}")
            })?;
            gst::info!(CAT, imp = self, "caps {caps}: (re)creating the stream");
            // A new stream (new epoch) for new caps: subscribers see the
            // old one close and a new publisher start.
            self.ring.lock().replace(Target::None);
            state.waited = false;
            state.skip_to_key = false;
            state.last_zero_copy = None;
            let target = match &stream {
                Stream::Raw { info, format } => Some(self.create_raw(*format, info)),
                Stream::Packets {
                    codec,
                    codec_data: Some(extradata),
                    width,
                    height,
                } => Some(self.create_packets(*codec, extradata.clone(), *width, *height)),
                // Byte-stream: created at the first keyframe.
                Stream::Packets { .. } => None,
            };
            if let Some(target) = target {
                match target {
                    Ok(t) => self.ring.lock().replace(t),
                    Err(e) => {
                        gst::element_imp_error!(
                            self,
                            gst::ResourceError::OpenWrite,
                            ("cannot create the stream: {}", describe(&e))
                        );
                        return Err(gst::loggable_error!(CAT, "{}", describe(&e)));
                    }
                }
            }
            state.caps = Some(caps.clone());
            state.stream = Some(stream);
            Ok(())
        }

        fn propose_allocation(
            &self,
            query: &mut gst::query::Allocation,
        ) -> Result<(), gst::LoggableError> {
            let (caps, _need_pool) = query.get_owned();
            let Some(caps) = caps else {
                return Ok(());
            };
            let Ok(info) = gst_video::VideoInfo::from_caps(&caps) else {
                return Ok(()); // encoded: copied into packets, no pool
            };
            // Strided buffers are welcome on every path.
            query.add_allocation_meta::<gst_video::VideoMeta>(None);
            let (layout, generation) = {
                let ring = self.ring.lock();
                match &ring.target {
                    Target::Host(p) => (*p.layout(), ring.generation),
                    _ => return Ok(()), // GPU memory: uploaded, no pool
                }
            };
            if common::to_cuframes(info.format()) != layout.pixel_format()
                || info.width() != layout.width
                || info.height() != layout.height
            {
                gst::debug!(
                    CAT,
                    imp = self,
                    "allocation query for other caps {caps}: no pool"
                );
                return Ok(());
            }
            let pool = SlotPool::new(PoolSetup {
                shared: self.ring.clone(),
                generation,
                layout,
                info,
            });
            let size = layout.slot_bytes as u32;
            let mut config = pool.config();
            config.set_params(Some(&caps), size, 0, 0);
            // The video-meta option is upstream's to set (it says it honours
            // the ring's strides); an upstream that does not gets buffers in
            // GStreamer's default layout.
            if pool.set_config(config).is_err() {
                return Err(gst::loggable_error!(
                    CAT,
                    "the slot pool refused its config"
                ));
            }
            query.add_allocation_pool(Some(pool.upcast_ref::<gst::BufferPool>()), size, 0, 0);
            gst::debug!(
                CAT,
                imp = self,
                "proposed the slot pool ({size} bytes a slot)"
            );
            Ok(())
        }

        fn event(&self, event: gst::Event) -> bool {
            if let gst::EventView::Eos(_) = event.view() {
                self.post_stats();
            }
            self.parent_event(event)
        }

        fn render(&self, buffer: &gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            match &state.stream {
                Some(Stream::Raw { .. }) => self.render_raw(&mut state, buffer),
                Some(Stream::Packets { .. }) => self.render_packet(&mut state, buffer),
                None => Err(gst::FlowError::NotNegotiated),
            }
        }
    }

    impl CuframesSink {
        fn settings(&self) -> Settings {
            self.settings
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        }

        fn key(&self) -> String {
            self.settings().key.unwrap_or_default()
        }

        fn create_raw(
            &self,
            format: PixelFormat,
            info: &gst_video::VideoInfo,
        ) -> cuframes::Result<Target> {
            let s = self.settings();
            let key = s.key.clone().unwrap_or_default();
            let options = s.options(false);
            if s.cuda_device >= 0 {
                let p = CudaPublisher::create(
                    &key,
                    format,
                    info.width(),
                    info.height(),
                    CudaPublisherOptions {
                        ring: options,
                        device: s.cuda_device as u32,
                        ..Default::default()
                    },
                )?;
                gst::info!(
                    CAT,
                    imp = self,
                    "publishing {key:?} in GPU memory on device {} ({})",
                    p.device(),
                    p.export_mode()
                );
                return Ok(Target::Cuda(Box::new(p)));
            }
            let layout = FrameLayout::new(format, info.width(), info.height(), 64)?;
            // One slot more than asked: room for a rendered buffer that
            // outlives its render (its slot is retained) beside what the
            // readers' max-held budgets take.
            let options = PublisherOptions {
                slot_count: (options.slot_count + 1).min(cuframes::core::MAX_SLOTS),
                ..options
            };
            let p = Publisher::create(&key, layout, options)?;
            gst::info!(
                CAT,
                imp = self,
                "publishing {key:?}: {}x{} {}, epoch {:016x}",
                layout.width,
                layout.height,
                format.name(),
                p.epoch()
            );
            Ok(Target::Host(p))
        }

        fn create_packets(
            &self,
            codec: Codec,
            extradata: Vec<u8>,
            width: u32,
            height: u32,
        ) -> cuframes::Result<Target> {
            let s = self.settings();
            let key = s.key.clone().unwrap_or_default();
            let stream = PacketStream {
                codec,
                max_packet: s.max_packet,
                extradata,
                width,
                height,
            };
            let p = PacketPublisher::create(&key, &stream, s.options(true))?;
            gst::info!(
                CAT,
                imp = self,
                "publishing {key:?}: {} packets, {} bytes of codec configuration",
                codec.name(),
                stream.extradata.len()
            );
            Ok(Target::Packets(p))
        }

        /// Waits until `wait-subscribers` subscribers are connected to the
        /// current stream, once per stream.
        fn wait_for_subscribers(&self, state: &mut State) -> Result<(), gst::FlowError> {
            let want = self.settings().wait_subscribers as usize;
            if state.waited || want == 0 {
                return Ok(());
            }
            let mut logged = false;
            loop {
                let have = {
                    let ring = self.ring.lock();
                    match &ring.target {
                        Target::Host(p) => p.stats().active().count(),
                        Target::Cuda(p) => p.host().stats().active().count(),
                        Target::Packets(p) => p.stats().active().count(),
                        Target::None => return Ok(()),
                    }
                };
                if have >= want {
                    state.waited = true;
                    return Ok(());
                }
                if self.is_unlocked() {
                    self.wait_unlocked()?;
                    continue;
                }
                if !logged {
                    gst::info!(
                        CAT,
                        imp = self,
                        "waiting for {want} subscribers ({have} connected)"
                    );
                    logged = true;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }

        fn render_raw(
            &self,
            state: &mut State,
            buffer: &gst::Buffer,
        ) -> Result<gst::FlowSuccess, gst::FlowError> {
            let Some(Stream::Raw { info, .. }) = &state.stream else {
                return Err(gst::FlowError::NotNegotiated);
            };
            let info = info.clone();
            self.wait_for_subscribers(state)?;
            loop {
                match self.publish_raw(state, buffer, &info)? {
                    Some(done) => return Ok(done),
                    None => self.wait_unlocked()?,
                }
            }
        }

        /// One attempt to publish a raw frame; `None` when `unlock` cut
        /// the wait for a slot short.
        fn publish_raw(
            &self,
            state: &mut State,
            buffer: &gst::Buffer,
            info: &gst_video::VideoInfo,
        ) -> Result<Option<gst::FlowSuccess>, gst::FlowError> {
            let pts = pts_ns(buffer);
            let mut ring = self.ring.lock();
            let ring = &mut *ring;
            // A buffer of the pool over the pending loan: commit it in place.
            if let Some((loan, ticket)) = ring.pending.clone() {
                let ours = loan.generation == ring.generation
                    && buffer.n_memory() == 1
                    && buffer
                        .map_readable()
                        .map(|m| m.as_ptr() as usize == loan.data && m.size() == loan.len)
                        .unwrap_or(false);
                if ours {
                    let Target::Host(p) = &mut ring.target else {
                        return Err(gst::FlowError::Error);
                    };
                    ring.pending = None;
                    let seq = p.commit_detached(pts).map_err(|e| self.fail(&e))?;
                    // The buffer may outlive this render (tee, probe,
                    // last-sample): its slot stays as published until its
                    // memory is freed.
                    let retention = p
                        .retain_newest()
                        .inspect_err(|e| {
                            gst::warning!(CAT, imp = self, "slot not retained: {}", describe(e))
                        })
                        .ok();
                    ticket.committed(retention);
                    gst::trace!(
                        CAT,
                        imp = self,
                        "zero copy: committed the loaned slot as seq {seq}"
                    );
                    self.zero_copy.fetch_add(1, Ordering::Relaxed);
                    self.note_mode(
                        state,
                        true,
                        "upstream wrote into the ring's slot (the sink's pool)",
                    );
                    return Ok(Some(gst::FlowSuccess::Ok));
                }
                // The single loan belongs to a buffer still upstream.
                gst::warning!(
                    CAT,
                    imp = self,
                    "buffer dropped: the ring's loan is held by a pool buffer not rendered yet"
                );
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return Ok(Some(gst::FlowSuccess::Ok));
            }
            let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer.as_ref(), info)
                .map_err(|_| {
                gst::element_imp_error!(
                    self,
                    gst::StreamError::Format,
                    ("buffer does not match the caps {info:?}")
                );
                gst::FlowError::Error
            })?;
            let result = match &mut ring.target {
                Target::Host(p) => copy_into_loan(p, &frame, pts, &|| self.is_unlocked()),
                Target::Cuda(p) => {
                    let packed = pack(&frame, p.layout());
                    p.publish_from_host(&packed, pts)
                }
                _ => return Err(gst::FlowError::NotNegotiated),
            };
            match result {
                Ok(seq) => {
                    gst::trace!(CAT, imp = self, "copied into seq {seq}");
                    self.copied.fetch_add(1, Ordering::Relaxed);
                    let reason = if matches!(ring.target, Target::Cuda(_)) {
                        "GPU memory: each buffer is uploaded from system memory"
                    } else {
                        "buffer not written in a slot (not from the sink's pool, or a plain buffer of it while another was out): copied into a slot"
                    };
                    self.note_mode(state, false, reason);
                    Ok(Some(gst::FlowSuccess::Ok))
                }
                Err(e) if self.interrupted(&e) => Ok(None),
                Err(e) if e.code() == ErrorCode::Timeout => {
                    self.drop_buffer(&e);
                    Ok(Some(gst::FlowSuccess::Ok))
                }
                Err(e) => Err(self.fail(&e)),
            }
        }

        fn render_packet(
            &self,
            state: &mut State,
            buffer: &gst::Buffer,
        ) -> Result<gst::FlowSuccess, gst::FlowError> {
            let Some(Stream::Packets {
                codec,
                width,
                height,
                ..
            }) = &state.stream
            else {
                return Err(gst::FlowError::NotNegotiated);
            };
            let (codec, width, height) = (*codec, *width, *height);
            let map = buffer.map_readable().map_err(|_| gst::FlowError::Error)?;
            let key = !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT);
            let missing = matches!(self.ring.lock().target, Target::None);
            if missing {
                if !key {
                    gst::debug!(
                        CAT,
                        imp = self,
                        "delta unit before the first keyframe: dropped"
                    );
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    return Ok(gst::FlowSuccess::Ok);
                }
                let extradata = common::parameter_sets(codec, &map);
                match self.create_packets(codec, extradata, width, height) {
                    Ok(t) => self.ring.lock().replace(t),
                    Err(e) => {
                        gst::element_imp_error!(
                            self,
                            gst::ResourceError::OpenWrite,
                            ("cannot create the stream: {}", describe(&e))
                        );
                        return Err(gst::FlowError::Error);
                    }
                }
            }
            if state.skip_to_key && !key {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return Ok(gst::FlowSuccess::Ok);
            }
            self.wait_for_subscribers(state)?;
            let mut flags = if key { packet::KEY } else { 0 };
            if buffer.flags().contains(gst::BufferFlags::DISCONT) || state.skip_to_key {
                flags |= packet::DISCONTINUITY;
            }
            let pts = buffer.pts().or(buffer.dts());
            let dts = buffer.dts().or(buffer.pts());
            let meta = PacketMeta {
                len: map.size() as u64,
                pts_ns: pts.map_or(0, |t| t.nseconds() as i64),
                dts_ns: dts.map_or(0, |t| t.nseconds() as i64),
                duration_ns: buffer.duration().map_or(0, |d| d.nseconds()),
                flags,
            };
            // Published, or failed, with the ring's packet limit; after an
            // `unlock` cut the wait short, paused, then tried again.
            let (published, max_packet) = loop {
                let mut ring = self.ring.lock();
                let Target::Packets(p) = &mut ring.target else {
                    return Err(gst::FlowError::NotNegotiated);
                };
                match p.publish_unless(&map, &meta, || self.is_unlocked()) {
                    Err(e) if self.interrupted(&e) => {
                        drop(ring);
                        self.wait_unlocked()?;
                    }
                    r => break (r, p.max_packet()),
                }
            };
            match published {
                Ok(seq) => {
                    gst::trace!(
                        CAT,
                        imp = self,
                        "packet seq {seq}: {} bytes, key {key}",
                        map.size()
                    );
                    state.skip_to_key = false;
                    self.copied.fetch_add(1, Ordering::Relaxed);
                    self.note_mode(state, false, "encoded packets are copied into a slot");
                    Ok(gst::FlowSuccess::Ok)
                }
                Err(e) if e.code() == ErrorCode::Timeout => {
                    // What follows would not decode: go on from the next
                    // keyframe, flagged as a discontinuity.
                    state.skip_to_key = true;
                    self.drop_buffer(&e);
                    Ok(gst::FlowSuccess::Ok)
                }
                Err(e)
                    if e.code() == ErrorCode::InvalidArgument && map.size() as u64 > max_packet =>
                {
                    gst::element_imp_error!(
                        self,
                        gst::StreamError::Encode,
                        ("access unit of {} bytes is larger than max-packet ({} bytes): raise max-packet. {}", map.size(), max_packet, describe(&e))
                    );
                    Err(gst::FlowError::Error)
                }
                Err(e) => Err(self.fail(&e)),
            }
        }

        fn is_unlocked(&self) -> bool {
            self.unlocked.load(Ordering::SeqCst)
        }

        /// Whether `e` is a wait for a slot that `unlock` cut short.
        fn interrupted(&self, e: &cuframes::Error) -> bool {
            e.code() == ErrorCode::WouldBlock && self.is_unlocked()
        }

        /// After `unlock` interrupted a wait in `render`: waits as a
        /// paused sink must (flushing: `Flushing`; playing again: `Ok`, and
        /// the caller tries again).
        fn wait_unlocked(&self) -> Result<(), gst::FlowError> {
            self.obj().wait_preroll()?;
            if self.is_unlocked() {
                // Not yet cleared by unlock_stop: do not spin.
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(())
        }

        /// Logs, and posts a `cuframessink-mode` element message, when
        /// buffers go from zero copy to copied or back.
        fn note_mode(&self, state: &mut State, zero_copy: bool, reason: &str) {
            if state.last_zero_copy == Some(zero_copy) {
                return;
            }
            state.last_zero_copy = Some(zero_copy);
            gst::info!(
                CAT,
                imp = self,
                "{}: {reason}",
                if zero_copy { "zero copy" } else { "copying" }
            );
            let s = gst::Structure::builder("cuframessink-mode")
                .field("key", self.key())
                .field("zero-copy", zero_copy)
                .field("reason", reason)
                .build();
            let _ = self
                .obj()
                .post_message(gst::message::Element::builder(s).src(&*self.obj()).build());
        }

        fn drop_buffer(&self, e: &cuframes::Error) {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            gst::warning!(
                CAT,
                imp = self,
                "buffer dropped ({n} so far): {}",
                describe(e)
            );
        }

        fn fail(&self, e: &cuframes::Error) -> gst::FlowError {
            gst::element_imp_error!(
                self,
                gst::ResourceError::Write,
                ("publishing failed: {}", describe(e))
            );
            gst::FlowError::Error
        }

        /// Posts the counters as a `cuframessink-stats` element message
        /// (at EOS; `gst-launch-1.0 -m` prints it).
        fn post_stats(&self) {
            let (loans, plain) = (
                self.ring.pool_loans.load(Ordering::Relaxed),
                self.ring.pool_plain.load(Ordering::Relaxed),
            );
            let s = gst::Structure::builder("cuframessink-stats")
                .field("key", self.key())
                .field("zero-copy-buffers", self.zero_copy.load(Ordering::Relaxed))
                .field("copied-buffers", self.copied.load(Ordering::Relaxed))
                .field("dropped-buffers", self.dropped.load(Ordering::Relaxed))
                .field("pool-loans", loans)
                .field("pool-plain-buffers", plain)
                .build();
            gst::info!(CAT, imp = self, "{s}");
            let _ = self
                .obj()
                .post_message(gst::message::Element::builder(s).src(&*self.obj()).build());
        }
    }

    /// The PTS in nanoseconds as published (0 without one).
    fn pts_ns(buffer: &gst::BufferRef) -> i64 {
        buffer
            .pts()
            .or(buffer.dts())
            .map_or(0, |t| t.nseconds().min(i64::MAX as u64) as i64)
    }

    /// Copies a frame into a fresh loan row by row (honouring both sides'
    /// strides) and commits it.
    fn copy_into_loan(
        p: &mut Publisher,
        frame: &gst_video::VideoFrameRef<&gst::BufferRef>,
        pts: i64,
        stop: &dyn Fn() -> bool,
    ) -> cuframes::Result<u64> {
        let layout = *p.layout();
        let lease = p.loan_detached_unless(stop)?;
        if lease.data.is_null() || lease.len < layout.slot_bytes as usize {
            p.abort_detached();
            return Err(cuframes::Error::new(
                ErrorCode::Internal,
                "loan without host bytes",
            ));
        }
        // SAFETY: the detached loan makes its `len` bytes ours to write
        // until the commit below; nobody else in this process sees them.
        let slot = unsafe { std::slice::from_raw_parts_mut(lease.data, lease.len) };
        copy_planes(frame, &layout, slot);
        p.commit_detached(pts)
    }

    fn copy_planes(
        frame: &gst_video::VideoFrameRef<&gst::BufferRef>,
        layout: &FrameLayout,
        out: &mut [u8],
    ) {
        for (i, plane) in layout.planes().iter().enumerate() {
            let Ok(src) = frame.plane_data(i as u32) else {
                continue;
            };
            let stride = frame.plane_stride()[i] as usize;
            let rb = plane.row_bytes as usize;
            for r in 0..plane.rows as usize {
                let s = r * stride;
                let d = plane.offset as usize + r * plane.pitch as usize;
                if s + rb <= src.len() && d + rb <= out.len() {
                    out[d..d + rb].copy_from_slice(&src[s..s + rb]);
                }
            }
        }
    }

    /// The frame tightly packed, for the GPU upload.
    fn pack(frame: &gst_video::VideoFrameRef<&gst::BufferRef>, layout: &FrameLayout) -> Vec<u8> {
        let mut out = vec![0u8; layout.packed_bytes() as usize];
        let mut at = 0usize;
        for (i, plane) in layout.planes().iter().enumerate() {
            let rb = plane.row_bytes as usize;
            let Ok(src) = frame.plane_data(i as u32) else {
                at += rb * plane.rows as usize;
                continue;
            };
            let stride = frame.plane_stride()[i] as usize;
            for r in 0..plane.rows as usize {
                let s = r * stride;
                if s + rb <= src.len() {
                    out[at..at + rb].copy_from_slice(&src[s..s + rb]);
                }
                at += rb;
            }
        }
        out
    }

    fn parse_caps(caps: &gst::Caps) -> Result<Stream, String> {
        let s = caps.structure(0).ok_or("empty caps")?;
        if let Some(codec) = common::codec_of(s) {
            let format = s.get::<&str>("stream-format").unwrap_or("byte-stream");
            let codec_data = match format {
                "byte-stream" => None,
                _ => Some(
                    s.get::<gst::Buffer>("codec_data")
                        .map_err(|_| format!("stream-format {format} without codec_data"))?
                        .map_readable()
                        .map_err(|_| "unreadable codec_data")?
                        .to_vec(),
                ),
            };
            return Ok(Stream::Packets {
                codec,
                codec_data,
                width: s.get::<i32>("width").unwrap_or(0).max(0) as u32,
                height: s.get::<i32>("height").unwrap_or(0).max(0) as u32,
            });
        }
        let info = gst_video::VideoInfo::from_caps(caps).map_err(|e| e.to_string())?;
        let format = common::to_cuframes(info.format())
            .ok_or_else(|| format!("format {} is not one cuframes carries", info.format()))?;
        let (w, h) = (info.width(), info.height());
        if format.needs_even_dimensions() && (w % 2 != 0 || h % 2 != 0) {
            return Err(format!(
                "{} needs an even width and height (4:2:0 chroma), not {w}x{h}",
                format.name()
            ));
        }
        FrameLayout::new(format, w, h, 64).map_err(|e| format!("{w}x{h}: {e}"))?;
        Ok(Stream::Raw { info, format })
    }
}
