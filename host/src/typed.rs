//! Typed effects: WIT interfaces the operator names as effects, called by
//! plugins through plain generated bindings and held in escrow like
//! `enqueue` and `invoke`.
//!
//! Each function of a declared interface is an effect named
//! `<interface>.<function>` (`acme:shop/payments`'s `charge` is
//! `payments.charge`), so grants, policies, block patterns, routes,
//! handlers, breakers and the outbox treat it as a string effect of that
//! name. Its arguments become a JSON object keyed by parameter name
//! ([`values`]). A *deferred* function records an intent; an *immediate*
//! one is performed now by the handler registered under its name.

use std::collections::BTreeMap;

pub(crate) mod link;
mod shape;
mod signature;
pub mod values;

pub use link::{Imported, imported};
pub use signature::{Channel, TypedFunction};

/// When a typed function's effect happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Timing {
    /// Recorded as an intent, dispatched after the run commits (as
    /// `enqueue`).
    Deferred,
    /// Performed now by its handler, the guest waiting for the answer (as
    /// `invoke`).
    Immediate,
}

impl Timing {
    /// `deferred` or `immediate`.
    pub fn as_str(self) -> &'static str {
        match self {
            Timing::Deferred => "deferred",
            Timing::Immediate => "immediate",
        }
    }
}

/// A malformed declaration of typed effects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TypedError {
    /// The interface is not written `namespace:package/interface[@version]`.
    #[error(
        "`{0}` is not an interface name: write it `namespace:package/interface`, with an optional `@version`"
    )]
    Name(String),
    /// An alias that is not a valid effect name part.
    #[error("the alias `{alias}` of `{interface}` must be letters, digits, `-` and `_`")]
    Alias {
        /// The interface.
        interface: String,
        /// The alias.
        alias: String,
    },
    /// Two interfaces would name their effects alike.
    #[error("`{first}` and `{second}` both name their effects `{prefix}.*`; give one an alias")]
    Clash {
        /// The interface declared first.
        first: String,
        /// The other.
        second: String,
        /// The effect prefix they share.
        prefix: String,
    },
    /// The same interface declared twice.
    #[error("`{0}` is declared twice")]
    Twice(String),
    /// A compensation or breaker named with characters an effect or breaker
    /// name cannot have.
    #[error("`{interface}`'s `{function}`: {reason}")]
    Guard {
        /// The interface.
        interface: String,
        /// The function.
        function: String,
        /// What is wrong with the name.
        reason: String,
    },
}

/// What the operator says of one function of a typed interface, beyond its
/// interface's timing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FunctionConfig {
    /// When it happens, if not at its interface's timing.
    pub timing: Option<Timing>,
    /// The effect that undoes it when its run or scope fails, performed
    /// by that effect's handler with `{"arguments": …, "answer": …}`
    /// (immediate functions only).
    pub compensate: Option<String>,
    /// The circuit breaker its calls go through (immediate functions
    /// only).
    pub breaker: Option<String>,
}

/// One WIT interface whose functions are effects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypedInterface {
    /// `namespace:package/interface`, without a version.
    path: String,
    /// The version it must be imported at, or any.
    version: Option<String>,
    timing: Timing,
    alias: Option<String>,
    functions: BTreeMap<String, FunctionConfig>,
}

impl TypedInterface {
    /// The interface `name` (`acme:shop/payments`, or
    /// `acme:shop/payments@1.0.0` for that version only), each function
    /// `timing` unless [`function`](Self::function) says otherwise.
    ///
    /// # Errors
    ///
    /// [`TypedError::Name`] for a malformed name.
    pub fn new(name: &str, timing: Timing) -> Result<Self, TypedError> {
        let (path, version) = match name.split_once('@') {
            Some((path, version)) if !version.is_empty() => (path, Some(version.to_owned())),
            Some(_) => return Err(TypedError::Name(name.to_owned())),
            None => (name, None),
        };
        let well_formed = path.split_once(':').is_some_and(|(namespace, rest)| {
            rest.split_once('/').is_some_and(|(package, interface)| {
                [namespace, package, interface]
                    .iter()
                    .all(|part| is_kebab(part))
            })
        });
        if !well_formed {
            return Err(TypedError::Name(name.to_owned()));
        }
        Ok(Self {
            path: path.to_owned(),
            version,
            timing,
            alias: None,
            functions: BTreeMap::new(),
        })
    }

