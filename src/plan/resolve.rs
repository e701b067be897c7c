//! Target resolution: tags, filters and selection mode against the hosts known now.
//!
//! `faultline plan` runs it against an inventory file and `faultline run` against the agents
//! connected at the start; both go through [`resolve`].

use crate::template::{EmptyTargetMode, Experiment, Filter, ResourceType, Selection, Target};
use faultline_agent::protocol::HostDescription;
use rand::seq::IndexedRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// What one target resolved to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resolved {
    /// Hosts or AZs.
    #[serde(skip)]
    pub resource_type: ResourceType,
    /// Chosen resources (host ids or AZ names), sorted.
    pub selected: Vec<String>,
    /// How many resources matched before sampling.
    pub matched: usize,
    /// Explicit ids that matched nothing known.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
}

/// Every target of an experiment, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resolution {
    /// Seed the sampling used; pass it as `--seed` to get the same selection again.
    pub seed: u64,
    /// By target name.
    pub targets: BTreeMap<String, Resolved>,
    /// Targets that resolved to nothing, whose actions are skipped (`emptyTargetResolutionMode: skip`).
    pub empty: BTreeSet<String>,
}

/// A target that resolved to nothing under `emptyTargetResolutionMode: fail`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("target `{target}` resolved to no {kind}: {why}")]
pub struct EmptyTarget {
    pub target: String,
    /// `hosts` or `availability zones`.
    pub kind: &'static str,
    /// What matched and how the selection came to zero.
    pub why: String,
}

/// Resolves every target against `hosts`, sampling with `seed`.
pub fn resolve(experiment: &Experiment, hosts: &[HostDescription], seed: u64) -> Result<Resolution, EmptyTarget> {
    let mut out = Resolution {
        seed,
        targets: BTreeMap::new(),
        empty: BTreeSet::new(),
    };
    for (name, target) in &experiment.targets {
        let r = resolve_target(name, target, hosts, seed);
        if target.by_arn && !r.missing.is_empty() {
            // As in FIS: resources named by ARN must exist, whatever emptyTargetResolutionMode says.
            return Err(EmptyTarget {
                target: name.clone(),
                kind: target.resource_type.plural(),
                why: format!(
                    "its resourceArns name {}, which {} not known; targets given by ARN are never skipped",
                    r.missing.join(", "),
                    if r.missing.len() == 1 { "is" } else { "are" }
                ),
            });
        }
        if r.selected.is_empty() {
            if experiment.empty_target_mode == EmptyTargetMode::Fail {
                let kind = target.resource_type.plural();
                let why = if r.matched == 0 {
                    format!(
                        "nothing matched its ids, tags and filters among {} known host(s)",
                        hosts.len()
                    )
                } else {
                    format!(
                        "{} matched and {} of them rounds down to 0",
                        r.matched, target.selection
                    )
                };
                return Err(EmptyTarget {
                    target: name.clone(),
                    kind,
                    why: format!("{why}; set experimentOptions.emptyTargetResolutionMode to \"skip\" to skip its actions instead"),
                });
            }
            out.empty.insert(name.clone());
        }
        out.targets.insert(name.clone(), r);
    }
    Ok(out)
}

/// The VPC every subnet of the topology belongs to.
pub const VPC_ID: &str = "vpc-faultline";

/// The subnet that is an AZ's network: `subnet-<AZ>`.
pub fn subnet_id(az: &str) -> String {
    format!("subnet-{az}")
}

/// The AZ whose network a subnet id names.
pub fn subnet_az(subnet: &str) -> &str {
    subnet.strip_prefix("subnet-").unwrap_or(subnet)
}

/// The prefix of a host tag that is a tag of its subnet: `faultline:subnet:Name=private-a` on
/// a host of az-a tags `subnet-az-a` with `Name=private-a`. Subnets are no objects an agent
/// registers, so their tags travel with the hosts in them (the topology sets them).
pub const SUBNET_TAG: &str = "faultline:subnet:";

/// The tags of an AZ's subnet: every `faultline:subnet:KEY=VALUE` tag of the hosts in the AZ
/// (where hosts disagree, the first host by id wins).
pub fn subnet_tags(az: &str, hosts: &[HostDescription]) -> BTreeMap<String, String> {
    let mut in_az: Vec<&HostDescription> = hosts.iter().filter(|h| h.placement.availability_zone == az).collect();
    in_az.sort_by(|a, b| a.host_id.cmp(&b.host_id));
    let mut tags = BTreeMap::new();
    for (k, v) in in_az.iter().flat_map(|h| &h.tags) {
        if let Some(key) = k.strip_prefix(SUBNET_TAG) {
            tags.entry(key.to_string()).or_insert_with(|| v.clone());
        }
    }
    tags
}

