//! C declarations generated from the same macro that declares each Rust layout, so the C
//! header (`include/blobring.h`) can never drift from the Rust types.

use std::fmt::Write as _;

/// A Rust field type with a C spelling.
pub trait CType {
    /// The C declaration of a field of this type named `field`, e.g. `uint32_t len` or
    /// `uint8_t message[224]`.
    fn c_decl(field: &str) -> String;
}

macro_rules! prim {
    ($($t:ty => $c:literal),* $(,)?) => {
        $(impl CType for $t {
            fn c_decl(field: &str) -> String {
                format!("{} {}", $c, field)
            }
        })*
    };
}
prim!(u8 => "uint8_t", u16 => "uint16_t", u32 => "uint32_t", u64 => "uint64_t", i32 => "int32_t");

impl<T: CType, const N: usize> CType for [T; N] {
    fn c_decl(field: &str) -> String {
        T::c_decl(&format!("{field}[{N}]"))
    }
}

/// A `#[repr(C)]` struct of this crate, described for the C header.
pub trait CStruct {
    /// The C struct name (without `struct`).
    const C_NAME: &'static str;
    /// The doc comment's first paragraph.
    const C_DOC: &'static str;
    /// `size_of::<Self>()`.
    const SIZE: usize;
    /// `(declaration, offset)` of every field, in order.
    fn c_fields() -> Vec<(String, usize)>;
}

