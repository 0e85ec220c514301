//! The process-global state: configuration, devices and their primary
//! contexts, the thread-local context stack, handle tables.

use crate::event::Event;
use crate::mem::{Backing, Kind, Space, Table};
use crate::stream::{Op, SKind, Stream};
use crate::util::{self, fail, viol, INVALID_CONTEXT, INVALID_DEVICE, INVALID_HANDLE, R};
use parking_lot::Mutex;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

pub(crate) const TOTAL_MEM: u64 = 80 << 30;
const CTX_BASE: u64 = 0x00c7_c000_0000;
const STREAM_BASE: u64 = 0x5700_0000_0000;
const EVENT_BASE: u64 = 0xe700_0000_0000;
const VMM_BASE: u64 = 0x7a00_0000_0000;

pub(crate) struct Config {
    pub seed: u64,
    pub delay_us: u64,
    pub no_vmm: bool,
    pub devices: u32,
    /// Physical index of each visible ordinal.
    pub visible: Vec<u32>,
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

impl Config {
    pub fn from_env() -> Config {
        let devices = env_u64("CUFRAMES_SIM_DEVICES").unwrap_or(2).min(64) as u32;
        let visible = match std::env::var("CUDA_VISIBLE_DEVICES") {
            Err(_) => (0..devices).collect(),
            Ok(list) => {
                // As the real driver: the list ends at the first entry that
                // names no device (or repeats one).
                let mut v = Vec::new();
                for e in list.split(',') {
                    match e.trim().parse::<u32>() {
                        Ok(i) if i < devices && !v.contains(&i) => v.push(i),
                        _ => break,
                    }
                }
                v
            }
        };
        Config {
            seed: env_u64("CUFRAMES_SIM_SEED").unwrap_or_else(util::random_u64),
            delay_us: env_u64("CUFRAMES_SIM_DELAY_US").unwrap_or(300),
            no_vmm: std::env::var("CUFRAMES_SIM_NO_VMM").as_deref() == Ok("1"),
            devices,
            visible,
        }
    }
}

/// The primary context of one visible device.
#[derive(Default)]
pub(crate) struct Ctx {
    pub refs: u32,
    /// Bumped each time the context is created anew (refcount 0 -> 1).
    pub gen: u64,
    pub legacy: Option<Arc<Stream>>,
    /// Every other stream of the context (user and per-thread).
    pub streams: Vec<Weak<Stream>>,
}

pub(crate) struct VmmHandle {
    pub b: Arc<Backing>,
}

pub(crate) struct Sim {
    pub cfg: Config,
    pub init_pid: u32,
    pub pidns: u64,
    pub ctxs: Vec<Ctx>,
    pub space: Space,
    pub table: Table,
    pub streams: HashMap<u64, Arc<Stream>>,
    pub events: HashMap<u64, Event>,
    pub vmm: HashMap<u64, VmmHandle>,
    pub used: Vec<u64>,
    next_id: u64,
}

pub(crate) static SIM: Mutex<Option<Sim>> = Mutex::new(None);

#[derive(Default)]
struct Tls {
    stack: Vec<usize>,
    per_thread: HashMap<(usize, u64), Arc<Stream>>,
}

thread_local! {
    static TLS: RefCell<Tls> = RefCell::new(Tls::default());
}

/// Runs `f` on the initialised state.
pub(crate) fn sim<T>(f: impl FnOnce(&mut Sim) -> R<T>) -> R<T> {
    let mut g = SIM.lock();
    let s = g.as_mut().ok_or_else(|| fail(util::NOT_INITIALIZED))?;
    if s.init_pid != util::pid() {
        return Err(viol(
            util::NOT_INITIALIZED,
            "CUDA used in a child forked after cuInit (the driver does not survive fork)",
        ));
    }
    f(s)
}

pub(crate) fn ctx_handle(ord: usize) -> u64 {
    CTX_BASE + (ord as u64 + 1) * 0x100
}

impl Sim {
    pub fn new(cfg: Config, space: Space) -> Sim {
        let n = cfg.visible.len();
        Sim {
            cfg,
            init_pid: util::pid(),
            pidns: util::pid_namespace(),
            ctxs: (0..n).map(|_| Ctx::default()).collect(),
            space,
            table: Table::default(),
            streams: HashMap::new(),
            events: HashMap::new(),
            vmm: HashMap::new(),
            used: vec![0; n],
            next_id: 1,
        }
    }

