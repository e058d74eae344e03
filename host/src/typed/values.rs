//! WIT values as JSON, both ways, lossless for every type a typed effect
//! may carry (`docs/typed-effects.md` has the table).
//!
//! The type drives both directions: the same JSON can only be read back as
//! the type it was written from, which is what makes `list<u8>` a base64
//! string and an option of an option distinguishable from its `none`.

use std::fmt::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::Value;
use wasmtime::component::{Type, Val};

use super::shape::{Node, Param, Shape};

/// A float that JSON has no number for, as the string that stands for it.
const NAN: &str = "NaN";
const INFINITY: &str = "Infinity";
const NEG_INFINITY: &str = "-Infinity";

/// Why a value could not be written as JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToJsonError {
    /// The JSON would pass `max` bytes; writing stopped there.
    #[error("its JSON passes {max} bytes")]
    TooLarge {
        /// The bound.
        max: usize,
    },
    /// The value does not have the type it was declared with, or the type
    /// has no JSON form (a resource, a future, a stream).
    #[error("{0}")]
    Mismatch(String),
}

/// Writes named values (a function's parameters) as one JSON object, in
/// order, stopping as soon as it would pass `max` bytes.
///
/// # Errors
///
/// [`ToJsonError::TooLarge`] past `max`; [`ToJsonError::Mismatch`] for a
/// value that is not of its type.
pub(crate) fn params_to_json(
    params: &[Param],
    values: &[Val],
    max: usize,
) -> Result<Vec<u8>, ToJsonError> {
    if params.len() != values.len() {
        return Err(ToJsonError::Mismatch(format!(
            "{} values for {} parameters",
            values.len(),
            params.len()
        )));
    }
    let mut out = Bounded::new(max);
    out.put(b"{")?;
    for (i, (param, val)) in params.iter().zip(values).enumerate() {
        if i > 0 {
            out.put(b",")?;
        }
        out.put(&param.key)?;
        out.value(&param.shape, val)?;
    }
    out.put(b"}")?;
    Ok(out.bytes)
}

/// Writes one value of type `ty` as JSON, stopping as soon as it would pass
/// `max` bytes.
///
/// # Errors
///
/// [`ToJsonError::TooLarge`] past `max`; [`ToJsonError::Mismatch`] for a
/// value that is not of type `ty`.
pub fn value_to_json(ty: &Type, val: &Val, max: usize) -> Result<Vec<u8>, ToJsonError> {
    let mut out = Bounded::new(max);
    out.value(&Shape::of(ty), val)?;
    Ok(out.bytes)
}

/// Bytes a value's JSON starts with room for: most payloads are small.
const INITIAL_CAPACITY: usize = 128;

/// JSON written straight from the values, checked against the bound before
/// each piece is copied: a 50 MiB list stops at the bound, and a payload
/// of a few fields costs a few copies. Numbers are written by `itoa` and
/// serde_json, and strings that need escapes by serde_json, so the text is
/// exactly serde_json's.
struct Bounded {
    bytes: Vec<u8>,
    max: usize,
    passed: bool,
}

impl Bounded {
    fn new(max: usize) -> Self {
        Bounded {
            bytes: Vec::with_capacity(INITIAL_CAPACITY.min(max)),
            max,
            passed: false,
        }
    }

    /// Whether `len` more bytes would pass the bound.
    fn room_for(&self, len: usize) -> Result<(), ToJsonError> {
        match self.bytes.len().saturating_add(len) > self.max {
            true => Err(ToJsonError::TooLarge { max: self.max }),
            false => Ok(()),
        }
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), ToJsonError> {
        self.room_for(bytes.len())?;
        self.bytes.extend_from_slice(bytes);
        Ok(())
    }

    fn string(&mut self, text: &str) -> Result<(), ToJsonError> {
        self.room_for(text.len() + 2)?;
        // Without short-circuits, the check runs over whole vectors.
        let escapes = text.bytes().fold(false, |found, b| {
            found | (b < 0x20) | (b == b'"') | (b == b'\\')
        });
        if escapes {
            return self.serde(text);
        }
        self.quoted(text);
        Ok(())
    }

    /// `"text"`, for text known to need no escapes, within a bound the
    /// caller has checked.
    fn quoted(&mut self, text: &str) {
        self.bytes.reserve(text.len() + 2);
        self.bytes.push(b'"');
        self.bytes.extend_from_slice(text.as_bytes());
        self.bytes.push(b'"');
    }

