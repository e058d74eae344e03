//! Run ids: a run's identity, unique across hosts and sortable by when the
//! run started.

use std::fmt;

/// A run's identity: a UUIDv7, so ids sort by the time the run started and
/// are unique across hosts without coordination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunId(uuid::Uuid);

impl RunId {
    /// A fresh id for a run starting now.
    pub fn new() -> Self {
        Self(uuid::Uuid::now_v7())
    }

    /// The id as a UUID.
    pub fn as_uuid(&self) -> uuid::Uuid {
        self.0
    }

    /// The run id `uuid` is.
    pub fn from_uuid(uuid: uuid::Uuid) -> Self {
        Self(uuid)
    }

    /// The idempotency key of the request `seq` of this run:
    /// `{run_id}:{seq}`. It is the same on every retry and redelivery.
    pub fn idempotency_key(&self, seq: u64) -> String {
        format!("{self}:{seq}")
    }

    /// The idempotency key of the compensation that undoes request `seq` of
    /// this run: `{run_id}:{seq}:compensate`.
    pub fn compensation_key(&self, seq: u64) -> String {
        format!("{self}:{seq}:compensate")
    }
}

impl Default for RunId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl std::str::FromStr for RunId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s).map(Self)
    }
}

impl serde::Serialize for RunId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for RunId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse()
            .map_err(|e| D::Error::custom(format!("`{text}` is not a run id: {e}")))
    }
}
