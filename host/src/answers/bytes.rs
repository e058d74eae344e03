//! Bytes in a JSON file, kept exactly and readable where they can be.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

/// A guest's bytes (a payload, an answer, an input) as one JSON value that
/// reads back to exactly the same bytes:
///
/// - bytes that are JSON are written as that JSON, verbatim, whitespace and
///   key order included;
/// - other UTF-8 text as `{"$text": "..."}`;
/// - anything else as `{"$bytes_base64": "..."}`.
///
/// JSON that is itself an object of the single key `$text` or
/// `$bytes_base64` is written as base64, so that every value reads back one
/// way only.
///
/// # Examples
///
/// ```
/// use escrow_host::answers::Bytes;
///
/// for bytes in [&br#"{"b": 1, "a": 2}"#[..], b"plain", &[0xff, 0], br#"{"$text": "x"}"#] {
///     let json = serde_json::to_string(&Bytes(bytes.to_vec()))?;
///     let back: Bytes = serde_json::from_str(&json)?;
///     assert_eq!(back.0, bytes);
/// }
/// assert_eq!(serde_json::to_string(&Bytes(br#"{"b": 1}"#.to_vec()))?, r#"{"b": 1}"#);
/// assert_eq!(serde_json::to_string(&Bytes(b"plain".to_vec()))?, r#"{"$text":"plain"}"#);
/// # Ok::<_, serde_json::Error>(())
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Bytes(pub Vec<u8>);

impl std::fmt::Debug for Bytes {
    /// As text where the bytes are UTF-8, else as bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match std::str::from_utf8(&self.0) {
            Ok(text) => f.debug_tuple("Bytes").field(&text).finish(),
            Err(_) => f.debug_tuple("Bytes").field(&self.0).finish(),
        }
    }
}

const TEXT: &str = "$text";
const BASE64: &str = "$bytes_base64";

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use base64::Engine as _;
        use serde::ser::SerializeMap as _;
        let text = std::str::from_utf8(&self.0).ok();
        // The raw value keeps the text exactly; it must be one JSON value
        // with no whitespace around it (which `RawValue` would not keep).
        let raw = text
            .filter(|t| t.trim() == *t)
            .and_then(|t| serde_json::from_str::<&RawValue>(t).ok())
            .filter(|raw| !is_tagged(raw));
        if let Some(raw) = raw {
            return raw.serialize(serializer);
        }
        let mut map = serializer.serialize_map(Some(1))?;
        match text.filter(|_| !looks_raw(&self.0)) {
            Some(text) => map.serialize_entry(TEXT, text)?,
            None => map.serialize_entry(
                BASE64,
                &base64::engine::general_purpose::STANDARD.encode(&self.0),
            )?,
        }
        map.end()
    }
}

/// Whether text that is not written raw is JSON after all (a tagged
/// object, or JSON with surrounding whitespace): it goes as base64, so that
/// `$text` only ever holds text that is not JSON.
fn looks_raw(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
}

/// Whether a JSON value is an object of the single key `$text` or
/// `$bytes_base64`.
fn is_tagged(raw: &RawValue) -> bool {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Tagged {
        #[serde(rename = "$text")]
        _text: Option<serde::de::IgnoredAny>,
        #[serde(rename = "$bytes_base64")]
        _base64: Option<serde::de::IgnoredAny>,
    }
    raw.get().trim_start().starts_with('{')
        && serde_json::from_str::<Tagged>(raw.get())
            .is_ok_and(|t| t._text.is_some() != t._base64.is_some())
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use base64::Engine as _;
        let raw: Box<RawValue> = Deserialize::deserialize(deserializer)?;
        if !is_tagged(&raw) {
            return Ok(Bytes(raw.get().as_bytes().to_vec()));
        }
        #[derive(Deserialize)]
        struct Tagged {
            #[serde(rename = "$text")]
            text: Option<String>,
            #[serde(rename = "$bytes_base64")]
            base64: Option<String>,
        }
        let tagged: Tagged = serde_json::from_str(raw.get()).map_err(D::Error::custom)?;
        match (tagged.text, tagged.base64) {
            (Some(text), None) => Ok(Bytes(text.into_bytes())),
            (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map(Bytes)
                .map_err(|e| D::Error::custom(format!("`$bytes_base64` is not base64: {e}"))),
            _ => Err(D::Error::custom(
                "bytes are JSON, `{\"$text\": ...}` or `{\"$bytes_base64\": ...}`",
            )),
        }
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(bytes: Vec<u8>) -> Self {
        Bytes(bytes)
    }
}

impl Bytes {
    /// The bytes as a JSON value, when they are JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.0).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::Bytes;

    fn round_trip(bytes: &[u8]) -> String {
        let json = serde_json::to_string(&Bytes(bytes.to_vec())).unwrap();
        let back: Bytes = serde_json::from_str(&json).unwrap();
        assert_eq!(back.0, bytes, "{json}");
        // Inside a pretty-printed document too.
        let pretty = serde_json::to_string_pretty(&vec![Bytes(bytes.to_vec())]).unwrap();
        let back: Vec<Bytes> = serde_json::from_str(&pretty).unwrap();
        assert_eq!(back[0].0, bytes, "{pretty}");
        json
    }

    #[test]
    fn every_kind_of_bytes_reads_back_exactly() {
        assert_eq!(
            round_trip(br#"{"z":1,"a":[1, 2]}"#),
            r#"{"z":1,"a":[1, 2]}"#
        );
        assert_eq!(round_trip(b"1999"), "1999");
        assert_eq!(round_trip(b"\"quoted\""), "\"quoted\"");
        assert_eq!(round_trip(b"not json"), r#"{"$text":"not json"}"#);
        assert_eq!(round_trip(b""), r#"{"$text":""}"#);
        assert_eq!(round_trip(b" 1 "), r#"{"$bytes_base64":"IDEg"}"#);
        assert_eq!(round_trip(&[0xff, 0]), r#"{"$bytes_base64":"/wA="}"#);
        round_trip(br#"{"$text":"x"}"#);
        round_trip(br#"{"$bytes_base64":"x"}"#);
        assert_eq!(
            round_trip(br#"{"$text":"x","other":1}"#),
            r#"{"$text":"x","other":1}"#
        );
    }

    #[test]
    fn a_malformed_tag_is_an_error() {
        assert!(serde_json::from_str::<Bytes>(r#"{"$bytes_base64": "!!"}"#).is_err());
        assert!(serde_json::from_str::<Bytes>(r#"{"$text": 1}"#).is_err());
    }
}