    fn integer(&mut self, n: impl itoa::Integer) -> Result<(), ToJsonError> {
        self.put(itoa::Buffer::new().format(n).as_bytes())
    }

    fn float(
        &mut self,
        v: f64,
        write: impl FnOnce(&mut Self) -> Result<(), ToJsonError>,
    ) -> Result<(), ToJsonError> {
        match special(v) {
            Some(text) => self.string(text),
            None => write(self),
        }
    }

    /// Writes `value` through serde_json, within the bound.
    fn serde<T: serde::Serialize + ?Sized>(&mut self, value: &T) -> Result<(), ToJsonError> {
        match serde_json::to_writer(&mut *self, value) {
            Ok(()) => Ok(()),
            Err(_) if self.passed => Err(ToJsonError::TooLarge { max: self.max }),
            Err(error) => Err(ToJsonError::Mismatch(error.to_string())),
        }
    }

    /// `[a,b,…]`, each written by `each`.
    fn sequence<T>(
        &mut self,
        items: impl IntoIterator<Item = T>,
        mut each: impl FnMut(&mut Self, T) -> Result<(), ToJsonError>,
    ) -> Result<(), ToJsonError> {
        self.put(b"[")?;
        for (i, item) in items.into_iter().enumerate() {
            if i > 0 {
                self.put(b",")?;
            }
            each(self, item)?;
        }
        self.put(b"]")
    }

    /// `{"case":payload}` (`key` is `{"case":`), with `null` for a case
    /// without one.
    fn tagged(
        &mut self,
        case: &str,
        key: &[u8],
        shape: Option<&Shape>,
        payload: Option<&Val>,
    ) -> Result<(), ToJsonError> {
        self.put(key)?;
        match (shape, payload) {
            (Some(shape), Some(val)) => self.value(shape, val)?,
            (None, None) => self.put(b"null")?,
            _ => {
                return Err(ToJsonError::Mismatch(format!(
                    "the payload of `{case}` does not match its type"
                )));
            }
        }
        self.put(b"}")
    }

    /// A value of a shape, written as the mapping says.
    fn value(&mut self, shape: &Shape, val: &Val) -> Result<(), ToJsonError> {
        let mismatch =
            || ToJsonError::Mismatch(format!("{} is not a {}", kind(val), name(&shape.ty)));
        match (&shape.node, val) {
            (Node::Scalar, _) => self.scalar(&shape.ty, val).ok_or_else(mismatch)?,
            (Node::Bytes, Val::List(items)) => {
                // The base64 text's length is known before a byte is copied.
                let len = base64::encoded_len(items.len(), true)
                    .ok_or(ToJsonError::TooLarge { max: self.max })?;
                self.room_for(len + 2)?;
                let bytes = items
                    .iter()
                    .map(|item| match item {
                        Val::U8(b) => Ok(*b),
                        _ => Err(mismatch()),
                    })
                    .collect::<Result<Vec<u8>, _>>()?;
                self.bytes.push(b'"');
                let start = self.bytes.len();
                self.bytes.resize(start + len, 0);
                BASE64
                    .encode_slice(bytes, &mut self.bytes[start..])
                    .map_err(|error| ToJsonError::Mismatch(error.to_string()))?;
                self.bytes.push(b'"');
                Ok(())
            }
            (Node::List(item), Val::List(items) | Val::FixedLengthList(items)) => {
                self.sequence(items, |out, val| out.value(item, val))
            }
            (Node::Map(key, value), Val::Map(entries)) => self.sequence(entries, |out, (k, v)| {
                out.put(b"[")?;
                out.value(key, k)?;
                out.put(b",")?;
                out.value(value, v)?;
                out.put(b"]")
            }),
            (Node::Record(fields), Val::Record(vals)) if fields.len() == vals.len() => {
                self.put(b"{")?;
                for (i, (field, (name, val))) in fields.iter().zip(vals).enumerate() {
                    if *field.name != **name {
                        return Err(mismatch());
                    }
                    if i > 0 {
                        self.put(b",")?;
                    }
                    self.put(&field.key)?;
                    self.value(&field.shape, val)?;
                }
                self.put(b"}")
            }
            (Node::Tuple(shapes), Val::Tuple(items)) if shapes.len() == items.len() => self
                .sequence(shapes.iter().zip(items), |out, (shape, val)| {
                    out.value(shape, val)
                }),
            (Node::Variant(cases), Val::Variant(case, payload)) => {
                let known = cases
                    .iter()
                    .find(|c| *c.name == **case)
                    .ok_or_else(mismatch)?;
                self.tagged(case, &known.key, known.shape.as_ref(), payload.as_deref())
            }
            (Node::Option { .. }, Val::Option(None)) => self.put(b"null"),
            // `null` is taken by this option's none: an option of an option
            // wraps its some.
            (Node::Option { some, nested: true }, Val::Option(Some(val))) => {
                self.put(b"{\"some\":")?;
                self.value(some, val)?;
                self.put(b"}")
            }
            (Node::Option { some, .. }, Val::Option(Some(val))) => self.value(some, val),
            (Node::Result { ok, .. }, Val::Result(Ok(payload))) => {
                self.tagged("ok", b"{\"ok\":", ok.as_deref(), payload.as_deref())
            }
            (Node::Result { err, .. }, Val::Result(Err(payload))) => {
                self.tagged("err", b"{\"err\":", err.as_deref(), payload.as_deref())
            }
            _ => Err(mismatch()),
        }
    }

