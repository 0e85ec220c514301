//! The child processes: a publisher or a subscriber of one peer. Each
//! prints `ready` (publishers, once subscribers may connect) and one
//! `result ...` line on stdout.

use crate::proto::{
    get_header, now_ns, put_header, PubMeter, Recorder, HEADER, PHASE_END, PHASE_LATENCY,
    PHASE_THROUGHPUT, PHASE_WARMUP,
};
use crate::spec::{Case, ChildSpec, Mode, Peer, Wake, Work, RING_SLOTS};
use crate::work::Consumer;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// Errors of a child: a message for the parent's table.
pub type Res<T> = Result<T, String>;

pub(crate) fn err<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Runs one child process described by `spec`.
pub fn child_main(spec: &str) -> Res<()> {
    if let Some(floor) = spec.strip_prefix(crate::floor::CHILD) {
        return crate::floor::child(floor);
    }
    let spec = ChildSpec::decode(spec)?;
    let line = match (spec.case.peer, spec.role.as_str()) {
        _ if spec.case.workload.packets.is_some() => crate::packets::child(&spec)?,
        (Peer::Cuframes | Peer::PythonCuframes, "pub") => publish(&spec, CuframesPub::new(&spec)?)?,
        (Peer::Cuframes, "sub") => cuframes_sub(&spec)?,
        (Peer::Iceoryx2, "pub") => iox::publisher(&spec)?,
        (Peer::Iceoryx2, "sub") => iox::subscriber(&spec)?,
        (Peer::UnixSocket, "pub") => publish(&spec, SocketPub::new(&spec)?)?,
        (Peer::UnixSocket, "sub") => socket_sub(&spec)?,
        (Peer::CuframesCuda, "pub") => crate::gpu::publisher(&spec)?,
        (Peer::CuframesCuda, "sub") => crate::gpu::subscriber(&spec)?,
        (p, r) => return Err(format!("no {r} child for {p}")),
    };
    println!("{line}");
    std::io::stdout().flush().map_err(err("stdout"))
}

/// A publisher of one peer.
pub(crate) trait Sink {
    /// Blocks until `n` subscribers are there.
    fn wait_subscribers(&mut self, n: usize) -> Res<()>;
    /// Publishes frame `seq` of `phase`: the header is written into the
    /// frame, the rest of the payload is whatever the slot holds.
    fn publish(&mut self, seq: u64, phase: u64) -> Res<()>;
    /// After the end marker: lets subscribers drain and leave.
    fn finish(&mut self) {}
}

/// Tells the parent that subscribers may connect now.
pub(crate) fn ready() {
    println!("ready");
    let _ = std::io::stdout().flush();
}

