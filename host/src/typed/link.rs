//! Linking a component's typed effects: each function of each declared
//! interface it imports, checked and defined on a linker of its own.

use std::sync::Arc;

use wasmtime::Engine;
use wasmtime::component::types::{ComponentFunc, ComponentItem};
use wasmtime::component::{Component, Linker};

use super::{Timing, TypedEffects, TypedFunction};
use crate::store::RunState;

/// A typed function a component imports, checked.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The interface it is imported from, `acme:shop/payments@1.0.0`.
    pub interface: String,
    /// Its name there, `charge`.
    pub function: String,
    /// Its effect, timing, types and error channel.
    pub checked: TypedFunction,
}

/// Checks every function of every declared interface `component` imports.
///
/// # Errors
///
/// One line for the first function that cannot be a typed effect, or an
/// import of a declared interface that is not an instance.
pub fn imported(
    engine: &Engine,
    component: &Component,
    typed: &TypedEffects,
) -> Result<Vec<Imported>, String> {
    let mut functions = Vec::new();
    let ty = component.component_type();
    for (import, item) in ty.imports(engine) {
        let Some(declared) = typed.find(import) else {
            continue;
        };
        let ComponentItem::ComponentInstance(instance) = &item.ty else {
            return Err(format!(
                "`{import}` is declared a typed interface, but the plugin imports it as \
                 something other than an interface"
            ));
        };
        let names: Vec<&str> = instance
            .exports(engine)
            .filter(|(_, export)| matches!(export.ty, ComponentItem::ComponentFunc(_)))
            .map(|(name, _)| name)
            .collect();
        if let Some(unknown) = declared.configured().find(|f| !names.contains(f)) {
            return Err(format!(
                "`{unknown}` is configured for `{import}`, which has no such function (it \
                 has {})",
                names.join(", ")
            ));
        }
        for (function, export) in instance.exports(engine) {
            let ComponentItem::ComponentFunc(func) = &export.ty else {
                // Types need no definition.
                if let ComponentItem::Resource(_) = &export.ty {
                    return Err(format!(
                        "`{import}` defines the resource `{function}`; typed effects carry \
                         values only (no resources, futures, streams or error-context)"
                    ));
                }
                continue;
            };
            let effect = declared.effect(function);
            let checked = TypedFunction::check(effect, declared.timing_of(function), func)?
                .guarded(declared.config_of(function))?;
            functions.push(Imported {
                interface: import.to_owned(),
                function: function.to_owned(),
                checked,
            });
        }
    }
    Ok(functions)
}

/// `linker` with every function of `imported` defined, each performing its
/// effect through the run's escrow context.
///
/// # Errors
///
/// When wasmtime refuses a definition (an interface the host defines
/// already, such as escrow's own).
pub(crate) fn define(
    linker: &Linker<RunState>,
    imported: Vec<Imported>,
) -> wasmtime::Result<Linker<RunState>> {
    let mut linker = linker.clone();
    for Imported {
        interface,
        function,
        checked,
    } in imported
    {
        let mut instance = linker.instance(&interface)?;
        match checked.timing {
            // Recording an intent never waits: a synchronous definition
            // spares each call a boxed future.
            Timing::Deferred => instance.func_new(
                &function,
                move |mut store, _: ComponentFunc, params, results| {
                    let result = store.data_mut().escrow.defer_typed(&checked, params)?;
                    if let Some(slot) = results.first_mut() {
                        *slot = result;
                    }
                    Ok(())
                },
            )?,
            Timing::Immediate => {
                let checked = Arc::new(checked);
                instance.func_new_async(
                    &function,
                    move |mut store, _: ComponentFunc, params, results| {
                        let checked = Arc::clone(&checked);
                        Box::new(async move {
                            let ctx = &mut store.data_mut().escrow;
                            if let Some(result) = ctx.perform_typed(&checked, params).await?
                                && let Some(slot) = results.first_mut()
                            {
                                *slot = result;
                            }
                            Ok(())
                        })
                    },
                )?
            }
        }
    }
    Ok(linker)
}
