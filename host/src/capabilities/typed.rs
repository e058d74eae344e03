//! Typed effects: a call to a function of a declared WIT interface, checked
//! and recorded as `enqueue` (deferred) or `invoke` (immediate) record
//! theirs, with the arguments as a JSON object for payload.

use std::sync::Arc;

use wasmtime::component::Val;

use crate::bindings::escrow::host::breakers::BreakerError;
use crate::bindings::escrow::host::intents::Host as _;
use crate::capabilities::effects::Undo;
use crate::ctx::EscrowCtx;
use crate::limits::Limit;
use crate::outcome::{EffectError, Failure, Refusal};
use crate::typed::values::{ToJsonError, name, params_to_json, value_from_json};
use crate::typed::{Channel, TypedFunction};

/// A typed call's arguments, as its payload or as the refusal of one too
/// large to keep.
enum Payload {
    Json(Vec<u8>),
    TooLarge(Refusal),
}

impl EscrowCtx {
    /// Records a deferred typed call and answers the guest with the value
    /// its signature returns.
    pub(crate) fn defer_typed(
        &mut self,
        function: &TypedFunction,
        params: &[Val],
    ) -> wasmtime::Result<Val> {
        let recorded = match self.typed_payload(function, params)? {
            Payload::Json(json) => self.enqueue(function.effect.clone(), json),
            Payload::TooLarge(refusal) => match self.next_seq() {
                Ok(seq) => Err(self.refuse(
                    seq,
                    function.effect.clone(),
                    Vec::new(),
                    refusal,
                    "payload too large",
                )),
                Err(refusal) => Err(refusal),
            },
        };
        Ok(Val::Result(match recorded {
            Ok(_) => Ok(None),
            Err(refusal) => Err(Some(Box::new(match function.channel {
                Channel::Refusal => refusal_val(&refusal),
                _ => Val::String(refusal_text(&refusal)),
            }))),
        }))
    }

    /// Performs an immediate typed call through its handler and answers the
    /// guest with its result, or `None` for a function without one.
    pub(crate) async fn perform_typed(
        &mut self,
        function: &TypedFunction,
        params: &[Val],
    ) -> wasmtime::Result<Option<Val>> {
        let performed = match self.typed_payload(function, params)? {
            Payload::Json(json) => self.perform_json(function, json).await?,
            Payload::TooLarge(refusal) => match self.next_seq() {
                Ok(seq) => {
                    let result = Err(EffectError::Refused(refusal));
                    let kind = self.handlers.kind(&function.effect);
                    self.record(
                        seq,
                        function.effect.clone(),
                        Vec::new(),
                        kind,
                        &result,
                        None,
                    );
                    result
                }
                Err(refusal) => Err(EffectError::Refused(refusal)),
            },
        };
        let answered = match performed {
            Ok(answer) => match &function.answer {
                None => Ok(None),
                Some(ty) => value_from_json(ty, &answer).map(Some).map_err(|error| {
                    EffectError::Failed(format!(
                        "the handler's answer does not fit {}: {error}",
                        name(ty)
                    ))
                }),
            },
            Err(error) => Err(error),
        };
        Ok(match (function.channel, answered) {
            (Channel::None, Ok(answer)) => answer,
            (_, Ok(answer)) => Some(Val::Result(Ok(answer.map(Box::new)))),
            (Channel::Text, Err(error)) => {
                let text = match &error {
                    EffectError::Refused(refusal) => refusal_text(refusal),
                    EffectError::Failed(message) => message.clone(),
                };
                Some(Val::Result(Err(Some(Box::new(Val::String(text))))))
            }
            (Channel::EffectError, Err(error)) => {
                let (case, payload) = match &error {
                    EffectError::Refused(refusal) => ("refused", refusal_val(refusal)),
                    EffectError::Failed(message) => ("failed", Val::String(message.clone())),
                };
                let error = Val::Variant(case.to_owned(), Some(Box::new(payload)));
                Some(Val::Result(Err(Some(Box::new(error)))))
            }
            (Channel::Refusal, Err(EffectError::Refused(refusal))) => {
                Some(Val::Result(Err(Some(Box::new(refusal_val(&refusal))))))
            }
            // The signature has no case for it: the run fails, and the guest
            // carries on with a placeholder of the result's type until it
            // returns.
            (Channel::None | Channel::Refusal, Err(error)) => {
                let reason = match &error {
                    EffectError::Refused(refusal) => {
                        format!("refused ({}): {}", refusal.kind(), refusal.message())
                    }
                    EffectError::Failed(message) => message.clone(),
                };
                self.violate(Failure::TypedEffect {
                    effect: function.effect.clone(),
                    reason,
                });
                function.result.as_ref().map(placeholder)
            }
        })
    }