/// Waits up to 30 s until `count()` says `n` subscribers are connected.
pub(crate) fn wait_connected(n: usize, count: impl Fn() -> usize) -> Res<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while count() < n {
        if Instant::now() > deadline {
            return Err("subscribers did not connect".into());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// A frame a subscriber took.
pub(crate) struct Taken {
    /// Its sequence number.
    pub seq: u64,
    /// Its phase (`proto::PHASE_*`).
    pub phase: u64,
    /// From its commit (or send) to now.
    pub latency_ns: u64,
    /// When it was taken (and usable).
    pub now: u64,
    /// Payload bytes the subscriber read (packets; 0 for frames).
    pub bytes: u64,
    /// Whether the frame held what its publisher wrote (see
    /// [`Taken::worked`]).
    pub intact: bool,
}

impl Taken {
    /// Frame `seq` of `phase`, taken now, `latency_ns` after its commit.
    pub(crate) fn new(seq: u64, phase: u64, latency_ns: u64, now: u64) -> Self {
        Self {
            seq,
            phase,
            latency_ns,
            now,
            bytes: 0,
            intact: true,
        }
    }

    /// Does the case's work on `payload`, the frame this was taken from,
    /// still held; records whether it was intact.
    pub(crate) fn worked(mut self, consumer: &mut Consumer, payload: &[u8]) -> Self {
        self.intact = consumer.consume(payload, self.seq);
        self
    }
}

/// The header of a frame about to be published, and with a consumer
/// workload the whole frame's pattern (written first, so that the send
/// time is stamped last).
pub(crate) fn stamp(payload: &mut [u8], seq: u64, phase: u64, work: Work) {
    if work != Work::Handoff {
        crate::work::fill(payload, seq);
    }
    put_header(&mut payload[..HEADER], seq, phase);
}

/// A subscriber's run, the same for every peer: takes frames with `take`
/// (`None`: the stream closed) until the end marker, then reports.
pub(crate) fn receive(idx: usize, mut take: impl FnMut() -> Res<Option<Taken>>) -> Res<String> {
    let mut rec = Recorder::default();
    while let Some(t) = take()? {
        rec.count_bytes(t.phase, t.bytes);
        if !t.intact {
            rec.count_damaged();
        }
        if rec.observe(t.seq, t.phase, t.latency_ns, t.now) {
            break;
        }
    }
    Ok(rec.report(idx))
}

/// The publisher's run, the same for every peer: warm-up, paced latency
/// frames, throughput frames (flat out, or paced at a frame rate), end
/// marker.
pub(crate) fn publish(spec: &ChildSpec, mut sink: impl Sink) -> Res<String> {
    let c = &spec.case;
    sink.wait_subscribers(c.subscribers)?;
    let mut seq = 0u64;
    // Fault the slots in: the frame ring twice over; a packet ring once.
    let warmup = c.workload.packets.map_or(2 * RING_SLOTS, |p| p.slots + 2);
    let mut paced = |sink: &mut dyn Sink, frames: u64, interval: Duration, phase: u64| {
        let start = Instant::now();
        for i in 0..frames {
            let due = start + interval.mul_f64(i as f64);
            if let Some(d) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
            seq += 1;
            sink.publish(seq, phase)?;
        }
        Ok::<_, String>(())
    };
    paced(
        &mut sink,
        warmup as u64,
        Duration::from_millis(1),
        PHASE_WARMUP,
    )?;
    // Let the warm-up frames drain before the first timed frame.
    std::thread::sleep(Duration::from_millis(20));
    paced(
        &mut sink,
        c.phases.latency_frames,
        Duration::from_micros(c.phases.latency_interval_us),
        PHASE_LATENCY,
    )?;
    std::thread::sleep(Duration::from_millis(20));
    let meter = PubMeter::start();
    let interval = c.phases.throughput_interval_us;
    // Paced (a frame rate) or flat out (interval 0).
    let frames = if let Some(frames) = (c.phases.throughput_ms * 1000).checked_div(interval) {
        paced(
            &mut sink,
            frames,
            Duration::from_micros(interval),
            PHASE_THROUGHPUT,
        )?;
        frames
    } else {
        let end = Instant::now() + Duration::from_millis(c.phases.throughput_ms);
        let mut frames = 0;
        while Instant::now() < end {
            seq += 1;
            sink.publish(seq, PHASE_THROUGHPUT)?;
            frames += 1;
        }
        frames
    };
    let line = meter.report(frames);
    // A paced stream's last frame gets its interval too: the end marker
    // must not overtake it at a newest-only subscriber.
    std::thread::sleep(Duration::from_micros(interval));
    sink.publish(seq + 1, PHASE_END)?;
    sink.finish();
    Ok(line)
}

// ---------------------------------------------------------------- cuframes

/// The ring of a cuframes publisher (host or CUDA) for case `c`: enough
/// slots and subscriber records, lossless waits long enough to never
/// expire in a healthy run.
pub(crate) fn ring_options(c: &Case) -> cuframes::PublisherOptions {
    cuframes::PublisherOptions {
        slot_count: crate::spec::ring_slots(c.subscribers),
        subscriber_capacity: (c.subscribers as u32 + 1).max(16),
        block_timeout: Duration::from_secs(20),
        ..Default::default()
    }
}

pub(crate) struct CuframesPub {
    publisher: cuframes::Publisher,
    work: Work,
}

impl CuframesPub {
    pub(crate) fn new(spec: &ChildSpec) -> Res<Self> {
        let c = &spec.case;
        let layout = c.workload.layout().map_err(err("layout"))?;
        let publisher = cuframes::Publisher::create(&spec.key, layout, ring_options(c))
            .map_err(err("create"))?;
        ready();
        Ok(Self {
            publisher,
            work: c.work,
        })
    }
}

impl Sink for CuframesPub {
    fn wait_subscribers(&mut self, n: usize) -> Res<()> {
        wait_connected(n, || self.publisher.stats().active().count())
    }

    fn publish(&mut self, seq: u64, phase: u64) -> Res<()> {
        let mut lease = self.publisher.loan().map_err(err("loan"))?;
        stamp(lease.data_mut(), seq, phase, self.work);
        lease.commit(phase as i64).map_err(err("commit"))?;
        Ok(())
    }
}

fn cuframes_sub(spec: &ChildSpec) -> Res<String> {
    let c = &spec.case;
    let options = cuframes::SubscriberOptions {
        connect_timeout: Duration::from_secs(30),
        ..Default::default()
    };
    let name = format!("bench{}", spec.idx);
    let mut sub = cuframes::Subscriber::connect(&spec.key, &name, c.mode.cuframes(), options)
        .map_err(err("connect"))?;
    let closed = |e: &cuframes::Error| e.code() == cuframes::ErrorCode::Closed;
    let mut consumer = Consumer::new(c.work, c.workload);
    receive(spec.idx, || {
        let frame = match c.wake {
            Wake::Spin => loop {
                match sub.try_next() {
                    Ok(Some(f)) => break f,
                    Ok(None) => std::hint::spin_loop(),
                    Err(e) if closed(&e) => return Ok(None),
                    Err(e) => return Err(format!("try_next: {e}")),
                }
            },
            Wake::Block => match sub.next_frame(Duration::from_secs(20)) {
                Ok(f) => f,
                Err(e) if closed(&e) => return Ok(None),
                Err(e) => return Err(format!("next_frame: {e}")),
            },
        };
        let now = now_ns();
        let (seq, _, phase) = get_header(frame.data());
        let latency_ns = now.saturating_sub(frame.commit_ns());
        let taken = Taken::new(seq, phase, latency_ns, now).worked(&mut consumer, frame.data());
        frame.release();
        Ok(Some(taken))
    })
}

// ------------------------------------------------------------- unix socket

/// Where the publisher of stream `key` listens, and a file beside it
/// (`ext`: `sock`, `stop`).
pub(crate) fn socket_path(key: &str, ext: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("{key}.{ext}"))
}

/// The publisher side of the unix-socket peer: a listening socket and a
/// `SOCK_STREAM` connection per subscriber, each sent its own copy of every
/// payload (frames, or length-prefixed packets).
pub(crate) struct Fanout {
    listener: std::os::unix::net::UnixListener,
    /// Connected subscribers, in accept order.
    pub streams: Vec<std::os::unix::net::UnixStream>,
    path: std::path::PathBuf,
}

impl Fanout {
    /// Listens at [`socket_path`]`(key)`.
    pub(crate) fn bind(key: &str) -> Res<Self> {
        let path = socket_path(key, "sock");
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).map_err(err("bind"))?;
        Ok(Self {
            listener,
            streams: Vec::new(),
            path,
        })
    }

    /// Blocks until `n` subscribers are connected.
    pub(crate) fn accept(&mut self, n: usize) -> Res<()> {
        while self.streams.len() < n {
            let (s, _) = self.listener.accept().map_err(err("accept"))?;
            self.streams.push(s);
        }
        Ok(())
    }

    /// The connections made since the last call, without waiting.
    pub(crate) fn accept_pending(&mut self) -> Res<Vec<std::os::unix::net::UnixStream>> {
        self.listener.set_nonblocking(true).map_err(err("accept"))?;
        let mut new = Vec::new();
        loop {
            match self.listener.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false).map_err(err("accept"))?;
                    new.push(s);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(new),
                Err(e) => return Err(format!("accept: {e}")),
            }
        }
    }

    /// Writes `bytes` to every subscriber.
    pub(crate) fn send_all(&mut self, bytes: &[u8]) -> Res<()> {
        for s in &mut self.streams {
            s.write_all(bytes).map_err(err("write"))?;
        }
        Ok(())
    }

    /// Hangs up on every subscriber and removes the socket.
    pub(crate) fn close(&mut self) {
        self.streams.clear();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Connects to the publisher of `key`, retrying for up to 30 s while it is
/// not listening yet.
pub(crate) fn connect_socket(key: &str) -> Res<std::os::unix::net::UnixStream> {
    let path = socket_path(key, "sock");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match std::os::unix::net::UnixStream::connect(&path) {
            Ok(s) => return Ok(s),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("connect {}: {e}", path.display())),
        }
    }
}

