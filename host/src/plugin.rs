//! A plugin: a compiled component, ready to be instantiated for each run.

use std::path::Path;
use std::sync::Arc;

use wasmtime::component::Component;

use crate::backends::LockBackend;
use crate::bindings::PluginPre;
use crate::breakers::Breakers;
use crate::error::Error;
use crate::handlers::Handlers;
use crate::host::{Host, compile};
use crate::observe::RunKeys;
use crate::outbox::Outbox;
use crate::sinks::Sinks;
use crate::store::RunState;

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
    /// The sha256 of the component's bytes, when it was loaded from them.
    pub(crate) sha256: Option<Arc<str>>,
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
            sha256: None,
            component,
            pre,
        }
    }

    /// The sha256 of the component's bytes in lowercase hex, when the
    /// plugin was loaded from them ([`Host::load`], [`Host::load_file`]);
    /// `None` for one [linked](Host::link) from a compiled component.
    pub fn sha256(&self) -> Option<&str> {
        self.sha256.as_deref()
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

    fn with_sha256(mut self, bytes: &[u8]) -> Self {
        use sha2::Digest as _;
        self.sha256 = Some(Arc::from(format!("{:x}", sha2::Sha256::digest(bytes))));
        self
    }

    /// The outbox its runs commit into, if any.
    pub fn outbox(&self) -> Option<&Outbox> {
        self.outbox.as_ref()
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

/// Loading plugins: what makes a [`Plugin`] of a component, here beside it
/// so that the host does not depend on the plugins it makes.
impl Host {
    /// Compiles a plugin from the bytes of a component.
    ///
    /// # Errors
    ///
    /// Fails if the bytes are not a component, do not compile, import
    /// something the host does not provide, or do not export
    /// `run: func(input: list<u8>) -> result<list<u8>, string>`.
    pub fn load(&self, bytes: &[u8]) -> Result<Plugin, Error> {
        let what = "the plugin";
        let plugin = self.link_named(what, "plugin", compile(self.engine(), what, bytes)?)?;
        Ok(plugin.with_sha256(bytes))
    }

    /// Reads and compiles the component at `path`. See [`Host::load`].
    ///
    /// # Errors
    ///
    /// As [`Host::load`], and if the file cannot be read.
    pub fn load_file(&self, path: impl AsRef<Path>) -> Result<Plugin, Error> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        let what = format!("`{}`", path.display());
        let component = compile(self.engine(), &what, &bytes)?;
        let name = path
            .file_stem()
            .map_or_else(|| "plugin".into(), |s| s.to_string_lossy());
        Ok(self
            .link_named(&what, &name, component)?
            .with_sha256(&bytes))
    }

    /// Resolves a compiled component's imports against the host and checks
    /// its `run` export, making it a [`Plugin`].
    ///
    /// # Errors
    ///
    /// Fails if the component imports something the host does not provide or
    /// lacks the `run` export.
    pub fn link(&self, component: Component) -> Result<Plugin, Error> {
        self.link_named("the plugin", "plugin", component)
    }

    fn link_named(&self, what: &str, name: &str, component: Component) -> Result<Plugin, Error> {
        let link = |error| Error::Link {
            what: what.to_owned(),
            error,
        };
        let imported =
            crate::typed::link::imported(self.engine(), &component, self.typed_effects()).map_err(
                |message| Error::TypedEffect {
                    what: what.to_owned(),
                    message,
                },
            )?;
        let pre = match imported.is_empty() {
            true => self.linker().instantiate_pre(&component),
            false => crate::typed::link::define(self.linker(), imported)
                .and_then(|linker| linker.instantiate_pre(&component)),
        }
        .map_err(link)?;
        let pre = PluginPre::new(pre).map_err(link)?;
        Ok(Plugin::new(self.clone(), name, component, pre))
    }
}
