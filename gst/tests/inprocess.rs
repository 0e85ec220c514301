//! The elements linked statically into the test (gst::init + register):
//! zero-copy counters with various upstreams, byte-exact strided frames,
//! and a caps change that a reconnecting cuframessrc follows.

use gst::prelude::*;
use gst_video::prelude::*;
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

static INIT: Once = Once::new();
static SHM: Mutex<Option<std::path::PathBuf>> = Mutex::new(None);

/// GStreamer with the plugin registered, and a private shm directory.
fn init() -> bool {
    INIT.call_once(|| {
        let dir = std::env::temp_dir().join(format!("cuframes-gst-inproc-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        std::env::set_var("CUFRAMES_SHM_DIR", &dir);
        *SHM.lock().unwrap() = Some(dir);
        if let Err(e) = gst::init() {
            eprintln!("gst::init failed: {e}");
            return;
        }
        gstcuframes::plugin_register_static().expect("register the plugin");
    });
    if gst::ElementFactory::find("videotestsrc").is_none() {
        eprintln!("SKIPPED: GStreamer's base plugins (videotestsrc) are not installed");
        return false;
    }
    gst::ElementFactory::find("cuframessink").is_some()
}

/// Runs a pipeline to EOS (or error); returns it for reading properties.
fn run(desc: &str) -> gst::Pipeline {
    let pipeline = gst::parse::launch(desc)
        .expect("pipeline parses")
        .downcast::<gst::Pipeline>()
        .expect("a pipeline");
    pipeline.set_state(gst::State::Playing).expect("playing");
    let bus = pipeline.bus().unwrap();
    for msg in bus.iter_timed(gst::ClockTime::from_seconds(60)) {
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => panic!("{desc}: {} ({:?})", e.error(), e.debug()),
            _ => {}
        }
    }
    pipeline.set_state(gst::State::Null).unwrap();
    pipeline
}

fn counter(pipeline: &gst::Pipeline, element: &str, name: &str) -> u64 {
    pipeline.by_name(element).unwrap().property::<u64>(name)
}

/// Which upstreams write into the ring's slots (zero copy) and which are
/// copied, as the counters say.
#[test]
fn zero_copy_counters_per_upstream() {
    if !init() {
        return;
    }
    let caps = "video/x-raw,format=NV12,width=640,height=480";
    let cases = [
        // videotestsrc takes the sink's pool: every frame in place.
        ("videotestsrc num-buffers=40", "", 40, 0),
        // videoconvert converting I420 -> NV12 writes into the pool too.
        (
            "videotestsrc num-buffers=40 ! video/x-raw,format=I420",
            "videoconvert !",
            40,
            0,
        ),
        // No allocation query reaches the sink: every buffer is copied.
        (
            "videotestsrc num-buffers=40",
            "identity drop-allocation=true !",
            0,
            40,
        ),
    ];
    for (i, (src, between, zero, copied)) in cases.into_iter().enumerate() {
        let p = run(&format!(
            "{src} ! {between} {caps} ! cuframessink name=s key=zc{i} sync=false"
        ));
        let (z, c) = (
            counter(&p, "s", "zero-copy-buffers"),
            counter(&p, "s", "copied-buffers"),
        );
        println!("{src} ! {between} cuframessink: zero-copy {z}, copied {c}");
        assert_eq!((z, c), (zero, copied), "{src} ! {between}");
    }
    // A queue between them: the pool loans only while no other of its
    // buffers is out, so some buffers are copied; all 40 are published.
    let p = run(&format!(
        "videotestsrc num-buffers=40 ! {caps} ! queue ! cuframessink name=s key=zcq sync=false"
    ));
    let (z, c) = (
        counter(&p, "s", "zero-copy-buffers"),
        counter(&p, "s", "copied-buffers"),
    );
    println!("videotestsrc ! queue ! cuframessink: zero-copy {z}, copied {c}");
    assert_eq!(z + c, 40);
    assert_eq!(counter(&p, "s", "dropped-buffers"), 0);
}

/// RGB at 100x50: rows of 300 bytes in slots pitched to 320. videotestsrc
/// writes through the GstVideoMeta of the pool's buffers, and a cuframes
/// subscriber reads exactly videotestsrc's picture.
#[test]
fn strided_zero_copy_frames_are_byte_exact() {
    if !init() {
        return;
    }
    let caps = "video/x-raw,format=RGB,width=100,height=50";
    let sub = std::thread::spawn(|| {
        let mut sub = None;
        let start = Instant::now();
        while sub.is_none() && start.elapsed() < Duration::from_secs(20) {
            sub = cuframes::Subscriber::connect(
                "strided",
                "test",
                cuframes::Mode::Queue,
                Default::default(),
            )
            .ok();
        }
        let mut sub = sub.expect("stream appears");
        assert_eq!(sub.layout().planes()[0].pitch, 320);
        (0..30)
            .map(|_| {
                sub.next_frame(Duration::from_secs(10))
                    .expect("frame")
                    .to_packed()
            })
            .collect::<Vec<_>>()
    });
    let p = run(&format!(
        "videotestsrc num-buffers=30 pattern=ball ! {caps} ! cuframessink name=s key=strided sync=false wait-subscribers=1"
    ));
    assert_eq!(counter(&p, "s", "zero-copy-buffers"), 30);
    let got = sub.join().unwrap();
    // The same pattern into an appsink, unpacked by its own strides.
    let want = reference_frames(&format!(
        "videotestsrc num-buffers=30 pattern=ball ! {caps}"
    ));
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(g == w, "frame {i} differs");
    }
}

