//! Who keeps a subscriber's frames (or packets) held. Every
//! `CuframesFrame` or `Packet`, and every view exported from one (a numpy
//! array, a DLPack capsule, the tensor a consumer made of it, a
//! `DLPackView`, a packet's memoryview) holds its slot through a [`Pin`];
//! the subscriber keeps weak references to them, so that when it runs out
//! of `max_held` its `CuframesCapacityError` can name what is still held
//! and by what. The Python object's own pin is kept by a [`Holding`] until
//! `release()`.

use crate::dlpack::{Keep, Owner};
use crate::errors::raise;
use cuframes::ErrorCode;
use pyo3::ffi;
use pyo3::prelude::*;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ffi::CStr;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// What a pin stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// The Python object of that class (`"CuframesFrame"`, `"Packet"`),
    /// until `release()`.
    Itself(&'static str),
    /// A holder said in fixed words (a packet's memoryview, numpy array or
    /// DLPack export).
    Named(&'static str),
    /// A `DLPackView` object (`frame.plane(i)`).
    View,
    /// A DLPack capsule, and once consumed the array or tensor made from
    /// it; `numpy` for the arrays the frame's own numpy properties make.
    Export {
        /// Whether a numpy property of the frame made (and consumed) it.
        numpy: bool,
    },
}

/// One holder of a frame or packet: keeps it (its `owner`) alive and says
/// what it is.
pub struct Pin {
    /// The seq of what it holds.
    seq: u64,
    /// What it is.
    via: Via,
    /// The call that made it (`"frame.y"`, `"frame.dlpack_y()"`).
    origin: Cow<'static, str>,
    /// The exported capsule while it exists (null before and after): set
    /// at export, cleared by the capsule's destructor. Read and written
    /// with the GIL held only.
    capsule: AtomicPtr<ffi::PyObject>,
    /// The frame or packet, kept alive.
    owner: Owner,
}

impl Keep for Pin {
    fn use_on(&self, stream: usize) -> cuframes::Result<()> {
        self.owner.use_on(stream)
    }
}

impl Pin {
    /// Records the capsule exported for this pin.
    pub fn set_capsule(&self, capsule: *mut ffi::PyObject) {
        self.capsule.store(capsule, Ordering::Release);
    }

    /// The capsule is being destroyed.
    pub fn clear_capsule(&self) {
        self.capsule.store(std::ptr::null_mut(), Ordering::Release);
    }

    /// What holds the frame, in words.
    fn describe(&self, _py: Python<'_>) -> String {
        let origin = &self.origin;
        match self.via {
            Via::Itself(class) => format!("the {class} itself (not released)"),
            Via::Named(what) => what.to_owned(),
            Via::View => format!("a DLPackView object ({origin})"),
            Via::Export { numpy } => {
                let capsule = self.capsule.load(Ordering::Acquire);
                // SAFETY: a non-null pointer is a capsule that has not been
                // destroyed yet (its destructor clears it first, with the
                // GIL held, as we hold it now); asking its name has no side
                // effects.
                let consumed = capsule.is_null()
                    || unsafe {
                        let name = ffi::PyCapsule_GetName(capsule);
                        !name.is_null() && CStr::from_ptr(name).to_bytes().starts_with(b"used_")
                    };
                // `origin` is what was exported: a capsule-returning call
                // (`frame.dlpack_y()`) or an object with `__dlpack__`.
                let capsule_call = if origin.ends_with(')') && !origin.starts_with("frame.plane") {
                    origin.to_string()
                } else {
                    format!("{origin}.__dlpack__()")
                };
                match (consumed, numpy) {
                    (false, _) => format!("an unconsumed DLPack capsule ({capsule_call})"),
                    (true, true) => format!("a numpy view ({origin})"),
                    (true, false) => {
                        format!(
                            "a tensor or array made by from_dlpack({origin}) (torch, numpy, cupy)"
                        )
                    }
                }
            }
        }
    }
}

/// The pins of one subscriber's frames or packets.
#[derive(Default)]
pub struct Holds {
    /// Every pin made, dead ones pruned as new ones come.
    pins: Mutex<Vec<Weak<Pin>>>,
}

impl Holds {
    /// A new holder of frame (or packet) `seq`, kept alive through `owner`.
    pub fn pin(
        &self,
        seq: u64,
        via: Via,
        origin: impl Into<Cow<'static, str>>,
        owner: Owner,
    ) -> Arc<Pin> {
        let pin = Arc::new(Pin {
            seq,
            via,
            origin: origin.into(),
            capsule: AtomicPtr::new(std::ptr::null_mut()),
            owner,
        });
        let mut pins = self.pins.lock().unwrap_or_else(|p| p.into_inner());
        pins.retain(|w| w.strong_count() > 0);
        pins.push(Arc::downgrade(&pin));
        pin
    }

    /// For each frame (or packet) still held (by seq), what holds it: `(seq, ["2 × a
    /// numpy view (frame.y)", ...])`.
    pub fn report(&self, py: Python<'_>) -> Vec<(u64, Vec<String>)> {
        let live: Vec<Arc<Pin>> = self
            .pins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        let mut by_seq: BTreeMap<u64, BTreeMap<String, usize>> = BTreeMap::new();
        for pin in &live {
            *by_seq
                .entry(pin.seq)
                .or_default()
                .entry(pin.describe(py))
                .or_default() += 1;
        }
        by_seq
            .into_iter()
            .map(|(seq, what)| {
                let what = what
                    .into_iter()
                    .map(|(d, n)| if n == 1 { d } else { format!("{n} × {d}") })
                    .collect();
                (seq, what)
            })
            .collect()
    }
}

/// What a subscriber hands out to Python (a frame, a packet).
pub trait Item: Clone + Send {
    /// Its Python class, as the capacity error names it.
    const CLASS: &'static str;
    /// What messages call it (`"frame"`, `"packet"`).
    const NOUN: &'static str;

    /// What its views keep alive.
    fn owner(&self) -> Owner;
}

/// A frame or packet as its Python object holds it: the item and the
/// object's own pin until `release()`, after which everything but
/// `released`, `release()` and `repr()` raises `CuframesReleasedError`.
pub struct Holding<T> {
    /// The item and the object's pin, until released.
    held: Mutex<Option<(T, Arc<Pin>)>>,
    /// The item's seq.
    seq: u64,
    /// The subscriber's holders, to register views with.
    holds: Arc<Holds>,
}

impl<T: Item> Holding<T> {
    /// Holds `item` (number `seq`), just taken by a subscriber whose
    /// holders are `holds`.
    pub fn new(item: T, seq: u64, holds: Arc<Holds>) -> Self {
        let pin = holds.pin(seq, Via::Itself(T::CLASS), "", item.owner());
        Self {
            held: Mutex::new(Some((item, pin))),
            seq,
            holds,
        }
    }

    /// The held item, or `CuframesReleasedError`.
    pub fn get(&self) -> PyResult<T> {
        // The guard must be gone before `raise` runs Python code (which may
        // switch to a thread that wants this lock while holding the GIL).
        let item = self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(item, _)| item.clone());
        item.ok_or_else(|| self.released_error())
    }

    /// `Ok` until released, else `CuframesReleasedError` (as [`get`](Self::get),
    /// without cloning the item).
    pub fn check(&self) -> PyResult<()> {
        if self.released() {
            Err(self.released_error())
        } else {
            Ok(())
        }
    }

    /// The error of an accessor called after `release()`.
    fn released_error(&self) -> PyErr {
        raise(
            ErrorCode::Released,
            &format!(
                "{} {} was released (views made before release() stay valid)",
                T::NOUN,
                self.seq
            ),
        )
    }

    /// The held item and a new holder of it (`via`, made by `origin`), or
    /// `CuframesReleasedError`.
    pub fn pin(&self, via: Via, origin: &'static str) -> PyResult<(T, Arc<Pin>)> {
        let item = self.get()?;
        let pin = self.holds.pin(self.seq, via, origin, item.owner());
        Ok((item, pin))
    }

    /// The subscriber's holders.
    pub fn holds(&self) -> &Arc<Holds> {
        &self.holds
    }

    /// Whether `release()` was called.
    pub fn released(&self) -> bool {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
    }

    /// Lets go of the object's hold (the slot goes back once no view of it
    /// remains). Idempotent.
    pub fn release(&self, py: Python<'_>) {
        let taken = self.held.lock().unwrap_or_else(|p| p.into_inner()).take();
        // Without the GIL: the last drop may free the subscriber's record,
        // and the library may log (taking the GIL) meanwhile.
        py.detach(|| drop(taken));
    }
}
