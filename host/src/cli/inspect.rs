//! `escrow inspect`: what a component imports and exports, which escrow
//! capabilities it can request, and whether it would run here, before
//! running anything.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::Args;
use escrow_host::Host;
use escrow_host::config::Config;
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
    // components fit, and the same verdict.
    let host = Host::builder()
        .max_concurrent_runs(1)
        .max_memory_bytes(config.limits().max_memory_bytes)
        .slot_size(config.slot_size())
        .build()?;
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
    let mut capabilities = Vec::new();
    let imports: Vec<(String, String)> = ty
        .imports(engine)
        .map(|(name, _)| {
            let note = match capability(name) {
                Some(cap) => {
                    capabilities.push(cap);
                    format!("escrow: {cap}")
                }
                None if name.starts_with("wasi:") => format!("WASI: {}", wasi_note(name, &config)),
                None => "not provided by escrow".to_owned(),
            };
            (name.to_owned(), note)
        })
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
    writeln!(out, "grants:")?;
    if !asks_effects {
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
                .map(|(name, ty)| format!("{name}: {}", type_desc(&ty)))
                .collect();
            let results: Vec<String> = func.results().map(|ty| type_desc(&ty)).collect();
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

fn type_desc(ty: &Type) -> String {
    match ty {
        Type::Bool => "bool".into(),
        Type::U8 => "u8".into(),
        Type::U16 => "u16".into(),
        Type::U32 => "u32".into(),
        Type::U64 => "u64".into(),
        Type::S8 => "s8".into(),
        Type::S16 => "s16".into(),
        Type::S32 => "s32".into(),
        Type::S64 => "s64".into(),
        Type::Float32 => "f32".into(),
        Type::Float64 => "f64".into(),
        Type::Char => "char".into(),
        Type::String => "string".into(),
        Type::List(list) => format!("list<{}>", type_desc(&list.ty())),
        Type::Option(option) => format!("option<{}>", type_desc(&option.ty())),
        Type::Result(result) => {
            let side = |t: Option<Type>| t.map_or("_".to_owned(), |t| type_desc(&t));
            format!("result<{}, {}>", side(result.ok()), side(result.err()))
        }
        other => format!("{other:?}")
            .split(['(', ' '])
            .next()
            .unwrap_or("type")
            .to_lowercase(),
    }
}
