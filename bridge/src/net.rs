//! The Zenoh session: from a configuration file, or from flags over a
//! configuration that reaches nothing it was not told to.

use std::path::PathBuf;
use zenoh::Wait;

/// How to reach the other side.
#[derive(Debug, Clone, Default)]
pub struct NetOptions {
    /// A Zenoh configuration file (JSON5): TLS, authentication, routers,
    /// anything Zenoh offers. The flags below override its fields.
    pub config: Option<PathBuf>,
    /// `connect/endpoints`, e.g. `tcp/10.0.0.5:7447`.
    pub connect: Vec<String>,
    /// `listen/endpoints`, e.g. `tcp/127.0.0.1:7447`.
    pub listen: Vec<String>,
    /// `peer` (default), `client` or `router`.
    pub mode: Option<String>,
}

/// The longest a lossless bridge waits for a stalled far-side reader
/// before the link is closed (and both sides recover as after a restart).
pub const LOSSLESS_STALL: std::time::Duration = std::time::Duration::from_secs(30);

/// An error of the bridge, said in words.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl NetOptions {
    /// The Zenoh configuration. Without a file: peer mode, no multicast
    /// scouting and no listening socket unless `listen` names one (Zenoh's
    /// own default listens on every interface), and a reconnection at
    /// most a second after a link or router comes back.
    ///
    /// ```
    /// use cuframes_bridge::net::NetOptions;
    /// let net = NetOptions { listen: vec!["tcp/127.0.0.1:7447".into()], ..Default::default() };
    /// let c = net.config().unwrap();
    /// assert_eq!(c.get_json("listen/endpoints").unwrap(), r#"["tcp/127.0.0.1:7447"]"#);
    /// assert_eq!(c.get_json("scouting/multicast/enabled").unwrap(), "false");
    /// ```
    pub fn config(&self) -> Result<zenoh::Config, BoxError> {
        let mut c = match &self.config {
            Some(path) => zenoh::Config::from_file(path)
                .map_err(|e| format!("zenoh config {}: {e}", path.display()))?,
            None => {
                let mut c = zenoh::Config::default();
                set(&mut c, "mode", "\"peer\"")?;
                set(&mut c, "scouting/multicast/enabled", "false")?;
                set(&mut c, "listen/endpoints", "[]")?;
                set(
                    &mut c,
                    "connect/retry",
                    "{period_init_ms: 100, period_max_ms: 1000, period_increase_factor: 2}",
                )?;
                // A lossless put may wait this long (microseconds) for a
                // slow far-side reader before Zenoh closes the link
                // (Zenoh's default: 5 s).
                set(
                    &mut c,
                    "transport/link/tx/queue/congestion_control/block/wait_before_close",
                    &LOSSLESS_STALL.as_micros().to_string(),
                )?;
                c
            }
        };
        if let Some(mode) = &self.mode {
            set(&mut c, "mode", &serde_json::to_string(mode)?)?;
            if self.config.is_none() && mode == "client" {
                // A client waits for its router (at start and after a
                // restart of it) instead of giving up.
                set(&mut c, "connect/timeout_ms", "-1")?;
                set(&mut c, "connect/exit_on_failure", "false")?;
            }
        }
        if !self.connect.is_empty() {
            set(
                &mut c,
                "connect/endpoints",
                &serde_json::to_string(&self.connect)?,
            )?;
        }
        if !self.listen.is_empty() {
            set(
                &mut c,
                "listen/endpoints",
                &serde_json::to_string(&self.listen)?,
            )?;
        }
        Ok(c)
    }

    /// Opens the session.
    pub fn open(&self) -> Result<zenoh::Session, BoxError> {
        let session = zenoh::open(self.config()?)
            .wait()
            .map_err(|e| format!("cannot open the zenoh session: {e}"))?;
        Ok(session)
    }
}

fn set(c: &mut zenoh::Config, key: &str, json5: &str) -> Result<(), BoxError> {
    c.insert_json5(key, json5)
        .map_err(|e| format!("zenoh config {key}={json5}: {e}").into())
}