/// Tightly packed frames of a source, read through GstVideoFrame.
fn reference_frames(src: &str) -> Vec<Vec<u8>> {
    let pipeline = gst::parse::launch(&format!("{src} ! appsink name=a sync=false"))
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    let sink = pipeline
        .by_name("a")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let mut frames = Vec::new();
    while let Ok(sample) = sink.pull_sample() {
        frames.push(packed(&sample));
    }
    pipeline.set_state(gst::State::Null).unwrap();
    frames
}

/// A single-plane (packed RGB) frame without its row padding.
fn packed(sample: &gst::Sample) -> Vec<u8> {
    let info = gst_video::VideoInfo::from_caps(sample.caps().unwrap()).unwrap();
    let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(sample.buffer().unwrap(), &info)
        .unwrap();
    let stride = frame.plane_stride()[0] as usize;
    let data = frame.plane_data(0).unwrap();
    let row_bytes = info.width() as usize * info.format_info().pixel_stride()[0] as usize;
    (0..info.height() as usize)
        .flat_map(|r| data[r * stride..r * stride + row_bytes].iter().copied())
        .collect()
}

/// An appsrc changes size mid-stream: cuframessink re-creates the stream
/// (new epoch), and cuframessrc with reconnect=true follows it and
/// renegotiates; every frame of both arrives, in order, intact.
#[test]
fn caps_change_recreates_the_stream_and_the_reader_follows() {
    if !init() {
        return;
    }
    let writer = gst::parse::launch(
        "appsrc name=in format=time is-live=false ! cuframessink name=s key=capschange sync=false wait-subscribers=1",
    )
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let reader = gst::parse::launch(
        "cuframessrc name=r key=capschange mode=queue reconnect=true ! appsink name=out sync=false",
    )
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let out = reader
        .by_name("out")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    reader.set_state(gst::State::Playing).unwrap();
    writer.set_state(gst::State::Playing).unwrap();
    let appsrc = writer
        .by_name("in")
        .unwrap()
        .downcast::<gst_app::AppSrc>()
        .unwrap();
    let sizes = [(320u32, 240u32), (640, 480)];
    let pusher = std::thread::spawn(move || {
        let mut n = 0u64;
        for (w, h) in sizes {
            let caps = gst_video::VideoInfo::builder(gst_video::VideoFormat::Gray8, w, h)
                .fps(gst::Fraction::new(30, 1))
                .build()
                .unwrap()
                .to_caps()
                .unwrap();
            appsrc.set_caps(Some(&caps));
            for _ in 0..10 {
                let mut b = gst::Buffer::from_mut_slice(vec![n as u8; (w * h) as usize]);
                b.get_mut()
                    .unwrap()
                    .set_pts(gst::ClockTime::from_mseconds(n * 33));
                appsrc.push_buffer(b).expect("push");
                n += 1;
            }
        }
        appsrc.end_of_stream().unwrap();
    });
    let mut got = Vec::new();
    let start = Instant::now();
    while got.len() < 20 && start.elapsed() < Duration::from_secs(30) {
        let Some(sample) = out.try_pull_sample(gst::ClockTime::from_mseconds(200)) else {
            continue;
        };
        let s = sample.caps().unwrap().structure(0).unwrap().to_owned();
        let map = sample.buffer().unwrap().map_readable().unwrap();
        let (w, h) = (
            s.get::<i32>("width").unwrap(),
            s.get::<i32>("height").unwrap(),
        );
        let value = map[0];
        // Rows are contiguous at these widths (multiples of 64).
        assert!(
            map[..(w * h) as usize].iter().all(|&b| b == value),
            "frame {value} torn"
        );
        got.push((w, h, value));
    }
    pusher.join().unwrap();
    let reconnects = reader.by_name("r").unwrap().property::<u64>("reconnects");
    writer.set_state(gst::State::Null).unwrap();
    reader.set_state(gst::State::Null).unwrap();
    let want: Vec<_> = (0..20u8)
        .map(|n| if n < 10 { (320, 240, n) } else { (640, 480, n) })
        .collect();
    assert_eq!(got, want);
    assert_eq!(reconnects, 1);
}

