//! `escrow inspect`: what a component imports and exports, which escrow
//! capabilities it can request, and whether it would run here, before
//! running anything.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::Args;
use escrow_host::Host;
use escrow_host::config::Config;
use escrow_host::typed::values::name;
use escrow_host::typed::{Channel, Imported, Timing};
use wasmtime::component::types::{ComponentItem, Type};

use super::EXIT_USAGE;

/// Show a plugin's imports, exports and escrow capabilities, and check them
/// against the host and the grants.
#[derive(Debug, Args)]
pub(crate) struct InspectArgs {
    /// The plugin: a component built for wasm32-wasip2.
    plugin: PathBuf,
    /// Check against the grants of this file (escrow.toml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Check as if effects matching PATTERN were granted too (as `run --grant`).
    #[arg(long, value_name = "PATTERN")]
    grant: Vec<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Compile the plugin afresh instead of using the on-disk cache `run`
    /// shares.
    #[arg(long)]
    no_cache: bool,
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

pub(crate) fn main(args: InspectArgs) -> anyhow::Result<u8> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    config.grants.effects.extend(args.grant.iter().cloned());
    let grants = config.grants().map_err(anyhow::Error::msg)?;
    // The host `escrow run` would build: the same pool, so the same
    // components fit, and the same verdict; the same engine, so each
    // compiles a component the other has compiled from the cache.
    let mut host = Host::builder()
        .max_concurrent_runs(1)
        .max_memory_bytes(config.limits().max_memory_bytes)
        .slot_size(config.slot_size())
        .typed_effects(config.typed_effects().map_err(anyhow::Error::msg)?);
    if let Some(dir) = super::cache_dir().filter(|_| !args.no_cache) {
        host = host.cache_dir(dir);
    }
    let host = host.build()?;
    let component = match host.compile_file(&args.plugin) {
        Ok(component) => component,
        Err(error @ escrow_host::Error::Limits(_)) => {
            if args.json {
                let report = serde_json::json!({
                    "plugin": args.plugin.display().to_string(),
                    "runs_here": false,
                    "why_not": error.to_string(),
                });
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{}\nruns on this host: no — {error}", args.plugin.display());
            }
            return Ok(EXIT_USAGE);
        }
        Err(error) => return Err(error.into()),
    };
    let ty = component.component_type();
    let engine = host.engine();

    let exports: Vec<(String, String)> = ty
        .exports(engine)
        .map(|(name, item)| (name.to_owned(), item_desc(&item.ty)))
        .collect();
    let typed = host.typed_effects();
    // Refused signatures are the verdict's to report, in `run`'s words.
    let functions = escrow_host::typed::imported(engine, &component, typed).unwrap_or_default();
    let mut capabilities = Vec::new();
    let imports: Vec<(String, String)> = ty
        .imports(engine)
        .map(|(name, _)| {
            let note = match capability(name) {
                Some(cap) => {
                    capabilities.push(cap);
                    format!("escrow: {cap}")
                }
                None if typed.find(name).is_some() => "typed effects".to_owned(),
                None if name.starts_with("wasi:") => format!("WASI: {}", wasi_note(name, &config)),
                None => "not provided by escrow".to_owned(),
            };
            (name.to_owned(), note)
        })
        .collect();
    let typed_functions: Vec<TypedLine> = functions
        .iter()
        .map(|f| TypedLine::of(f, grants.effect_grant(&f.checked.effect)))
        .collect();
    let unused: Vec<String> = typed
        .interfaces()
        .iter()
        .filter(|i| !ty.imports(engine).any(|(name, _)| i.matches(name)))
        .map(ToString::to_string)
        .collect();
    let effects = grants.effect_patterns();
    let asks_effects =
        capabilities.contains(&"deferred effects") || capabilities.contains(&"immediate effects");
    let handlers: Vec<String> = config
        .handlers
        .iter()
        .map(|(effect, h)| format!("{effect} ({})", h.kind.as_str()))
        .collect();
    let locks = grants.lock_patterns();
    let breakers_granted = grants.breaker_patterns();
    let breakers_defined: Vec<String> = config.breakers.keys().cloned().collect();
    let verdict = host.link(component);
    let code = if verdict.is_ok() { 0 } else { EXIT_USAGE };

