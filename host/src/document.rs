//! Documents escrow writes for people and for later runs (plans,
//! recordings): versioned JSON, sealed by the sha256 of their content so
//! that a truncated or hand-edited one is refused rather than acted on.
//!
//! ```json
//! { "format": "escrow-plan", "version": 1, "sha256": "…", "body": { … } }
//! ```
//!
//! The seal is the sha256 of the body written compactly, in field order.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A kind of document: its format name and the version this escrow writes
/// and reads.
pub trait Document: Serialize + DeserializeOwned {
    /// The `format` field: `escrow-plan`, `escrow-recording`.
    const FORMAT: &'static str;
    /// The `version` field this escrow writes, and the newest it reads.
    const VERSION: u32;
    /// What one is called in messages: `plan`, `recording`.
    const NOUN: &'static str;
}

/// Why a document cannot be read. Each says, in one line, which file and
/// what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    /// The file could not be read or written.
    #[error("`{path}`: {message}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// The file is not a JSON document of escrow's (truncated, say).
    #[error("`{path}` is not a {noun}: {message}")]
    Malformed {
        /// The file.
        path: String,
        /// What it should be.
        noun: &'static str,
        /// What the parser said.
        message: String,
    },
    /// The file is another kind of document.
    #[error("`{path}` is not a {noun}: its format is `{format}`")]
    OtherFormat {
        /// The file.
        path: String,
        /// What it should be.
        noun: &'static str,
        /// What it is.
        format: String,
    },
    /// The file was written by a newer escrow.
    #[error(
        "`{path}` is {noun} format version {version}; this escrow reads version {supported} \
         and older: use a newer escrow"
    )]
    NewerVersion {
        /// The file.
        path: String,
        /// What it is.
        noun: &'static str,
        /// Its version.
        version: u32,
        /// The newest this escrow reads.
        supported: u32,
    },
    /// The content does not match its seal: it was changed after it was
    /// written.
    #[error("`{path}` was changed after it was written: its content does not match its sha256")]
    Tampered {
        /// The file.
        path: String,
    },
}

#[derive(Serialize)]
struct Writing<'a, T> {
    format: &'static str,
    version: u32,
    sha256: String,
    body: &'a T,
}

#[derive(Deserialize)]
struct Head {
    format: String,
    version: u32,
}

#[derive(Deserialize)]
struct Reading<T> {
    sha256: String,
    body: T,
}

fn seal<T: Serialize>(body: &T) -> Result<String, serde_json::Error> {
    use sha2::Digest as _;
    let compact = serde_json::to_vec(body)?;
    Ok(format!("{:x}", sha2::Sha256::digest(&compact)))
}

/// `document` as sealed, pretty-printed JSON.
///
/// # Errors
///
/// When the document cannot be written as JSON.
pub fn to_string<T: Document>(document: &T) -> Result<String, serde_json::Error> {
    let writing = Writing {
        format: T::FORMAT,
        version: T::VERSION,
        sha256: seal(document)?,
        body: document,
    };
    let mut text = serde_json::to_string_pretty(&writing)?;
    text.push('\n');
    Ok(text)
}

/// Reads a document from `text`; `path` names it in errors.
///
/// # Errors
///
/// See [`DocumentError`].
pub fn from_str<T: Document>(path: &str, text: &str) -> Result<T, DocumentError> {
    let malformed = |error: serde_json::Error| DocumentError::Malformed {
        path: path.to_owned(),
        noun: T::NOUN,
        message: error.to_string(),
    };
    let head: Head = serde_json::from_str(text).map_err(malformed)?;
    if head.format != T::FORMAT {
        return Err(DocumentError::OtherFormat {
            path: path.to_owned(),
            noun: T::NOUN,
            format: head.format,
        });
    }
    if head.version > T::VERSION {
        return Err(DocumentError::NewerVersion {
            path: path.to_owned(),
            noun: T::NOUN,
            version: head.version,
            supported: T::VERSION,
        });
    }
    let reading: Reading<T> = serde_json::from_str(text).map_err(malformed)?;
    if seal(&reading.body).map_err(malformed)? != reading.sha256 {
        return Err(DocumentError::Tampered {
            path: path.to_owned(),
        });
    }
    Ok(reading.body)
}

/// Reads the document at `path`.
///
/// # Errors
///
/// When the file cannot be read, or holds no such document (see
/// [`DocumentError`]).
pub fn read<T: Document>(path: &Path) -> Result<T, DocumentError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| DocumentError::Io {
        path: shown.clone(),
        message: e.to_string(),
    })?;
    from_str(&shown, &text)
}

/// Writes `document` to `path`, whole or not at all: to a temporary file
/// beside it, then renamed over it.
///
/// # Errors
///
/// When the file cannot be written.
pub fn write<T: Document>(path: &Path, document: &T) -> Result<(), DocumentError> {
    let io = |e: std::io::Error| DocumentError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let text = to_string(document).map_err(|e| io(std::io::Error::other(e)))?;
    let file_name = path.file_name().unwrap_or_default().to_string_lossy();
    let partial = path.with_file_name(format!(".{file_name}.partial"));
    std::fs::write(&partial, text).map_err(io)?;
    std::fs::rename(&partial, path).map_err(io)
}

/// `SystemTime` as RFC 3339 text (`2026-12-07T10:00:00Z`), to the second.
pub mod rfc3339 {
    use std::time::SystemTime;

    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `time`.
    ///
    /// # Errors
    ///
    /// When the serializer fails.
    pub fn serialize<S: Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_rfc3339_seconds(*time))
    }

    /// Reads a time.
    ///
    /// # Errors
    ///
    /// When the text is not an RFC 3339 time.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SystemTime, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        humantime::parse_rfc3339(&text).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Note {
        text: String,
        payload: crate::answers::Bytes,
    }

    impl Document for Note {
        const FORMAT: &'static str = "escrow-note";
        const VERSION: u32 = 2;
        const NOUN: &'static str = "note";
    }

    fn note() -> Note {
        Note {
            text: "hello".into(),
            payload: crate::answers::Bytes(br#"{"amount": 1999}"#.to_vec()),
        }
    }

    #[test]
    fn a_document_reads_back_as_written() {
        let text = to_string(&note()).unwrap();
        assert_eq!(from_str::<Note>("n.json", &text).unwrap(), note());
    }

    #[test]
    fn an_edited_document_is_refused() {
        let text = to_string(&note()).unwrap().replace("1999", "2099");
        assert_eq!(
            from_str::<Note>("n.json", &text).unwrap_err().to_string(),
            "`n.json` was changed after it was written: its content does not match its sha256"
        );
    }

    #[test]
    fn a_truncated_document_is_refused_in_one_line() {
        let text = to_string(&note()).unwrap();
        let error = from_str::<Note>("n.json", &text[..text.len() / 2]).unwrap_err();
        assert!(matches!(error, DocumentError::Malformed { .. }), "{error}");
        assert!(!error.to_string().contains('\n'));
    }

    #[test]
    fn a_newer_version_or_another_format_is_refused() {
        let text = to_string(&note()).unwrap();
        let newer = text.replace("\"version\": 2", "\"version\": 3");
        assert_eq!(
            from_str::<Note>("n.json", &newer).unwrap_err().to_string(),
            "`n.json` is note format version 3; this escrow reads version 2 and older: use a \
             newer escrow"
        );
        let other = text.replace("escrow-note", "escrow-plan");
        assert!(matches!(
            from_str::<Note>("n.json", &other),
            Err(DocumentError::OtherFormat { .. })
        ));
    }
}