    pub fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub fn stream_handle(id: u64) -> u64 {
        STREAM_BASE + id * 0x10
    }
    pub fn event_handle(id: u64) -> u64 {
        EVENT_BASE + id * 0x10
    }
    pub fn vmm_handle(id: u64) -> u64 {
        VMM_BASE + id
    }

    /// A device handle (visible ordinal) checked.
    pub fn dev(&self, d: i32) -> R<usize> {
        if d >= 0 && (d as usize) < self.cfg.visible.len() {
            Ok(d as usize)
        } else {
            Err(fail(INVALID_DEVICE))
        }
    }

    pub fn phys(&self, ord: usize) -> u32 {
        self.cfg.visible[ord]
    }

    pub fn ordinal_of(&self, phys: u32) -> Option<usize> {
        self.cfg.visible.iter().position(|p| *p == phys)
    }

    /// The ordinal of a context handle, if it is one.
    pub fn ctx_of_handle(&self, h: u64) -> Option<usize> {
        let rel = h.checked_sub(CTX_BASE)?;
        if rel % 0x100 != 0 || rel == 0 {
            return None;
        }
        let ord = (rel / 0x100 - 1) as usize;
        (ord < self.ctxs.len()).then_some(ord)
    }

    /// A context handle a caller wants to make current.
    pub fn live_ctx(&self, h: u64) -> R<usize> {
        let Some(ord) = self.ctx_of_handle(h) else {
            return Err(viol(
                INVALID_CONTEXT,
                format!("{h:#x} is not a context handle"),
            ));
        };
        if self.ctxs[ord].refs == 0 {
            return Err(viol(
                INVALID_CONTEXT,
                format!("context {h:#x} (device {ord}) was destroyed: its primary context was released to refcount 0"),
            ));
        }
        Ok(ord)
    }

    pub fn stack_top() -> Option<usize> {
        TLS.with(|t| t.borrow().stack.last().copied())
    }

    pub fn stack_push(ord: usize) {
        TLS.with(|t| t.borrow_mut().stack.push(ord));
    }

    pub fn stack_pop() -> Option<usize> {
        TLS.with(|t| t.borrow_mut().stack.pop())
    }

    /// The current context of this thread, which must be alive.
    pub fn current(&self) -> R<usize> {
        match Self::stack_top() {
            None => Err(viol(
                INVALID_CONTEXT,
                "no current context on this thread (cuCtxPushCurrent/cuCtxSetCurrent first)",
            )),
            Some(ord) if self.ctxs[ord].refs == 0 => Err(viol(
                INVALID_CONTEXT,
                format!("the current context (device {ord}) was destroyed: its primary context was released to refcount 0"),
            )),
            Some(ord) => Ok(ord),
        }
    }

    fn new_stream(&mut self, ord: usize, flags: u32, kind: SKind) -> Arc<Stream> {
        let id = self.id();
        let handle = Self::stream_handle(id);
        let seed = self.cfg.seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let s = Stream::spawn(
            handle,
            ord,
            self.phys(ord),
            flags,
            kind,
            seed,
            self.cfg.delay_us,
        );
        if kind != SKind::Legacy {
            self.ctxs[ord].streams.push(Arc::downgrade(&s));
        }
        s
    }

    pub fn user_stream(&mut self, ord: usize, flags: u32) -> Arc<Stream> {
        let s = self.new_stream(ord, flags, SKind::User);
        self.streams.insert(s.handle, s.clone());
        s
    }

    pub fn legacy(&mut self, ord: usize) -> Arc<Stream> {
        if let Some(s) = &self.ctxs[ord].legacy {
            return s.clone();
        }
        let s = self.new_stream(ord, 0, SKind::Legacy);
        self.ctxs[ord].legacy = Some(s.clone());
        s
    }

