//! A WIT type as the JSON writer walks it, worked out once when a plugin is
//! loaded: each record's and variant's keys already quoted, each child's
//! type already made, so writing a call's arguments asks wasmtime for no
//! type at all.

use wasmtime::component::Type;

/// A type, with what writing a value of it needs.
#[derive(Debug, Clone)]
pub(crate) struct Shape {
    /// The WIT type, for error messages.
    pub(crate) ty: Type,
    pub(crate) node: Node,
}

/// The structure of a [`Shape`].
#[derive(Debug, Clone)]
pub(crate) enum Node {
    /// A value written from itself alone: a bool, a number, a char, a
    /// string, an enum's case, flags.
    Scalar,
    /// `list<u8>`: a base64 string.
    Bytes,
    /// A list or a fixed-length list of the item.
    List(Box<Shape>),
    /// A map: `[[key, value], ...]`.
    Map(Box<Shape>, Box<Shape>),
    /// Each field's name, its `"name":`, and its type.
    Record(Vec<Named>),
    Tuple(Vec<Shape>),
    /// Each case's name, its `{"name":`, and its payload's type.
    Variant(Vec<Named<Option<Shape>>>),
    /// An option; `nested` when the some is itself an option (written
    /// `{"some": ...}`).
    Option {
        some: Box<Shape>,
        nested: bool,
    },
    /// A result's `ok` and `err` payloads.
    Result {
        ok: Option<Box<Shape>>,
        err: Option<Box<Shape>>,
    },
}

/// A field or a case: its name, the JSON that starts it, and its type.
#[derive(Debug, Clone)]
pub(crate) struct Named<T = Shape> {
    pub(crate) name: Box<str>,
    /// `"name":` for a field, `{"name":` for a case. WIT names are ASCII
    /// letters, digits and hyphens: nothing to escape.
    pub(crate) key: Box<[u8]>,
    pub(crate) shape: T,
}

impl Shape {
    /// The shape of `ty`.
    pub(crate) fn of(ty: &Type) -> Shape {
        let boxed = |ty: &Type| Box::new(Shape::of(ty));
        let node = match ty {
            Type::List(list) if list.ty() == Type::U8 => Node::Bytes,
            Type::List(list) => Node::List(boxed(&list.ty())),
            Type::FixedLengthList(list) => Node::List(boxed(&list.ty())),
            Type::Map(map) => Node::Map(boxed(&map.key()), boxed(&map.value())),
            Type::Record(record) => Node::Record(
                record
                    .fields()
                    .map(|f| Named {
                        name: f.name.into(),
                        key: key(f.name),
                        shape: Shape::of(&f.ty),
                    })
                    .collect(),
            ),
            Type::Tuple(tuple) => Node::Tuple(tuple.types().map(|t| Shape::of(&t)).collect()),
            Type::Variant(variant) => Node::Variant(
                variant
                    .cases()
                    .map(|c| Named {
                        name: c.name.into(),
                        key: [b"{".as_slice(), &key(c.name)].concat().into(),
                        shape: c.ty.as_ref().map(Shape::of),
                    })
                    .collect(),
            ),
            Type::Option(option) => {
                let some = option.ty();
                Node::Option {
                    nested: matches!(some, Type::Option(_)),
                    some: boxed(&some),
                }
            }
            Type::Result(result) => Node::Result {
                ok: result.ok().as_ref().map(boxed),
                err: result.err().as_ref().map(boxed),
            },
            _ => Node::Scalar,
        };
        Shape {
            ty: ty.clone(),
            node,
        }
    }
}

/// A parameter: its name, its `"name":` and its shape.
#[derive(Debug, Clone)]
pub(crate) struct Param {
    pub(crate) name: Box<str>,
    pub(crate) key: Box<[u8]>,
    pub(crate) shape: Shape,
}

impl Param {
    /// The parameter `name` of type `ty`.
    pub(crate) fn new(name: &str, ty: &Type) -> Self {
        Param {
            name: name.into(),
            key: key(name),
            shape: Shape::of(ty),
        }
    }
}

/// `"name":`. WIT names are ASCII letters, digits and hyphens: nothing to
/// escape.
fn key(name: &str) -> Box<[u8]> {
    format!("\"{name}\":").into_bytes().into()
}
