//! # gst-plugin-cuframes
//!
//! GStreamer elements for cuframes (`libgstcuframes.so`):
//!
//! - `cuframessink` publishes raw video (NV12, P010_10LE, GRAY8, RGB, RGBA,
//!   BGR) or H.264/H.265 access units into a cuframes stream. For raw
//!   video in host memory it proposes a buffer pool whose buffers are the
//!   ring's slots, so upstream elements that take it (videotestsrc,
//!   videoconvert, ...) write frames in place: zero copy.
//! - `cuframessrc` reads a stream as a live source; its buffers wrap the
//!   held frames (or packets) in shared memory, released when freed.
//!
//! See `docs/gstreamer.md` for properties, the zero-copy rules,
//! timestamps, restarts and drops.

mod common;
mod pool;
mod sink;
mod source;

pub use common::{FileMode, Policy, ReadMode};
pub use sink::CuframesSink;
pub use source::CuframesSrc;

use gst::glib;
use gst::prelude::*;

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    for t in [
        Policy::static_type(),
        FileMode::static_type(),
        ReadMode::static_type(),
    ] {
        t.mark_as_plugin_api(gst::PluginAPIFlags::empty());
    }
    sink::register(plugin)?;
    source::register(plugin)?;
    Ok(())
}

gst::plugin_define!(
    cuframes,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    concat!(env!("CARGO_PKG_VERSION"), "-", env!("COMMIT_ID")),
    "MIT/X11",
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_REPOSITORY"),
    env!("BUILD_REL_DATE")
);