    /// Performs an immediate typed call whose arguments are `json`: with
    /// its compensation registered, and through its breaker.
    async fn perform_json(
        &mut self,
        function: &TypedFunction,
        json: Vec<u8>,
    ) -> wasmtime::Result<Result<Vec<u8>, EffectError>> {
        let effect = function.effect.clone();
        let undo = function.compensate.as_ref().map(|compensate| {
            let mut payload = Vec::with_capacity(json.len() + ARGUMENTS.len() + 1);
            payload.extend_from_slice(ARGUMENTS);
            payload.extend_from_slice(&json);
            payload.push(b'}');
            Undo {
                effect: compensate.clone(),
                payload,
                answer: true,
            }
        });
        let Some(breaker) = &function.breaker else {
            return self.perform(effect, json, undo).await;
        };
        let seq = match self.next_seq() {
            Ok(seq) => seq,
            Err(refusal) => return Ok(Err(EffectError::Refused(refusal))),
        };
        let breakers = Arc::clone(&self.breakers);
        let Some(defined) = breakers.defined(breaker) else {
            // Checked at load against the host's breakers; a plugin given
            // others since may lack it.
            let result = Err(EffectError::Failed(format!(
                "`{effect}` goes through the breaker `{breaker}`, which is not defined"
            )));
            let kind = self.handlers.kind(&effect);
            self.record(seq, effect, json, kind, &result, None);
            return Ok(result);
        };
        Ok(
            match self
                .perform_guarded(&breakers, defined, seq, effect, json, undo)
                .await?
            {
                Ok(answer) => Ok(answer),
                Err(BreakerError::Effect(error)) => Err(error),
                Err(BreakerError::CircuitOpen(retry_after_ms)) => {
                    Err(EffectError::Failed(format!(
                        "the breaker `{breaker}` is open: `{}` was not performed; retry after \
                         {retry_after_ms} ms",
                        function.effect
                    )))
                }
            },
        )
    }

    /// The arguments as JSON, written no further than the payload limits
    /// allow.
    fn typed_payload(
        &mut self,
        function: &TypedFunction,
        params: &[Val],
    ) -> wasmtime::Result<Payload> {
        let max = self.limits.max_payload_bytes;
        let total = self.limits.max_total_payload_bytes;
        let left = total.saturating_sub(self.payload_bytes);
        let (budget, limit) = match max <= left {
            true => (max, Limit::PayloadSize),
            false => (left, Limit::TotalPayload),
        };
        match params_to_json(&function.payload, params, budget) {
            Ok(json) => Ok(Payload::Json(json)),
            Err(ToJsonError::TooLarge { .. }) => {
                self.violate(Failure::Limit(limit));
                let room = match limit {
                    Limit::PayloadSize => format!("{budget} bytes"),
                    _ => format!("the {budget} bytes left of {total}"),
                };
                Ok(Payload::TooLarge(Refusal::Limit(format!(
                    "{limit}: the arguments of `{}` as JSON are more than {room}",
                    function.effect
                ))))
            }
            // wasmtime lifted the values by these very types.
            Err(ToJsonError::Mismatch(message)) => Err(wasmtime::Error::msg(format!(
                "`{}`: {message}",
                function.effect
            ))),
        }
    }
}

/// How a typed call's compensation payload starts: its arguments come
/// next, then, once the handler has answered, `,"answer":…}`.
const ARGUMENTS: &[u8] = b"{\"arguments\":";

/// A refusal as text: its kind and its message.
fn refusal_text(refusal: &Refusal) -> String {
    format!("{}: {}", refusal.kind(), refusal.message())
}

/// A refusal as the `refusal` variant.
fn refusal_val(refusal: &Refusal) -> Val {
    Val::Variant(
        refusal.kind().to_owned(),
        Some(Box::new(Val::String(refusal.message().to_owned()))),
    )
}

/// A value of type `ty` for a guest whose run has failed already: zeros,
/// empties, first cases, `none`.
fn placeholder(ty: &wasmtime::component::Type) -> Val {
    use wasmtime::component::Type;
    match ty {
        Type::Bool => Val::Bool(false),
        Type::S8 => Val::S8(0),
        Type::U8 => Val::U8(0),
        Type::S16 => Val::S16(0),
        Type::U16 => Val::U16(0),
        Type::S32 => Val::S32(0),
        Type::U32 => Val::U32(0),
        Type::S64 => Val::S64(0),
        Type::U64 => Val::U64(0),
        Type::Float32 => Val::Float32(0.0),
        Type::Float64 => Val::Float64(0.0),
        Type::Char => Val::Char('\0'),
        Type::String => Val::String(String::new()),
        Type::List(_) => Val::List(Vec::new()),
        Type::FixedLengthList(list) => {
            Val::FixedLengthList((0..list.len()).map(|_| placeholder(&list.ty())).collect())
        }
        Type::Map(_) => Val::Map(Vec::new()),
        Type::Record(record) => Val::Record(
            record
                .fields()
                .map(|f| (f.name.to_owned(), placeholder(&f.ty)))
                .collect(),
        ),
        Type::Tuple(tuple) => Val::Tuple(tuple.types().map(|t| placeholder(&t)).collect()),
        Type::Variant(variant) => {
            let first = variant.cases().next().expect("a variant has a case");
            Val::Variant(
                first.name.to_owned(),
                first.ty.map(|t| Box::new(placeholder(&t))),
            )
        }
        Type::Enum(cases) => Val::Enum(cases.names().next().unwrap_or_default().to_owned()),
        Type::Option(_) => Val::Option(None),
        Type::Result(result) => Val::Result(Ok(result.ok().map(|t| Box::new(placeholder(&t))))),
        Type::Flags(_) => Val::Flags(Vec::new()),
        // Refused when the plugin was loaded.
        Type::Own(_) | Type::Borrow(_) | Type::Future(_) | Type::Stream(_) | Type::ErrorContext => {
            unreachable!("typed effects carry no resources, futures, streams or error-context")
        }
    }
}