    /// A value written from itself alone, if it is of type `ty`: `None`
    /// when it is not.
    fn scalar(&mut self, ty: &Type, val: &Val) -> Option<Result<(), ToJsonError>> {
        Some(match (ty, val) {
            (Type::Bool, Val::Bool(v)) => self.put(if *v { b"true" } else { b"false" }),
            (Type::S8, Val::S8(v)) => self.integer(*v),
            (Type::U8, Val::U8(v)) => self.integer(*v),
            (Type::S16, Val::S16(v)) => self.integer(*v),
            (Type::U16, Val::U16(v)) => self.integer(*v),
            (Type::S32, Val::S32(v)) => self.integer(*v),
            (Type::U32, Val::U32(v)) => self.integer(*v),
            (Type::S64, Val::S64(v)) => self.integer(*v),
            (Type::U64, Val::U64(v)) => self.integer(*v),
            (Type::Float32, Val::Float32(v)) => self.float(f64::from(*v), |out| out.serde(v)),
            (Type::Float64, Val::Float64(v)) => self.float(*v, |out| out.serde(v)),
            (Type::Char, Val::Char(c)) => self.string(c.encode_utf8(&mut [0; 4])),
            (Type::String, Val::String(v)) => self.string(v),
            (Type::Enum(_), Val::Enum(case)) => self.string(case),
            (Type::Flags(_), Val::Flags(names)) => {
                self.sequence(names, |out, name| out.string(name))
            }
            _ => return None,
        })
    }
}

