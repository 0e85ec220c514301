//! Memory: what a frame ring costs the first time it is touched, whether
//! huge pages change the time to write or read a 4K frame, and where huge
//! pages come from on this machine.
//!
//! A ring of 4K NV12 frames is made through the cuframes API
//! ([`cuframes::Publisher::create`]) in the directory under test (through
//! `CUFRAMES_SHM_DIR`): `/dev/shm` (4 KiB pages) and, when given one, a
//! tmpfs mounted with `huge=`. A [`cuframes::Subscriber`] in this process
//! maps the same segment a second time, so its page faults are its own, as
//! in a subscriber process. Per round:
//!
//! * **create**: the publisher `fallocate`s the segment: tmpfs allocates
//!   every page of the ring there and then, but leaves zeroing each one to
//!   its first fault;
//! * **first lap**: the publisher writes every byte of each slot once
//!   (`fill`, a `memset`): each page the mapping has not touched yet costs
//!   a minor fault that zeroes it (the first time any mapping touches it)
//!   and fills the page-table entry (one fault per 4 KiB page, or one per
//!   2 MiB page mapped by a PMD entry);
//! * **warm laps**: the same writes again, no faults;
//! * **reads**: after each lap the subscriber takes the lap's frames and
//!   sums every byte of each ([`checksum`], also checked): the first lap
//!   faults the subscriber's mapping in (a read fault maps up to 16
//!   neighbouring 4 KiB pages at once), later laps read warm mappings. A
//!   4K ring (100 MB) is larger than a last-level cache, so most frames
//!   are read from DRAM.
//!
//! The publisher writes a whole lap before the subscriber reads, because a
//! writer whose subscribers keep up reuses the most recently released slot:
//! frame after frame goes to the same two slots, and a lap of
//! read-as-you-go frames would never reach the rest of the ring.
//!
//! Faults are this thread's minor faults (`getrusage(RUSAGE_THREAD)`); that
//! huge pages were really used is read from `/proc/self/smaps`
//! (`ShmemPmdMapped`/`FilePmdMapped` of the two mappings), and reported in
//! the notes.

use crate::proto::quantile;
use crate::reference::{gbps, Reference};
use crate::spec::RING_SLOTS;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What the probe says when there is no huge-page directory to measure.
pub const NO_HUGE_DIR: &str = "no huge-page tmpfs given: mount -t tmpfs -o huge=always,size=1g none DIR and pass --huge-dir DIR";

/// The read kernel: a wrapping sum of the little-endian `u64` words of a
/// frame, the same one every checksumming reader of the harness uses.
pub use crate::work::checksum;

/// The size of a probe: the frame, the ring, how many rounds.
#[derive(Debug, Clone, Copy)]
struct Params {
    /// Frame name in row names.
    name: &'static str,
    width: u32,
    height: u32,
    slots: u32,
    /// Rings made and measured, each from scratch.
    rounds: usize,
    /// Laps around each ring after the first.
    warm_laps: usize,
}

const UHD: Params = Params {
    name: "4K",
    width: 3840,
    height: 2160,
    slots: RING_SLOTS,
    rounds: 5,
    warm_laps: 3,
};

/// Measures the first-touch cost of a 4K NV12 ring of [`RING_SLOTS`]
/// slots, and the time to write and to read (checksum) one frame, cold and
/// warm: on 4 KiB pages (`/dev/shm`) and on huge pages in `huge_dir` (a
/// tmpfs mounted with `huge=always`, say). Without `huge_dir` the huge-page
/// rows are still there, with `p50_ns` 0 and the reason in the note; the
/// last row says whether hugetlbfs pages (`MAP_HUGETLB`) exist here.
///
/// Timings are medians over every frame of several rings; the notes give
/// minor faults per frame, GB/s, the range of the rounds' medians, and how
/// much of each mapping the kernel mapped with huge (PMD) entries.
pub fn probe(huge_dir: Option<&Path>) -> Vec<Reference> {
    probe_with(huge_dir, &UHD)
}

