//! Request bodies checked against the Compute v1 discovery document, as Google's front
//! end checks them: unknown fields, wrong JSON types and bad enum values are 400s naming
//! the field, and output-only fields are accepted and dropped.
//!
//! The sim embeds `discovery/compute-v1-requests.json`, the request schemas pm sends
//! (Instance, BulkInsertInstanceResource, InstancesSetLabelsRequest and every schema
//! they reference) trimmed from google-api-python-client's copy of the document by
//! `scripts/trim-discovery.py`; the file names its source and revision.
//! `--discovery-document FILE` loads a full document instead.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use serde::Deserialize;
use serde_json::{Map, Value};

use super::{ApiError, World};

/// The trimmed document compiled into the sim.
const EMBEDDED: &str = include_str!("../../discovery/compute-v1-requests.json");

/// The request schemas gce-sim checks bodies against; each must be in a document.
const REQUIRED: [&str; 3] = [
    "Instance",
    "BulkInsertInstanceResource",
    "InstancesSetLabelsRequest",
];

/// How JSON values are shown in errors: at most this many characters.
const SHOWN_VALUE: usize = 80;

/// Why a discovery document cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    /// The file cannot be read.
    #[error("cannot read the discovery document {path:?}: {reason}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        reason: String,
    },
    /// The text is not a discovery document.
    #[error("the discovery document {path:?} does not parse: {reason}")]
    Malformed {
        /// The file (`embedded` for the built-in copy).
        path: PathBuf,
        /// The JSON error.
        reason: String,
    },
    /// A schema gce-sim needs, or one a schema references, is missing.
    #[error("the discovery document {path:?} has no schema {schema:?}")]
    MissingSchema {
        /// The file.
        path: PathBuf,
        /// The schema's id.
        schema: String,
    },
}

/// The part of a discovery document the checks read.
#[derive(Debug, Deserialize)]
struct Document {
    schemas: HashMap<String, Schema>,
}

/// One schema: an object's properties.
#[derive(Debug, Default, Deserialize)]
struct Schema {
    #[serde(default)]
    properties: HashMap<String, Property>,
}

/// One property (or array item, or map value) of a schema.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Property {
    #[serde(rename = "type")]
    kind: Option<String>,
    format: Option<String>,
    #[serde(rename = "$ref")]
    reference: Option<String>,
    items: Option<Box<Property>>,
    additional_properties: Option<Box<Property>>,
    #[serde(rename = "enum")]
    values: Option<Vec<String>>,
    #[serde(default)]
    read_only: bool,
    description: Option<String>,
}

impl Property {
    /// A property that accepts any value.
    const ANY: Property = Property {
        kind: None,
        format: None,
        reference: None,
        items: None,
        additional_properties: None,
        values: None,
        read_only: false,
        description: None,
    };

    /// Marks output-only fields (`readOnly`, or "[Output Only]" in the description, as
    /// the document words most of them) and drops the descriptions.
    fn normalize(&mut self) {
        if let Some(text) = self.description.take() {
            self.read_only |= text.to_ascii_lowercase().contains("[output only]");
        }
        for nested in [&mut self.items, &mut self.additional_properties]
            .into_iter()
            .flatten()
        {
            nested.normalize();
        }
    }

    /// The schemas this property references, nested ones included.
    fn references(&self) -> Vec<&str> {
        let mut found: Vec<&str> = self.reference.as_deref().into_iter().collect();
        for nested in [&self.items, &self.additional_properties]
            .into_iter()
            .flatten()
        {
            found.extend(nested.references());
        }
        found
    }

    /// The proto type an error names for this property.
    fn proto_type(&self) -> &'static str {
        if self.reference.is_some() {
            return "TYPE_MESSAGE";
        }
        match (self.kind.as_deref(), self.format.as_deref()) {
            (Some("string"), _) if self.values.is_some() => "TYPE_ENUM",
            (Some("string"), Some("int64")) => "TYPE_INT64",
            (Some("string"), Some("uint64")) => "TYPE_UINT64",
            (Some("string"), Some("byte")) => "TYPE_BYTES",
            (Some("integer"), Some("uint32")) => "TYPE_UINT32",
            (Some("integer"), _) => "TYPE_INT32",
            (Some("number"), _) => "TYPE_DOUBLE",
            (Some("boolean"), _) => "TYPE_BOOL",
            (Some("object"), _) => "TYPE_MESSAGE",
            _ => "TYPE_STRING",
        }
    }
}

/// The schemas of a discovery document, ready to check request bodies.
#[derive(Debug)]
pub struct Schemas {
    schemas: HashMap<String, Schema>,
}

impl Schemas {
    /// The trimmed document compiled into the sim.
    pub(crate) fn embedded() -> Arc<Schemas> {
        static SCHEMAS: LazyLock<Arc<Schemas>> = LazyLock::new(|| {
            Arc::new(
                Schemas::parse(EMBEDDED, Path::new("embedded"))
                    .unwrap_or_else(|e| panic!("the embedded discovery document: {e}")),
            )
        });
        SCHEMAS.clone()
    }

