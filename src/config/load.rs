//! Loading, once at start-up (or in `skywave check-config`): the file's YAML
//! tree is walked beside the tree of the defaults, which splits it into the
//! known keys and the unknown ones (a warning, never fatal, because a config
//! written for any Go version must load); `SKYWAVE_*` variables replace known
//! keys; one deserialization into `Config` reads every field, and its error
//! names the key that failed; `validate.rs` checks the rules between keys.
//!
//! Deserialization goes through `serde_path_to_error`, which records the
//! path of the field whose `deserialize_with` refused its value, so no field
//! has to know its own key.

use std::path::Path;
use std::sync::LazyLock;

use serde_path_to_error::Segment;
use yaml_serde::{Mapping, Value};

use super::show::leaves;
use super::validate::validate;
use super::{env_name, key_error, Config, ConfigError, Loaded, Secret};

/// The defaults as a YAML tree: its mappings are the sections, its leaves
/// the keys.
static DEFAULTS: LazyLock<Mapping> = LazyLock::new(|| {
    yaml_serde::to_value(Config::defaults())
        .expect("plain structs serialize")
        .as_mapping()
        .cloned()
        .expect("a struct serializes to a mapping")
});

static KEYS: LazyLock<Vec<String>> = LazyLock::new(|| {
    leaves(&Value::Mapping(DEFAULTS.clone()))
        .into_iter()
        .map(|(key, _)| key)
        .collect()
});

/// Every key the service understands, as a dotted path (`redis.pool_size`),
/// in the order of the struct fields.
pub fn keys() -> &'static [String] {
    &KEYS
}

impl Config {
    /// Reads `path` (if any) and applies overrides from `env`. Without a
    /// configured secret this fails naming the key, unless `generate_secret`
    /// allows one for this run (a terminal, or an explicit flag).
    pub fn load(
        path: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
        generate_secret: bool,
    ) -> Result<Loaded, ConfigError> {
        let document = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                parse(&text).map_err(|message| ConfigError::Yaml {
                    path: path.display().to_string(),
                    message,
                })?
            }
            None => Mapping::new(),
        };
        Self::from_document(document, env, generate_secret)
    }

    /// Parses YAML text directly (used by tests and the fuzzer).
    pub fn from_yaml(text: &str) -> Result<Loaded, ConfigError> {
        let document = parse(text).map_err(|message| ConfigError::Yaml {
            path: "<text>".to_string(),
            message,
        })?;
        Self::from_document(document, &|_| None, false)
    }

    fn from_document(
        document: Mapping,
        env: &dyn Fn(&str) -> Option<String>,
        may_generate_secret: bool,
    ) -> Result<Loaded, ConfigError> {
        let mut unknown = Vec::new();
        let mut known = split_known(document, &DEFAULTS, "", &mut unknown);
        for key in keys() {
            // Environment values are always strings; the fields read them
            // as YAML would read the same text quoted.
            if let Some(value) = env(&env_name(key)) {
                insert(&mut known, key, Value::String(value));
            }
        }
        let mut generated_secret = false;
        if !known.contains_key("worker_secret") {
            // A null secret is refused by its field, in its turn among the
            // fields, with a message that says how to configure one.
            let secret = if may_generate_secret {
                generated_secret = true;
                Value::String(Secret::generate().expose().to_string())
            } else {
                Value::Null
            };
            known.insert("worker_secret".into(), secret);
        }
        let known = in_field_order(known, &DEFAULTS);
        let mut config: Config = serde_path_to_error::deserialize(Value::Mapping(known))
            .map_err(|error| key_error(&key_of(error.path()), error.inner().to_string()))?;
        let mut warnings = Vec::new();
        validate(&mut config, &mut warnings)?;
        unknown.sort();
        warnings.extend(unknown.iter().map(|key| {
            let hint = suggestion(key)
                .map(|known| format!(" (did you mean `{known}`?)"))
                .unwrap_or_default();
            format!("unknown config key `{key}` ignored{hint}")
        }));
        Ok(Loaded {
            config,
            warnings,
            generated_secret,
        })
    }
}