fn probe_with(huge_dir: Option<&Path>, p: &Params) -> Vec<Reference> {
    let small = Backing::small_pages();
    let mut out = match measure(&small, p) {
        Ok(m) => rows(p, &small, &m),
        Err(e) => skipped_rows(p, "4 KiB pages", &format!("failed: {e}")),
    };
    match huge_dir {
        Some(dir) => {
            let huge = Backing::huge_pages(dir);
            out.extend(match measure(&huge, p) {
                Ok(m) => rows(p, &huge, &m),
                Err(e) => skipped_rows(p, &huge.label, &format!("failed: {e}")),
            });
        }
        None => {
            let mut why = NO_HUGE_DIR.to_owned();
            let current = cuframes::shm_dir();
            if let Some(h) = mount_of(&current).and_then(|m| m.huge_pages()) {
                why.push_str(&format!(
                    " (CUFRAMES_SHM_DIR={} is on a tmpfs with huge={h}: pass it)",
                    current.display()
                ));
            }
            out.extend(skipped_rows(p, "huge pages", &why));
        }
    }
    out.extend(hugetlb_rows());
    out
}

// ------------------------------------------------------------ directories

/// A directory under test and what backs it.
#[derive(Debug, Clone)]
struct Backing {
    dir: PathBuf,
    /// "4 KiB pages" or "huge pages".
    label: String,
    /// The mount's description and any warning, for the notes.
    about: String,
    /// The mount says `huge=advise`: the mappings are advised.
    advise: bool,
}

impl Backing {
    /// `/dev/shm` (or the temporary directory where there is none).
    fn small_pages() -> Self {
        let dir = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let mount = mount_of(&dir);
        let mut about = describe(&dir, mount.as_ref());
        if let Some(h) = mount.as_ref().and_then(MountInfo::huge_pages) {
            about.push_str(&format!(
                "; warning: this mount has huge={h}, the pages may be huge"
            ));
        }
        if shmem_enabled().as_deref() == Some("force") {
            about.push_str("; warning: shmem_enabled is `force`: every tmpfs gets huge pages");
        }
        Self {
            dir,
            label: "4 KiB pages".into(),
            about,
            advise: false,
        }
    }

    fn huge_pages(dir: &Path) -> Self {
        let mount = mount_of(dir);
        let huge = mount.as_ref().and_then(MountInfo::huge_pages);
        let mut about = describe(dir, mount.as_ref());
        if huge.is_none() {
            about.push_str(
                "; warning: not a tmpfs mounted with huge=always/within_size/advise: expect 4 KiB pages",
            );
        }
        if shmem_enabled().as_deref() == Some("deny") {
            about.push_str("; warning: shmem_enabled is `deny`: no tmpfs gets huge pages");
        }
        Self {
            dir: dir.to_owned(),
            label: "huge pages".into(),
            about,
            advise: huge.as_deref() == Some("advise"),
        }
    }
}

/// A line of `/proc/mounts`.
#[derive(Debug, Clone)]
struct MountInfo {
    point: PathBuf,
    fstype: String,
    options: String,
}

impl MountInfo {
    /// The `huge=` option of a tmpfs, unless absent or `never`/`deny`.
    fn huge_pages(&self) -> Option<String> {
        if self.fstype != "tmpfs" {
            return None;
        }
        self.options
            .split(',')
            .find_map(|o| o.strip_prefix("huge="))
            .filter(|h| !matches!(*h, "never" | "deny"))
            .map(str::to_owned)
    }
}

