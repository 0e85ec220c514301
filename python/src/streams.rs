//! Stream discovery and ring statistics as plain dicts.

use crate::errors::IntoPy;
use cuframes::{RingStats, StreamStatus};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

/// Ring counters, with one dict per active subscriber.
pub fn ring_stats_dict<'py>(py: Python<'py>, s: &RingStats) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("head_seq", s.head_seq)?;
    d.set_item("published", s.published)?;
    d.set_item("occupancy", s.occupancy)?;
    d.set_item("slot_count", s.slot_count)?;
    d.set_item("fps", s.rate_mfps as f64 / 1000.0)?;
    d.set_item("last_commit_ns", s.last_commit_ns)?;
    let subs = PyList::empty(py);
    for r in s.active() {
        let e = PyDict::new(py);
        e.set_item("index", r.index)?;
        e.set_item("name", r.name_str())?;
        e.set_item("pid", r.pid)?;
        e.set_item("mode", r.mode.map_or("?", cuframes::Mode::name))?;
        e.set_item("held", r.held)?;
        e.set_item("received", r.received)?;
        e.set_item("dropped", r.dropped)?;
        e.set_item("last_seq", r.last_seq)?;
        e.set_item("lag", r.lag)?;
        e.set_item("evictions", r.evictions)?;
        e.set_item("heartbeat_ns", r.heartbeat_ns)?;
        subs.append(e)?;
    }
    d.set_item("subscribers", subs)?;
    Ok(d)
}

/// `ring_stats_dict` plus the stream's identity, format and liveness.
fn status_dict<'py>(py: Python<'py>, s: &StreamStatus) -> PyResult<Bound<'py, PyDict>> {
    let d = ring_stats_dict(py, &s.stats)?;
    let h = &s.info.header;
    d.set_item("key", &s.key)?;
    d.set_item("publisher_pid", h.publisher_pid)?;
    d.set_item("publisher_alive", s.publisher_alive)?;
    d.set_item("format", s.info.format_name())?;
    d.set_item("width", h.layout.width)?;
    d.set_item("height", h.layout.height)?;
    d.set_item("memory", s.info.memory.name())?;
    d.set_item("policy", s.info.policy.name())?;
    d.set_item("dropped", s.dropped())?;
    // Whether each record's owner lives (its liveness lock is held).
    if let Some(subs) = d.get_item("subscribers")? {
        for e in subs.try_iter()? {
            let e = e?;
            let index: u32 = e.get_item("index")?.extract()?;
            e.set_item("alive", s.record_alive(index))?;
        }
    }
    Ok(d)
}

/// Status of stream `key` (any process may call it; nothing is changed).
#[pyfunction]
pub fn stream_status<'py>(py: Python<'py>, key: &str) -> PyResult<Bound<'py, PyDict>> {
    let s = py.detach(|| cuframes::stream_status(key)).py()?;
    status_dict(py, &s)
}

/// Status of every live stream; unreadable segments are skipped.
#[pyfunction]
pub fn list_streams<'py>(py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
    let all = py.detach(cuframes::list_streams);
    all.iter()
        .filter_map(|(_, s)| s.as_ref().ok())
        .map(|s| status_dict(py, s))
        .collect()
}