    if args.json {
        let report = serde_json::json!({
            "plugin": args.plugin.display().to_string(),
            "exports": exports.iter().map(|(n, d)| serde_json::json!({ "name": n, "type": d.trim_start_matches(": ") })).collect::<Vec<_>>(),
            "imports": imports.iter().map(|(n, note)| serde_json::json!({ "name": n, "note": note })).collect::<Vec<_>>(),
            "capabilities": capabilities,
            "grants": {
                "effects": effects,
                "handlers": handlers,
                "locks": locks,
                "breakers": breakers_granted,
                "breakers_defined": breakers_defined,
            },
            "typed_effects": typed_functions.iter().map(TypedLine::json).collect::<Vec<_>>(),
            "typed_unused": unused,
            "runs_here": verdict.is_ok(),
            "why_not": verdict.as_ref().err().map(ToString::to_string),
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(code);
    }

    let mut out = String::new();
    writeln!(out, "{}", args.plugin.display())?;
    writeln!(out, "exports:")?;
    for (name, desc) in &exports {
        writeln!(out, "  {name}{desc}")?;
    }
    writeln!(out, "imports:")?;
    for (name, note) in &imports {
        writeln!(out, "  {name:<40} {note}")?;
    }
    if !typed_functions.is_empty() || !unused.is_empty() {
        writeln!(out, "typed effects:")?;
        for line in &typed_functions {
            writeln!(out, "  {}", line.text())?;
        }
        for interface in &unused {
            writeln!(out, "  {interface}: declared, not imported (unused)")?;
        }
    }
    writeln!(out, "grants:")?;
    if !asks_effects && typed_functions.is_empty() {
        writeln!(
            out,
            "  effects: the plugin imports no effect interface, so it cannot request effects"
        )?;
    } else if effects.is_empty() {
        writeln!(
            out,
            "  effects: none — every effect this plugin requests will be refused `not-granted`"
        )?;
    } else {
        writeln!(
            out,
            "  effects: {} (effect names are chosen at run time; others are refused)",
            effects.join(", ")
        )?;
    }
    if capabilities.contains(&"immediate effects") {
        writeln!(out, "  handlers: {}", list(&handlers))?;
    }
    if capabilities.contains(&"locks") {
        let locks = if locks.is_empty() {
            "none — every lock request will be refused".to_owned()
        } else {
            locks.join(", ")
        };
        writeln!(out, "  locks: {locks}")?;
    }
    if capabilities.contains(&"circuit breakers") {
        writeln!(
            out,
            "  breakers: granted {}; defined {}",
            list(breakers_granted),
            list(&breakers_defined)
        )?;
    }
    match &verdict {
        Ok(_) => writeln!(out, "runs on this host: yes")?,
        Err(error) => writeln!(out, "runs on this host: no — {error}")?,
    }
    print!("{out}");
    Ok(code)
}

/// The escrow capability an import name stands for.
fn capability(import: &str) -> Option<&'static str> {
    let interface = import.strip_prefix("escrow:host/")?;
    let interface = interface.split('@').next().unwrap_or(interface);
    Some(match interface {
        "intents" => "deferred effects",
        "scopes" => "nested scopes",
        "effects" => "immediate effects",
        "locks" => "locks",
        "breakers" => "circuit breakers",
        "types" => "shared types",
        _ => return None,
    })
}

/// What the sandbox gives a WASI import.
fn wasi_note(import: &str, config: &Config) -> String {
    let interface = import.split('@').next().unwrap_or(import);
    match interface {
        "wasi:filesystem/preopens" | "wasi:filesystem/types" => match config.grants.dirs.len() {
            0 => "filesystem, nothing granted (no directories)".to_owned(),
            n => format!(
                "filesystem, {n} granted director{}",
                if n == 1 { "y" } else { "ies" }
            ),
        },
        "wasi:cli/environment" => match config.grants.env.len() {
            0 => "environment, nothing granted (no variables, no arguments)".to_owned(),
            n => format!(
                "environment, {n} granted variable{}",
                if n == 1 { "" } else { "s" }
            ),
        },
        "wasi:cli/stderr" => "stderr, captured into the outcome".to_owned(),
        "wasi:cli/stdout" | "wasi:cli/stdin" => "standard stream, closed".to_owned(),
        i if i.starts_with("wasi:sockets/") => "network, denied".to_owned(),
        i if i.starts_with("wasi:http/") => "http, denied (effects go through escrow)".to_owned(),
        _ => "provided".to_owned(),
    }
}

fn item_desc(item: &ComponentItem) -> String {
    match item {
        ComponentItem::ComponentFunc(func) => {
            let params: Vec<String> = func
                .params()
                .map(|(param, ty)| format!("{param}: {}", name(&ty)))
                .collect();
            let results: Vec<String> = func.results().map(|ty| name(&ty)).collect();
            let arrow = if results.is_empty() {
                String::new()
            } else {
                format!(" -> {}", results.join(", "))
            };
            format!(": func({}){arrow}", params.join(", "))
        }
        ComponentItem::ComponentInstance(_) => " (instance)".to_owned(),
        _ => String::new(),
    }
}

/// One typed function as `inspect` shows it.
struct TypedLine {
    effect: String,
    timing: Timing,
    signature: String,
    payload: String,
    answer: Option<String>,
    compensate: Option<String>,
    breaker: Option<String>,
    granted_by: Option<String>,
}

impl TypedLine {
    fn of(function: &Imported, granted_by: Option<&str>) -> Self {
        let checked = &function.checked;
        let params: Vec<String> = checked
            .params()
            .map(|(param, ty)| format!("{param}: {}", name(ty)))
            .collect();
        let result = checked
            .result
            .as_ref()
            .map_or_else(String::new, |ty| format!(" -> {}", name(ty)));
        let fields: Vec<String> = checked
            .params()
            .map(|(param, ty)| format!("{param:?}: {}", shape(ty)))
            .collect();
        let answer = match checked.timing {
            Timing::Deferred => None,
            Timing::Immediate => Some(match (&checked.answer, checked.channel) {
                (None, _) => "nothing".to_owned(),
                (Some(ty), Channel::None) => format!("{} (the whole result)", shape(ty)),
                (Some(ty), _) => shape(ty),
            }),
        };
        Self {
            effect: checked.effect.clone(),
            timing: checked.timing,
            signature: format!("func({}){result}", params.join(", ")),
            payload: format!("{{{}}}", fields.join(", ")),
            answer,
            compensate: checked.compensate.clone(),
            breaker: checked.breaker.as_deref().map(str::to_owned),
            granted_by: granted_by.map(str::to_owned),
        }
    }

