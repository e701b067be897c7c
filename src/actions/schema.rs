//! The experiment template's JSON Schema, generated from the catalog: `faultline schema`
//! prints it and `schemas/experiment-template.schema.json` is its output (a test fails when
//! they differ). Editors use it; `validate` runs it too (see `template::schema`).

use super::ResourceType;
use super::{ActionId, Kind, Param};
use serde_json::{json, Map, Value};

/// The schema, as `faultline schema` prints it and `schemas/` holds it.
pub fn text() -> String {
    serde_json::to_string_pretty(&generate()).expect("a schema serializes") + "\n"
}

/// The experiment template schema: a fixed frame, and the actions from the catalog.
pub fn generate() -> Value {
    let mut schema = frame();
    let action = &mut schema["$defs"]["action"];
    action["properties"]["actionId"]["examples"] = ActionId::ALL
        .iter()
        .flat_map(|a| std::iter::once(a.def().id).chain(a.def().aliases.iter().copied()))
        .collect();
    action["allOf"] = ActionId::ALL.iter().copied().map(action_rule).collect();
    schema
}

/// What an action with this id requires: its targets and its parameters.
fn action_rule(id: ActionId) -> Value {
    let def = id.def();
    let mut names: Vec<&str> = vec![def.id];
    names.extend(def.aliases);
    let properties: Map<String, Value> = def.params.iter().map(|p| (p.name.to_string(), param(p))).collect();
    let required: Vec<&str> = def.params.iter().filter(|p| p.required).map(|p| p.name).collect();
    let parameters = json!({
        "additionalProperties": false,
        "required": required,
        "properties": properties,
    });
    // FIS lets an action without required parameters leave `parameters` out.
    let needs_parameters: Vec<&str> = if required.is_empty() {
        vec![]
    } else {
        vec!["parameters"]
    };
    let with_targets: Vec<&str> = needs_parameters.iter().copied().chain(["targets"]).collect();
    let then = match def.target {
        Some(t) => json!({
            "required": with_targets,
            "properties": {
                "targets": { "$ref": match t {
                    ResourceType::Host => "#/$defs/hostTargets",
                    ResourceType::Az => "#/$defs/azTargets",
                    ResourceType::Subnet => "#/$defs/subnetTargets",
                } },
                "parameters": parameters,
            }
        }),
        None => json!({
            "required": needs_parameters,
            "properties": {
                "targets": { "additionalProperties": false, "maxProperties": 0 },
                "parameters": parameters,
            }
        }),
    };
    json!({
        "if": { "properties": { "actionId": { "enum": names } }, "required": ["actionId"] },
        "then": then,
    })
}

/// One parameter: its type as FIS writes it (a string), and its description with range,
/// unit and default.
fn param(p: &Param) -> Value {
    let mut notes = Vec::new();
    if let Kind::Integer(_) | Kind::Number(_) = p.kind {
        notes.push(format!(
            "{}{}",
            p.kind.range(),
            p.unit.map(|u| format!(" {u}")).unwrap_or_default()
        ));
    }
    if let Some(d) = p.default {
        notes.push(format!("default {d}"));
    }
    let mut description = p.description.trim_end_matches('.').to_string();
    if !notes.is_empty() {
        description += &format!(" ({})", notes.join("; "));
    }
    description.push('.');
    let mut v = match p.kind {
        Kind::Duration | Kind::DurationFrom(_) => json!({ "$ref": "#/$defs/duration" }),
        Kind::Integer(_) => json!({ "$ref": "#/$defs/integerString" }),
        Kind::Number(_) => json!({ "$ref": "#/$defs/numberString" }),
        Kind::Bool => json!({ "enum": ["true", "false"] }),
        Kind::ProcessName => json!({ "type": "string", "minLength": 1 }),
        Kind::Signal => json!({ "type": "string" }),
        Kind::Text => json!({ "type": "string", "minLength": 1 }),
        Kind::Path => json!({ "type": "string", "pattern": "^/" }),
        Kind::Choice(words) => json!({ "enum": words }),
        Kind::Sources => json!({ "type": "string", "minLength": 1 }),
    };
    v["description"] = description.into();
    v
}