/// A subnet as filters see it, as EC2 describes one (its `Tags` as a map, as a host's).
pub fn subnet_description(az: &str, hosts: &[HostDescription]) -> Value {
    serde_json::json!({
        "SubnetId": subnet_id(az), "AvailabilityZone": az, "VpcId": VPC_ID, "Tags": subnet_tags(az, hosts)
    })
}

/// A host as filters see it: its description, with the `SubnetId` and `VpcId` of its AZ's
/// network as EC2 describes an instance.
fn host_description(h: &HostDescription) -> Value {
    let mut desc = serde_json::to_value(h).unwrap_or(Value::Null);
    if let Some(obj) = desc.as_object_mut() {
        obj.insert("SubnetId".into(), subnet_id(&h.placement.availability_zone).into());
        obj.insert("VpcId".into(), VPC_ID.into());
    }
    desc
}

/// Resolves one target; deterministic for a given seed, name and candidate set.
pub fn resolve_target(name: &str, target: &Target, hosts: &[HostDescription], seed: u64) -> Resolved {
    let (candidates, known): (Vec<String>, BTreeSet<String>) = match target.resource_type {
        ResourceType::Host => {
            let known = hosts.iter().map(|h| h.host_id.clone()).collect();
            let matching = hosts
                .iter()
                .filter(|h| target.resource_ids.as_ref().is_none_or(|ids| ids.contains(&h.host_id)))
                .filter(|h| target.resource_tags.iter().all(|(k, v)| h.tags.get(k) == Some(v)))
                .filter(|h| {
                    let desc = host_description(h);
                    target.filters.iter().all(|f| filter_matches(f, &desc))
                })
                .map(|h| h.host_id.clone())
                .collect();
            (matching, known)
        }
        ResourceType::Subnet => {
            let known: BTreeSet<String> = hosts
                .iter()
                .map(|h| subnet_id(&h.placement.availability_zone))
                .collect();
            let azs: BTreeSet<&str> = hosts.iter().map(|h| h.placement.availability_zone.as_str()).collect();
            let matching = azs
                .into_iter()
                .map(|az| subnet_description(az, hosts))
                .filter(|s| {
                    let id = s["SubnetId"].as_str().unwrap_or_default();
                    target
                        .resource_ids
                        .as_ref()
                        .is_none_or(|ids| ids.iter().any(|i| i == id))
                        && target
                            .resource_tags
                            .iter()
                            .all(|(k, v)| s["Tags"][k].as_str() == Some(v.as_str()))
                        && target.filters.iter().all(|f| filter_matches(f, s))
                })
                .filter_map(|s| Some(s["SubnetId"].as_str()?.to_string()))
                .collect();
            (matching, known)
        }
        ResourceType::Az => {
            let known: BTreeSet<String> = hosts.iter().map(|h| h.placement.availability_zone.clone()).collect();
            let matching = known
                .iter()
                .filter(|az| target.resource_ids.as_ref().is_none_or(|ids| ids.contains(az)))
                .filter(|az| {
                    let desc = serde_json::json!({ "Name": az });
                    target.filters.iter().all(|f| filter_matches(f, &desc))
                })
                .cloned()
                .collect();
            (matching, known)
        }
    };
    let mut candidates: Vec<String> = candidates.into_iter().collect::<BTreeSet<_>>().into_iter().collect();
    let missing = target
        .resource_ids
        .iter()
        .flatten()
        .filter(|id| !known.contains(*id))
        .cloned()
        .collect();
    let matched = candidates.len();
    let want = match target.selection {
        Selection::All => matched,
        Selection::Count(n) => matched.min(n as usize),
        Selection::Percent(p) => matched * p as usize / 100,
    };
    if want < matched {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ fnv1a(name.as_bytes()));
        candidates = candidates.choose_multiple(&mut rng, want).cloned().collect();
        candidates.sort();
    }
    Resolved {
        resource_type: target.resource_type,
        selected: candidates,
        matched,
        missing,
    }
}

/// Whether the value at the filter's dotted path equals one of its values (any element of
/// an array does).
pub fn filter_matches(filter: &Filter, description: &Value) -> bool {
    let mut at = description;
    for segment in filter.path.split('.') {
        match at.get(segment) {
            Some(v) => at = v,
            None => return false,
        }
    }
    let as_text = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    let values: Vec<String> = match at {
        Value::Array(items) => items.iter().filter_map(as_text).collect(),
        other => as_text(other).into_iter().collect(),
    };
    values.iter().any(|v| filter.values.contains(v))
}

