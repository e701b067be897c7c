//! The structural pass: the JSON Schemas in `schemas/`, embedded at build time.
//!
//! The schema files are the one source of structural truth; this module only runs them and
//! turns their findings into diagnostics a person can act on.

use super::catalog::did_you_mean;
use super::diagnostic::{join, Diagnostic, Origin};
use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::{Draft, Resource, ValidationError, Validator};
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::OnceLock;

/// The experiment template schema, as shipped in `schemas/`.
pub const TEMPLATE_SCHEMA: &str = include_str!("../../schemas/experiment-template.schema.json");
/// The alarms schema, as shipped in `schemas/`.
pub const ALARMS_SCHEMA: &str = include_str!("../../schemas/alarms.schema.json");

struct Schemas {
    template: Validator,
    alarms: Validator,
    /// Every property name the schemas define, for did-you-mean on unknown keys.
    known_keys: BTreeSet<String>,
}

fn schemas() -> &'static Schemas {
    static SCHEMAS: OnceLock<Schemas> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        let template: Value = serde_json::from_str(TEMPLATE_SCHEMA).expect("embedded schema is JSON");
        let alarms: Value = serde_json::from_str(ALARMS_SCHEMA).expect("embedded schema is JSON");
        let alarms_id = alarms["$id"].as_str().expect("alarms schema has an $id").to_string();
        let build = |schema: &Value| {
            jsonschema::options()
                .with_draft(Draft::Draft202012)
                .with_resource(
                    alarms_id.clone(),
                    Resource::from_contents(alarms.clone()).expect("alarms schema is a resource"),
                )
                .build(schema)
                .expect("embedded schemas compile")
        };
        let mut known_keys = BTreeSet::new();
        collect_property_names(&template, &mut known_keys);
        collect_property_names(&alarms, &mut known_keys);
        Schemas {
            template: build(&template),
            alarms: build(&alarms),
            known_keys,
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
    collect(s.template.iter_errors(doc), Origin::Template, &s.known_keys)
}

/// Checks an `--alarms` file against the alarms schema.
pub fn check_alarms(doc: &Value) -> Vec<Diagnostic> {
    let s = schemas();
    collect(s.alarms.iter_errors(doc), Origin::Alarms, &s.known_keys)
}

fn collect<'a>(
    errors: impl Iterator<Item = ValidationError<'a>>,
    origin: Origin,
    known: &BTreeSet<String>,
) -> Vec<Diagnostic> {
    let mut out: Vec<Diagnostic> = Vec::new();
    for e in errors {
        for d in describe(&e, origin, known) {
            if !out.contains(&d) {
                out.push(d);
            }
        }
    }
    out
}

fn describe(e: &ValidationError<'_>, origin: Origin, known: &BTreeSet<String>) -> Vec<Diagnostic> {
    let path = e.instance_path.as_str().to_string();
    let instance = e.instance.as_ref();
    let last = path.rsplit('/').next().unwrap_or("");
    let under_parameters = path.contains("/parameters/");
    let d = |pointer: String, message: String| Diagnostic::at(origin, pointer, message);
    match &e.kind {
        ValidationErrorKind::AdditionalProperties { unexpected } => unexpected
            .iter()
            .map(|key| {
                let hint = did_you_mean(key, known.iter().map(String::as_str))
                    .map(|m| format!("did you mean `{m}`?"))
                    .unwrap_or_else(|| "remove it; unknown keys are never ignored".into());
                d(join(&path, key), format!("unknown key `{key}`")).hint(hint)
            })
            .collect(),
        ValidationErrorKind::Required { property } => {
            let name = property.as_str().unwrap_or_default();
            vec![d(join(&path, name), format!("required key `{name}` is missing"))]
        }
        ValidationErrorKind::Type { kind } => {
            let found = json_type(instance);
            let expected = match kind {
                TypeKind::Single(t) => t.to_string(),
                TypeKind::Multiple(set) => set.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(" or "),
            };
            let diag = d(path.clone(), format!("expected a {expected}, found {found}"));
            vec![if under_parameters || path.ends_with("/parameters") {
                diag.hint(format!(
                    "action parameters are strings, as in FIS: write \"{}\"",
                    plain(instance)
                ))
            } else {
                diag
            }]
        }
        ValidationErrorKind::Enum { options } => {
            let options: Vec<&str> = options
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let given = plain(instance);
            let hint = did_you_mean(&given, options.iter().copied())
                .map(|m| format!("did you mean `{m}`?"))
                .unwrap_or_else(|| format!("use one of: {}", options.join(", ")));
            vec![d(path, format!("`{given}` is not an accepted value")).hint(hint)]
        }
        ValidationErrorKind::Pattern { .. } => {
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
        ValidationErrorKind::PropertyNames { error } => {
            let name = plain(error.instance.as_ref());
            vec![d(join(&path, &name), format!("`{name}` is not a valid name"))
                .hint("names start with a letter or digit and use only letters, digits, '_', '.' and '-' (at most 64)")]
        }
        ValidationErrorKind::MinProperties { limit } if path == "/actions" => {
            vec![d(path, format!("at least {limit} action is required"))
                .hint("add an action, e.g. {\"wait\": {\"actionId\": \"aws:fis:wait\", \"parameters\": {\"duration\": \"PT1M\"}}}")]
        }
        ValidationErrorKind::MinItems { .. } if path == "/stopConditions" => {
            vec![d(path, "at least one stop condition is required".into())
                .hint("write [{\"source\": \"none\"}] to run without one")]
        }
        // The wait action's `targets` is `additionalProperties: false` plus `maxProperties: 0`;
        // the latter's message says it better, so the false schema's is dropped.
        ValidationErrorKind::FalseSchema if path.starts_with("/actions/") && path.contains("/targets") => Vec::new(),
        ValidationErrorKind::MaxProperties { .. } if path.ends_with("/targets") => {
            vec![d(path, "aws:fis:wait takes no targets".into()).hint("remove the targets object")]
        }
        _ => vec![d(path, e.to_string())],
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
    fn embedded_schemas_compile_and_describe_every_property() {
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
        for text in [TEMPLATE_SCHEMA, ALARMS_SCHEMA] {
            walk(&serde_json::from_str(text).unwrap(), "", true);
        }
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
}
