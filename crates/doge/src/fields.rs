//! Typed reads of config.json fields, with errors that name the field.

use crate::{Error, Result};
use serde_json::{Map, Value};

/// The top-level object of a config.json.
pub(crate) struct Fields<'a>(pub(crate) &'a Map<String, Value>);

impl<'a> Fields<'a> {
    /// The field's value, `None` when absent or `null` (transformers writes `null` for unset).
    fn get(&self, field: &'static str) -> Option<&'a Value> {
        self.0.get(field).filter(|v| !v.is_null())
    }

    fn invalid(field: &'static str, expected: &str, got: &Value) -> Error {
        Error::InvalidField {
            field,
            reason: format!("expected {expected}, got {got}"),
        }
    }

    pub(crate) fn opt_usize(&self, field: &'static str) -> Result<Option<usize>> {
        self.get(field)
            .map(|v| {
                v.as_u64()
                    .and_then(|x| usize::try_from(x).ok())
                    .ok_or_else(|| Self::invalid(field, "a non-negative integer", v))
            })
            .transpose()
    }

    pub(crate) fn usize(&self, field: &'static str) -> Result<usize> {
        self.opt_usize(field)?.ok_or(Error::MissingField { field })
    }

    /// A count that must be at least 1.
    pub(crate) fn positive(&self, field: &'static str) -> Result<usize> {
        positive(field, self.usize(field)?)
    }

    pub(crate) fn positive_or(&self, field: &'static str, default: usize) -> Result<usize> {
        positive(field, self.opt_usize(field)?.unwrap_or(default))
    }

    pub(crate) fn f64_or(&self, field: &'static str, default: f64) -> Result<f64> {
        match self.get(field) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite())
                .ok_or_else(|| Self::invalid(field, "a finite number", v)),
        }
    }

    pub(crate) fn bool_or(&self, field: &'static str, default: bool) -> Result<bool> {
        match self.get(field) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| Self::invalid(field, "true or false", v)),
        }
    }

    pub(crate) fn str_or(&self, field: &'static str, default: &'a str) -> Result<&'a str> {
        match self.get(field) {
            None => Ok(default),
            Some(v) => v
                .as_str()
                .ok_or_else(|| Self::invalid(field, "a string", v)),
        }
    }

    pub(crate) fn object(&self, field: &'static str) -> Result<Option<Fields<'a>>> {
        self.get(field)
            .map(|v| {
                v.as_object()
                    .map(Fields)
                    .ok_or_else(|| Self::invalid(field, "an object", v))
            })
            .transpose()
    }

    pub(crate) fn is_set(&self, field: &'static str) -> bool {
        self.get(field).is_some()
    }
}

fn positive(field: &'static str, x: usize) -> Result<usize> {
    if x == 0 {
        return Err(Error::InvalidField {
            field,
            reason: "must be at least 1".into(),
        });
    }
    Ok(x)
}