/// `/proc/mounts` escapes spaces, tabs, newlines and backslashes in octal.
fn unescape_mount(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 4);
        match code.and_then(|c| u8::from_str_radix(c, 8).ok()) {
            Some(b) => {
                out.push(char::from(b));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The mount `dir` is on: the longest mount point above it (the last one
/// mounted, where several are).
fn mount_of(dir: &Path) -> Option<MountInfo> {
    let dir = dir.canonicalize().ok()?;
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    let mut best: Option<MountInfo> = None;
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 {
            continue;
        }
        let point = PathBuf::from(unescape_mount(f[1]));
        if !dir.starts_with(&point) {
            continue;
        }
        if best
            .as_ref()
            .is_none_or(|b| point.as_os_str().len() >= b.point.as_os_str().len())
        {
            best = Some(MountInfo {
                point,
                fstype: f[2].to_owned(),
                options: f[3].to_owned(),
            });
        }
    }
    best
}

fn describe(dir: &Path, mount: Option<&MountInfo>) -> String {
    match mount {
        Some(m) => format!(
            "{}: {} on {}, huge={}",
            dir.display(),
            m.fstype,
            m.point.display(),
            m.options
                .split(',')
                .find_map(|o| o.strip_prefix("huge="))
                .unwrap_or("never")
        ),
        None => format!("{}: mount unknown", dir.display()),
    }
}

/// The selected value of a `[x]`-style sysfs switch.
fn selected(text: &str) -> Option<String> {
    let start = text.find('[')? + 1;
    let end = start + text[start..].find(']')?;
    Some(text[start..end].to_owned())
}

/// `/sys/kernel/mm/transparent_hugepage/shmem_enabled`: it governs the
/// kernel's internal shm mount and, as `force`/`deny`, every tmpfs.
fn shmem_enabled() -> Option<String> {
    let s = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/shmem_enabled").ok()?;
    selected(&s)
}

/// Points `CUFRAMES_SHM_DIR` at a directory while it lives (making and
/// connecting to a stream are the only steps that look), then puts back
/// what was there. Probes in other threads of this process wait meanwhile,
/// so that each finds its own directory; code elsewhere in the process that
/// reads the variable in that window (milliseconds) would see it too.
struct ShmDir {
    previous: Option<Option<OsString>>,
    _only_one: std::sync::MutexGuard<'static, ()>,
}

static SHM_DIR_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl ShmDir {
    fn enter(dir: &Path) -> Self {
        let only_one = SHM_DIR_LOCK
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let previous = (cuframes::shm_dir() != dir).then(|| {
            let previous = std::env::var_os("CUFRAMES_SHM_DIR");
            std::env::set_var("CUFRAMES_SHM_DIR", dir);
            previous
        });
        Self {
            previous,
            _only_one: only_one,
        }
    }
}

impl Drop for ShmDir {
    fn drop(&mut self) {
        match self.previous.take() {
            Some(Some(v)) => std::env::set_var("CUFRAMES_SHM_DIR", v),
            Some(None) => std::env::remove_var("CUFRAMES_SHM_DIR"),
            None => {}
        }
    }
}

// ------------------------------------------------------------ measurement

/// Minor page faults of the calling thread so far.
fn minor_faults() -> u64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a whole `rusage` into the pointer, which
    // points at one (zeroed) of our own; RUSAGE_THREAD needs nothing else.
    let ru = unsafe {
        if libc::getrusage(libc::RUSAGE_THREAD, ru.as_mut_ptr()) != 0 {
            return 0;
        }
        ru.assume_init()
    };
    ru.ru_minflt as u64
}

/// Runs `f`, with its time (ns) and this thread's minor faults.
fn metered<T>(f: impl FnOnce() -> T) -> (T, u64, u64) {
    let faults = minor_faults();
    let start = Instant::now();
    let out = f();
    let ns = start.elapsed().as_nanos() as u64;
    (out, ns, minor_faults() - faults)
}

/// Resident and huge-page-mapped KiB of the mappings over a range.
#[derive(Debug, Clone, Copy, Default)]
struct Resident {
    rss_kib: u64,
    pmd_kib: u64,
}

/// Sums `Rss` and the PMD-mapped fields of every mapping of
/// `/proc/self/smaps` that overlaps `[start, start + len)`.
fn resident(start: usize, len: usize) -> Resident {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let end = start + len;
    let mut r = Resident::default();
    let mut inside = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
                inside = a < end && start < b;
                continue;
            }
        }
        if !inside {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let kib = || {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .unwrap_or(0)
        };
        match key {
            "Rss" => r.rss_kib += kib(),
            "ShmemPmdMapped" | "FilePmdMapped" | "AnonHugePages" => r.pmd_kib += kib(),
            _ => {}
        }
    }
    r
}

