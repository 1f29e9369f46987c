//! `open_enum!`: a string enum that keeps values it does not know instead of failing the
//! record (partner APIs add values without notice), for every API model. A leaf.

/// Declares a string enum; each variant's wire text is its name, or the literal given
/// (`Pending = "PENDING"`). An unknown value becomes `Other(text)`, kept verbatim.
macro_rules! open_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident),+ $(,)? }) => {
        $crate::open_enum::open_enum!($(#[$meta])* $name { $($variant = stringify!($variant)),+ });
    };
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $wire:expr),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum $name {
            $($variant,)+
            /// A value this version does not know; kept verbatim.
            Other(String),
        }

        impl $name {
            pub fn as_str(&self) -> &str {
                match self {
                    $($name::$variant => $wire,)+
                    $name::Other(s) => s,
                }
            }

            pub(crate) fn parse(s: &str) -> Self {
                $(if s == $wire {
                    return $name::$variant;
                })+
                $name::Other(s.to_string())
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                Ok($name::parse(&String::deserialize(d)?))
            }
        }
    };
}

pub(crate) use open_enum;
