//! The structural pass: the JSON Schemas of `schemas/`, run by a small interpreter of the
//! keywords they use.
//!
//! The template schema is generated from the action catalog ([`crate::actions::schema`]);
//! the alarms schema is the file in `schemas/`, embedded at build time. A general JSON
//! Schema validator (the `jsonschema` crate) cost 130 ms and 100 MiB at each start to compile
//! them, more than the rest of `faultline validate` together; this one reads the schema as
//! it goes. A test runs both on the same documents and compares their findings.

use crate::diagnostic::did_you_mean;
use crate::diagnostic::{join, Diagnostic, Origin};
use regex::Regex;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, OnceLock};

/// The alarms schema, as shipped in `schemas/`.
pub const ALARMS_SCHEMA: &str = include_str!("../../schemas/alarms.schema.json");
/// The name the template schema's `$ref` gives the alarms schema.
const ALARMS_REF: &str = "alarms.schema.json";

struct Schemas {
    template: Value,
    alarms: Value,
    /// Every property name the schemas define, for did-you-mean on unknown keys.
    known_keys: BTreeSet<String>,
    /// Compiled `pattern`s, by their text.
    patterns: Mutex<BTreeMap<String, Regex>>,
}

fn schemas() -> &'static Schemas {
    static SCHEMAS: OnceLock<Schemas> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        let template = crate::actions::schema::generate();
        let alarms: Value = serde_json::from_str(ALARMS_SCHEMA).expect("embedded schema is JSON");
        let mut known_keys = BTreeSet::new();
        collect_property_names(&template, &mut known_keys);
        collect_property_names(&alarms, &mut known_keys);
        Schemas {
            template,
            alarms,
            known_keys,
            patterns: Mutex::default(),
        }
    })
}

fn collect_property_names(schema: &Value, out: &mut BTreeSet<String>) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::Object(props)) = map.get("properties") {
                out.extend(props.keys().cloned());
            }
            map.values().for_each(|v| collect_property_names(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_property_names(v, out)),
        _ => {}
    }
}

/// Checks a template against the experiment template schema.
pub fn check_template(doc: &Value) -> Vec<Diagnostic> {
    let s = schemas();
    collect(s, &s.template, doc, Origin::Template)
}

/// Checks an `--alarms` file against the alarms schema.
pub fn check_alarms(doc: &Value) -> Vec<Diagnostic> {
    let s = schemas();
    collect(s, &s.alarms, doc, Origin::Alarms)
}

fn collect(s: &Schemas, root: &Value, doc: &Value, origin: Origin) -> Vec<Diagnostic> {
    let mut errors = Vec::new();
    Walk { s, root }.check(root, doc, "", &mut errors);
    let mut out: Vec<Diagnostic> = Vec::new();
    for e in &errors {
        for d in describe(e, origin, &s.known_keys) {
            if !out.contains(&d) {
                out.push(d);
            }
        }
    }
    out
}