/// Asks for huge pages over a range of one of our mappings.
fn advise_huge((ptr, len): (*mut u8, usize)) {
    // SAFETY: the range is the slot area of a live mapping of this process
    // (a publisher's or subscriber's `backend_area`); MADV_HUGEPAGE only
    // sets a flag on the mapping and never changes its contents. A failure
    // (no THP in this kernel) leaves 4 KiB pages, which the notes show.
    unsafe {
        libc::madvise(ptr.cast(), len, libc::MADV_HUGEPAGE);
    }
}

/// What one ring measured.
#[derive(Debug, Default)]
struct Round {
    create_ns: u64,
    create_faults: u64,
    write_cold: Vec<u64>,
    write_cold_faults: u64,
    write_warm: Vec<u64>,
    write_warm_faults: u64,
    read_cold: Vec<u64>,
    read_cold_faults: u64,
    read_warm: Vec<u64>,
    read_warm_faults: u64,
    /// The publisher's mapping of the slots after the laps.
    publisher: Resident,
    /// The subscriber's.
    subscriber: Resident,
    /// Distinct slots written in the first lap (should be all of them).
    first_lap_slots: usize,
    /// Frames whose checksum was wrong.
    bad_sums: usize,
}

/// Every round of one directory.
#[derive(Debug, Default)]
struct Measured {
    rounds: Vec<Round>,
    frame_bytes: usize,
    segment_bytes: u64,
}

impl Measured {
    fn pooled(&self, f: impl Fn(&Round) -> &Vec<u64>) -> Vec<u64> {
        let mut v: Vec<u64> = self.rounds.iter().flat_map(|r| f(r).clone()).collect();
        v.sort_unstable();
        v
    }

    /// The lowest and highest of the rounds' medians.
    fn spread(&self, f: impl Fn(&Round) -> Vec<u64>) -> (u64, u64) {
        let medians = self.rounds.iter().map(|r| {
            let mut v = f(r);
            v.sort_unstable();
            quantile(&v, 0.5)
        });
        medians.fold((u64::MAX, 0), |(lo, hi), m| (lo.min(m), hi.max(m)))
    }

    /// Faults per frame, over every round.
    fn per_frame(&self, faults: impl Fn(&Round) -> u64, frames: impl Fn(&Round) -> usize) -> f64 {
        let f: u64 = self.rounds.iter().map(faults).sum();
        let n: usize = self.rounds.iter().map(frames).sum();
        f as f64 / n.max(1) as f64
    }

    fn mean(&self, f: impl Fn(&Round) -> u64) -> u64 {
        self.rounds.iter().map(f).sum::<u64>() / self.rounds.len().max(1) as u64
    }
}

static NEXT_KEY: AtomicU64 = AtomicU64::new(0);

/// Makes `p.rounds` rings in `b.dir` and measures each.
fn measure(b: &Backing, p: &Params) -> Result<Measured, String> {
    let layout = cuframes::FrameLayout::new(cuframes::PixelFormat::Nv12, p.width, p.height, 64)
        .map_err(|e| e.to_string())?;
    let frame_bytes = layout.slot_bytes as usize;
    let mut m = Measured {
        frame_bytes,
        ..Default::default()
    };
    for _ in 0..p.rounds {
        let (round, segment) = measure_ring(b, p, layout)?;
        m.segment_bytes = segment;
        m.rounds.push(round);
    }
    Ok(m)
}