/// serde_json's way out for the strings that need escapes and the floats,
/// checked against the same bound.
impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf).map(|()| buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if self.room_for(buf.len()).is_err() {
            self.passed = true;
            return Err(std::io::Error::other("past the bound"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The string a float JSON cannot write as a number stands for.
fn special(v: f64) -> Option<&'static str> {
    if v.is_nan() {
        Some(NAN)
    } else if v == f64::INFINITY {
        Some(INFINITY)
    } else if v == f64::NEG_INFINITY {
        Some(NEG_INFINITY)
    } else {
        None
    }
}

/// Why JSON could not be read as a value of a type: where, and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: expected {expected}, found {found}", if path.is_empty() { "the value" } else { path.as_str() })]
pub struct FromJsonError {
    /// Where in the value (`.items[2].price`), empty for the whole.
    pub path: String,
    /// The type expected there, as WIT writes it.
    pub expected: String,
    /// What was there, shortened.
    pub found: String,
}

/// Reads JSON bytes as a value of type `ty`.
///
/// # Errors
///
/// When the bytes are not JSON, or the JSON does not fit the type; the
/// error says where.
pub fn value_from_json(ty: &Type, json: &[u8]) -> Result<Val, FromJsonError> {
    let value: Value = serde_json::from_slice(json).map_err(|error| FromJsonError {
        path: String::new(),
        expected: name(ty),
        found: format!("text that is not JSON ({error})"),
    })?;
    from_value(ty, &value, &mut String::new())
}

/// Longest text of a found value an error quotes.
const FOUND_CHARS: usize = 60;

fn from_value(ty: &Type, value: &Value, path: &mut String) -> Result<Val, FromJsonError> {
    let wrong = |path: &str| FromJsonError {
        path: path.to_owned(),
        expected: name(ty),
        found: shown(value),
    };
    macro_rules! int {
        ($variant:ident, $t:ty) => {
            value
                .as_i64()
                .and_then(|v| <$t>::try_from(v).ok())
                .or_else(|| value.as_u64().and_then(|v| <$t>::try_from(v).ok()))
                .map(Val::$variant)
                .ok_or_else(|| wrong(path))
        };
    }
    match ty {
        Type::Bool => value.as_bool().map(Val::Bool).ok_or_else(|| wrong(path)),
        Type::S8 => int!(S8, i8),
        Type::U8 => int!(U8, u8),
        Type::S16 => int!(S16, i16),
        Type::U16 => int!(U16, u16),
        Type::S32 => int!(S32, i32),
        Type::U32 => int!(U32, u32),
        Type::S64 => int!(S64, i64),
        Type::U64 => int!(U64, u64),
        Type::Float32 => float(value)
            .map(|v| Val::Float32(v as f32))
            .ok_or_else(|| wrong(path)),
        Type::Float64 => float(value).map(Val::Float64).ok_or_else(|| wrong(path)),
        Type::Char => {
            let text = value.as_str().ok_or_else(|| wrong(path))?;
            let mut chars = text.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) => Ok(Val::Char(c)),
                _ => Err(wrong(path)),
            }
        }
        Type::String => value
            .as_str()
            .map(|s| Val::String(s.to_owned()))
            .ok_or_else(|| wrong(path)),
        Type::List(list) if list.ty() == Type::U8 => {
            let text = value.as_str().ok_or_else(|| wrong(path))?;
            let bytes = BASE64.decode(text).map_err(|_| wrong(path))?;
            Ok(Val::List(bytes.into_iter().map(Val::U8).collect()))
        }
        Type::List(list) => Ok(Val::List(items(&list.ty(), value, path, wrong)?)),
        Type::FixedLengthList(list) => {
            let items = items(&list.ty(), value, path, wrong)?;
            if items.len() != list.len() as usize {
                return Err(wrong(path));
            }
            Ok(Val::FixedLengthList(items))
        }
        Type::Map(map) => {
            let pairs = value.as_array().ok_or_else(|| wrong(path))?;
            let (key_ty, value_ty) = (map.key(), map.value());
            let mut entries = Vec::with_capacity(pairs.len());
            for (i, pair) in pairs.iter().enumerate() {
                let mark = path.len();
                let _ = write!(path, "[{i}]");
                let [k, v] = pair.as_array().map(Vec::as_slice).unwrap_or_default() else {
                    let error = FromJsonError {
                        path: path.clone(),
                        expected: "a [key, value] pair".into(),
                        found: shown(pair),
                    };
                    return Err(error);
                };
                let entry = (
                    from_value(&key_ty, k, path)?,
                    from_value(&value_ty, v, path)?,
                );
                path.truncate(mark);
                entries.push(entry);
            }
            Ok(Val::Map(entries))
        }
        Type::Record(record) => {
            let object = value.as_object().ok_or_else(|| wrong(path))?;
            let mut fields = Vec::with_capacity(record.fields().len());
            for field in record.fields() {
                let mark = path.len();
                let _ = write!(path, ".{}", field.name);
                let val = match object.get(field.name) {
                    Some(v) => from_value(&field.ty, v, path)?,
                    // A missing optional field is its none.
                    None if matches!(field.ty, Type::Option(_)) => Val::Option(None),
                    None => {
                        return Err(FromJsonError {
                            path: path.clone(),
                            expected: name(&field.ty),
                            found: "nothing (the field is missing)".into(),
                        });
                    }
                };
                path.truncate(mark);
                fields.push((field.name.to_owned(), val));
            }
            if let Some(extra) = object
                .keys()
                .find(|k| !record.fields().any(|f| f.name == k.as_str()))
            {
                return Err(FromJsonError {
                    path: format!("{path}.{extra}"),
                    expected: "no such field".into(),
                    found: "a field the record does not have".into(),
                });
            }
            Ok(Val::Record(fields))
        }
        Type::Tuple(tuple) => {
            let array = value.as_array().ok_or_else(|| wrong(path))?;
            if array.len() != tuple.types().len() {
                return Err(wrong(path));
            }
            let mut items = Vec::with_capacity(array.len());
            for (i, (ty, v)) in tuple.types().zip(array).enumerate() {
                let mark = path.len();
                let _ = write!(path, "[{i}]");
                items.push(from_value(&ty, v, path)?);
                path.truncate(mark);
            }
            Ok(Val::Tuple(items))
        }
        Type::Variant(variant) => {
            let (case, payload) = tag(value).ok_or_else(|| wrong(path))?;
            let ty = variant
                .cases()
                .find(|c| c.name == case)
                .ok_or_else(|| wrong(path))?
                .ty;
            let payload = tagged_payload(ty.as_ref(), payload, case, path, wrong)?;
            Ok(Val::Variant(case.to_owned(), payload))
        }
        Type::Enum(cases) => {
            let case = value.as_str().ok_or_else(|| wrong(path))?;
            match cases.names().any(|n| n == case) {
                true => Ok(Val::Enum(case.to_owned())),
                false => Err(wrong(path)),
            }
        }
        Type::Option(option) => {
            let inner = option.ty();
            match value {
                Value::Null => Ok(Val::Option(None)),
                Value::Object(object) if matches!(inner, Type::Option(_)) => {
                    let some = match (object.len(), object.get("some")) {
                        (1, Some(some)) => some,
                        _ => return Err(wrong(path)),
                    };
                    Ok(Val::Option(Some(Box::new(from_value(&inner, some, path)?))))
                }
                _ if matches!(inner, Type::Option(_)) => Err(wrong(path)),
                _ => Ok(Val::Option(Some(Box::new(from_value(
                    &inner, value, path,
                )?)))),
            }
        }
        Type::Result(result) => {
            let (case, payload) = tag(value).ok_or_else(|| wrong(path))?;
            let (ty, ok) = match case {
                "ok" => (result.ok(), true),
                "err" => (result.err(), false),
                _ => return Err(wrong(path)),
            };
            let payload = tagged_payload(ty.as_ref(), payload, case, path, wrong)?;
            Ok(Val::Result(if ok { Ok(payload) } else { Err(payload) }))
        }
        Type::Flags(flags) => {
            let array = value.as_array().ok_or_else(|| wrong(path))?;
            let mut set = Vec::with_capacity(array.len());
            // In declaration order, each once, as the guest's side lists them.
            for flag in flags.names() {
                if array.iter().any(|v| v.as_str() == Some(flag)) {
                    set.push(flag.to_owned());
                }
            }
            let known = array
                .iter()
                .all(|v| v.as_str().is_some_and(|f| flags.names().any(|n| n == f)));
            match known {
                true => Ok(Val::Flags(set)),
                false => Err(wrong(path)),
            }
        }
        Type::Own(_) | Type::Borrow(_) | Type::Future(_) | Type::Stream(_) | Type::ErrorContext => {
            Err(wrong(path))
        }
    }
}

fn items(
    ty: &Type,
    value: &Value,
    path: &mut String,
    wrong: impl Fn(&str) -> FromJsonError,
) -> Result<Vec<Val>, FromJsonError> {
    let array = value.as_array().ok_or_else(|| wrong(path))?;
    let mut items = Vec::with_capacity(array.len());
    for (i, v) in array.iter().enumerate() {
        let mark = path.len();
        let _ = write!(path, "[{i}]");
        items.push(from_value(ty, v, path)?);
        path.truncate(mark);
    }
    Ok(items)
}

/// The one key of `{"case": payload}`, and its payload.
fn tag(value: &Value) -> Option<(&str, &Value)> {
    let object = value.as_object()?;
    match object.len() {
        1 => object.iter().next().map(|(k, v)| (k.as_str(), v)),
        _ => None,
    }
}

fn tagged_payload(
    ty: Option<&Type>,
    payload: &Value,
    case: &str,
    path: &mut String,
    wrong: impl Fn(&str) -> FromJsonError,
) -> Result<Option<Box<Val>>, FromJsonError> {
    match ty {
        None if payload.is_null() => Ok(None),
        None => Err(wrong(path)),
        Some(ty) => {
            let mark = path.len();
            let _ = write!(path, ".{case}");
            let val = from_value(ty, payload, path)?;
            path.truncate(mark);
            Ok(Some(Box::new(val)))
        }
    }
}

/// A JSON number, or one of the strings that stand for NaN and the
/// infinities.
fn float(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) if s == NAN => Some(f64::NAN),
        Value::String(s) if s == INFINITY => Some(f64::INFINITY),
        Value::String(s) if s == NEG_INFINITY => Some(f64::NEG_INFINITY),
        _ => None,
    }
}