pub(crate) struct SocketPub {
    fanout: Fanout,
    frame: Vec<u8>,
    work: Work,
}

impl SocketPub {
    pub(crate) fn new(spec: &ChildSpec) -> Res<Self> {
        let fanout = Fanout::bind(&spec.key)?;
        ready();
        Ok(Self {
            fanout,
            // The frame the publisher has made; each send copies it.
            frame: vec![16u8; spec.case.workload.bytes()],
            work: spec.case.work,
        })
    }
}

impl Sink for SocketPub {
    fn wait_subscribers(&mut self, n: usize) -> Res<()> {
        self.fanout.accept(n)
    }

    fn publish(&mut self, seq: u64, phase: u64) -> Res<()> {
        stamp(&mut self.frame, seq, phase, self.work);
        self.fanout.send_all(&self.frame)
    }

    fn finish(&mut self) {
        self.fanout.close();
    }
}

fn socket_sub(spec: &ChildSpec) -> Res<String> {
    let mut stream = connect_socket(&spec.key)?;
    let mut buf = vec![0u8; spec.case.workload.bytes()];
    let mut consumer = Consumer::new(spec.case.work, spec.case.workload);
    receive(spec.idx, || {
        stream.read_exact(&mut buf).map_err(err("read"))?;
        Ok(Some(sent_header(&buf).worked(&mut consumer, &buf)))
    })
}