    pub fn per_thread(&mut self, ord: usize) -> Arc<Stream> {
        let key = (ord, self.ctxs[ord].gen);
        if let Some(s) = TLS.with(|t| t.borrow().per_thread.get(&key).cloned()) {
            return s;
        }
        let s = self.new_stream(ord, 0, SKind::PerThread);
        TLS.with(|t| t.borrow_mut().per_thread.insert(key, s.clone()));
        s
    }

    pub fn lookup_stream(&self, h: u64) -> R<Arc<Stream>> {
        self.streams.get(&h).cloned().ok_or_else(|| {
            viol(
                INVALID_HANDLE,
                format!("{h:#x} is not a live stream (destroyed, its context destroyed, or never created)"),
            )
        })
    }

    /// The stream named by `h` for a call that needs no current context
    /// when given a real handle (synchronize, query).
    pub fn any_stream(&mut self, h: u64) -> R<Arc<Stream>> {
        match h {
            0 | 1 => {
                let c = self.current()?;
                Ok(self.legacy(c))
            }
            2 => {
                let c = self.current()?;
                Ok(self.per_thread(c))
            }
            _ => self.lookup_stream(h),
        }
    }

    /// The stream work is enqueued on: a current context is needed and a
    /// real handle must belong to it.
    pub fn op_stream(&mut self, h: u64) -> R<Arc<Stream>> {
        let cur = self.current()?;
        let s = self.any_stream(h)?;
        if s.ctx != cur {
            return Err(viol(
                INVALID_CONTEXT,
                format!(
                    "stream {h:#x} belongs to the context of device {}, but the current context is device {cur}",
                    s.ctx
                ),
            ));
        }
        Ok(s)
    }

    /// Queues `op` on `st` with the legacy default stream's implicit
    /// synchronisation; the op's number on the stream.
    pub fn enqueue(&mut self, st: &Arc<Stream>, op: Op) -> u64 {
        let mut deps = Vec::new();
        let c = &mut self.ctxs[st.ctx];
        if st.kind == SKind::Legacy {
            c.streams.retain(|w| w.strong_count() > 0);
            for o in c.streams.iter().filter_map(Weak::upgrade) {
                if o.blocking() {
                    if let Some(n) = o.pending() {
                        deps.push((o, n));
                    }
                }
            }
        } else if st.blocking() {
            if let Some(l) = &c.legacy {
                if let Some(n) = l.pending() {
                    deps.push((l.clone(), n));
                }
            }
        }
        st.enqueue(deps, op)
    }

    /// Every stream of context `ord` with the number of ops queued so far.
    pub fn ctx_streams(&mut self, ord: usize) -> Vec<(Arc<Stream>, u64)> {
        let c = &mut self.ctxs[ord];
        c.streams.retain(|w| w.strong_count() > 0);
        c.legacy
            .iter()
            .cloned()
            .chain(c.streams.iter().filter_map(Weak::upgrade))
            .map(|s| {
                let n = s.enqueued();
                (s, n)
            })
            .collect()
    }

    /// The primary context of `ord` went to refcount 0: everything created
    /// in it goes (queued work still completes).
    pub fn destroy_ctx(&mut self, ord: usize) {
        let c = &mut self.ctxs[ord];
        if let Some(l) = c.legacy.take() {
            l.close();
        }
        for s in c.streams.drain(..).filter_map(|w| w.upgrade()) {
            s.close();
        }
        self.streams.retain(|_, s| s.ctx != ord);
        self.events.retain(|_, e| {
            if e.ctx != ord {
                return true;
            }
            if !e.imported {
                e.mem.block().destroyed.store(1, Ordering::Release);
            }
            false
        });
        self.table.regions.retain(|_, r| match &r.kind {
            Kind::Alloc { b, ctx, .. } if *ctx == ord => {
                b.header().freed.store(1, Ordering::Release);
                false
            }
            Kind::Import { b, ctx, slot, .. } if *ctx == ord => {
                b.remove_importer(*slot);
                false
            }
            _ => true,
        });
        self.used[ord] = 0;
    }
}