    /// Names its effects `<alias>.<function>` instead of
    /// `<interface>.<function>`.
    ///
    /// # Errors
    ///
    /// [`TypedError::Alias`] unless the alias is a kebab-case word.
    pub fn alias(mut self, alias: &str) -> Result<Self, TypedError> {
        let valid = !alias.is_empty()
            && alias
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            return Err(TypedError::Alias {
                interface: self.to_string(),
                alias: alias.to_owned(),
            });
        }
        self.alias = Some(alias.to_owned());
        Ok(self)
    }

    /// Function `function` happens at `timing`, whatever the interface's.
    pub fn function(mut self, function: &str, timing: Timing) -> Self {
        self.functions
            .entry(function.to_owned())
            .or_default()
            .timing = Some(timing);
        self
    }

    /// A failed run or scope undoes `function`'s calls by performing
    /// `effect`, whose handler receives `{"arguments": …, "answer": …}`.
    ///
    /// # Errors
    ///
    /// [`TypedError::Guard`] unless `effect` is a valid effect name.
    pub fn compensate(mut self, function: &str, effect: &str) -> Result<Self, TypedError> {
        self.check_guard(function, effect)?;
        self.functions
            .entry(function.to_owned())
            .or_default()
            .compensate = Some(effect.into());
        Ok(self)
    }

    /// `function`'s calls go through the circuit breaker `breaker`.
    ///
    /// # Errors
    ///
    /// [`TypedError::Guard`] unless `breaker` is a valid breaker name.
    pub fn breaker(mut self, function: &str, breaker: &str) -> Result<Self, TypedError> {
        self.check_guard(function, breaker)?;
        self.functions
            .entry(function.to_owned())
            .or_default()
            .breaker = Some(breaker.into());
        Ok(self)
    }

    fn check_guard(&self, function: &str, name: &str) -> Result<(), TypedError> {
        crate::patterns::check_effect_name(name).map_err(|error| TypedError::Guard {
            interface: self.to_string(),
            function: function.to_owned(),
            reason: error.to_string(),
        })
    }

    /// What its effect names start with: the alias, or the interface's
    /// own name.
    pub fn prefix(&self) -> &str {
        self.alias
            .as_deref()
            .unwrap_or_else(|| self.path.rsplit('/').next().unwrap_or(&self.path))
    }

    /// When `function` happens.
    pub fn timing_of(&self, function: &str) -> Timing {
        self.functions
            .get(function)
            .and_then(|f| f.timing)
            .unwrap_or(self.timing)
    }

    /// What is said of `function` beyond the interface's timing.
    pub fn config_of(&self, function: &str) -> Option<&FunctionConfig> {
        self.functions.get(function)
    }

    /// The functions something is said of.
    pub fn configured(&self) -> impl Iterator<Item = &str> {
        self.functions.keys().map(String::as_str)
    }

    /// The effect name of `function`.
    pub fn effect(&self, function: &str) -> String {
        format!("{}.{function}", self.prefix())
    }

    /// Whether a component import named `import` (`acme:shop/payments@1.0.0`)
    /// is this interface.
    pub fn matches(&self, import: &str) -> bool {
        let (path, version) = match import.split_once('@') {
            Some((path, version)) => (path, Some(version)),
            None => (import, None),
        };
        path == self.path
            && match &self.version {
                None => true,
                Some(wanted) => version == Some(wanted.as_str()),
            }
    }
}

impl std::fmt::Display for TypedInterface {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.version {
            Some(version) => write!(f, "{}@{version}", self.path),
            None => f.write_str(&self.path),
        }
    }
}

/// A WIT name part: lowercase words of letters and digits joined by `-`.
fn is_kebab(part: &str) -> bool {
    !part.is_empty()
        && part.split('-').all(|w| {
            !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        })
}

/// The interfaces a host treats as typed effects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypedEffects {
    interfaces: Vec<TypedInterface>,
}

impl TypedEffects {
    /// No typed effects.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `interface`.
    ///
    /// # Errors
    ///
    /// [`TypedError::Twice`] for an interface declared already, and
    /// [`TypedError::Clash`] when its effects would be named like another's
    /// (two packages' `payments`): give one an alias.
    pub fn add(&mut self, interface: TypedInterface) -> Result<(), TypedError> {
        for other in &self.interfaces {
            if other.path == interface.path {
                return Err(TypedError::Twice(interface.path));
            }
            if other.prefix() == interface.prefix() {
                return Err(TypedError::Clash {
                    first: other.to_string(),
                    second: interface.to_string(),
                    prefix: interface.prefix().to_owned(),
                });
            }
        }
        self.interfaces.push(interface);
        Ok(())
    }

    /// The declared interfaces, in the order added.
    pub fn interfaces(&self) -> &[TypedInterface] {
        &self.interfaces
    }

    /// Whether none is declared.
    pub fn is_empty(&self) -> bool {
        self.interfaces.is_empty()
    }

    /// The declared interface a component import named `import` is.
    pub fn find(&self, import: &str) -> Option<&TypedInterface> {
        self.interfaces.iter().find(|i| i.matches(import))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interface_names_its_effects_by_its_own_name_or_its_alias() {
        let payments = TypedInterface::new("acme:shop/payments@1.0.0", Timing::Deferred).unwrap();
        assert_eq!(payments.effect("charge"), "payments.charge");
        assert!(payments.matches("acme:shop/payments@1.0.0"));
        assert!(!payments.matches("acme:shop/payments@2.0.0"));
        let any = TypedInterface::new("acme:shop/payments", Timing::Deferred).unwrap();
        assert!(any.matches("acme:shop/payments@2.0.0") && any.matches("acme:shop/payments"));
        assert_eq!(any.alias("pay").unwrap().effect("charge"), "pay.charge");
    }

    #[test]
    fn malformed_names_and_clashing_interfaces_are_refused_naming_both() {
        for bad in [
            "payments",
            "acme:shop",
            "acme:Shop/payments",
            "acme:shop/payments@",
        ] {
            assert_eq!(
                TypedInterface::new(bad, Timing::Deferred),
                Err(TypedError::Name(bad.into()))
            );
        }
        let mut effects = TypedEffects::new();
        let shop = TypedInterface::new("acme:shop/payments", Timing::Deferred).unwrap();
        effects.add(shop).unwrap();
        let bank = TypedInterface::new("acme:bank/payments", Timing::Immediate).unwrap();
        let clash = effects.add(bank.clone()).unwrap_err();
        assert_eq!(
            clash.to_string(),
            "`acme:shop/payments` and `acme:bank/payments` both name their effects \
             `payments.*`; give one an alias"
        );
        effects.add(bank.alias("bank").unwrap()).unwrap();
        assert_eq!(effects.interfaces().len(), 2);
    }
}
