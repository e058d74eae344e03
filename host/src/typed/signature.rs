//! Which WIT signatures a typed effect may have, checked when a plugin is
//! loaded.

use std::sync::Arc;

use wasmtime::component::Type;
use wasmtime::component::types::ComponentFunc;

use super::shape::Param;
use super::values::name;
use super::{FunctionConfig, Timing};

/// How a typed function tells its guest that the host said no or the
/// handler failed, without trapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// It cannot: it returns no `result`, or a `result` whose error is a
    /// type of the plugin's own. A refusal, a failure or an answer that
    /// does not fit fails the run.
    None,
    /// `result<_, string>`: the reason, as text.
    Text,
    /// `result<_, refusal>` (escrow's `types.refusal`, or a variant with the
    /// same cases): the refusal. An immediate call's failure fails the run.
    Refusal,
    /// `result<T, effect-error>` (escrow's `effects.effect-error`, or a
    /// variant with the same cases): refused or failed.
    EffectError,
}

/// A function of a declared interface, checked.
#[derive(Debug, Clone)]
pub struct TypedFunction {
    /// Its effect name, `payments.charge`.
    pub effect: String,
    /// When it happens.
    pub timing: Timing,
    /// Its parameters, each with how its argument is written into the
    /// payload, worked out once ([`params`](Self::params) lists them).
    pub(crate) payload: Vec<Param>,
    /// Its result, if it has one.
    pub result: Option<Type>,
    /// Where a refusal goes.
    pub channel: Channel,
    /// The type a handler's answer is read as: the `ok` of a result with
    /// an error channel, or the whole result; `None` for nothing.
    pub answer: Option<Type>,
    /// The effect that undoes a call (immediate functions only).
    pub compensate: Option<String>,
    /// The circuit breaker calls go through (immediate functions only).
    pub breaker: Option<Arc<str>>,
}

impl TypedFunction {
    /// Checks `func`, a function named `function` with effect name
    /// `effect`, for `timing`.
    ///
    /// # Errors
    ///
    /// One line naming the effect and what is wrong: a resource, future,
    /// stream or error-context anywhere in its types, an async function, or
    /// a deferred function that cannot carry a refusal.
    pub fn check(effect: String, timing: Timing, func: &ComponentFunc) -> Result<Self, String> {
        if func.async_() {
            return Err(format!(
                "`{effect}` is an async function; typed effects are synchronous functions"
            ));
        }
        let params: Vec<(String, Type)> = func
            .params()
            .map(|(name, ty)| (name.to_owned(), ty))
            .collect();
        let result = func.results().next();
        for (param, ty) in &params {
            if let Some(bad) = unsupported(ty) {
                return Err(format!(
                    "`{effect}`: parameter `{param}` is of type {}, which holds {bad}; \
                     typed effects carry values only (no resources, futures, streams or \
                     error-context)",
                    name(ty)
                ));
            }
        }
        if let Some(ty) = &result
            && let Some(bad) = unsupported(ty)
        {
            return Err(format!(
                "`{effect}`: its result is of type {}, which holds {bad}; typed effects carry \
                 values only (no resources, futures, streams or error-context)",
                name(ty)
            ));
        }
        let (channel, ok) = match &result {
            Some(Type::Result(r)) => {
                let channel = match r.err() {
                    Some(Type::String) => Channel::Text,
                    Some(ty) if is_refusal(&ty) => Channel::Refusal,
                    Some(ty) if is_effect_error(&ty) => Channel::EffectError,
                    _ => Channel::None,
                };
                (channel, r.ok())
            }
            _ => (Channel::None, None),
        };
        let answer = match timing {
            Timing::Deferred => {
                let fits = matches!(channel, Channel::Text | Channel::Refusal) && ok.is_none();
                if !fits {
                    let returns = result.as_ref().map_or_else(|| "nothing".into(), name);
                    return Err(format!(
                        "`{effect}` is deferred, so it must be able to tell the guest it was \
                         refused: it must return result<_, string> or result<_, refusal> \
                         (escrow:host/types), and it returns {returns}"
                    ));
                }
                None
            }
            Timing::Immediate => match channel {
                Channel::None => result.clone(),
                _ => ok,
            },
        };
        let payload = params
            .iter()
            .map(|(name, ty)| Param::new(name, ty))
            .collect();
        Ok(Self {
            effect,
            timing,
            payload,
            result,
            channel,
            answer,
            compensate: None,
            breaker: None,
        })
    }