/// A stable hash, so a target's sample depends on its name but not on Rust's hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use faultline_agent::protocol::Placement;
    use proptest::prelude::*;

    fn host(id: &str, az: &str, tier: &str) -> HostDescription {
        HostDescription {
            host_id: id.into(),
            placement: Placement {
                availability_zone: az.into(),
            },
            state: Default::default(),
            tags: [("tier".to_string(), tier.to_string())].into(),
            address: String::new(),
            agent: Default::default(),
        }
    }

    fn inventory(n: usize) -> Vec<HostDescription> {
        (0..n)
            .map(|i| {
                host(
                    &format!("h{i:02}"),
                    ["az-a", "az-b", "az-c"][i % 3],
                    if i % 2 == 0 { "web" } else { "db" },
                )
            })
            .collect()
    }

    fn target(selection: Selection, filters: Vec<Filter>, tags: &[(&str, &str)]) -> Target {
        Target {
            resource_type: ResourceType::Host,
            resource_ids: None,
            resource_tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            filters,
            by_arn: false,
            selection,
        }
    }

    #[test]
    fn percent_rounds_down_like_fis() {
        let hosts = inventory(5);
        let t = target(Selection::Percent(50), vec![], &[]);
        assert_eq!(resolve_target("t", &t, &hosts, 1).selected.len(), 2);
        let t = target(Selection::Percent(10), vec![], &[]);
        let r = resolve_target("t", &t, &hosts, 1);
        assert_eq!((r.selected.len(), r.matched), (0, 5));
    }

    #[test]
    fn filters_walk_the_description_and_arrays() {
        let hosts = inventory(6);
        let f = Filter {
            path: "Placement.AvailabilityZone".into(),
            values: vec!["az-b".into()],
        };
        let r = resolve_target("t", &target(Selection::All, vec![f], &[]), &hosts, 0);
        assert_eq!(r.selected, vec!["h01", "h04"]);
        let mut h = host("x", "az-a", "web");
        h.agent.capabilities = vec!["kill".into(), "cpu".into()];
        let f = Filter {
            path: "Agent.Capabilities".into(),
            values: vec!["cpu".into()],
        };
        assert!(filter_matches(&f, &serde_json::to_value(&h).unwrap()));
    }

    #[test]
    fn reports_unknown_ids() {
        let hosts = inventory(3);
        let mut t = target(Selection::All, vec![], &[]);
        t.resource_ids = Some(vec!["h00".into(), "nope".into()]);
        let r = resolve_target("t", &t, &hosts, 0);
        assert_eq!(
            (r.selected, r.missing),
            (vec!["h00".to_string()], vec!["nope".to_string()])
        );
    }

    #[test]
    fn subnets_carry_the_tags_their_hosts_give_them() {
        let mut a1 = host("a1", "az-a", "web");
        a1.tags.insert(format!("{SUBNET_TAG}Name"), "private-a".into());
        a1.tags
            .insert(format!("{SUBNET_TAG}AzImpairmentPower"), "DisruptSubnet".into());
        let mut b1 = host("b1", "az-b", "web");
        b1.tags.insert(format!("{SUBNET_TAG}Name"), "private-b".into());
        let hosts = vec![a1, host("a2", "az-a", "db"), b1];
        let mut t = target(Selection::All, vec![], &[("AzImpairmentPower", "DisruptSubnet")]);
        t.resource_type = ResourceType::Subnet;
        assert_eq!(resolve_target("t", &t, &hosts, 0).selected, ["subnet-az-a"]);
        t.resource_tags = [("Name".to_string(), "private-b".to_string())].into();
        assert_eq!(resolve_target("t", &t, &hosts, 0).selected, ["subnet-az-b"]);
        t.resource_tags = [("Name".to_string(), "public".to_string())].into();
        let r = resolve_target("t", &t, &hosts, 0);
        assert_eq!((r.selected.len(), r.matched), (0, 0));
        // Filters walk the subnet's tags too.
        t.resource_tags.clear();
        t.filters = vec![Filter {
            path: "Tags.Name".into(),
            values: vec!["private-a".into()],
        }];
        assert_eq!(resolve_target("t", &t, &hosts, 0).selected, ["subnet-az-a"]);
    }

    proptest! {
        #[test]
        fn selection_obeys_the_rule_is_seeded_and_matches(
            n in 0usize..40,
            count in 1u32..50,
            percent in 1u32..=100,
            seed in any::<u64>(),
            use_percent in any::<bool>(),
        ) {
            let hosts = inventory(n);
            let selection = if use_percent { Selection::Percent(percent) } else { Selection::Count(count) };
            let t = target(selection, vec![], &[("tier", "web")]);
            let a = resolve_target("t", &t, &hosts, seed);
            let b = resolve_target("t", &t, &hosts, seed);
            prop_assert_eq!(&a, &b);
            let matching = hosts.iter().filter(|h| h.tags["tier"] == "web").count();
            prop_assert_eq!(a.matched, matching);
            let limit = if use_percent { matching * percent as usize / 100 } else { matching.min(count as usize) };
            prop_assert_eq!(a.selected.len(), limit);
            let unique: BTreeSet<_> = a.selected.iter().collect();
            prop_assert_eq!(unique.len(), a.selected.len());
            for id in &a.selected {
                let h = hosts.iter().find(|h| &h.host_id == id).unwrap();
                prop_assert_eq!(h.tags["tier"].as_str(), "web");
            }
        }
    }
}
