//! A plugin: a compiled component, ready to be instantiated for each run.

use wasmtime::component::Component;

use std::sync::Arc;

use crate::backends::LockBackend;
use crate::bindings::PluginPre;
use crate::breakers::Breakers;
use crate::handlers::Handlers;
use crate::host::Host;
use crate::observe::RunKeys;
use crate::outbox::Outbox;
use crate::run::RunState;
use crate::sinks::Sinks;

/// A compiled plugin, loaded once and run many times.
///
/// Loading compiles the component and resolves its imports against the
/// host's linker; each [`run`](Plugin::run) then only instantiates it in a
/// fresh store. `Plugin` is cheap to clone and share across threads.
#[derive(Clone)]
pub struct Plugin {
    pub(crate) host: Host,
    pub(crate) sinks: Sinks,
    pub(crate) handlers: Arc<Handlers>,
    pub(crate) locks: Arc<dyn LockBackend>,
    pub(crate) breakers: Arc<Breakers>,
    pub(crate) outbox: Option<Outbox>,
    /// What intents and outcomes call the plugin.
    pub(crate) name: Arc<str>,
    /// The keys its runs record metrics under (labelled with its name).
    pub(crate) metric_keys: Arc<RunKeys>,
    component: Component,
    pub(crate) pre: PluginPre<RunState>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").finish_non_exhaustive()
    }
}

impl Plugin {
    pub(crate) fn new(
        host: Host,
        name: &str,
        component: Component,
        pre: PluginPre<RunState>,
    ) -> Self {
        let sinks = host.sinks().clone();
        let handlers = Arc::clone(host.handlers());
        let locks = Arc::clone(host.locks());
        let breakers = Arc::clone(host.breakers());
        let outbox = host.outbox().cloned();
        let name: Arc<str> = Arc::from(name);
        Self {
            host,
            sinks,
            handlers,
            locks,
            breakers,
            outbox,
            metric_keys: Arc::new(RunKeys::new(&name)),
            name,
            component,
            pre,
        }
    }

    /// This plugin under another name: the name its intents and outcomes
    /// carry (by default its file name without `.wasm`, or `plugin`).
    pub fn with_name(&self, name: &str) -> Self {
        let name: Arc<str> = Arc::from(name);
        Self {
            metric_keys: Arc::new(RunKeys::new(&name)),
            name,
            ..self.clone()
        }
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This plugin, committing into `outbox` instead of the host's (or into
    /// none). The compiled component is shared, not copied.
    pub fn with_outbox(&self, outbox: Option<Outbox>) -> Self {
        Self {
            outbox,
            ..self.clone()
        }
    }

    /// This plugin, delivering its committed intents to `sinks` instead of
    /// the host's. The compiled component is shared, not copied.
    pub fn with_sinks(&self, sinks: Sinks) -> Self {
        Self {
            sinks,
            ..self.clone()
        }
    }

    /// This plugin, performing its immediate effects with `handlers` instead
    /// of the host's. The compiled component is shared, not copied.
    pub fn with_handlers(&self, handlers: impl Into<Arc<Handlers>>) -> Self {
        Self {
            handlers: handlers.into(),
            ..self.clone()
        }
    }

    /// This plugin, taking its locks from `backend` instead of the host's.
    /// The compiled component is shared, not copied.
    pub fn with_locks(&self, backend: Arc<dyn LockBackend>) -> Self {
        Self {
            locks: backend,
            ..self.clone()
        }
    }

    /// This plugin, with `breakers` instead of the host's. The compiled
    /// component is shared, not copied.
    pub fn with_breakers(&self, breakers: Arc<Breakers>) -> Self {
        Self {
            breakers,
            ..self.clone()
        }
    }

    /// The compiled component, for inspecting its imports and exports.
    pub fn component(&self) -> &Component {
        &self.component
    }

    /// The host this plugin runs on.
    pub fn host(&self) -> &Host {
        &self.host
    }
}