    fn text(&self) -> String {
        let granted = match &self.granted_by {
            Some(pattern) => format!("granted by {pattern}"),
            None => "not granted".to_owned(),
        };
        let answer = match &self.answer {
            Some(answer) => format!("; answer {answer}"),
            None => String::new(),
        };
        let undo = match &self.compensate {
            Some(effect) => format!("; undone by {effect}"),
            None => String::new(),
        };
        let breaker = match &self.breaker {
            Some(name) => format!("; through breaker {name}"),
            None => String::new(),
        };
        format!(
            "{} ({}): {}\n    payload {}{answer}{undo}{breaker}; {granted}",
            self.effect,
            self.timing.as_str(),
            self.signature,
            self.payload
        )
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "effect": self.effect,
            "timing": self.timing.as_str(),
            "signature": self.signature,
            "payload": self.payload,
            "answer": self.answer,
            "compensate": self.compensate,
            "breaker": self.breaker,
            "granted_by": self.granted_by,
        })
    }
}

/// The JSON a value of `ty` is written as (`docs/typed-effects.md`), as a
/// template: each leaf by its WIT type.
fn shape(ty: &Type) -> String {
    match ty {
        Type::List(list) if list.ty() == Type::U8 => "\"<base64>\"".to_owned(),
        Type::List(list) => format!("[{}, …]", shape(&list.ty())),
        Type::Record(record) => {
            let fields: Vec<String> = record
                .fields()
                .map(|f| format!("{:?}: {}", f.name, shape(&f.ty)))
                .collect();
            format!("{{{}}}", fields.join(", "))
        }
        Type::Tuple(tuple) => {
            let items: Vec<String> = tuple.types().map(|t| shape(&t)).collect();
            format!("[{}]", items.join(", "))
        }
        Type::Variant(variant) => {
            let cases: Vec<String> = variant
                .cases()
                .map(|c| match c.ty {
                    Some(ty) => format!("{{{:?}: {}}}", c.name, shape(&ty)),
                    None => format!("{{{:?}: null}}", c.name),
                })
                .collect();
            cases.join(" | ")
        }
        Type::Enum(cases) => cases
            .names()
            .map(|n| format!("{n:?}"))
            .collect::<Vec<_>>()
            .join(" | "),
        Type::Option(option) => match option.ty() {
            inner @ Type::Option(_) => format!("null | {{\"some\": {}}}", shape(&inner)),
            inner => format!("null | {}", shape(&inner)),
        },
        Type::Result(result) => {
            let side = |t: Option<Type>| t.map_or_else(|| "null".to_owned(), |t| shape(&t));
            format!(
                "{{\"ok\": {}}} | {{\"err\": {}}}",
                side(result.ok()),
                side(result.err())
            )
        }
        Type::Flags(flags) => format!(
            "[{}]",
            flags
                .names()
                .map(|n| format!("{n:?}"))
                .collect::<Vec<_>>()
                .join(" | ")
        ),
        other => name(other),
    }
}