/// What a schema keyword found wrong.
#[derive(Debug)]
enum Found<'s> {
    /// Keys `additionalProperties: false` does not allow, where `properties` names others.
    AdditionalProperties(Vec<String>),
    /// A `required` key is missing.
    Required(&'s str),
    /// Not of the `type`s named.
    Type(Vec<&'s str>),
    /// Not one of the `enum` values.
    Enum(&'s [Value]),
    /// Does not match the `pattern`.
    Pattern,
    /// A key that fails `propertyNames`.
    PropertyName(String),
    /// Fewer keys than `minProperties`.
    MinProperties(u64),
    /// More keys than `maxProperties`.
    MaxProperties,
    /// Fewer items than `minItems`.
    MinItems(u64),
    /// A value the `false` schema (e.g. `additionalProperties: false` alone) refuses.
    FalseSchema,
    /// Any other keyword, with the message to show.
    Other(String),
}

/// One finding: where in the document, the value there, what is wrong.
#[derive(Debug)]
struct SchemaError<'s, 'd> {
    path: String,
    instance: &'d Value,
    found: Found<'s>,
}

/// Walks a document along a schema, within one schema document (`root`, for `$ref`s).
#[derive(Clone, Copy)]
struct Walk<'s> {
    s: &'s Schemas,
    root: &'s Value,
}

impl<'s> Walk<'s> {
    fn resolve(self, reference: &str) -> (Walk<'s>, &'s Value) {
        let (doc, fragment) = reference.split_once('#').unwrap_or((reference, ""));
        let root = match doc {
            "" => self.root,
            ALARMS_REF => &self.s.alarms,
            other => unreachable!("the embedded schemas refer to no `{other}`"),
        };
        let target = root
            .pointer(fragment)
            .unwrap_or_else(|| unreachable!("the embedded schemas define `{reference}`"));
        (Walk { s: self.s, root }, target)
    }

    fn matches(self, schema: &'s Value, doc: &Value) -> bool {
        let mut errors = Vec::new();
        self.check(schema, doc, "", &mut errors);
        errors.is_empty()
    }

    fn pattern(self, pattern: &str, text: &str) -> bool {
        let mut cache = self.s.patterns.lock().unwrap_or_else(|e| e.into_inner());
        let re = cache.entry(pattern.to_string()).or_insert_with(|| {
            Regex::new(pattern).unwrap_or_else(|e| unreachable!("the embedded schemas' patterns compile: {e}"))
        });
        re.is_match(text)
    }

    fn check<'d>(self, schema: &'s Value, doc: &'d Value, path: &str, out: &mut Vec<SchemaError<'s, 'd>>) {
        let at = |found: Found<'s>| SchemaError {
            path: path.to_string(),
            instance: doc,
            found,
        };
        let schema = match schema {
            Value::Bool(true) => return,
            Value::Object(map) => map,
            _ => return out.push(at(Found::FalseSchema)),
        };
        if let Some(Value::String(r)) = schema.get("$ref") {
            let (walk, target) = self.resolve(r);
            walk.check(target, doc, path, out);
        }
        if let Some(t) = schema.get("type") {
            let names: Vec<&'s str> = match t {
                Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                other => other.as_str().into_iter().collect(),
            };
            if !names.iter().any(|n| has_type(doc, n)) {
                return out.push(at(Found::Type(names)));
            }
        }
        if let Some(Value::Array(options)) = schema.get("enum") {
            if !options.contains(doc) {
                out.push(at(Found::Enum(options)));
            }
        }
        if let Some(c) = schema.get("const") {
            if c != doc {
                out.push(at(Found::Other(format!("{c} was expected"))));
            }
        }
        if let Value::String(text) = doc {
            let chars = text.chars().count() as u64;
            if let Some(Value::String(p)) = schema.get("pattern") {
                if !self.pattern(p, text) {
                    out.push(at(Found::Pattern));
                }
            }
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64).filter(|m| chars < *m) {
                out.push(at(Found::Other(format!(
                    "{doc} is shorter than {min} character{}",
                    plural(min)
                ))));
            }
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64).filter(|m| chars > *m) {
                out.push(at(Found::Other(format!(
                    "{doc} is longer than {max} character{}",
                    plural(max)
                ))));
            }
        }
        if let Some(n) = doc.as_f64() {
            if let Some(min) = schema.get("minimum").filter(|m| m.as_f64().is_some_and(|m| n < m)) {
                out.push(at(Found::Other(format!("{doc} is less than the minimum of {min}"))));
            }
            if let Some(max) = schema.get("maximum").filter(|m| m.as_f64().is_some_and(|m| n > m)) {
                out.push(at(Found::Other(format!("{doc} is greater than the maximum of {max}"))));
            }
        }
        if let Value::Array(items) = doc {
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64) {
                if (items.len() as u64) < min {
                    out.push(at(Found::MinItems(min)));
                }
            }
            if schema.get("uniqueItems") == Some(&Value::Bool(true))
                && items.iter().enumerate().any(|(i, a)| items[..i].contains(a))
            {
                out.push(at(Found::Other(format!("{doc} has non-unique elements"))));
            }
            if let Some(item) = schema.get("items") {
                for (i, v) in items.iter().enumerate() {
                    self.check(item, v, &join(path, i), out);
                }
            }
        }
        if let Value::Object(map) = doc {
            self.object(schema, map, doc, path, out);
        }
        if let Some(Value::Array(all)) = schema.get("allOf") {
            for s in all {
                self.check(s, doc, path, out);
            }
        }
        if let Some(cond) = schema.get("if") {
            let branch = if self.matches(cond, doc) { "then" } else { "else" };
            if let Some(s) = schema.get(branch) {
                self.check(s, doc, path, out);
            }
        }
    }

    fn object<'d>(
        self,
        schema: &'s serde_json::Map<String, Value>,
        map: &'d serde_json::Map<String, Value>,
        doc: &'d Value,
        path: &str,
        out: &mut Vec<SchemaError<'s, 'd>>,
    ) {
        let at = |found| SchemaError {
            path: path.to_string(),
            instance: doc,
            found,
        };
        if let Some(Value::Array(required)) = schema.get("required") {
            for key in required.iter().filter_map(Value::as_str) {
                if !map.contains_key(key) {
                    out.push(at(Found::Required(key)));
                }
            }
        }
        let len = map.len() as u64;
        if let Some(min) = schema.get("minProperties").and_then(Value::as_u64).filter(|m| len < *m) {
            out.push(at(Found::MinProperties(min)));
        }
        if schema
            .get("maxProperties")
            .and_then(Value::as_u64)
            .is_some_and(|m| len > m)
        {
            out.push(at(Found::MaxProperties));
        }
        if let Some(names) = schema.get("propertyNames") {
            for key in map.keys() {
                if !self.matches(names, &Value::String(key.clone())) {
                    out.push(at(Found::PropertyName(key.clone())));
                }
            }
        }
        let properties = schema.get("properties").and_then(Value::as_object);
        for (key, value) in map {
            let child = join(path, key);
            match (properties.and_then(|p| p.get(key)), schema.get("additionalProperties")) {
                (Some(s), _) => self.check(s, value, &child, out),
                (None, Some(Value::Bool(false))) if properties.is_some() => {}
                (None, Some(extra)) => self.check(extra, value, &child, out),
                (None, None) => {}
            }
        }
        if let (Some(props), Some(Value::Bool(false))) = (properties, schema.get("additionalProperties")) {
            let unexpected: Vec<String> = map.keys().filter(|k| !props.contains_key(*k)).cloned().collect();
            if !unexpected.is_empty() {
                out.push(at(Found::AdditionalProperties(unexpected)));
            }
        }
    }
}