/// `slots` is 0 (automatic) or 2-64: a one-slot ring is refused at start.
#[test]
fn sink_with_one_slot_fails_to_start() {
    if !init() {
        return;
    }
    let p = gst::parse::launch("videotestsrc num-buffers=1 ! cuframessink key=oneslot slots=1")
        .unwrap();
    assert!(p.set_state(gst::State::Playing).is_err());
    p.set_state(gst::State::Null).unwrap();
}

#[test]
fn sink_without_key_fails_to_start() {
    if !init() {
        return;
    }
    let p = gst::parse::launch("videotestsrc num-buffers=1 ! cuframessink").unwrap();
    assert!(p.set_state(gst::State::Playing).is_err());
    p.set_state(gst::State::Null).unwrap();
}

/// Starts a pipeline and returns it with its bus; panics on a parse error.
fn start(desc: &str) -> (gst::Pipeline, gst::Bus) {
    let pipeline = gst::parse::launch(desc)
        .expect("pipeline parses")
        .downcast::<gst::Pipeline>()
        .expect("a pipeline");
    let bus = pipeline.bus().unwrap();
    pipeline.set_state(gst::State::Playing).expect("playing");
    (pipeline, bus)
}

/// Waits for EOS; false on an error message or after `limit`.
fn reaches_eos(bus: &gst::Bus, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_nseconds(left.as_nanos() as u64)) else {
            break;
        };
        match msg.view() {
            gst::MessageView::Eos(_) => return true,
            gst::MessageView::Error(e) => {
                eprintln!("error: {} ({:?})", e.error(), e.debug());
                return false;
            }
            _ => {}
        }
    }
    false
}

/// A buffer upstream keeps after the sink rendered it in place (as a tee
/// branch, a probe or last-sample would) is not overwritten by the frames
/// the ring publishes after it.
#[test]
fn a_rendered_buffer_kept_upstream_keeps_its_bytes() {
    if !init() {
        return;
    }
    let (pipeline, bus) = start(
        "videotestsrc pattern=ball num-buffers=30 ! video/x-raw,format=GRAY8,width=320,height=240 \
         ! cuframessink name=sink key=kept slots=3 sync=false",
    );
    // Not started yet by the time the probe is in place: the first buffer
    // cannot have passed (the sink prerolls on it at the earliest).
    /// The first buffer, and its bytes when it reached the sink.
    type Kept = Option<(gst::Buffer, Vec<u8>)>;
    let kept: std::sync::Arc<Mutex<Kept>> = Default::default();
    let k = kept.clone();
    pipeline
        .by_name("sink")
        .unwrap()
        .static_pad("sink")
        .unwrap()
        .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if let Some(gst::PadProbeData::Buffer(b)) = &info.data {
                let mut k = k.lock().unwrap();
                if k.is_none() {
                    let bytes = b.map_readable().unwrap().to_vec();
                    *k = Some((b.clone(), bytes));
                }
            }
            gst::PadProbeReturn::Ok
        });
    assert!(reaches_eos(&bus, Duration::from_secs(30)));
    let zero_copy = counter(&pipeline, "sink", "zero-copy-buffers");
    let copied = counter(&pipeline, "sink", "copied-buffers");
    {
        let k = kept.lock().unwrap();
        let (buffer, then) = k.as_ref().expect("a buffer was kept");
        let now = buffer.map_readable().unwrap();
        assert!(
            now.as_slice() == then.as_slice(),
            "the kept buffer's bytes changed after {} more frames",
            zero_copy + copied - 1
        );
    }
    pipeline.set_state(gst::State::Null).unwrap();
    // The kept buffer was a slot (zero copy); the others were copied into
    // the other slots while it lived.
    assert_eq!((zero_copy, copied), (1, 29));
}

