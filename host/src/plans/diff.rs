//! What differs between two runs of a plugin on the same input: their
//! deferred intents, the payloads of their immediate effects, and their
//! results, down to the JSON fields that changed.

use std::fmt;

use serde::Serialize;
use serde_json::Value;

use crate::answers::{Bytes, CallAnswer};
use crate::recording::{RecordedIntent, RecordedResult};

/// Past this many pairs of intents compared, intents are paired by
/// position instead of by the longest common sequence of effects (whose
/// cost grows with the product of the two lengths).
pub const MAX_ALIGNED_PAIRS: usize = 1 << 20;

/// One difference between the run as it was (old) and as it is now (new).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "change")]
pub enum Difference {
    /// The new run requests an intent the old one did not.
    Added {
        /// Its sequence number in the new run.
        seq: u64,
        /// The effect.
        effect: String,
        /// Its payload, as JSON where it is.
        payload: Value,
        /// Its fate in the new run.
        fate: String,
    },
    /// The old run requested an intent the new one does not.
    Removed {
        /// Its sequence number in the old run.
        seq: u64,
        /// The effect.
        effect: String,
        /// Its payload.
        payload: Value,
        /// Its fate in the old run.
        fate: String,
    },
    /// Both request the effect, with another payload or fate.
    Changed {
        /// The effect.
        effect: String,
        /// Its sequence number in the old run.
        old_seq: u64,
        /// Its sequence number in the new run.
        new_seq: u64,
        /// The payload's fields that changed.
        fields: Vec<FieldChange>,
        /// The fate, old → new, when it changed.
        #[serde(skip_serializing_if = "Option::is_none")]
        fate: Option<(String, String)>,
    },
    /// An immediate effect was asked with another payload (its answer came
    /// from the recording all the same).
    Call {
        /// Which immediate call of the run, from 1.
        number: usize,
        /// The effect.
        effect: String,
        /// The payload's fields that changed.
        fields: Vec<FieldChange>,
    },
    /// The run returned something else.
    Result {
        /// The output's fields that changed, when both runs succeeded.
        fields: Vec<FieldChange>,
        /// The result, old → new, when one of them failed.
        #[serde(skip_serializing_if = "Option::is_none")]
        outcome: Option<(String, String)>,
    },
}

/// One JSON field whose value changed; `None` where it is absent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldChange {
    /// Where: `amount`, `items[2].price`; empty for the whole value.
    pub path: String,
    /// The old value.
    pub old: Option<Value>,
    /// The new value.
    pub new: Option<Value>,
}

/// Everything that differs between an old run and a new one: intents,
/// immediate calls paired in order, results. Empty when they are the same.
pub fn runs(
    old: (&[RecordedIntent], &[CallAnswer], &RecordedResult),
    new: (&[RecordedIntent], &[CallAnswer], &RecordedResult),
) -> Vec<Difference> {
    let mut differences = intents(old.0, new.0);
    for (number, (was, now)) in old.1.iter().zip(new.1).enumerate() {
        let fields = fields(&was.payload, &now.payload);
        if !fields.is_empty() {
            differences.push(Difference::Call {
                number: number + 1,
                effect: now.effect.clone(),
                fields,
            });
        }
    }
    if let Some(result) = result(old.2, new.2) {
        differences.push(result);
    }
    differences
}

/// What differs between two lists of intents, paired along the longest
/// common sequence of their effects.
pub fn intents(old: &[RecordedIntent], new: &[RecordedIntent]) -> Vec<Difference> {
    let mut differences = Vec::new();
    let mut i = 0;
    let mut j = 0;
    for (a, b) in aligned(old, new) {
        while i < a {
            differences.push(removed(&old[i]));
            i += 1;
        }
        while j < b {
            differences.push(added(&new[j]));
            j += 1;
        }
        let (was, now) = (&old[a], &new[b]);
        let fields = fields(&was.payload, &now.payload);
        let fate = (was.fate != now.fate).then(|| (was.fate.clone(), now.fate.clone()));
        if !fields.is_empty() || fate.is_some() {
            differences.push(Difference::Changed {
                effect: now.effect.clone(),
                old_seq: was.seq,
                new_seq: now.seq,
                fields,
                fate,
            });
        }
        i = a + 1;
        j = b + 1;
    }
    differences.extend(old[i..].iter().map(removed));
    differences.extend(new[j..].iter().map(added));
    differences
}

