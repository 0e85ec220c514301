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

#[test]
fn sink_without_key_fails_to_start() {
    if !init() {
        return;
    }
    let p = gst::parse::launch("videotestsrc num-buffers=1 ! cuframessink").unwrap();
    assert!(p.set_state(gst::State::Playing).is_err());
    p.set_state(gst::State::Null).unwrap();
}