/// An upstream that does not take GstVideoMeta gets buffers in
/// GStreamer's default layout from the sink's pool (at a width whose rows
/// the ring pads), and what it writes there is published unsheared.
#[test]
fn pool_without_video_meta_uses_the_default_layout() {
    if !init() {
        return;
    }
    let key = "nometa";
    let (w, h) = (100u32, 6u32);
    let pipeline = gst::Pipeline::new();
    let sink = gst::ElementFactory::make("cuframessink")
        .property("key", key)
        .property("sync", false)
        .build()
        .unwrap();
    pipeline.add(&sink).unwrap();
    let src = gst::Pad::builder(gst::PadDirection::Src)
        .name("src")
        .build();
    src.link(&sink.static_pad("sink").unwrap()).unwrap();
    src.set_active(true).unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::Gray8, w, h)
        .fps(gst::Fraction::new(30, 1))
        .build()
        .unwrap();
    let caps = info.to_caps().unwrap();
    assert!(src.push_event(gst::event::StreamStart::new("nometa")));
    assert!(src.push_event(gst::event::Caps::new(&caps)));
    let segment = gst::FormattedSegment::<gst::ClockTime>::new();
    assert!(src.push_event(gst::event::Segment::new(&segment)));
    let mut reader =
        cuframes::Subscriber::connect(key, "check", cuframes::Mode::Queue, Default::default())
            .unwrap();

    let mut query = gst::query::Allocation::new(Some(&caps), true);
    assert!(
        src.peer_query(&mut query),
        "the sink answers the allocation query"
    );
    let pools = query.allocation_pools();
    let pool = pools[0].0.clone().expect("the sink proposes its pool");
    let config = pool.config();
    assert!(
        !config.has_option(gst_video::BUFFER_POOL_OPTION_VIDEO_META.as_str()),
        "the proposed pool does not claim upstream takes GstVideoMeta"
    );
    pool.set_config(config).unwrap();
    pool.set_active(true).unwrap();
    let mut buffer = pool.acquire_buffer(None).unwrap();
    assert_eq!(buffer.size(), info.size(), "default layout, not the ring's");
    if let Some(meta) = buffer.meta::<gst_video::VideoMeta>() {
        assert_eq!(meta.stride()[0], info.stride()[0], "default stride");
    }
    {
        // What an upstream ignoring meta writes: rows at the default stride.
        let stride = info.stride()[0] as usize;
        let mut map = buffer.get_mut().unwrap().map_writable().unwrap();
        for r in 0..h as usize {
            map[r * stride..r * stride + w as usize].fill(r as u8 + 1);
        }
    }
    assert_eq!(src.push(buffer), Ok(gst::FlowSuccess::Ok));
    let frame = reader.next_frame(Duration::from_secs(5)).unwrap();
    for r in 0..h as usize {
        let row = &frame.plane(0)[r * frame.pitch(0) as usize..][..w as usize];
        assert!(
            row.iter().all(|&b| b == r as u8 + 1),
            "row {r} sheared: {row:?}"
        );
    }
    drop(frame);
    pool.set_active(false).unwrap();
    pipeline.set_state(gst::State::Null).unwrap();
}

/// A sink waiting for `wait-subscribers` is paused and resumed: upstream
/// goes on once playing again (the pause does not end its task), and
/// every frame arrives when a subscriber connects.
#[test]
fn pausing_a_sink_that_waits_for_subscribers_resumes() {
    if !init() {
        return;
    }
    let key = "pausewait";
    let (pipeline, bus) = start(&format!(
        "videotestsrc num-buffers=20 ! video/x-raw,format=GRAY8,width=64,height=64 \
         ! cuframessink key={key} wait-subscribers=1 sync=false"
    ));
    std::thread::sleep(Duration::from_millis(300));
    pipeline.set_state(gst::State::Paused).unwrap();
    let (r, _, _) = pipeline.state(gst::ClockTime::from_seconds(5));
    assert!(r.is_ok(), "paused while waiting");
    let mut reader =
        cuframes::Subscriber::connect(key, "late", cuframes::Mode::Queue, Default::default())
            .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let mut seqs = Vec::new();
    while seqs.len() < 20 {
        match reader.next_frame(Duration::from_secs(5)) {
            Ok(f) => seqs.push(f.seq()),
            Err(e) => panic!("after {} frames: {e}", seqs.len()),
        }
    }
    assert_eq!(seqs, (1..=20).collect::<Vec<u64>>());
    assert!(reaches_eos(&bus, Duration::from_secs(10)));
    pipeline.set_state(gst::State::Null).unwrap();
}