fn has_type(v: &Value, name: &str) -> bool {
    match name {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        "number" => v.is_number(),
        "integer" => v.is_u64() || v.is_i64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        _ => false,
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn describe(e: &SchemaError<'_, '_>, origin: Origin, known: &BTreeSet<String>) -> Vec<Diagnostic> {
    let path = e.path.clone();
    let instance = e.instance;
    let last = path.rsplit('/').next().unwrap_or("");
    let under_parameters = path.contains("/parameters/");
    let d = |pointer: String, message: String| Diagnostic::at(origin, pointer, message);
    match &e.found {
        Found::AdditionalProperties(unexpected) => unexpected
            .iter()
            .map(|key| {
                let hint = did_you_mean(key, known.iter().map(String::as_str))
                    .map(|m| format!("did you mean `{m}`?"))
                    .unwrap_or_else(|| "remove it; unknown keys are never ignored".into());
                d(join(&path, key), format!("unknown key `{key}`")).hint(hint)
            })
            .collect(),
        Found::Required(name) => {
            vec![d(join(&path, name), format!("required key `{name}` is missing"))]
        }
        Found::Type(expected) => {
            let found = json_type(instance);
            let diag = d(
                path.clone(),
                format!("expected a {}, found {found}", expected.join(" or ")),
            );
            vec![if under_parameters || path.ends_with("/parameters") {
                diag.hint(format!(
                    "action parameters are strings, as in FIS: write \"{}\"",
                    plain(instance)
                ))
            } else {
                diag
            }]
        }
        Found::Enum(options) => {
            let options: Vec<&str> = options.iter().filter_map(Value::as_str).collect();
            let given = plain(instance);
            let hint = did_you_mean(&given, options.iter().copied())
                .map(|m| format!("did you mean `{m}`?"))
                .unwrap_or_else(|| format!("use one of: {}", options.join(", ")));
            vec![d(path, format!("`{given}` is not an accepted value")).hint(hint)]
        }
        Found::Pattern => {
            let given = plain(instance);
            let (message, hint) = match last {
                "selectionMode" => (
                    format!("`{given}` is not a selection mode"),
                    "use ALL, COUNT(n) with n >= 1, or PERCENT(n) with 0 < n <= 100",
                ),
                "duration" | "period" | "timeout" => (
                    format!("`{given}` is not an ISO 8601 duration"),
                    "write e.g. PT30S, PT5M or PT1H30M",
                ),
                "url" => (
                    format!("`{given}` is not an http(s) URL"),
                    "start it with http:// or https://",
                ),
                "lossPercent" => (
                    format!("`{given}` is not a number"),
                    "write a number such as \"5\" or \"2.5\"",
                ),
                _ if under_parameters => (
                    format!("`{given}` is not a whole number"),
                    "write a whole number such as \"50\"",
                ),
                _ => (
                    format!("`{given}` is not accepted here"),
                    "see the schema's description of this key",
                ),
            };
            vec![d(path, message).hint(hint)]
        }
        Found::PropertyName(name) => {
            vec![d(join(&path, name), format!("`{name}` is not a valid name"))
                .hint("names start with a letter or digit and use only letters, digits, '_', '.' and '-' (at most 64)")]
        }
        Found::MinProperties(limit) if path == "/actions" => {
            vec![d(path, format!("at least {limit} action is required"))
                .hint("add an action, e.g. {\"wait\": {\"actionId\": \"aws:fis:wait\", \"parameters\": {\"duration\": \"PT1M\"}}}")]
        }
        Found::MinProperties(limit) => vec![d(
            path,
            format!(
                "{instance} has less than {limit} propert{}",
                if *limit == 1 { "y" } else { "ies" }
            ),
        )],
        Found::MinItems(_) if path == "/stopConditions" => {
            vec![d(path, "at least one stop condition is required".into())
                .hint("write [{\"source\": \"none\"}] to run without one")]
        }
        Found::MinItems(limit) => vec![d(
            path,
            format!("{instance} has less than {limit} item{}", plural(*limit)),
        )],
        // The wait action's `targets` is `additionalProperties: false` plus `maxProperties: 0`;
        // the latter's message says it better, so the false schema's is dropped.
        Found::FalseSchema if path.starts_with("/actions/") && path.contains("/targets") => Vec::new(),
        Found::FalseSchema => vec![d(path, "no value is allowed here".into())],
        Found::MaxProperties if path.ends_with("/targets") => {
            vec![d(path, "aws:fis:wait takes no targets".into()).hint("remove the targets object")]
        }
        Found::MaxProperties => vec![d(path, "too many keys".into())],
        Found::Other(message) => vec![d(path, message.clone())],
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A value as a user wrote it: strings without quotes, the rest as JSON.
fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn schemas_describe_every_property() {
        // `if` conditions and the refinements in `then` re-state properties described
        // elsewhere; every property a user can write is described where it is declared.
        fn walk(v: &Value, at: &str, declared_here: bool) {
            if let Value::Object(m) = v {
                if let (true, Some(Value::Object(props))) = (declared_here, m.get("properties")) {
                    for (k, p) in props {
                        let described = p.get("description").is_some() || p.get("$ref").is_some();
                        assert!(described, "{at}/properties/{k} has no description");
                    }
                }
                for (k, v) in m {
                    match k.as_str() {
                        "if" => {}
                        "then" => walk(v, &format!("{at}/then"), false),
                        _ => walk(v, &format!("{at}/{k}"), declared_here || k == "properties"),
                    }
                }
            }
        }
        walk(&crate::actions::schema::generate(), "", true);
        walk(&serde_json::from_str(ALARMS_SCHEMA).unwrap(), "", true);
        assert!(check_template(&json!({})).len() >= 3);
    }

    #[test]
    fn unknown_key_points_at_the_key_with_a_suggestion() {
        let diags = check_template(&json!({
            "description": "x", "stopConditions": [{"source": "none"}],
            "actions": {"w": {"actionId": "aws:fis:wait", "parameters": {"duration": "PT1S"}}},
            "experimentOption": {}
        }));
        assert_eq!(diags.len(), 1, "{diags:?}");
        assert_eq!(diags[0].pointer(), Some("/experimentOption"));
        assert_eq!(diags[0].hint.as_deref(), Some("did you mean `experimentOptions`?"));
    }

    /// A general validator (the `jsonschema` crate) for the template or the alarms schema.
    fn reference(alarms_file: bool) -> jsonschema::Validator {
        let alarms: Value = serde_json::from_str(ALARMS_SCHEMA).unwrap();
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .with_resource(
                alarms["$id"].as_str().unwrap(),
                jsonschema::Resource::from_contents(alarms.clone()).unwrap(),
            )
            .build(if alarms_file { &alarms } else { &schemas().template })
            .unwrap()
    }

    fn own_paths(doc: &Value, alarms_file: bool) -> BTreeSet<String> {
        let s = schemas();
        let root = if alarms_file { &s.alarms } else { &s.template };
        let mut errors = Vec::new();
        Walk { s, root }.check(root, doc, "", &mut errors);
        errors.into_iter().map(|e| e.path).collect()
    }

    /// Every value of `doc` replaced in turn by each of a few wrong ones, and every key
    /// removed in turn and misspelt in turn.
    fn mutants(doc: &Value) -> Vec<Value> {
        fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
            match v {
                Value::Object(m) => m.iter().for_each(|(k, v)| pointers(v, join(&at, k), out)),
                Value::Array(a) => a.iter().enumerate().for_each(|(i, v)| pointers(v, join(&at, i), out)),
                _ => {}
            }
            out.push(at);
        }
        let mut at = Vec::new();
        pointers(doc, String::new(), &mut at);
        let mut out = Vec::new();
        for p in at.iter().filter(|p| !p.is_empty()) {
            let (parent, key) = p.rsplit_once('/').unwrap();
            for wrong in [
                json!(7),
                json!(-1.5),
                json!(""),
                json!("x y"),
                json!({}),
                json!([]),
                json!(null),
            ] {
                let mut d = doc.clone();
                *d.pointer_mut(p).unwrap() = wrong;
                out.push(d);
            }
            if let Some(Value::Object(m)) = doc.pointer(parent) {
                let mut removed = doc.clone();
                removed
                    .pointer_mut(parent)
                    .unwrap()
                    .as_object_mut()
                    .unwrap()
                    .remove(key);
                let mut misspelt = removed.clone();
                let map = misspelt.pointer_mut(parent).unwrap().as_object_mut().unwrap();
                map.insert(format!("{key}x"), m[key].clone());
                out.extend([removed, misspelt]);
            }
        }
        out
    }

    #[test]
    fn finds_what_a_general_validator_finds_where_it_finds_it() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments");
        let references = [reference(false), reference(true)];
        let mut checked = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
            if doc.is_array() {
                continue;
            }
            let alarms_file = doc["$schema"].as_str().is_some_and(|s| s.ends_with(ALARMS_REF));
            for m in std::iter::once(doc.clone()).chain(mutants(&doc)) {
                let want: BTreeSet<String> = references[usize::from(alarms_file)]
                    .iter_errors(&m)
                    .map(|e| e.instance_path.as_str().to_string())
                    .collect();
                assert_eq!(own_paths(&m, alarms_file), want, "{m:#}");
                checked += 1;
            }
        }
        assert!(checked > 1000, "only {checked} documents");
    }
}