/// A payload whose header carries its send time, taken now.
pub(crate) fn sent_header(buf: &[u8]) -> Taken {
    let now = now_ns();
    let (seq, sent, phase) = get_header(buf);
    Taken::new(seq, phase, now.saturating_sub(sent), now)
}

// ---------------------------------------------------------------- iceoryx2

mod iox {
    use super::*;
    use iceoryx2::prelude::*;

    /// Subscriber buffer in queue mode: the ring depth less the two slots
    /// cuframes keeps for the writer and the newest frame.
    const QUEUE_DEPTH: usize = RING_SLOTS as usize - 2;

    fn node() -> Res<Node<ipc::Service>> {
        NodeBuilder::new()
            .signal_handling_mode(SignalHandlingMode::Disabled)
            .create::<ipc::Service>()
            .map_err(err("iceoryx2 node"))
    }

    fn service_name(s: &str) -> Res<ServiceName> {
        s.try_into().map_err(err("iceoryx2 service name"))
    }

    fn buffer(c: &Case) -> usize {
        match c.mode {
            Mode::Newest => 1,
            Mode::Queue => QUEUE_DEPTH,
        }
    }

    macro_rules! pubsub {
        ($node:expr, $spec:expr) => {{
            let c = &$spec.case;
            $node
                .service_builder(&service_name(&$spec.key)?)
                .publish_subscribe::<[u8]>()
                .max_publishers(1)
                .max_subscribers(c.subscribers.max(1))
                .history_size(0)
                .subscriber_max_buffer_size(buffer(c))
                .subscriber_max_borrowed_samples(1)
                .enable_safe_overflow(c.mode == Mode::Newest)
                .open_or_create()
                .map_err(err("iceoryx2 publish-subscribe service"))?
        }};
    }