/// A sink blocked on a lossless subscriber that reads nothing (policy
/// block, a minute's block-timeout) pauses and stops at once, and after a
/// pause goes on where it was once the subscriber reads.
#[test]
fn a_sink_blocked_on_a_slow_subscriber_pauses_and_stops_promptly() {
    if !init() {
        return;
    }
    let key = "blocked";
    let (pipeline, bus) = start(&format!(
        "videotestsrc num-buffers=30 ! video/x-raw,format=GRAY8,width=64,height=64 \
         ! cuframessink name=sink key={key} slots=4 policy=block block-timeout=60000 \
           wait-subscribers=1 sync=false"
    ));
    let start_wait = Instant::now();
    let mut reader = loop {
        match cuframes::Subscriber::connect(key, "slow", cuframes::Mode::Queue, Default::default())
        {
            Ok(r) => break r,
            Err(_) if start_wait.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("no stream: {e}"),
        }
    };
    // The ring fills; the sink waits for the reader.
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    pipeline.set_state(gst::State::Paused).unwrap();
    let (r, _, _) = pipeline.state(gst::ClockTime::from_seconds(5));
    assert!(r.is_ok(), "paused");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "pause took {:?}",
        t.elapsed()
    );
    pipeline.set_state(gst::State::Playing).unwrap();
    let mut seqs = Vec::new();
    for _ in 0..10 {
        seqs.push(reader.next_frame(Duration::from_secs(5)).unwrap().seq());
    }
    assert_eq!(
        seqs,
        (1..=10).collect::<Vec<u64>>(),
        "lossless across the pause"
    );
    let t = Instant::now();
    pipeline.set_state(gst::State::Null).unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "stop took {:?}",
        t.elapsed()
    );
    drop(bus);
    assert_eq!(counter(&pipeline, "sink", "dropped-buffers"), 0);
}

/// NV12 at an odd size cannot be carried: the sink says why on the bus.
#[test]
fn odd_nv12_size_is_an_error_with_a_reason() {
    if !init() {
        return;
    }
    let (pipeline, bus) = start(
        "videotestsrc num-buffers=1 ! video/x-raw,format=NV12,width=101,height=100 \
         ! cuframessink key=oddsize",
    );
    let mut said = String::new();
    for msg in bus.iter_timed(gst::ClockTime::from_seconds(10)) {
        match msg.view() {
            gst::MessageView::Error(e) => {
                said.push_str(&format!("{} {:?}\n", e.error(), e.debug()));
                if said.contains("even") {
                    break;
                }
            }
            gst::MessageView::Eos(_) => break,
            _ => {}
        }
    }
    pipeline.set_state(gst::State::Null).unwrap();
    assert!(
        said.to_lowercase()
            .contains("nv12 needs an even width and height")
            && said.contains("101x100"),
        "errors on the bus: {said}"
    );
}

/// `wait-subscribers` cannot ask for more subscribers than a ring has
/// records (16): the property's range says so.
#[test]
fn wait_subscribers_is_bounded_by_the_subscriber_records() {
    if !init() {
        return;
    }
    let sink = gst::ElementFactory::make("cuframessink").build().unwrap();
    let spec = sink
        .find_property("wait-subscribers")
        .unwrap()
        .downcast::<gst::glib::ParamSpecUInt>()
        .unwrap();
    assert_eq!(
        spec.maximum(),
        cuframes::PublisherOptions::default().subscriber_capacity
    );
}