/// Everything but the actions' own rules.
fn frame() -> Value {
    json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "https://faultline.dev/schemas/experiment-template.schema.json",
            "title": "faultline experiment template",
            "description": "A chaos experiment in the shape of an AWS FIS experiment template: targets, actions, stop conditions. Validate with `faultline validate`.",
            "type": "object",
            "additionalProperties": false,
            "required": [
                "description",
                "actions",
                "stopConditions"
            ],
            "properties": {
                "$schema": {
                    "description": "The JSON Schema this file follows, for editors; e.g. ../schemas/experiment-template.schema.json.",
                    "type": "string"
                },
                "description": {
                    "description": "What the experiment tests, in one sentence.",
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 512
                },
                "roleArn": {
                    "description": "Accepted for FIS compatibility and ignored: faultline authenticates agents with a shared token.",
                    "type": "string"
                },
                "tags": {
                    "description": "Free-form tags of the experiment, copied into its report and journal.",
                    "type": "object",
                    "additionalProperties": {
                        "type": "string",
                        "maxLength": 256
                    }
                },
                "targets": {
                    "description": "Named sets of resources the actions act on, resolved when the experiment starts.",
                    "type": "object",
                    "propertyNames": {
                        "$ref": "#/$defs/name"
                    },
                    "additionalProperties": {
                        "$ref": "#/$defs/target"
                    }
                },
                "actions": {
                    "description": "Named actions; each runs once its startAfter actions have finished.",
                    "type": "object",
                    "minProperties": 1,
                    "propertyNames": {
                        "$ref": "#/$defs/name"
                    },
                    "additionalProperties": {
                        "$ref": "#/$defs/action"
                    }
                },
                "stopConditions": {
                    "description": "Alarms that stop the experiment when they go into ALARM; [{\"source\": \"none\"}] for none.",
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "$ref": "#/$defs/stopCondition"
                    }
                },
                "experimentOptions": {
                    "description": "Options of the run.",
                    "type": "object",
                    "additionalProperties": false,
                    "properties": {
                        "emptyTargetResolutionMode": {
                            "description": "What to do when a target resolves to no resource: fail the experiment (default) or skip the actions on it.",
                            "enum": [
                                "fail",
                                "skip"
                            ]
                        },
                        "accountTargeting": {
                            "description": "single-account (FIS's default); multi-account is refused: faultline targets the hosts of one controller.",
                            "enum": [
                                "single-account",
                                "multi-account"
                            ]
                        },
                        "actionsMode": {
                            "description": "run-all (default), or skip-all: resolve the targets and show the plan without injecting anything, as `run --dry-run`.",
                            "enum": [
                                "run-all",
                                "skip-all"
                            ]
                        }
                    }
                },
                "experimentReportConfiguration": {
                    "description": "FIS's experiment report. The pre- and post-experiment durations are kept for the report's alarm charts; outputs and dataSources are accepted and ignored.",
                    "type": "object",
                    "additionalProperties": false,
                    "properties": {
                        "outputs": {
                            "description": "Accepted for FIS compatibility and ignored: faultline writes its report locally.",
                            "type": "object"
                        },
                        "dataSources": {
                            "description": "Accepted for FIS compatibility and ignored: the alarms of the stop conditions are charted.",
                            "type": "object"
                        },
                        "preExperimentDuration": {
                            "description": "How much alarm history before the experiment the report shows (default PT20M).",
                            "$ref": "#/$defs/duration"
                        },
                        "postExperimentDuration": {
                            "description": "How much alarm history after the experiment the report shows (default PT20M).",
                            "$ref": "#/$defs/duration"
                        }
                    }
                },
                "logConfiguration": {
                    "description": "Where the run's journal goes.",
                    "type": "object",
                    "additionalProperties": false,
                    "properties": {
                        "logSchemaVersion": {
                            "description": "Accepted for FIS compatibility.",
                            "type": "integer",
                            "minimum": 1
                        },
                        "journal": {
                            "description": "The JSON Lines journal of the run.",
                            "type": "object",
                            "additionalProperties": false,
                            "required": [
                                "path"
                            ],
                            "properties": {
                                "path": {
                                    "description": "File the journal is written to, relative to the working directory; --journal overrides it.",
                                    "type": "string",
                                    "minLength": 1
                                }
                            }
                        },
                        "cloudWatchLogsConfiguration": {
                            "description": "Accepted for FIS compatibility and ignored: faultline writes a local journal.",
                            "type": "object"
                        },
                        "s3Configuration": {
                            "description": "Accepted for FIS compatibility and ignored: faultline writes a local journal.",
                            "type": "object"
                        }
                    }
                },
                "alarms": {
                    "description": "Alarms stop conditions can name (faultline extension); same shape as a --alarms file.",
                    "$ref": "alarms.schema.json"
                },
                "userExperience": {
                    "description": "What the users see (faultline extension): a Prometheus text endpoint scraped every period during the run; the report shows the request rate, error rate and p50/p99 latency of the baseline, each action and the recovery.",
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["scrape", "requests"],
                    "properties": {
                        "description": {
                            "description": "What the endpoint is, for the report.",
                            "type": "string"
                        },
                        "scrape": {
                            "description": "URL of the Prometheus text endpoint, e.g. a load balancer's http://127.0.0.1:8080/metrics.",
                            "type": "string",
                            "pattern": "^https?://"
                        },
                        "requests": {
                            "description": "Counters whose sum counts every request (each summed over its series).",
                            "type": "array",
                            "minItems": 1,
                            "items": { "$ref": "#/$defs/metricName" }
                        },
                        "errors": {
                            "description": "Counters whose sum counts the failed requests; the error rate is their increase over the requests' increase.",
                            "type": "array",
                            "items": { "$ref": "#/$defs/metricName" }
                        },
                        "latency": {
                            "description": "Histogram of request durations in seconds (the name without _bucket); p50 and p99 come from its buckets' increase.",
                            "$ref": "#/$defs/metricName"
                        },
                        "period": {
                            "description": "Time between scrapes (default PT1S).",
                            "$ref": "#/$defs/duration"
                        },
                        "timeout": {
                            "description": "Time a scrape may take (default: the period, at most PT2S).",
                            "$ref": "#/$defs/duration"
                        }
                    }
                }
            },
            "$defs": {
                "name": {
                    "description": "Name of a target or an action.",
                    "type": "string",
                    "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
                },
                "metricName": {
                    "description": "A Prometheus metric name, without labels.",
                    "type": "string",
                    "pattern": "^[A-Za-z_:][A-Za-z0-9_:]*$"
                },
                "duration": {
                    "description": "ISO 8601 duration, e.g. PT30S, PT5M, PT1H30M; at most PT12H for an action.",
                    "type": "string",
                    "pattern": "^P[0-9WDTHMS.,]+$"
                },
                "integerString": {
                    "description": "A whole number written as a string, as FIS parameters are.",
                    "type": "string",
                    "pattern": "^[0-9]+$"
                },
                "numberString": {
                    "description": "A number written as a string, as FIS parameters are.",
                    "type": "string",
                    "pattern": "^[0-9]+(\\.[0-9]+)?$"
                },
                "target": {
                    "description": "A set of resources, chosen by ids or tags, narrowed by filters, sampled by selectionMode.",
                    "type": "object",
                    "additionalProperties": false,
                    "required": [
                        "resourceType",
                        "selectionMode"
                    ],
                    "properties": {
                        "resourceType": {
                            "description": "faultline:host (alias aws:ec2:instance) for hosts, faultline:az for availability zones, aws:ec2:subnet for the AZs' networks (subnet-<AZ>).",
                            "enum": [
                                "faultline:host",
                                "aws:ec2:instance",
                                "faultline:az",
                                "aws:ec2:subnet"
                            ]
                        },
                        "parameters": {
                            "description": "Target parameters: for aws:ec2:subnet, availabilityZoneIdentifier (an AZ) and vpc.",
                            "type": "object",
                            "additionalProperties": {
                                "type": "string"
                            }
                        },
                        "resourceIds": {
                            "description": "Host ids (for hosts) or AZ names (for AZs); not together with resourceTags.",
                            "type": "array",
                            "minItems": 1,
                            "items": {
                                "type": "string",
                                "minLength": 1
                            }
                        },
                        "resourceArns": {
                            "description": "FIS ARNs whose last path segment is the resource id, e.g. arn:aws:ec2:us-east-1:123456789012:instance/web-a1.",
                            "type": "array",
                            "minItems": 1,
                            "items": {
                                "type": "string",
                                "minLength": 1
                            }
                        },
                        "resourceTags": {
                            "description": "Tags a host must all carry to be selected.",
                            "type": "object",
                            "minProperties": 1,
                            "additionalProperties": {
                                "type": "string"
                            }
                        },
                        "filters": {
                            "description": "Conditions on the host description; all must match.",
                            "type": "array",
                            "items": {
                                "$ref": "#/$defs/filter"
                            }
                        },
                        "selectionMode": {
                            "description": "ALL, COUNT(n) with n >= 1, or PERCENT(n) with 0 < n <= 100 (rounded down, as in FIS).",
                            "type": "string",
                            "pattern": "^(ALL|COUNT\\([0-9]+\\)|PERCENT\\([0-9]+\\))$"
                        }
                    }
                },
                "filter": {
                    "description": "Matches when the value at path in the host description equals one of values.",
                    "type": "object",
                    "additionalProperties": false,
                    "required": [
                        "path",
                        "values"
                    ],
                    "properties": {
                        "path": {
                            "description": "Dotted path into the host description, e.g. Placement.AvailabilityZone, State.Name or Tags.tier.",
                            "type": "string",
                            "minLength": 1
                        },
                        "values": {
                            "description": "Accepted values; the filter matches when the value at path equals any of them.",
                            "type": "array",
                            "minItems": 1,
                            "items": {
                                "type": "string"
                            }
                        }
                    }
                },
                "hostTargets": {
                    "description": "The target an action on hosts acts on: Hosts, or Instances as FIS writes it.",
                    "type": "object",
                    "additionalProperties": false,
                    "minProperties": 1,
                    "maxProperties": 1,
                    "properties": {
                        "Hosts": {
                            "description": "Name of a faultline:host target.",
                            "type": "string"
                        },
                        "Instances": {
                            "description": "Name of a faultline:host (aws:ec2:instance) target, as FIS writes it.",
                            "type": "string"
                        }
                    }
                },
                "subnetTargets": {
                    "description": "The target an action on subnets acts on.",
                    "type": "object",
                    "additionalProperties": false,
                    "required": [
                        "Subnets"
                    ],
                    "properties": {
                        "Subnets": {
                            "description": "Name of an aws:ec2:subnet target.",
                            "type": "string"
                        }
                    }
                },
                "azTargets": {
                    "description": "The target an action on availability zones acts on.",
                    "type": "object",
                    "additionalProperties": false,
                    "required": [
                        "AvailabilityZones"
                    ],
                    "properties": {
                        "AvailabilityZones": {
                            "description": "Name of a faultline:az target.",
                            "type": "string"
                        }
                    }
                },
                "action": {
                    "description": "One fault (or a wait), its parameters, its target and what it starts after.",
                    "type": "object",
                    "additionalProperties": false,
                    "required": [
                        "actionId"
                    ],
                    "properties": {
                        "actionId": {
                            "description": "What the action does.",
                            "type": "string"
                        },
                        "description": {
                            "description": "What this action is for.",
                            "type": "string"
                        },
                        "parameters": {
                            "description": "Parameters of the action, all strings as in FIS.",
                            "type": "object",
                            "additionalProperties": {
                                "type": "string"
                            }
                        },
                        "targets": {
                            "description": "The target the action acts on: {\"Hosts\": name} or {\"AvailabilityZones\": name}.",
                            "type": "object"
                        },
                        "startAfter": {
                            "description": "Names of actions that must finish before this one starts.",
                            "type": "array",
                            "uniqueItems": true,
                            "items": {
                                "type": "string"
                            }
                        }
                    }
                },
                "stopCondition": {
                    "description": "An alarm that stops the experiment, or {\"source\": \"none\"}.",
                    "type": "object",
                    "additionalProperties": false,
                    "required": [
                        "source"
                    ],
                    "properties": {
                        "source": {
                            "description": "faultline:alarm (value: an alarm name), aws:cloudwatch:alarm (value: an alarm ARN) or none.",
                            "enum": [
                                "none",
                                "faultline:alarm",
                                "aws:cloudwatch:alarm"
                            ]
                        },
                        "value": {
                            "description": "The alarm's name, or for aws:cloudwatch:alarm its ARN (arn:aws:cloudwatch:REGION:ACCOUNT:alarm:NAME).",
                            "type": "string",
                            "minLength": 1
                        }
                    },
                    "if": {
                        "properties": {
                            "source": {
                                "enum": [
                                    "faultline:alarm",
                                    "aws:cloudwatch:alarm"
                                ]
                            }
                        },
                        "required": [
                            "source"
                        ]
                    },
                    "then": {
                        "required": [
                            "value"
                        ]
                    }
                }
            }
        }
    )
}