/// A JSON value for an error message, cut to [`FOUND_CHARS`].
fn shown(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(FOUND_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// What a value is, for an error message.
fn kind(val: &Val) -> &'static str {
    match val {
        Val::Bool(_) => "a bool",
        Val::S8(_) | Val::U8(_) | Val::S16(_) | Val::U16(_) => "an integer",
        Val::S32(_) | Val::U32(_) | Val::S64(_) | Val::U64(_) => "an integer",
        Val::Float32(_) | Val::Float64(_) => "a float",
        Val::Char(_) => "a char",
        Val::String(_) => "a string",
        Val::List(_) | Val::FixedLengthList(_) => "a list",
        Val::Map(_) => "a map",
        Val::Record(_) => "a record",
        Val::Tuple(_) => "a tuple",
        Val::Variant(..) => "a variant",
        Val::Enum(_) => "an enum",
        Val::Option(_) => "an option",
        Val::Result(_) => "a result",
        Val::Flags(_) => "flags",
        Val::Resource(_) => "a resource",
        Val::Future(_) => "a future",
        Val::Stream(_) => "a stream",
        Val::ErrorContext(_) => "an error-context",
    }
}

/// A type as WIT writes it (records, variants, enums and flags by their
/// cases, since a dynamic type has no name).
pub fn name(ty: &Type) -> String {
    match ty {
        Type::Bool => "bool".into(),
        Type::S8 => "s8".into(),
        Type::U8 => "u8".into(),
        Type::S16 => "s16".into(),
        Type::U16 => "u16".into(),
        Type::S32 => "s32".into(),
        Type::U32 => "u32".into(),
        Type::S64 => "s64".into(),
        Type::U64 => "u64".into(),
        Type::Float32 => "f32".into(),
        Type::Float64 => "f64".into(),
        Type::Char => "char".into(),
        Type::String => "string".into(),
        Type::List(list) => format!("list<{}>", name(&list.ty())),
        Type::FixedLengthList(list) => format!("list<{}, {}>", name(&list.ty()), list.len()),
        Type::Map(map) => format!("map<{}, {}>", name(&map.key()), name(&map.value())),
        Type::Record(record) => {
            let fields: Vec<String> = record
                .fields()
                .map(|f| format!("{}: {}", f.name, name(&f.ty)))
                .collect();
            format!("record {{ {} }}", fields.join(", "))
        }
        Type::Tuple(tuple) => {
            let types: Vec<String> = tuple.types().map(|t| name(&t)).collect();
            format!("tuple<{}>", types.join(", "))
        }
        Type::Variant(variant) => {
            let cases: Vec<String> = variant
                .cases()
                .map(|c| match c.ty {
                    Some(ty) => format!("{}({})", c.name, name(&ty)),
                    None => c.name.to_owned(),
                })
                .collect();
            format!("variant {{ {} }}", cases.join(", "))
        }
        Type::Enum(cases) => format!(
            "enum {{ {} }}",
            cases.names().collect::<Vec<_>>().join(", ")
        ),
        Type::Option(option) => format!("option<{}>", name(&option.ty())),
        Type::Result(result) => {
            let part = |t: Option<Type>| t.map_or_else(|| "_".to_owned(), |t| name(&t));
            format!("result<{}, {}>", part(result.ok()), part(result.err()))
        }
        Type::Flags(flags) => format!(
            "flags {{ {} }}",
            flags.names().collect::<Vec<_>>().join(", ")
        ),
        Type::Own(_) => "own<resource>".into(),
        Type::Borrow(_) => "borrow<resource>".into(),
        Type::Future(_) => "future".into(),
        Type::Stream(_) => "stream".into(),
        Type::ErrorContext => "error-context".into(),
    }
}