/// A reader pipeline `cuframessrc <props> ! appsink name=out sync=false`.
fn reader(props: &str) -> (gst::Pipeline, gst_app::AppSink) {
    let pipeline = gst::parse::launch(&format!(
        "cuframessrc name=r {props} ! appsink name=out sync=false"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let out = pipeline
        .by_name("out")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    (pipeline, out)
}

fn gray_publisher(key: &str, slots: u32) -> cuframes::Publisher {
    let layout = cuframes::FrameLayout::new(cuframes::PixelFormat::Gray8, 64, 4, 64).unwrap();
    let options = cuframes::PublisherOptions {
        slot_count: slots,
        block_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    cuframes::Publisher::create(key, layout, options).unwrap()
}

/// A cuframessrc whose max-held was lowered at connect (a ring of 3
/// slots fits one held frame) copies frames once one of its buffers is
/// alive downstream, instead of stalling on a hold it may not take.
#[test]
fn source_holds_no_more_than_it_registered_for() {
    if !init() {
        return;
    }
    let key = "lowered";
    let mut p = gray_publisher(key, 3);
    let (pipeline, out) = reader(&format!("key={key} mode=queue max-held=8"));
    let start = Instant::now();
    while p.stats().active().count() == 0 && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let publish = std::thread::spawn(move || {
        for n in 0..10u8 {
            p.publish_from(&[n; 256], 0).unwrap();
        }
        p
    });
    // Every sample is kept: the buffers downstream stay alive.
    let mut kept = Vec::new();
    while kept.len() < 10 && start.elapsed() < Duration::from_secs(20) {
        if let Some(s) = out.try_pull_sample(gst::ClockTime::from_mseconds(200)) {
            kept.push(s);
        }
    }
    let values: Vec<u8> = kept
        .iter()
        .map(|s| s.buffer().unwrap().map_readable().unwrap()[0])
        .collect();
    assert_eq!(values, (0..10).collect::<Vec<u8>>());
    let r = pipeline.by_name("r").unwrap();
    assert_eq!(r.property::<u64>("zero-copy-buffers"), 0);
    drop(publish.join().unwrap());
    pipeline.set_state(gst::State::Null).unwrap();
}

/// `timeout` counts from the connect for the first frame: a stream that
/// appears late, then sends its first frame within the timeout, is read.
#[test]
fn source_timeout_counts_from_the_connect() {
    if !init() {
        return;
    }
    let key = "latestream";
    let (pipeline, out) = reader(&format!("key={key} timeout=1500"));
    std::thread::sleep(Duration::from_millis(1000));
    let mut p = gray_publisher(key, 4);
    std::thread::sleep(Duration::from_millis(1000)); // 2 s from the start
    p.publish_from(&[9; 256], 0).unwrap();
    let sample = out.try_pull_sample(gst::ClockTime::from_seconds(3));
    let bus = pipeline.bus().unwrap();
    let error = bus.pop_filtered(&[gst::MessageType::Error]);
    pipeline.set_state(gst::State::Null).unwrap();
    assert!(error.is_none(), "timed out: {error:?}");
    let sample = sample.expect("the first frame");
    assert_eq!(sample.buffer().unwrap().map_readable().unwrap()[0], 9);
}

/// A packet whose duration is GStreamer's "none" (u64::MAX, as a
/// publisher copying GST_BUFFER_DURATION sends) leaves the buffer's
/// duration unset.
#[test]
fn packet_duration_none_is_no_duration() {
    if !init() {
        return;
    }
    let key = "nodur";
    let stream = cuframes::PacketStream {
        codec: cuframes::Codec::H264,
        max_packet: 4096,
        extradata: vec![
            0, 0, 0, 1, 0x67, 0x42, 0, 0x1e, 0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80,
        ],
        width: 64,
        height: 64,
    };
    let mut p = cuframes::PacketPublisher::create(key, &stream, Default::default()).unwrap();
    let (pipeline, out) = reader(&format!("key={key} mode=queue"));
    let start = Instant::now();
    while p.stats().active().count() == 0 && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    for (n, duration_ns) in [(0i64, u64::MAX), (1, 40_000_000)] {
        let meta = cuframes::PacketMeta {
            pts_ns: n * 40_000_000,
            dts_ns: n * 40_000_000,
            duration_ns,
            flags: cuframes::packet::KEY,
            ..Default::default()
        };
        p.publish(&[0, 0, 0, 1, 0x65, 0x88, n as u8], &meta)
            .unwrap();
    }
    let a = out
        .try_pull_sample(gst::ClockTime::from_seconds(5))
        .expect("packet 1");
    let b = out
        .try_pull_sample(gst::ClockTime::from_seconds(5))
        .expect("packet 2");
    pipeline.set_state(gst::State::Null).unwrap();
    assert_eq!(a.buffer().unwrap().duration(), None);
    assert_eq!(
        b.buffer().unwrap().duration(),
        Some(gst::ClockTime::from_mseconds(40))
    );
}
