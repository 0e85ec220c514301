//! The Python peers: scripts run with `python3 -c`, printing the same
//! `result` lines as the Rust children.

use std::path::Path;
use std::process::Command;

/// Counting and reporting, as `proto::Recorder` does, and the publisher's
/// phases, as `peers::publish` runs them.
const PRELUDE: &str = r#"
import os, sys, time, struct, resource
# key=value arguments (a process started by multiprocessing's spawn has
# others, and none of these).
ARGS = dict(a.split('=', 1) for a in sys.argv[1:] if '=' in a)
HDR = struct.Struct('<QQQ')

def cpu_ns():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return int((r.ru_utime + r.ru_stime) * 1e9)

def rss_kib():
    d = {}
    with open('/proc/self/status') as f:
        for line in f:
            k, _, v = line.partition(':')
            if k in ('VmRSS', 'RssShmem'):
                d[k] = int(v.split()[0])
    return d.get('VmRSS', 0), d.get('RssShmem', 0)

def say(line):
    # One write(2) per line: processes forked from one parent share the pipe.
    os.write(1, (line + '\n').encode())

def q(xs, p):
    return xs[round((len(xs) - 1) * p)] if xs else 0

class Recorder:
    def __init__(self):
        self.lat = []; self.n = 0; self.t1 = 0; self.t2 = 0; self.t3 = 0; self.c1 = 0; self.last = 0; self.lost = 0
        self.last_phase = 0
    def observe(self, seq, phase, lat, now):
        # As the Rust recorder: only gaps between measured frames are losses.
        if self.last and seq > self.last + 1 and phase in (1, 2) and self.last_phase in (1, 2):
            self.lost += seq - self.last - 1
        self.last = seq; self.last_phase = phase
        if phase == 1:
            self.lat.append(lat)
        elif phase == 2:
            if self.n == 0:
                self.t1 = now; self.c1 = cpu_ns()
            self.n += 1; self.t2 = now
        elif phase == 3:
            self.t3 = now
            return True
        return False
    def report(self, idx):
        cpu = cpu_ns() - self.c1
        lat = sorted(self.lat)
        end = max(self.t2, self.t3)
        fps = self.n * 1e9 / (end - self.t1) if self.n > 0 and end > self.t1 else 0.0
        rss, shm = rss_kib()
        say(f"result role=sub idx={idx} p50={q(lat, .5)} p99={q(lat, .99)} p999={q(lat, .999)} "
            f"samples={len(lat)} frames={self.n} fps={fps:.3f} cpu_ns={cpu // max(self.n, 1)} "
            f"rss_kib={rss} shmem_kib={shm} lost={self.lost}")

def drive(publish, slots):
    """Warm-up, paced latency frames, unpaced throughput frames through
    publish(phase); returns the publisher's result line. The end marker
    (publish(3)) is the caller's."""
    def paced(frames, interval_ns, phase):
        t0 = time.monotonic_ns()
        for i in range(frames):
            d = t0 + i * interval_ns - time.monotonic_ns()
            if d > 0:
                time.sleep(d / 1e9)
            publish(phase)
    paced(2 * slots, 1_000_000, 0)
    time.sleep(0.02)
    paced(int(ARGS['lat_frames']), int(ARGS['lat_interval_us']) * 1000, 1)
    time.sleep(0.02)
    t0 = time.monotonic_ns(); c0 = cpu_ns(); end = t0 + int(ARGS['tput_ms']) * 1_000_000; n = 0
    while time.monotonic_ns() < end:
        publish(2); n += 1
    dt = time.monotonic_ns() - t0; cpu = cpu_ns() - c0
    rss, shmk = rss_kib()
    return (f"result role=pub frames={n} fps={n * 1e9 / dt:.3f} cpu_ns={cpu // max(n, 1)} "
            f"rss_kib={rss} shmem_kib={shmk}")
"#;

/// Publisher and subscribers in Python: `multiprocessing.shared_memory`
/// ring, the frame copied in by the publisher and out by each subscriber,
/// slot numbers sent through a pipe per subscriber (blocking wake-up),
/// per-subscriber done counters in the segment (lossless).
const SHM_BODY: &str = r#"
from multiprocessing import shared_memory, Process, Pipe
SIZE = int(ARGS['bytes']); N = int(ARGS['subs']); SLOTS = int(ARGS['slots'])
CTRL = 64 * (N + 1)

