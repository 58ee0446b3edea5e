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
    fn data_type() -> DataType;
    fn to_array(values: Vec<Self>) -> ArrayRef;
    fn from_array(array: &dyn Array) -> Result<Vec<Self>>;
}

fn downcast<'a, T: 'static>(array: &'a dyn Array, what: &str) -> Result<&'a T> {
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
            fn data_type() -> DataType {
                $dt
            }
            fn to_array(values: Vec<Self>) -> ArrayRef {
                Arc::new(<$array>::from(values))
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
    fn data_type() -> DataType {
        DataType::Utf8
    }
    fn to_array(values: Vec<Self>) -> ArrayRef {
        Arc::new(StringArray::from(values))
    }
    fn from_array(array: &dyn Array) -> Result<Vec<Self>> {
        let a = downcast::<StringArray>(array, "String")?;
        Ok(a.iter()
            .map(|v| v.unwrap_or_default().to_string())
            .collect())
    }
}

impl Datum for Vec<String> {
    fn data_type() -> DataType {
        DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true)))
    }
    fn to_array(values: Vec<Self>) -> ArrayRef {
        let mut builder = ListBuilder::new(StringBuilder::new());
        for list in values {
            for s in list {
                builder.values().append_value(s);
            }
            builder.append(true);
        }
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
    fn data_type() -> DataType {
        DataType::Struct(Fields::from(vec![
            Field::new("0", A::data_type(), false),
            Field::new("1", B::data_type(), false),
        ]))
    }
    fn to_array(values: Vec<Self>) -> ArrayRef {
        let (a, b): (Vec<A>, Vec<B>) = values.into_iter().unzip();
        let DataType::Struct(fields) = Self::data_type() else {
            unreachable!("a pair is a struct")
        };
        Arc::new(StructArray::new(
            fields,
            vec![A::to_array(a), B::to_array(b)],
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