fn parse(text: &str) -> Result<Mapping, String> {
    let document: Value = yaml_serde::from_str(text).map_err(|e| e.to_string())?;
    match document {
        Value::Null => Ok(Mapping::new()),
        Value::Mapping(mapping) => text_keys(mapping, true),
        _ => Err("the top level must be a mapping of `key: value` lines".to_string()),
    }
}

/// `mapping` with its keys, and those of skywave's sections in it, as text.
/// Keys are compared as text: one that YAML reads as a number or a boolean
/// (`1:`, `true:`) is an unknown key, never a field by its position.
fn text_keys(mapping: Mapping, top_level: bool) -> Result<Mapping, String> {
    let mut out = Mapping::new();
    for (key, value) in mapping {
        let key = match key {
            Value::String(s) => s,
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            other => return Err(format!("unsupported key {other:?}")),
        };
        let section = top_level && DEFAULTS.get(key.as_str()).is_some_and(Value::is_mapping);
        let value = match value {
            Value::Mapping(inner) if section => Value::Mapping(text_keys(inner, false)?),
            other => other,
        };
        out.insert(Value::String(key), value);
    }
    Ok(out)
}

/// The known keys of `document`, walked beside `defaults`; the paths of the
/// others go to `unknown`. An empty value (`redis_url:`) means the default,
/// as it does for the Go worker. Only skywave's sections nest: a mapping
/// under any other key is one unknown key, and so is a section that is not
/// a mapping.
fn split_known(
    document: Mapping,
    defaults: &Mapping,
    prefix: &str,
    unknown: &mut Vec<String>,
) -> Mapping {
    let mut known = Mapping::new();
    for (key, value) in document {
        let name = key.as_str().unwrap_or_default().to_string();
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        match (defaults.get(name.as_str()), value) {
            (None, _) => unknown.push(path),
            (Some(_), Value::Null) => {}
            (Some(Value::Mapping(section)), Value::Mapping(inner)) => {
                let inner = split_known(inner, section, &path, unknown);
                known.insert(key, Value::Mapping(inner));
            }
            (Some(Value::Mapping(_)), _) => unknown.push(path),
            (Some(_), value) => {
                known.insert(key, value);
            }
        }
    }
    known
}

/// `tree` with its keys in the order of the struct fields, so that of two
/// bad values the first in that order is reported, whatever the file's order.
fn in_field_order(mut tree: Mapping, defaults: &Mapping) -> Mapping {
    let mut ordered = Mapping::new();
    for (key, default) in defaults {
        match (tree.remove(key), default) {
            (Some(Value::Mapping(section)), Value::Mapping(section_defaults)) => {
                let section = in_field_order(section, section_defaults);
                ordered.insert(key.clone(), Value::Mapping(section));
            }
            (Some(value), _) => {
                ordered.insert(key.clone(), value);
            }
            (None, _) => {}
        }
    }
    ordered
}

/// Sets the dotted `key` in `tree`, making its section if needed.
fn insert(tree: &mut Mapping, key: &str, value: Value) {
    match key.split_once('.') {
        Some((section, rest)) => {
            let section = Value::String(section.to_string());
            if !tree.get(&section).is_some_and(Value::is_mapping) {
                tree.insert(section.clone(), Value::Mapping(Mapping::new()));
            }
            if let Some(Value::Mapping(inner)) = tree.get_mut(&section) {
                insert(inner, rest, value);
            }
        }
        None => {
            tree.insert(Value::String(key.to_string()), value);
        }
    }
}

/// The dotted key of a field's path (a list index inside it is dropped).
fn key_of(path: &serde_path_to_error::Path) -> String {
    let keys: Vec<&str> = path
        .iter()
        .filter_map(|segment| match segment {
            Segment::Map { key } => Some(key.as_str()),
            _ => None,
        })
        .collect();
    keys.join(".")
}

/// The known key closest to a misspelt one, for the unknown-key warning.
fn suggestion(unknown: &str) -> Option<&'static str> {
    keys()
        .iter()
        .map(|known| (edit_distance(unknown, known), known.as_str()))
        .filter(|(distance, _)| *distance <= 3)
        .min()
        .map(|(_, known)| known)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != *cb);
            current.push(substitute.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}