def sub(idx, name, conn):
    shm = shared_memory.SharedMemory(name=name)
    buf = shm.buf
    out = bytearray(SIZE)
    rec = Recorder()
    while True:
        seq, slot = struct.unpack('<QQ', conn.recv_bytes())
        off = CTRL + slot * SIZE
        out[:] = buf[off:off + SIZE]
        now = time.monotonic_ns()
        s, sent, phase = HDR.unpack_from(out, 0)
        struct.pack_into('<Q', buf, 64 * (idx + 1), seq)
        if rec.observe(s, phase, now - sent, now):
            break
    rec.report(idx)
    del buf
    shm.close()

def main():
    shm = shared_memory.SharedMemory(create=True, size=CTRL + SLOTS * SIZE)
    buf = shm.buf
    src = bytearray(b'\x10' * SIZE)
    pipes, procs = [], []
    for i in range(N):
        r, w = Pipe(duplex=False)
        p = Process(target=sub, args=(i, shm.name, r))
        p.start()
        procs.append(p); pipes.append(w)
    seq = 0
    def publish(phase):
        nonlocal seq
        seq += 1
        slot = seq % SLOTS
        need = seq - SLOTS
        while need > 0 and any(struct.unpack_from('<Q', buf, 64 * (i + 1))[0] < need for i in range(N)):
            time.sleep(0)
        off = CTRL + slot * SIZE
        buf[off:off + SIZE] = src
        HDR.pack_into(buf, off, seq, time.monotonic_ns(), phase)
        msg = struct.pack('<QQ', seq, slot)
        for w in pipes:
            w.send_bytes(msg)
    line = drive(publish, SLOTS)
    publish(3)
    for p in procs:
        p.join()
    say(line)
    del buf
    shm.close(); shm.unlink()

if __name__ == '__main__':
    main()
"#;

/// A subscriber in Python through the `cuframes` package.
const CUFRAMES_BODY: &str = r#"
import cuframes
try:
    import numpy  # frame.y imports it on first use: not inside a timed phase
except ImportError:
    pass

def run():
    mode = cuframes.SubscriberMode.NEWEST_ONLY if ARGS['mode'] == 'newest' else cuframes.SubscriberMode.QUEUE
    sub = None
    deadline = time.monotonic() + 30
    while sub is None:
        try:
            # One frame held at a time: the loop releases each before it
            # takes the next (the default, 2, lets a frame's views outlive
            # the next take, and asks the ring for a slot more).
            sub = cuframes.subscribe(ARGS['key'], 'py' + ARGS['idx'], mode=mode, max_held=1)
        except cuframes.CuframesNotFoundError:  # the publisher is not there yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    rec = Recorder()
    # What a user's loop does: take a frame, read it through a numpy view,
    # drop the view, release the frame.
    while True:
        try:
            f = sub.next_frame(20000)
        except cuframes.CuframesClosedError:
            break
        now = time.monotonic_ns()
        y = f.y
        s, _, phase = HDR.unpack(y[0, :24].tobytes())
        sent = f.commit_ns
        del y  # a view keeps the frame held: drop it before releasing
        f.release()
        if rec.observe(s, phase, now - sent, now):
            break
    rec.report(int(ARGS['idx']))
    sub.close()

run()
"#;

/// `torch.multiprocessing` handing CUDA tensors from a producer to one
/// consumer process, the usual idiom: a pool of preallocated CUDA tensors
/// (one per ring slot) and an interprocess event per slot, shared once
/// through a queue; the consumer sends back its own "done" events once.
/// Per frame the producer takes a free slot (the consumer's queue of
/// returned indices: lossless, as a cuframes QUEUE ring), makes its stream
/// wait for the consumer's done event, writes the header bytes on the GPU
/// (`fill_` of 24 bytes: no upload, as the cuframes-cuda publisher's
/// memset), records the slot's event and sends (seq, slot, phase, send
/// time). The consumer makes its own stream wait for that event,
/// synchronises it (the frame is usable: the latency ends here), records
/// its done event and returns the index. Runs from a file (see
/// [`torch_mp_command`]): CUDA needs the `spawn` start method, which
/// re-imports the main module.
const TORCH_MP_BODY: &str = r#"
from collections import deque
import torch
import torch.multiprocessing as mp

