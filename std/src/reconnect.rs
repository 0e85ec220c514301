//! A subscriber that survives publisher restarts.

use crate::{ErrorCode, Frame, Mode, Result, Subscriber, SubscriberOptions};
use std::time::{Duration, Instant};

/// Wraps [`Subscriber`] in the reconnect loop: when the publisher dies,
/// restarts (new epoch) or closes, the next call reconnects (waiting for a
/// new publisher within the call's timeout) instead of failing.
///
/// ```
/// use cuframes::*;
/// use std::time::Duration;
/// # std::env::set_var("CUFRAMES_SHM_DIR", std::env::temp_dir());
/// let layout = FrameLayout::new(PixelFormat::Gray8, 16, 16, 64).unwrap();
/// let mut sub = ReconnectingSubscriber::new("doc-reconnect", "rec", Mode::Queue, Default::default());
/// for generation in 0..2 {
///     let mut publisher = Publisher::create("doc-reconnect", layout, Default::default()).unwrap();
///     # while sub.ensure_connected(Duration::from_millis(10)).is_err() {}
///     publisher.publish_from(&[generation; 256], 0).unwrap();
///     let frame = sub.next_frame(Duration::from_secs(2)).unwrap();
///     assert_eq!(frame.plane(0)[0], generation);
/// } // publisher dropped: stream closed; the next loop's publisher is new
/// assert_eq!(sub.reconnects(), 1);
/// ```
pub struct ReconnectingSubscriber {
    key: String,
    name: String,
    mode: Mode,
    options: SubscriberOptions,
    current: Option<Subscriber>,
    connects: u64,
}

impl ReconnectingSubscriber {
    /// Does not connect yet; the first [`next_frame`](Self::next_frame) does.
    pub fn new(key: &str, name: &str, mode: Mode, options: SubscriberOptions) -> Self {
        Self {
            key: key.into(),
            name: name.into(),
            mode,
            options,
            current: None,
            connects: 0,
        }
    }

    /// Reconnections after the first connection.
    pub fn reconnects(&self) -> u64 {
        self.connects.saturating_sub(1)
    }

    /// The current subscriber, if connected.
    pub fn subscriber(&self) -> Option<&Subscriber> {
        self.current.as_ref()
    }

    /// Connects if not connected, waiting up to `timeout`.
    pub fn ensure_connected(&mut self, timeout: Duration) -> Result<&mut Subscriber> {
        if self.current.is_none() {
            let options = SubscriberOptions {
                connect_timeout: timeout,
                ..self.options.clone()
            };
            let sub = Subscriber::connect(&self.key, &self.name, self.mode, options)?;
            self.connects += 1;
            if self.connects > 1 {
                tracing::info!(
                    key = self.key.as_str(),
                    name = self.name.as_str(),
                    reconnects = self.reconnects(),
                    epoch = format_args!("{:016x}", sub.epoch()),
                    "reconnected"
                );
            }
            self.current = Some(sub);
        }
        Ok(self.current.as_mut().expect("just connected"))
    }

    /// The next frame, reconnecting as needed, within `timeout` overall.
    /// Errors other than a vanished publisher (and `Timeout`) are returned.
    pub fn next_frame(&mut self, timeout: Duration) -> Result<Frame> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let result = self.ensure_connected(left).and_then(|s| s.next_frame(left));
            match result {
                Err(e) if is_gone(e.code()) => {
                    // Still set: the connection was made and then lost;
                    // unset: no publisher to connect to yet.
                    if self.current.is_some() {
                        tracing::info!(
                            key = self.key.as_str(),
                            name = self.name.as_str(),
                            cause = e.code().name(),
                            error = %e,
                            "publisher gone; reconnecting"
                        );
                    } else {
                        tracing::debug!(key = self.key.as_str(), name = self.name.as_str(), error = %e, "no publisher to connect to yet");
                    }
                    self.current = None;
                    if Instant::now() >= deadline {
                        return Err(e);
                    }
                }
                r => return r,
            }
        }
    }
}

fn is_gone(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::PublisherGone | ErrorCode::Closed | ErrorCode::NotFound
    )
}