    /// Its parameters, by name, in order.
    pub fn params(&self) -> impl Iterator<Item = (&str, &Type)> {
        self.payload.iter().map(|p| (&*p.name, &p.shape.ty))
    }

    /// With the compensation and breaker `config` names.
    ///
    /// # Errors
    ///
    /// One line for a compensation or breaker on a deferred function (an
    /// intent is undone by not dispatching it, and is dispatched after the
    /// run), and for a breaker on a function that cannot tell its guest the
    /// circuit is open.
    pub fn guarded(mut self, config: Option<&FunctionConfig>) -> Result<Self, String> {
        let Some(config) = config else {
            return Ok(self);
        };
        let effect = &self.effect;
        if self.timing == Timing::Deferred {
            let guard = match (&config.compensate, &config.breaker) {
                (Some(_), _) => "a compensation",
                (None, Some(_)) => "a breaker",
                (None, None) => return Ok(self),
            };
            return Err(format!(
                "`{effect}` is deferred and is given {guard}; only immediate functions have \
                 compensations and breakers (an intent is undone by not dispatching it)"
            ));
        }
        if let Some(breaker) = &config.breaker
            && matches!(self.channel, Channel::None | Channel::Refusal)
        {
            return Err(format!(
                "`{effect}` goes through the breaker `{breaker}`, so it must be able to tell \
                 the guest the circuit is open: it must return result<_, string> or \
                 result<_, effect-error> (escrow:host/effects)"
            ));
        }
        self.compensate.clone_from(&config.compensate);
        self.breaker = config.breaker.as_deref().map(Arc::from);
        Ok(self)
    }
}

/// The first thing in `ty` a typed effect cannot carry, described.
fn unsupported(ty: &Type) -> Option<String> {
    match ty {
        Type::Own(_) | Type::Borrow(_) => Some("a resource".into()),
        Type::Future(_) => Some("a future".into()),
        Type::Stream(_) => Some("a stream".into()),
        Type::ErrorContext => Some("an error-context".into()),
        Type::List(list) => unsupported(&list.ty()),
        Type::FixedLengthList(list) => unsupported(&list.ty()),
        Type::Map(map) => unsupported(&map.key()).or_else(|| unsupported(&map.value())),
        Type::Record(record) => record.fields().find_map(|f| unsupported(&f.ty)),
        Type::Tuple(tuple) => tuple.types().find_map(|t| unsupported(&t)),
        Type::Variant(variant) => variant
            .cases()
            .find_map(|c| c.ty.and_then(|t| unsupported(&t))),
        Type::Option(option) => unsupported(&option.ty()),
        Type::Result(result) => result
            .ok()
            .and_then(|t| unsupported(&t))
            .or_else(|| result.err().and_then(|t| unsupported(&t))),
        _ => None,
    }
}

/// The cases of escrow's `refusal`, each carrying a string.
pub(crate) const REFUSAL_CASES: [&str; 4] = ["not-granted", "forbidden", "limit", "invalid"];

/// Whether `ty` is a variant with exactly `refusal`'s cases.
fn is_refusal(ty: &Type) -> bool {
    let Type::Variant(variant) = ty else {
        return false;
    };
    variant.cases().len() == REFUSAL_CASES.len()
        && variant
            .cases()
            .zip(REFUSAL_CASES)
            .all(|(case, name)| case.name == name && case.ty == Some(Type::String))
}

/// Whether `ty` is a variant with exactly `effect-error`'s cases:
/// `refused(refusal)` and `failed(string)`.
fn is_effect_error(ty: &Type) -> bool {
    let Type::Variant(variant) = ty else {
        return false;
    };
    let cases: Vec<_> = variant.cases().collect();
    matches!(
        cases.as_slice(),
        [refused, failed] if refused.name == "refused"
            && refused.ty.as_ref().is_some_and(is_refusal)
            && failed.name == "failed"
            && failed.ty == Some(Type::String)
    )
}
