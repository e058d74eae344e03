//! The plugins a service runs, each replaceable while it serves, and what
//! its API reaches: the outbox, the breakers, the tokens, the metrics.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use crate::breakers::Breakers;
use crate::outbox::Outbox;
use crate::plugin::Plugin;
use crate::run::RunOptions;

use super::auth::Tokens;
use super::session::Sessions;

/// One plugin a service runs: the compiled component, the options of its
/// runs, and where it was loaded from (to load it again).
#[derive(Debug, Clone)]
pub struct Served {
    /// The plugin.
    pub plugin: Plugin,
    /// Its runs' grants, policy, limits and approval; each request adds its
    /// input.
    pub options: RunOptions,
    /// The component's file, read again by a reload.
    pub path: Option<PathBuf>,
}

/// What a service runs and reaches. Build one, then mount
/// [`router`](super::router) over it.
pub struct Service {
    plugins: RwLock<BTreeMap<String, Arc<Served>>>,
    pub(crate) outbox: Option<Outbox>,
    pub(crate) breakers: Arc<Breakers>,
    pub(crate) tokens: Tokens,
    pub(crate) metrics: Option<crate::observe::PrometheusHandle>,
    /// The console's open sessions.
    pub(crate) sessions: Sessions,
    stopping: AtomicBool,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("plugins", &self.names())
            .field("tokens", &self.tokens)
            .finish_non_exhaustive()
    }
}

impl Service {
    /// A service accepting `tokens`, with no plugin yet.
    pub fn new(tokens: Tokens) -> Self {
        Self {
            plugins: RwLock::default(),
            outbox: None,
            breakers: Arc::default(),
            tokens,
            metrics: None,
            sessions: Sessions::default(),
            stopping: AtomicBool::new(false),
        }
    }

    /// Serves `served` as `name` (replacing any plugin of that name).
    pub fn plugin(self, name: &str, served: Served) -> Self {
        self.plugins
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), Arc::new(served));
        self
    }

    /// The outbox its runs commit into: the runs and intents the API lists,
    /// and the held runs and dead letters it decides.
    pub fn outbox(mut self, outbox: Outbox) -> Self {
        self.outbox = Some(outbox);
        self
    }

    /// The breakers the API shows, opens and resets.
    pub fn breakers(mut self, breakers: Arc<Breakers>) -> Self {
        self.breakers = breakers;
        self
    }

    /// Serves Prometheus metrics at `/metrics` from `handle`.
    pub fn metrics(mut self, handle: crate::observe::PrometheusHandle) -> Self {
        self.metrics = Some(handle);
        self
    }

    /// The plugin `name` as it is now; a run keeps the version it started
    /// with, whatever a reload does meanwhile.
    pub fn served(&self, name: &str) -> Option<Arc<Served>> {
        self.plugins
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// The names of the plugins served, sorted.
    pub fn names(&self) -> Vec<String> {
        self.plugins
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Loads the component of plugin `name` again from its file and serves
    /// it from now on; runs in flight finish on the version they started
    /// with. Returns the new version's sha256.
    ///
    /// # Errors
    ///
    /// An unknown plugin, one with no file, or a component that does not
    /// load (the old version goes on serving).
    pub fn reload(&self, name: &str) -> Result<String, String> {
        let current = self
            .served(name)
            .ok_or_else(|| format!("no plugin `{name}` is served"))?;
        let path = current
            .path
            .as_ref()
            .ok_or_else(|| format!("the plugin `{name}` was not loaded from a file"))?;
        let plugin = current
            .plugin
            .host()
            .load_file(path)
            .map_err(|e| e.to_string())?
            .with_name(name);
        let plugin = match current.plugin.outbox() {
            Some(outbox) => plugin.with_outbox(Some(outbox.clone())),
            None => plugin,
        };
        let sha256 = plugin.sha256().unwrap_or_default().to_owned();
        let served = Served {
            plugin,
            options: current.options.clone(),
            path: current.path.clone(),
        };
        self.plugins
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), Arc::new(served));
        tracing::info!(plugin = name, %sha256, "plugin reloaded");
        Ok(sha256)
    }

    /// Reloads every plugin that has a file; returns each failure.
    pub fn reload_all(&self) -> Vec<String> {
        self.names()
            .iter()
            .filter_map(|name| self.reload(name).err())
            .collect()
    }

    /// Refuses new runs from now on (`/readyz` answers 503): the service is
    /// stopping.
    pub fn stop_accepting(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Whether it still accepts runs.
    pub fn accepting(&self) -> bool {
        !self.stopping.load(Ordering::SeqCst)
    }
}
