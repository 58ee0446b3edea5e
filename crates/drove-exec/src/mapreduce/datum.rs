//! Keys and values of MapReduce jobs, and how they become Arrow columns.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Float64Array, Int64Array, ListArray, ListBuilder, StringArray, StringBuilder,
    StructArray, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Fields};

use crate::{Error, Result};

/// A type that can be a MapReduce key, value or output: it converts to and from one
/// Arrow column. Implemented for `String`, `i64`, `u64`, `f64`, `Vec<String>` and pairs
/// of these.
pub trait Datum: Clone + Send + Sync + 'static {
    /// The form a map function emits it in: `str` for `String` (and `[String]` for
    /// `Vec<String>`), so that emitting a word borrowed from the input copies it into a
    /// column without allocating; the type itself for the others.
    type Ref: ?Sized + ToOwned<Owned = Self>;
    /// Collects values into a column.
    type Builder: Default + Send;
    fn data_type() -> DataType;
    /// The value in the form it is emitted in.
    fn borrowed(&self) -> &Self::Ref;
    fn append(builder: &mut Self::Builder, value: &Self::Ref);
    /// The column of the values appended so far; the builder is left empty.
    fn finish(builder: &mut Self::Builder) -> ArrayRef;
    fn from_array(array: &dyn Array) -> Result<Vec<Self>>;
}

pub(super) fn downcast<'a, T: 'static>(array: &'a dyn Array, what: &str) -> Result<&'a T> {
    array.as_any().downcast_ref::<T>().ok_or_else(|| {
        Error::Internal(format!(
            "a MapReduce column is {}, not {what}",
            array.data_type()
        ))
    })
}

macro_rules! primitive_datum {
    ($t:ty, $array:ty, $dt:expr) => {
        impl Datum for $t {
            type Ref = $t;
            type Builder = Vec<$t>;
            fn data_type() -> DataType {
                $dt
            }
            fn borrowed(&self) -> &$t {
                self
            }
            fn append(builder: &mut Vec<$t>, value: &$t) {
                builder.push(*value);
            }
            fn finish(builder: &mut Vec<$t>) -> ArrayRef {
                Arc::new(<$array>::from(std::mem::take(builder)))
            }
            fn from_array(array: &dyn Array) -> Result<Vec<Self>> {
                Ok(downcast::<$array>(array, stringify!($t))?.values().to_vec())
            }
        }
    };
}

primitive_datum!(i64, Int64Array, DataType::Int64);
primitive_datum!(u64, UInt64Array, DataType::UInt64);
primitive_datum!(f64, Float64Array, DataType::Float64);

impl Datum for String {
    type Ref = str;
    type Builder = StringBuilder;
    fn data_type() -> DataType {
        DataType::Utf8
    }
    fn borrowed(&self) -> &str {
        self
    }
    fn append(builder: &mut StringBuilder, value: &str) {
        builder.append_value(value);
    }
    fn finish(builder: &mut StringBuilder) -> ArrayRef {
        Arc::new(builder.finish())
    }
    fn from_array(array: &dyn Array) -> Result<Vec<Self>> {
        let a = downcast::<StringArray>(array, "String")?;
        Ok(a.iter()
            .map(|v| v.unwrap_or_default().to_string())
            .collect())
    }
}

impl Datum for Vec<String> {
    type Ref = [String];
    type Builder = ListBuilder<StringBuilder>;
    fn data_type() -> DataType {
        DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true)))
    }
    fn borrowed(&self) -> &[String] {
        self
    }
    fn append(builder: &mut ListBuilder<StringBuilder>, value: &[String]) {
        for s in value {
            builder.values().append_value(s);
        }
        builder.append(true);
    }
    fn finish(builder: &mut ListBuilder<StringBuilder>) -> ArrayRef {
        Arc::new(builder.finish())
    }
    fn from_array(array: &dyn Array) -> Result<Vec<Self>> {
        let lists = downcast::<ListArray>(array, "Vec<String>")?;
        (0..lists.len())
            .map(|i| {
                let inner = lists.value(i);
                String::from_array(inner.as_ref())
            })
            .collect()
    }
}

impl<A: Datum, B: Datum> Datum for (A, B) {
    type Ref = (A, B);
    type Builder = (A::Builder, B::Builder);
    fn data_type() -> DataType {
        DataType::Struct(Fields::from(vec![
            Field::new("0", A::data_type(), false),
            Field::new("1", B::data_type(), false),
        ]))
    }
    fn borrowed(&self) -> &(A, B) {
        self
    }
    fn append(builder: &mut Self::Builder, value: &(A, B)) {
        A::append(&mut builder.0, value.0.borrowed());
        B::append(&mut builder.1, value.1.borrowed());
    }
    fn finish(builder: &mut Self::Builder) -> ArrayRef {
        let DataType::Struct(fields) = Self::data_type() else {
            unreachable!("a pair is a struct")
        };
        Arc::new(StructArray::new(
            fields,
            vec![A::finish(&mut builder.0), B::finish(&mut builder.1)],
            None,
        ))
    }
    fn from_array(array: &dyn Array) -> Result<Vec<Self>> {
        let s = downcast::<StructArray>(array, "a pair")?;
        let a = A::from_array(s.column(0).as_ref())?;
        let b = B::from_array(s.column(1).as_ref())?;
        Ok(a.into_iter().zip(b).collect())
    }
}