fn added(intent: &RecordedIntent) -> Difference {
    Difference::Added {
        seq: intent.seq,
        effect: intent.effect.clone(),
        payload: shown(&intent.payload),
        fate: intent.fate.clone(),
    }
}

fn removed(intent: &RecordedIntent) -> Difference {
    Difference::Removed {
        seq: intent.seq,
        effect: intent.effect.clone(),
        payload: shown(&intent.payload),
        fate: intent.fate.clone(),
    }
}

/// Bytes as a JSON value: the JSON they are, else the text or base64 that
/// [`bytes_json`](crate::outcome::bytes_json) shows.
fn shown(bytes: &Bytes) -> Value {
    crate::outcome::bytes_json(&bytes.0)
}

/// The pairs `(old index, new index)` of intents with the same effect, in
/// order: the longest common sequence of effects, or positions when the
/// lists are too long to align.
fn aligned(old: &[RecordedIntent], new: &[RecordedIntent]) -> Vec<(usize, usize)> {
    if old.len().saturating_mul(new.len()) > MAX_ALIGNED_PAIRS {
        return (0..old.len().min(new.len()))
            .filter(|&k| old[k].effect == new[k].effect)
            .map(|k| (k, k))
            .collect();
    }
    // lengths[a][b]: the longest common sequence of old[a..] and new[b..].
    let width = new.len() + 1;
    let mut lengths = vec![0u32; (old.len() + 1) * width];
    for a in (0..old.len()).rev() {
        for b in (0..new.len()).rev() {
            lengths[a * width + b] = if old[a].effect == new[b].effect {
                lengths[(a + 1) * width + b + 1] + 1
            } else {
                lengths[(a + 1) * width + b].max(lengths[a * width + b + 1])
            };
        }
    }
    let mut pairs = Vec::new();
    let (mut a, mut b) = (0, 0);
    while a < old.len() && b < new.len() {
        if old[a].effect == new[b].effect {
            pairs.push((a, b));
            a += 1;
            b += 1;
        } else if lengths[(a + 1) * width + b] >= lengths[a * width + b + 1] {
            a += 1;
        } else {
            b += 1;
        }
    }
    pairs
}

/// What differs between two results.
fn result(old: &RecordedResult, new: &RecordedResult) -> Option<Difference> {
    match (old, new) {
        (RecordedResult::Output(was), RecordedResult::Output(now)) => {
            let fields = fields(was, now);
            (!fields.is_empty()).then_some(Difference::Result {
                fields,
                outcome: None,
            })
        }
        (RecordedResult::Failed(was), RecordedResult::Failed(now)) if was == now => None,
        _ => Some(Difference::Result {
            fields: Vec::new(),
            outcome: Some((result_text(old), result_text(new))),
        }),
    }
}

fn result_text(result: &RecordedResult) -> String {
    match result {
        RecordedResult::Output(output) => format!("ok {}", shown(output)),
        RecordedResult::Failed(failure) => format!("failed: {failure}"),
    }
}

/// The fields that differ between two payloads: field by field where both
/// are JSON, else the whole value.
pub fn fields(old: &Bytes, new: &Bytes) -> Vec<FieldChange> {
    if old == new {
        return Vec::new();
    }
    let mut changes = Vec::new();
    match (old.json(), new.json()) {
        (Some(old), Some(new)) => values(String::new(), &old, &new, &mut changes),
        _ => changes.push(FieldChange {
            path: String::new(),
            old: Some(shown(old)),
            new: Some(shown(new)),
        }),
    }
    changes
}

fn values(path: String, old: &Value, new: &Value, changes: &mut Vec<FieldChange>) {
    let join = |key: &str| match path.is_empty() {
        true => key.to_owned(),
        false => format!("{path}.{key}"),
    };
    match (old, new) {
        (Value::Object(was), Value::Object(now)) => {
            for (key, value) in was {
                match now.get(key) {
                    Some(other) => values(join(key), value, other, changes),
                    None => changes.push(FieldChange {
                        path: join(key),
                        old: Some(value.clone()),
                        new: None,
                    }),
                }
            }
            for (key, value) in now.iter().filter(|(k, _)| !was.contains_key(*k)) {
                changes.push(FieldChange {
                    path: join(key),
                    old: None,
                    new: Some(value.clone()),
                });
            }
        }
        (Value::Array(was), Value::Array(now)) => {
            for k in 0..was.len().max(now.len()) {
                let at = format!("{path}[{k}]");
                match (was.get(k), now.get(k)) {
                    (Some(a), Some(b)) => values(at, a, b, changes),
                    (a, b) => changes.push(FieldChange {
                        path: at,
                        old: a.cloned(),
                        new: b.cloned(),
                    }),
                }
            }
        }
        (a, b) if a == b => {}
        (a, b) => changes.push(FieldChange {
            path,
            old: Some(a.clone()),
            new: Some(b.clone()),
        }),
    }
}