    macro_rules! events {
        ($node:expr, $spec:expr) => {{
            $node
                .service_builder(&service_name(&format!("{}.event", $spec.key))?)
                .event()
                .max_notifiers(1)
                .max_listeners($spec.case.subscribers.max(1))
                .open_or_create()
                .map_err(err("iceoryx2 event service"))?
        }};
    }

    pub(super) fn publisher(spec: &ChildSpec) -> Res<String> {
        let c = &spec.case;
        let node = node()?;
        let service = pubsub!(node, spec);
        let events = events!(node, spec);
        let publisher = service
            .publisher_builder()
            .initial_max_slice_len(c.workload.bytes())
            .max_loaned_samples(1)
            .backpressure_strategy(match c.mode {
                Mode::Newest => BackpressureStrategy::DiscardData,
                Mode::Queue => BackpressureStrategy::RetryUntilDelivered,
            })
            .create()
            .map_err(err("iceoryx2 publisher"))?;
        let notifier = events
            .notifier_builder()
            .create()
            .map_err(err("iceoryx2 notifier"))?;
        ready();
        let bytes = c.workload.bytes();
        let work = c.work;
        let block = c.wake == Wake::Block;
        let sink = IoxPub {
            count: Box::new(|| service.dynamic_config().number_of_subscribers()),
            send: Box::new(|seq, phase| {
                let sample = publisher
                    .loan_slice_uninit(bytes)
                    .map_err(err("iceoryx2 loan"))?;
                // SAFETY: the sample lies in a shared-memory segment whose
                // bytes are always initialized: zero-filled by the kernel
                // when mapped, an earlier frame after that. Like a
                // zero-copy producer, the publisher writes the header (and
                // the pattern of a consumer row) and leaves the rest of the
                // frame in place (cuframes' publisher does the same).
                let mut sample = unsafe { sample.assume_init() };
                stamp(sample.payload_mut(), seq, phase, work);
                sample.send().map_err(err("iceoryx2 send"))?;
                if block {
                    notifier.notify().map_err(err("iceoryx2 notify"))?;
                }
                Ok(())
            }),
        };
        publish(spec, sink)
    }

    type SendFn<'a> = Box<dyn FnMut(u64, u64) -> Res<()> + 'a>;

    struct IoxPub<'a> {
        count: Box<dyn Fn() -> usize + 'a>,
        send: SendFn<'a>,
    }

    impl Sink for IoxPub<'_> {
        fn wait_subscribers(&mut self, n: usize) -> Res<()> {
            wait_connected(n, &self.count)
        }
        fn publish(&mut self, seq: u64, phase: u64) -> Res<()> {
            (self.send)(seq, phase)
        }
        fn finish(&mut self) {
            // Keep the samples alive until every subscriber has left.
            let deadline = Instant::now() + Duration::from_secs(10);
            while (self.count)() > 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    pub(super) fn subscriber(spec: &ChildSpec) -> Res<String> {
        let c = &spec.case;
        let node = node()?;
        // The publisher made the services; wait for them.
        let deadline = Instant::now() + Duration::from_secs(30);
        let (service, events) = loop {
            let attempt = (|| -> Res<_> { Ok((pubsub!(node, spec), events!(node, spec))) })();
            match attempt {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => return Err(e),
            }
        };
        let subscriber = service
            .subscriber_builder()
            .buffer_size(buffer(c))
            .create()
            .map_err(err("iceoryx2 subscriber"))?;
        let listener = events
            .listener_builder()
            .create()
            .map_err(err("iceoryx2 listener"))?;
        let mut consumer = Consumer::new(c.work, c.workload);
        let report = receive(spec.idx, || loop {
            match subscriber.receive().map_err(err("iceoryx2 receive"))? {
                Some(sample) => {
                    let payload = sample.payload();
                    return Ok(Some(sent_header(payload).worked(&mut consumer, payload)));
                }
                None => match c.wake {
                    Wake::Spin => std::hint::spin_loop(),
                    Wake::Block => {
                        listener
                            .timed_wait(|_| {}, Duration::from_millis(100))
                            .map_err(err("iceoryx2 wait"))?;
                    }
                },
            }
        });
        drop(subscriber);
        report
    }
}
