//! Effect kinds: whether an immediate effect only reads (a query) or
//! changes something (an action).

/// Whether an immediate effect changes anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EffectKind {
    /// Reads only: allowed under every policy, including `drop` and
    /// `assert-none`.
    Query,
    /// Changes something: refused `forbidden` where a policy would not let a
    /// deferred intent of the same effect through.
    Action,
}

impl EffectKind {
    /// `query` or `action`.
    pub fn as_str(self) -> &'static str {
        match self {
            EffectKind::Query => "query",
            EffectKind::Action => "action",
        }
    }
}