impl fmt::Display for FieldChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = |v: &Option<Value>| v.as_ref().map_or("(none)".to_owned(), Value::to_string);
        if !self.path.is_empty() {
            write!(f, "{} ", self.path)?;
        }
        write!(f, "{} → {}", value(&self.old), value(&self.new))
    }
}

/// `a → b, c → d`
fn field_list(fields: &[FieldChange]) -> String {
    fields
        .iter()
        .map(FieldChange::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for Difference {
    /// One line: `+`, `-` or `~`, the effect and what changed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Difference::Added {
                seq,
                effect,
                payload,
                fate,
            } => write!(f, "+ {effect} #{seq} {payload} ({fate})"),
            Difference::Removed {
                seq,
                effect,
                payload,
                fate,
            } => write!(f, "- {effect} #{seq} {payload} ({fate})"),
            Difference::Changed {
                effect,
                old_seq,
                new_seq,
                fields,
                fate,
            } => {
                let seq = match old_seq == new_seq {
                    true => format!("#{new_seq}"),
                    false => format!("#{old_seq} → #{new_seq}"),
                };
                write!(f, "~ {effect} {seq}:")?;
                if !fields.is_empty() {
                    write!(f, " {}", field_list(fields))?;
                }
                if let Some((was, now)) = fate {
                    let sep = if fields.is_empty() { "" } else { ";" };
                    write!(f, "{sep} {was} → {now}")?;
                }
                Ok(())
            }
            Difference::Call {
                number,
                effect,
                fields,
            } => write!(f, "~ call #{number} {effect}: {}", field_list(fields)),
            Difference::Result { fields, outcome } => match outcome {
                Some((was, now)) => write!(f, "~ result: {was} → {now}"),
                None => write!(f, "~ result: {}", field_list(fields)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intent(seq: u64, effect: &str, payload: &str) -> RecordedIntent {
        RecordedIntent {
            seq,
            effect: effect.into(),
            payload: Bytes(payload.as_bytes().to_vec()),
            fate: "committed".into(),
        }
    }

    #[test]
    fn a_changed_payload_names_the_fields_that_changed() {
        let old = [intent(
            1,
            "payments.charge",
            r#"{"order":42,"amount":1999}"#,
        )];
        let new = [intent(
            1,
            "payments.charge",
            r#"{"order":42,"amount":2099}"#,
        )];
        let differences = intents(&old, &new);
        assert_eq!(differences.len(), 1);
        assert_eq!(
            differences[0].to_string(),
            "~ payments.charge #1: amount 1999 → 2099"
        );
    }

    #[test]
    fn intents_are_paired_by_effect_so_one_added_shows_as_added() {
        let old = [intent(1, "a", "1"), intent(2, "c", "3")];
        let new = [
            intent(1, "a", "1"),
            intent(2, "b", "2"),
            intent(3, "c", "3"),
        ];
        let differences = intents(&old, &new);
        let lines: Vec<String> = differences.iter().map(ToString::to_string).collect();
        // `c` moved from #2 to #3 and is otherwise the same: not a difference.
        assert_eq!(lines, ["+ b #2 2 (committed)"]);
    }

    #[test]
    fn removed_and_nested_fields_are_shown_with_their_paths() {
        let old = Bytes(br#"{"items":[{"price":1},{"price":2}],"note":"x"}"#.to_vec());
        let new = Bytes(br#"{"items":[{"price":1},{"price":3}],"gift":true}"#.to_vec());
        let lines: Vec<String> = fields(&old, &new).iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "items[1].price 2 → 3",
                "note \"x\" → (none)",
                "gift (none) → true"
            ]
        );
    }

    #[test]
    fn identical_runs_have_no_difference() {
        let old = [intent(1, "a", r#"{"x":1}"#)];
        let output = RecordedResult::Output(Bytes(b"{}".to_vec()));
        assert!(runs((&old, &[], &output), (&old, &[], &output)).is_empty());
    }
}