/// Declares an ABI struct: the Rust type with zerocopy derives, and its [`CStruct`] description.
///
/// The first form is for a layout whose meaningful fields are followed by one reserved field
/// (marked `reserved`): it also declares the `fields` struct holding the meaningful ones, and
/// `new` (reserved zero) and `fields` on the layout, all from the one field list.
macro_rules! abi_struct {
    (
        $(#[doc = $doc:literal])*
        c $cname:literal,
        pub struct $name:ident {
            $( $(#[doc = $fdoc:literal])* pub $field:ident : $ty:ty, )*
            reserved
            $(#[doc = $rdoc:literal])*
            pub $reserved:ident : $rty:ty $(,)?
        }
        $(#[doc = $fsdoc:literal])*
        fields $fields:ident;
    ) => {
        $crate::cdecl::abi_struct! {
            $(#[doc = $doc])*
            c $cname,
            pub struct $name {
                $( $(#[doc = $fdoc])* pub $field: $ty, )*
                $(#[doc = $rdoc])*
                pub $reserved: $rty,
            }
        }

        $(#[doc = $fsdoc])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct $fields {
            $( $(#[doc = $fdoc])* pub $field: $ty, )*
        }

        impl $name {
            #[doc = concat!("The layout carrying `fields`, `", stringify!($reserved), "` zero.")]
            pub const fn new(fields: $fields) -> Self {
                let $fields { $($field),* } = fields;
                Self { $($field,)* $reserved: 0 }
            }

            /// The meaningful fields, as written (not validated).
            pub const fn fields(&self) -> $fields {
                let Self { $($field,)* $reserved: _ } = *self;
                $fields { $($field),* }
            }
        }
    };
    (
        $(#[doc = $doc:literal])*
        c $cname:literal,
        pub struct $name:ident {
            $( $(#[doc = $fdoc:literal])* pub $field:ident : $ty:ty ),* $(,)?
        }
    ) => {
        $(#[doc = $doc])*
        #[repr(C)]
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq,
            zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::KnownLayout, zerocopy::Immutable,
        )]
        pub struct $name {
            $( $(#[doc = $fdoc])* pub $field: $ty ),*
        }

        impl $crate::cdecl::CStruct for $name {
            const C_NAME: &'static str = $cname;
            const C_DOC: &'static str = concat!($($doc, "\n"),*);
            const SIZE: usize = core::mem::size_of::<$name>();
            fn c_fields() -> Vec<(String, usize)> {
                vec![$((
                    <$ty as $crate::cdecl::CType>::c_decl(stringify!($field)),
                    core::mem::offset_of!($name, $field),
                )),*]
            }
        }
    };
}
pub(crate) use abi_struct;

/// Declares a module of byte offsets (`u64`) of a layout's fields, for atomic access through a
/// mapping: each `NAME = field` is `pub const NAME: u64 = offset_of!(Layout, field)`, documented
/// by a link to the field (whose doc says who writes it).
macro_rules! field_offsets {
    (
        $(#[doc = $doc:literal])*
        pub mod $module:ident for $layout:ident { $( $name:ident = $field:ident ),* $(,)? }
    ) => {
        $(#[doc = $doc])*
        pub mod $module {
            $(
                #[doc = concat!(
                    "Byte offset of [`", stringify!($layout), "::", stringify!($field),
                    "`](super::", stringify!($layout), "::", stringify!($field), ")."
                )]
                pub const $name: u64 = core::mem::offset_of!(super::$layout, $field) as u64;
            )*
        }
    };
}
pub(crate) use field_offsets;

/// Declares constants that the C header defines too, so each is named once: the Rust `const`s,
/// and a function `$group` listing each one's C name with its value as C spells it (`Display`,
/// or the format given after the name, e.g. `"0x{:08x}u"`).
macro_rules! c_consts {
    (
        fn $group:ident;
        $(
            $(#[doc = $doc:literal])*
            pub const $name:ident : $ty:ty = $value:expr => $cname:literal $(, $fmt:literal)?;
        )*
    ) => {
        $( $(#[doc = $doc])* pub const $name: $ty = $value; )*

        /// The C `#define`s of these constants: name and value.
        pub(crate) fn $group() -> Vec<(&'static str, String)> {
            vec![$( ($cname, $crate::cdecl::c_consts!(@value $name $(, $fmt)?)) ),*]
        }
    };
    (@value $name:ident) => {
        $name.to_string()
    };
    (@value $name:ident, $fmt:literal) => {
        format!($fmt, $name)
    };
}
pub(crate) use c_consts;

/// Declares a set of codes that travel in an integer field (statuses, opcodes): an enum of that
/// representation with one variant a code, each given once — its code, its C name and its
/// meaning (the variant's doc, [`Display`](core::fmt::Display) and what error messages quote) —
/// and a function `$group` listing the C `#define`s, as [`c_consts!`] does.
///
/// The wire field stays an integer (a peer may write any value); `from_code` names it, `None`
/// for a code this ABI does not define.
macro_rules! c_codes {
    (
        fn $group:ident;
        $(#[doc = $doc:literal])*
        pub enum $name:ident: $repr:ty {
            $( $variant:ident = $code:literal => $cname:literal: $meaning:literal, )*
        }
    ) => {
        $(#[doc = $doc])*
        #[repr($repr)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( #[doc = concat!($meaning, " (`", $cname, "`).")] $variant = $code, )*
        }

        impl $name {
            /// Every variant, in code order.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            /// The code on the wire.
            pub const fn code(self) -> $repr {
                self as $repr
            }

            /// The variant `code` stands for; `None` for a code this ABI does not define.
            pub const fn from_code(code: $repr) -> Option<Self> {
                match code {
                    $($code => Some(Self::$variant),)*
                    _ => None,
                }
            }

            /// What the code means.
            pub const fn meaning(self) -> &'static str {
                match self {
                    $(Self::$variant => $meaning,)*
                }
            }

            /// The code's name in the C header.
            pub const fn c_name(self) -> &'static str {
                match self {
                    $(Self::$variant => $cname,)*
                }
            }
        }

        impl core::fmt::Display for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str(self.meaning())
            }
        }

        /// The C `#define`s of these codes: name and value.
        pub(crate) fn $group() -> Vec<(&'static str, String)> {
            $name::ALL.iter().map(|s| (s.c_name(), s.code().to_string())).collect()
        }
    };
}
pub(crate) use c_codes;

/// Emits one struct with its size and offset assertions.
pub(crate) fn emit_struct<S: CStruct>(out: &mut String) {
    let doc = S::C_DOC.split("\n\n").next().unwrap_or("").trim();
    if !doc.is_empty() {
        out.push_str("/*");
        for line in doc.lines() {
            let _ = write!(out, "\n *{}", line.trim_end());
        }
        out.push_str("\n */\n");
    }
    let _ = writeln!(out, "struct {} {{", S::C_NAME);
    for (decl, _) in S::c_fields() {
        let _ = writeln!(out, "    {decl};");
    }
    out.push_str("};\n");
    let _ = writeln!(
        out,
        "BLOBRING_STATIC_ASSERT(sizeof(struct {n}) == {s}, \"struct {n} size\");",
        n = S::C_NAME,
        s = S::SIZE
    );
    for (decl, off) in S::c_fields() {
        let field = decl
            .rsplit(' ')
            .next()
            .and_then(|f| f.split('[').next())
            .unwrap_or_default()
            .to_owned();
        let _ = writeln!(
            out,
            "BLOBRING_STATIC_ASSERT(offsetof(struct {n}, {field}) == {off}, \"{n}.{field}\");",
            n = S::C_NAME
        );
    }
    out.push('\n');
}