    /// The document at `path`, or the embedded one.
    pub(crate) fn load(path: Option<&Path>) -> Result<Arc<Schemas>, DiscoveryError> {
        let Some(path) = path else {
            return Ok(Schemas::embedded());
        };
        let text = std::fs::read_to_string(path).map_err(|e| DiscoveryError::Unreadable {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Schemas::parse(&text, path).map(Arc::new)
    }

    fn parse(text: &str, path: &Path) -> Result<Schemas, DiscoveryError> {
        let document: Document =
            serde_json::from_str(text).map_err(|e| DiscoveryError::Malformed {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        let mut schemas = document.schemas;
        for schema in schemas.values_mut() {
            for property in schema.properties.values_mut() {
                property.normalize();
            }
        }
        let found = Schemas { schemas };
        found.check_references(path)?;
        Ok(found)
    }

    /// Every schema gce-sim needs is there, and so is every schema they reference.
    fn check_references(&self, path: &Path) -> Result<(), DiscoveryError> {
        let mut todo: Vec<&str> = REQUIRED.to_vec();
        let mut seen = std::collections::HashSet::new();
        while let Some(name) = todo.pop() {
            if !seen.insert(name) {
                continue;
            }
            let schema = self
                .schemas
                .get(name)
                .ok_or_else(|| DiscoveryError::MissingSchema {
                    path: path.to_path_buf(),
                    schema: name.to_string(),
                })?;
            todo.extend(schema.properties.values().flat_map(Property::references));
        }
        Ok(())
    }

    /// Checks `value` against schema `schema` (one of the required ones), the body
    /// being named `at` in errors; drops output-only and null fields.
    pub(super) fn check(&self, schema: &str, value: &mut Value, at: &str) -> Result<(), ApiError> {
        let property = Property {
            reference: Some(schema.to_string()),
            ..Property::default()
        };
        self.check_value(&property, value, at)
    }

    fn check_value(
        &self,
        property: &Property,
        value: &mut Value,
        at: &str,
    ) -> Result<(), ApiError> {
        let wrong =
            |value: &Value| ApiError::invalid_value(at, property.proto_type(), &shown(value));
        if let Some(reference) = &property.reference {
            let Value::Object(map) = value else {
                return Err(wrong(value));
            };
            return self.check_object(reference, map, at);
        }
        let fits = match (property.kind.as_deref(), &mut *value) {
            (Some("array"), Value::Array(items)) => {
                let item = property.items.as_deref().unwrap_or(&Property::ANY);
                for (i, element) in items.iter_mut().enumerate() {
                    self.check_value(item, element, &format!("{at}[{i}]"))?;
                }
                true
            }
            (Some("object"), Value::Object(map)) => {
                if let Some(entry) = property.additional_properties.as_deref() {
                    for (key, element) in map.iter_mut() {
                        self.check_value(entry, element, &format!("{at}.{key}"))?;
                    }
                }
                true
            }
            (Some("string"), Value::String(text)) => string_fits(property, text),
            (Some("string"), Value::Number(number)) => {
                matches!(property.format.as_deref(), Some("int64" | "uint64"))
                    && integer_in_range(property, &number.to_string())
            }
            (Some("integer"), Value::Number(number)) => {
                integer_in_range(property, &number.to_string())
            }
            (Some("integer"), Value::String(text)) => integer_in_range(property, text),
            (Some("number"), Value::Number(_)) => true,
            (Some("number"), Value::String(text)) => text.parse::<f64>().is_ok(),
            (Some("boolean"), Value::Bool(_)) => true,
            (Some("any") | None, _) => true,
            _ => false,
        };
        if fits {
            Ok(())
        } else {
            Err(wrong(value))
        }
    }

    fn check_object(
        &self,
        schema: &str,
        map: &mut Map<String, Value>,
        at: &str,
    ) -> Result<(), ApiError> {
        let schema = self
            .schemas
            .get(schema)
            .ok_or_else(|| ApiError::invalid(format!("gce-sim knows no schema {schema:?}")))?;
        if let Some(unknown) = map.keys().find(|k| !schema.properties.contains_key(*k)) {
            return Err(ApiError::unknown_name(unknown, at));
        }
        let mut dropped = Vec::new();
        for (key, element) in map.iter_mut() {
            let property = &schema.properties[key];
            if element.is_null() {
                dropped.push(key.clone());
                continue;
            }
            self.check_value(property, element, &format!("{at}.{key}"))?;
            if property.read_only {
                dropped.push(key.clone());
            }
        }
        for key in dropped {
            map.remove(&key);
        }
        Ok(())
    }
}

/// Whether `text` is a valid value of the string property.
fn string_fits(property: &Property, text: &str) -> bool {
    if let Some(values) = &property.values {
        return values.iter().any(|v| v == text);
    }
    match property.format.as_deref() {
        Some("int64" | "uint64") => integer_in_range(property, text),
        Some("byte") => {
            use base64::Engine;
            let trimmed = text.trim_end_matches('=');
            base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(trimmed)
                .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(trimmed))
                .is_ok()
        }
        _ => true,
    }
}

/// Whether `text` is an integer in the range of the property's format.
fn integer_in_range(property: &Property, text: &str) -> bool {
    match property.format.as_deref() {
        Some("uint64") => text.parse::<u64>().is_ok(),
        Some("uint32") => text.parse::<u32>().is_ok(),
        Some("int64") => text.parse::<i64>().is_ok(),
        _ => text.parse::<i32>().is_ok(),
    }
}

/// `value` as JSON, cut to [`SHOWN_VALUE`] characters.
fn shown(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(SHOWN_VALUE) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

impl World {
    /// A request body: JSON, checked against `schema` of the discovery document (named
    /// `resource` in errors, as GCE names the body), output-only fields dropped.
    pub(super) fn request_body(&self, body: &[u8], schema: &str) -> Result<Value, ApiError> {
        let mut value: Value =
            serde_json::from_slice(body).map_err(|e| ApiError::parse_error(&e))?;
        self.schemas.check(schema, &mut value, "resource")?;
        Ok(value)
    }
}

#[cfg(test)]
#[path = "discovery_tests.rs"]
mod tests;