fn measure_ring(
    b: &Backing,
    p: &Params,
    layout: cuframes::FrameLayout,
) -> Result<(Round, u64), String> {
    let key = format!(
        "memory-probe-{}-{}",
        std::process::id(),
        NEXT_KEY.fetch_add(1, Ordering::Relaxed)
    );
    let options = cuframes::PublisherOptions {
        slot_count: p.slots,
        subscriber_capacity: 2,
        block_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let mut r = Round::default();
    let (mut publisher, mut subscriber) = {
        let _dir = ShmDir::enter(&b.dir);
        let (publisher, ns, faults) =
            metered(|| cuframes::Publisher::create(&key, layout, options));
        let publisher = publisher.map_err(|e| format!("create in {}: {e}", b.dir.display()))?;
        r.create_ns = ns;
        r.create_faults = faults;
        let subscriber = cuframes::Subscriber::connect(
            &key,
            "memory-probe",
            cuframes::Mode::Queue,
            cuframes::SubscriberOptions::default(),
        )
        .map_err(|e| format!("connect: {e}"))?;
        (publisher, subscriber)
    };
    let segment = publisher.segment_info().header.segment_len;
    if b.advise {
        advise_huge(publisher.backend_area());
        advise_huge(subscriber.backend_area());
    }
    let mut slots = std::collections::BTreeSet::new();
    for lap in 0..=p.warm_laps {
        // The publisher goes once around the ring before the subscriber
        // reads: with every frame read at once, the writer would reuse the
        // two most recent slots and never reach the others.
        for _ in 0..p.slots {
            let mut lease = publisher.loan().map_err(|e| format!("loan: {e}"))?;
            let byte = lease.seq() as u8;
            let data = lease.data_mut();
            if lap == 0 {
                slots.insert(data.as_ptr() as usize);
            }
            let ((), ns, faults) = metered(|| data.fill(std::hint::black_box(byte)));
            lease.commit(0).map_err(|e| format!("commit: {e}"))?;
            let (times, total) = if lap == 0 {
                (&mut r.write_cold, &mut r.write_cold_faults)
            } else {
                (&mut r.write_warm, &mut r.write_warm_faults)
            };
            times.push(ns);
            *total += faults;
        }
        for _ in 0..p.slots {
            let frame = subscriber
                .next_frame(Duration::from_secs(5))
                .map_err(|e| format!("read: {e}"))?;
            let (sum, ns, faults) = metered(|| checksum(frame.data()));
            if sum != crate::work::expected(frame.data().len(), frame.seq()) {
                r.bad_sums += 1;
            }
            drop(frame);
            let (times, total) = if lap == 0 {
                (&mut r.read_cold, &mut r.read_cold_faults)
            } else {
                (&mut r.read_warm, &mut r.read_warm_faults)
            };
            times.push(ns);
            *total += faults;
        }
    }
    r.first_lap_slots = slots.len();
    let (ptr, len) = publisher.backend_area();
    r.publisher = resident(ptr as usize, len);
    let (ptr, len) = subscriber.backend_area();
    r.subscriber = resident(ptr as usize, len);
    Ok((r, segment))
}

// ------------------------------------------------------------ rows

fn ms(ns: u64) -> String {
    format!("{:.2} ms", ns as f64 / 1e6)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn row(name: String, sorted: &[u64], note: String) -> Reference {
    Reference {
        name,
        p50_ns: quantile(sorted, 0.5),
        p99_ns: quantile(sorted, 0.99),
        p999_ns: quantile(sorted, 0.999),
        note,
    }
}

/// Row names, the same whether measured or skipped.
fn names(p: &Params, label: &str) -> [String; 5] {
    let mb = |b: u64| b as f64 / 1e6;
    let ring = mb(p.slots as u64 * frame_bytes(p) as u64);
    [
        format!(
            "{} ring create ({} slots, {ring:.1} MB), {label}",
            p.name, p.slots
        ),
        format!("{} frame write, first lap, {label}", p.name),
        format!("{} frame write, warm, {label}", p.name),
        format!("{} frame read (checksum), first read, {label}", p.name),
        format!("{} frame read (checksum), warm, {label}", p.name),
    ]
}

fn frame_bytes(p: &Params) -> usize {
    cuframes::FrameLayout::new(cuframes::PixelFormat::Nv12, p.width, p.height, 64)
        .map_or(0, |l| l.slot_bytes as usize)
}

/// The rows of a directory that was not measured: `p50_ns` 0 and why.
fn skipped_rows(p: &Params, label: &str, why: &str) -> Vec<Reference> {
    names(p, label)
        .into_iter()
        .map(|name| Reference::skipped(name, why))
        .collect()
}

fn rows(p: &Params, b: &Backing, m: &Measured) -> Vec<Reference> {
    let [create, write_cold, write_warm, read_cold, read_warm] = names(p, &b.label);
    let fb = m.frame_bytes;
    let slots = p.slots as usize;
    let range = |(lo, hi): (u64, u64)| format!("rounds' medians {}-{}", ms(lo), ms(hi));
    let pmd = |r: Resident| {
        format!(
            "{} of {} resident PMD-mapped",
            mib(r.pmd_kib),
            mib(r.rss_kib)
        )
    };
    let mean_pub = Resident {
        rss_kib: m.mean(|r| r.publisher.rss_kib),
        pmd_kib: m.mean(|r| r.publisher.pmd_kib),
    };
    let mean_sub = Resident {
        rss_kib: m.mean(|r| r.subscriber.rss_kib),
        pmd_kib: m.mean(|r| r.subscriber.pmd_kib),
    };
    let mut checks = Vec::new();
    let bad: usize = m.rounds.iter().map(|r| r.bad_sums).sum();
    if bad > 0 {
        checks.push(format!("{bad} checksums WRONG"));
    }
    if m.rounds.iter().any(|r| r.first_lap_slots != slots) {
        checks.push("warning: the first lap did not write every slot".to_owned());
    }
    let checks = if checks.is_empty() {
        String::new()
    } else {
        format!("; {}", checks.join("; "))
    };

    let create_t: Vec<u64> = {
        let mut v: Vec<u64> = m.rounds.iter().map(|r| r.create_ns).collect();
        v.sort_unstable();
        v
    };
    let wc = m.pooled(|r| &r.write_cold);
    let ww = m.pooled(|r| &r.write_warm);
    let rc = m.pooled(|r| &r.read_cold);
    let rw = m.pooled(|r| &r.read_warm);
    let fpf = |f: fn(&Round) -> u64, n: fn(&Round) -> usize| m.per_frame(f, n);
    let wc_faults = fpf(|r| r.write_cold_faults, |r| r.write_cold.len());
    let ww_faults = fpf(|r| r.write_warm_faults, |r| r.write_warm.len());
    let rc_faults = fpf(|r| r.read_cold_faults, |r| r.read_cold.len());
    let rw_faults = fpf(|r| r.read_warm_faults, |r| r.read_warm.len());
    // A first lap's cost over a warm one, per ring: the rounds' median.
    let extra = |cold: fn(&Round) -> &Vec<u64>, warm: fn(&Round) -> &Vec<u64>| {
        let mut v: Vec<u64> = m
            .rounds
            .iter()
            .map(|r| {
                let mut w = warm(r).clone();
                w.sort_unstable();
                let w = quantile(&w, 0.5);
                cold(r).iter().map(|c| c.saturating_sub(w)).sum::<u64>()
            })
            .collect();
        v.sort_unstable();
        quantile(&v, 0.5)
    };
    let lap_extra = extra(|r| &r.write_cold, |r| &r.write_warm);
    let read_extra = extra(|r| &r.read_cold, |r| &r.read_warm);
    let p50 = |v: &[u64]| quantile(v, 0.5);
    vec![
        row(
            create,
            &create_t,
            format!(
                "{}; fallocate allocates the {} B segment (zeroed later, page by page at first fault), {} faults; {}",
                b.about,
                m.segment_bytes,
                m.mean(|r| r.create_faults),
                range(m.spread(|r| vec![r.create_ns]))
            ),
        ),
        row(
            write_cold,
            &wc,
            format!(
                "{:.0} minor faults/frame (warm {ww_faults:.0}); {:.1} GB/s; the ring's first lap takes +{} over a warm one, first touch of the ring with create {}; publisher mapping {}; {}{checks}",
                wc_faults,
                gbps(fb, p50(&wc)),
                ms(lap_extra),
                ms(lap_extra + p50(&create_t)),
                pmd(mean_pub),
                range(m.spread(|r| r.write_cold.clone()))
            ),
        ),
        row(
            write_warm,
            &ww,
            format!(
                "{ww_faults:.1} faults/frame; {:.1} GB/s (memset of {fb} B); {}",
                gbps(fb, p50(&ww)),
                range(m.spread(|r| r.write_warm.clone()))
            ),
        ),
        row(
            read_cold,
            &rc,
            format!(
                "{rc_faults:.0} minor faults/frame in the subscriber's mapping (warm {rw_faults:.1}); {:.1} GB/s; first lap of the ring +{} over a warm lap; {}",
                gbps(fb, p50(&rc)),
                ms(read_extra),
                range(m.spread(|r| r.read_cold.clone()))
            ),
        ),
        row(
            read_warm,
            &rw,
            format!(
                "{:.1} GB/s; subscriber mapping {}; {}{checks}",
                gbps(fb, p50(&rw)),
                pmd(mean_sub),
                range(m.spread(|r| r.read_warm.clone()))
            ),
        ),
    ]
}

/// hugetlbfs pages (the reserved pool behind `MAP_HUGETLB`): what the pool
/// and the mounts are, in one skipped row.
fn hugetlb_rows() -> Vec<Reference> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| "?".into())
    };
    let mounts: Vec<String> = std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"hugetlbfs")).then(|| unescape_mount(f[1]))
        })
        .collect();
    let pool = format!(
        "HugePages_Total {}, HugePages_Free {}, Hugepagesize {}; hugetlbfs mounts: {}",
        field("HugePages_Total:"),
        field("HugePages_Free:"),
        field("Hugepagesize:"),
        if mounts.is_empty() {
            "none".to_owned()
        } else {
            mounts.join(", ")
        }
    );
    // A ring there would take pages from a pool reserved for something
    // else (DPDK, VMs), and a subscriber refuses a segment that the mount
    // rounds up to its page size: listed, never measured.
    vec![Reference::skipped(
        "hugetlbfs pages (MAP_HUGETLB)",
        &format!(
            "{pool}; cuframes does not place rings on hugetlbfs (the mount rounds a segment up to its page size, which a subscriber refuses); transparent huge pages on a huge= tmpfs need no reserved pool"
        ),
    )]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small ring: 640x360 NV12 frames (345,600 B, 85 pages), 4 slots.
    const SMALL: Params = Params {
        name: "360p",
        width: 640,
        height: 360,
        slots: 4,
        rounds: 2,
        warm_laps: 2,
    };

    #[test]
    fn checksum_matches_a_plain_sum() {
        let bytes: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in [0, 1, 7, 8, 9, 63, 64, 65, 200, 1000] {
            let b = &bytes[..len];
            let mut want = 0u64;
            let mut words = b.chunks_exact(8);
            for w in &mut words {
                want = want.wrapping_add(u64::from_le_bytes(w.try_into().unwrap()));
            }
            for &t in words.remainder() {
                want = want.wrapping_add(u64::from(t));
            }
            assert_eq!(checksum(b), want, "len {len}");
        }
        for len in [0, 5, 64, 1001] {
            assert_eq!(checksum(&vec![0xab; len]), crate::work::expected(len, 0xab));
        }
    }

    #[test]
    fn mounts_are_parsed() {
        assert_eq!(unescape_mount(r"/mnt/a\040b\134c"), r"/mnt/a b\c");
        assert_eq!(
            selected("always within_size [never] deny"),
            Some("never".into())
        );
        let m = MountInfo {
            point: "/tmp/hp".into(),
            fstype: "tmpfs".into(),
            options: "rw,relatime,size=1048576k,huge=always".into(),
        };
        assert_eq!(m.huge_pages().as_deref(), Some("always"));
        let m = MountInfo {
            options: "rw,huge=never".into(),
            ..m
        };
        assert_eq!(m.huge_pages(), None);
        assert!(mount_of(Path::new("/")).is_some());
        assert_eq!(frame_bytes(&UHD), crate::spec::Workload::UHD.bytes());
    }

    #[test]
    fn small_pages_fault_once_per_page_then_not() {
        let b = Backing::small_pages();
        let m = measure(&b, &SMALL).expect("measure a small ring");
        for r in &m.rounds {
            assert_eq!(r.first_lap_slots, SMALL.slots as usize);
            assert_eq!(r.bad_sums, 0);
            assert!(r.write_cold_faults > 0, "first touch faults: {r:?}");
            assert!(
                r.write_warm_faults < r.write_cold_faults,
                "warm laps fault less: {r:?}"
            );
            assert!(r.read_cold_faults > 0, "first read faults: {r:?}");
            assert!(r.read_warm_faults < r.read_cold_faults, "{r:?}");
            // Every byte of every slot was touched by both mappings.
            let ring_kib = (SMALL.slots as u64 * m.frame_bytes as u64) / 1024;
            assert!(r.publisher.rss_kib >= ring_kib, "{r:?}");
            assert!(r.subscriber.rss_kib >= ring_kib, "{r:?}");
        }
    }

    #[test]
    fn probe_without_huge_dir_says_why() {
        let rows = probe_with(None, &SMALL);
        assert!(rows.len() >= 11, "{rows:#?}");
        for r in &rows[..5] {
            assert!(r.p50_ns > 0 && r.p50_ns <= r.p99_ns, "{r:?}");
            assert!(r.name.contains("4 KiB pages"), "{r:?}");
        }
        assert!(rows[1].note.contains("minor faults/frame"), "{:?}", rows[1]);
        assert!(rows[4].note.contains("GB/s"), "{:?}", rows[4]);
        for r in &rows[5..10] {
            assert_eq!(r.p50_ns, 0, "{r:?}");
            assert!(r.name.contains("huge pages"), "{r:?}");
            assert!(r.note.contains(NO_HUGE_DIR), "{r:?}");
        }
        assert!(rows[10].name.contains("hugetlbfs"), "{:?}", rows[10]);
    }

    /// Set `CUFRAMES_TEST_HUGE_DIR` to a directory on a tmpfs mounted with
    /// `huge=always` to run this.
    #[test]
    fn huge_pages_are_pmd_mapped() {
        let Some(dir) = std::env::var_os("CUFRAMES_TEST_HUGE_DIR") else {
            eprintln!(
                "huge_pages_are_pmd_mapped: not run: set CUFRAMES_TEST_HUGE_DIR to a directory on a tmpfs mounted with huge=always"
            );
            return;
        };
        let b = Backing::huge_pages(Path::new(&dir));
        assert!(!b.about.contains("warning"), "{}", b.about);
        // 4K frames: 2 MiB pages need frames of a few MiB to show.
        let p = Params {
            rounds: 1,
            warm_laps: 1,
            slots: 4,
            ..UHD
        };
        let huge = measure(&b, &p).expect("measure on huge pages");
        let small = measure(&Backing::small_pages(), &p).expect("measure on 4 KiB pages");
        let (h, s) = (&huge.rounds[0], &small.rounds[0]);
        assert_eq!(h.bad_sums, 0);
        assert!(h.publisher.pmd_kib > 0, "no PMD-mapped pages: {h:?}");
        assert!(h.subscriber.pmd_kib > 0, "no PMD-mapped pages: {h:?}");
        assert_eq!(s.publisher.pmd_kib, 0, "{s:?}");
        assert!(
            h.write_cold_faults * 10 < s.write_cold_faults,
            "huge pages fault far less: {h:?} vs {s:?}"
        );
    }

    /// The full 4K probe, printed (about ten seconds):
    /// `cargo test --release -p cuframes-bench --lib memory::tests::full_probe -- --ignored --nocapture`,
    /// with `CUFRAMES_TEST_HUGE_DIR` for the huge-page rows.
    #[test]
    #[ignore = "the full 4K probe: run by hand"]
    fn full_probe() {
        let dir = std::env::var_os("CUFRAMES_TEST_HUGE_DIR").map(PathBuf::from);
        for r in probe(dir.as_deref()) {
            println!(
                "{:<58} p50 {:>10} p99 {:>10}  {}",
                r.name,
                ms(r.p50_ns),
                ms(r.p99_ns),
                r.note
            );
        }
    }
}
