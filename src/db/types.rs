//! How domain values cross the database edge: text columns decoded into the domain's types
//! (stored values are canonical, so they are taken as they are), so that nobody re-parses or
//! compares them as strings.

use sqlx::{
    Decode, Encode, Postgres, Type,
    encode::IsNull,
    error::BoxDynError,
    postgres::{PgArgumentBuffer, PgTypeInfo, PgValueRef},
};

use crate::domain::{Email, Phone, Username, resolution::BindingStatus};

/// A text column holding a domain value.
macro_rules! text_column {
    ($name:ty, |$raw:ident| $decode:expr, |$value:ident| $encode:expr) => {
        impl Type<Postgres> for $name {
            fn type_info() -> PgTypeInfo {
                <String as Type<Postgres>>::type_info()
            }

            fn compatible(ty: &PgTypeInfo) -> bool {
                <String as Type<Postgres>>::compatible(ty)
            }
        }

        impl<'r> Decode<'r, Postgres> for $name {
            fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
                let $raw = <&str as Decode<Postgres>>::decode(value)?;
                $decode
            }
        }

        impl Encode<'_, Postgres> for $name {
            fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
                let $value = self;
                <&str as Encode<Postgres>>::encode_by_ref(&$encode, buf)
            }
        }
    };
}

text_column!(Email, |raw| Ok(Email::from_stored(raw.to_owned())), |v| v
    .as_str());
text_column!(Phone, |raw| Ok(Phone::from_e164(raw.to_owned())), |v| v
    .as_str());
text_column!(
    Username,
    |raw| Ok(Username::from_stored(raw.to_owned())),
    |v| v.as_str()
);
text_column!(
    BindingStatus,
    |raw| BindingStatus::parse(raw).ok_or_else(|| format!("unknown binding status {raw:?}").into()),
    |v| v.as_str()
);
text_column!(
    OutboxKind,
    |raw| OutboxKind::parse(raw).ok_or_else(|| format!("unknown outbox kind {raw:?}").into()),
    |v| v.as_str()
);

/// A row a statement receives among many, as a value of a composite type (created by the
/// typed-records migration): `record!(Type as "sql_name", |r| field, ...)` encodes each value
/// in the order of the type's fields, so that `$1::sql_name[]` carries a table's rows in the
/// binary protocol. A value of another type in a field's place is refused by the server.
macro_rules! record {
    ($ty:ty as $name:literal, |$r:ident| $($value:expr),+ $(,)?) => {
        impl ::sqlx::Type<::sqlx::Postgres> for $ty {
            fn type_info() -> ::sqlx::postgres::PgTypeInfo {
                ::sqlx::postgres::PgTypeInfo::with_name($name)
            }
        }

        impl ::sqlx::postgres::PgHasArrayType for $ty {
            fn array_type_info() -> ::sqlx::postgres::PgTypeInfo {
                ::sqlx::postgres::PgTypeInfo::array_of($name)
            }
        }

        impl ::sqlx::Encode<'_, ::sqlx::Postgres> for $ty {
            fn encode_by_ref(
                &self,
                buf: &mut ::sqlx::postgres::PgArgumentBuffer,
            ) -> Result<::sqlx::encode::IsNull, ::sqlx::error::BoxDynError> {
                let $r = self;
                let mut record = ::sqlx::postgres::types::PgRecordEncoder::new(buf);
                $(record.encode($value)?;)+
                record.finish();
                Ok(::sqlx::encode::IsNull::No)
            }
        }
    };
}
pub(crate) use record;

/// What an outbox row holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutboxKind {
    /// An outbound event, published to the events exchange and kept for replay.
    Event,
    /// A reply, published to the requester's queue and deleted.
    Reply,
}

impl OutboxKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Event => "event",
            Self::Reply => "reply",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        [Self::Event, Self::Reply]
            .into_iter()
            .find(|k| k.as_str() == raw)
    }
}

/// A value read back from the database, where only canonical values are written.
pub trait Stored: Sized {
    fn from_stored(value: String) -> Self;
}

impl Stored for Email {
    fn from_stored(value: String) -> Self {
        Email::from_stored(value)
    }
}

impl Stored for Phone {
    fn from_stored(value: String) -> Self {
        Phone::from_e164(value)
    }
}

impl Stored for Username {
    fn from_stored(value: String) -> Self {
        Username::from_stored(value)
    }
}

/// Serde's reading of an optional stored value in a row aggregated as JSON (no `Deserialize`
/// on the domain types themselves: a value from a request must be parsed, never taken as is).
pub fn stored<'de, D: serde::Deserializer<'de>, T: Stored>(d: D) -> Result<Option<T>, D::Error> {
    Ok(<Option<String> as serde::Deserialize>::deserialize(d)?.map(T::from_stored))
}
