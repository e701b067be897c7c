//! FIS spellings of a template, normalised before validation: the PascalCase keys
//! CloudFormation writes (`Description`, `Targets`, `ResourceType`, `ActionId`, ...) and the
//! action target key `Instances` (for `Hosts`). Diagnostics found on the normalised document
//! are pointed back at the user's own keys with [`user_pointer`].
//!
//! Only structural keys are renamed: names of targets and actions, tags, parameters and
//! alarms are the user's and stay as written.

use crate::diagnostic::escape;
use serde_json::{Map, Value};

/// FIS's action target key for EC2 instances, and the key faultline uses for hosts.
const INSTANCES: (&str, &str) = ("Instances", "Hosts");

fn lower_first(key: &str) -> String {
    let mut chars = key.chars();
    match chars.next() {
        Some(c) if c.is_ascii_uppercase() => c.to_ascii_lowercase().to_string() + chars.as_str(),
        _ => key.to_string(),
    }
}

/// `obj` with its keys camelCased; the first of two keys that become one wins.
fn camel(obj: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, v) in obj {
        out.entry(lower_first(k)).or_insert_with(|| v.clone());
    }
    out
}

/// Every key camelCased, at every depth.
fn camel_deep(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(camel(m).into_iter().map(|(k, v)| (k, camel_deep(&v))).collect()),
        Value::Array(a) => Value::Array(a.iter().map(camel_deep).collect()),
        other => other.clone(),
    }
}

/// Applies `f` to each value of a name → object map.
fn each_named(v: &mut Value, f: impl Fn(&Map<String, Value>) -> Map<String, Value>) {
    if let Some(map) = v.as_object_mut() {
        for item in map.values_mut() {
            if let Some(obj) = item.as_object() {
                *item = Value::Object(f(obj));
            }
        }
    }
}

/// The template in faultline's own spelling.
pub fn normalise(doc: &Value) -> Value {
    let Some(root) = doc.as_object() else {
        return doc.clone();
    };
    let mut root = camel(root);
    if let Some(targets) = root.get_mut("targets") {
        each_named(targets, |t| {
            let mut t = camel(t);
            if let Some(Value::Array(filters)) = t.get_mut("filters") {
                for f in filters.iter_mut() {
                    if let Some(obj) = f.as_object() {
                        *f = Value::Object(camel(obj));
                    }
                }
            }
            t
        });
    }
    if let Some(actions) = root.get_mut("actions") {
        each_named(actions, |a| {
            let mut a = camel(a);
            if let Some(Value::Object(targets)) = a.get_mut("targets") {
                if let Some(v) = targets.remove(INSTANCES.0) {
                    targets.entry(INSTANCES.1).or_insert(v);
                }
            }
            a
        });
    }
    if let Some(Value::Array(stops)) = root.get_mut("stopConditions") {
        for s in stops.iter_mut() {
            if let Some(obj) = s.as_object() {
                *s = Value::Object(camel(obj));
            }
        }
    }
    for key in ["experimentOptions", "logConfiguration", "experimentReportConfiguration"] {
        if let Some(v) = root.get_mut(key) {
            *v = camel_deep(v);
        }
    }
    Value::Object(root)
}

/// The pointer into the user's document that `pointer` (into the normalised one) names.
pub fn user_pointer(doc: &Value, pointer: &str) -> String {
    let mut out = String::new();
    let mut at = Some(doc);
    for token in pointer.split('/').skip(1) {
        let token = token.replace("~1", "/").replace("~0", "~");
        let key = match at {
            Some(Value::Object(m)) if !m.contains_key(&token) => m
                .keys()
                .find(|k| lower_first(k) == token || (token == INSTANCES.1 && *k == INSTANCES.0))
                .cloned()
                .unwrap_or(token),
            _ => token,
        };
        at = match at {
            Some(Value::Object(m)) => m.get(&key),
            Some(Value::Array(a)) => key.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => None,
        };
        out.push('/');
        out.push_str(&escape(&key));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfn() -> Value {
        json!({
            "Description": "d",
            "RoleArn": "arn:aws:iam::1:role/r",
            "Tags": {"Name": "x"},
            "Targets": {"MyInstances": {
                "ResourceType": "aws:ec2:instance",
                "ResourceTags": {"Environment": "Production"},
                "Filters": [{"Path": "State.Name", "Values": ["running"]}],
                "SelectionMode": "COUNT(2)"
            }},
            "Actions": {"Terminate": {
                "ActionId": "aws:fis:wait",
                "Parameters": {"duration": "PT1M"},
                "Targets": {"Instances": "MyInstances"}
            }},
            "StopConditions": [{"Source": "none"}],
            "ExperimentOptions": {"AccountTargeting": "single-account"},
            "LogConfiguration": {"LogSchemaVersion": 2, "CloudWatchLogsConfiguration": {"LogGroupArn": "a"}}
        })
    }

    #[test]
    fn renames_structural_keys_only() {
        let n = normalise(&cfn());
        assert_eq!(n["description"], "d");
        assert_eq!(n["tags"], json!({"Name": "x"}));
        let t = &n["targets"]["MyInstances"];
        assert_eq!(t["resourceTags"], json!({"Environment": "Production"}));
        assert_eq!(t["filters"][0], json!({"path": "State.Name", "values": ["running"]}));
        let a = &n["actions"]["Terminate"];
        assert_eq!(a["actionId"], "aws:fis:wait");
        assert_eq!(a["targets"], json!({"Hosts": "MyInstances"}));
        assert_eq!(n["stopConditions"][0]["source"], "none");
        assert_eq!(n["logConfiguration"]["cloudWatchLogsConfiguration"]["logGroupArn"], "a");
        assert_eq!(normalise(&n), n, "camelCase templates are left as they are");
    }

    #[test]
    fn points_back_at_the_users_keys() {
        let doc = cfn();
        assert_eq!(
            user_pointer(&doc, "/targets/MyInstances/filters/0/path"),
            "/Targets/MyInstances/Filters/0/Path"
        );
        assert_eq!(
            user_pointer(&doc, "/actions/Terminate/targets/Hosts"),
            "/Actions/Terminate/Targets/Instances"
        );
        assert_eq!(user_pointer(&doc, "/nowhere/x"), "/nowhere/x");
        assert_eq!(user_pointer(&doc, ""), "");
    }
}