def consumer(setup, back, full, free):
    pool, ready = setup.get()
    dev = pool[0].device
    torch.cuda.set_device(dev)
    stream = torch.cuda.Stream(device=dev)
    done = [torch.cuda.Event(interprocess=True) for _ in pool]
    for e in done:
        e.record(stream)
    stream.synchronize()
    back.put(done)
    rec = Recorder()
    while True:
        seq, slot, phase, sent = full.get()
        stream.wait_event(ready[slot])
        stream.synchronize()
        now = time.monotonic_ns()
        done[slot].record(stream)
        free.put(slot)
        if rec.observe(seq, phase, now - sent, now):
            break
    rec.report(0)

def main():
    size, slots = int(ARGS['bytes']), int(ARGS['slots'])
    ctx = mp.get_context('spawn')
    dev = torch.device('cuda', 0)
    torch.cuda.set_device(dev)
    stream = torch.cuda.Stream(device=dev)
    pool = [torch.zeros(size, dtype=torch.uint8, device=dev) for _ in range(slots)]
    ready = [torch.cuda.Event(interprocess=True) for _ in range(slots)]
    for e in ready:
        e.record(stream)
    torch.cuda.synchronize(dev)
    setup, back, full, free = ctx.Queue(), ctx.Queue(), ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=consumer, args=(setup, back, full, free), daemon=True)
    proc.start()
    setup.put((pool, ready))
    done = back.get(timeout=120)
    idle = deque(range(slots))
    seq = 0
    def publish(phase):
        nonlocal seq
        seq += 1
        slot = idle.popleft() if idle else free.get(timeout=60)
        with torch.cuda.stream(stream):
            stream.wait_event(done[slot])
            pool[slot][:HDR.size].fill_(seq & 255)
            ready[slot].record(stream)
        full.put((seq, slot, phase, time.monotonic_ns()))
    line = drive(publish, slots)
    publish(3)
    proc.join(60)
    if proc.exitcode != 0:
        sys.exit(f'torch.multiprocessing consumer exited with {proc.exitcode}')
    say(line)

if __name__ == '__main__':
    main()
"#;

/// The probe of the torch-mp peer: `import torch` works and sees a GPU.
pub const TORCH_PROBE: &str = "import sys, torch; \
sys.exit(0 if torch.cuda.is_available() else 'torch.cuda.is_available() is False')";

/// The interpreter: `$CUFRAMES_BENCH_PYTHON` (a virtual environment with
/// the `cuframes` wheel, say `target/pyenv/bin/python`), else `python3`.
pub fn interpreter() -> String {
    std::env::var("CUFRAMES_BENCH_PYTHON")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "python3".into())
}

/// The `python3 -c` command for the shared-memory peer.
pub fn shm_command(args: &[String]) -> Command {
    let mut c = Command::new(interpreter());
    c.arg("-c").arg(format!("{PRELUDE}{SHM_BODY}")).args(args);
    c
}

/// The `python3 -c` command for a Python cuframes subscriber.
pub fn cuframes_command(args: &[String]) -> Command {
    let mut c = Command::new(interpreter());
    c.arg("-c")
        .arg(format!("{PRELUDE}{CUFRAMES_BODY}"))
        .args(args);
    c
}

/// The command for the torch-mp peer: its script is written to
/// `dir/torch_mp.py` (kept: it can be rerun by hand with the same
/// arguments), since `spawn` cannot re-import a `-c` script.
pub fn torch_mp_command(args: &[String], dir: &Path) -> Result<Command, String> {
    let script = dir.join("torch_mp.py");
    std::fs::write(&script, format!("{PRELUDE}{TORCH_MP_BODY}"))
        .map_err(|e| format!("write {}: {e}", script.display()))?;
    let mut c = Command::new(interpreter());
    c.arg(&script).args(args);
    Ok(c)
}

/// `Ok` if `python3 -c code` runs; otherwise why not (its last line of
/// error output, or that the interpreter is missing).
pub fn probe(code: &str) -> Result<(), String> {
    let python = interpreter();
    match Command::new(&python).args(["-c", code]).output() {
        Err(e) => Err(format!("{python} not runnable: {e}")),
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(String::from_utf8_lossy(&o.stderr)
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("python3 failed")
            .trim()
            .to_owned()),
    }
}
