//! `aws:network:disrupt-connectivity`: cut a subnet off, as FIS does by swapping its network
//! ACL. A subnet here is an AZ's network, so scope `all` is that AZ's blackout on its agents:
//! nothing in or out, traffic inside the subnet still flows. Scope `availability-zone` is
//! the same blackout cutting only the other AZs' hosts: the controller, the load balancer
//! and anything else outside the subnets still get through.

use super::{ActionDef, ActionId, ActionSpec, Effect, Kind, Param, Params, DURATION};
use crate::diagnostic::did_you_mean;
use super::ResourceType;

pub(super) const DEF: ActionDef = ActionDef {
    id: "aws:network:disrupt-connectivity",
    aliases: &[],
    target: Some(ResourceType::Subnet),
    summary: "Cuts the subnet off: nothing in or out (scope all), or nothing to or from the other AZs' subnets (scope availability-zone); traffic inside it still flows.",
    params: &[DURATION, SCOPE, PREFIX_LIST],
    build,
};

const SCOPE: Param = Param {
    name: "scope",
    kind: Kind::Text,
    required: true,
    default: None,
    description: "What is cut: all (everything outside the subnet) or availability-zone (the other AZs' subnets). FIS's other scopes have no local meaning.",
    unit: None,
};

const PREFIX_LIST: Param = Param {
    name: "prefixListIdentifier",
    kind: Kind::Text,
    required: false,
    default: None,
    description: "FIS's prefix-list scope's list; refused, as that scope is.",
    unit: None,
};

/// The scopes faultline runs.
const SUPPORTED: &[&str] = &["all", "availability-zone"];

/// FIS's scopes, and why each one faultline does not run cannot be.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("vpc", "the topology has one VPC and nothing outside it to keep"),
    ("prefix-list", "there are no managed prefix lists here"),
    ("dynamodb", "there is no DynamoDB endpoint here"),
    ("s3", "there is no S3 endpoint here"),
    ("s3express", "there is no S3 Express endpoint here"),
];

fn build(p: &mut Params<'_>) -> Option<ActionSpec> {
    let duration = p.duration();
    if p.has(PREFIX_LIST.name) {
        p.fail(
            PREFIX_LIST.name,
            "prefixListIdentifier belongs to scope prefix-list, which faultline does not run".into(),
            Some("remove it and use scope all or availability-zone".into()),
        );
    }
    let scope = p.text(SCOPE.name)?;
    if !SUPPORTED.contains(&scope) {
        let runs = "this build runs scopes all and availability-zone";
        let (message, hint) = match UNSUPPORTED.iter().find(|(s, _)| *s == scope) {
            Some((_, why)) => (
                format!("scope `{scope}` has no local meaning: {why}"),
                "use scope all or availability-zone".to_string(),
            ),
            None => (
                format!("`{scope}` is not a disrupt-connectivity scope"),
                did_you_mean(scope, SUPPORTED.iter().copied().chain(UNSUPPORTED.iter().map(|(s, _)| *s)))
                    .map(|m| format!("did you mean `{m}`? {runs}"))
                    .unwrap_or_else(|| runs.into()),
            ),
        };
        p.fail(SCOPE.name, message, Some(hint));
        return None;
    }
    Some(ActionSpec {
        action_id: ActionId::DisruptConnectivity,
        duration: duration?,
        effect: Effect::Blackout {
            keep_control_plane: true,
            other_azs_only: scope == "availability-zone",
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build_with(scope: &str) -> (Option<ActionSpec>, Vec<String>) {
        let map = serde_json::Map::from_iter([
            ("duration".to_string(), "PT1S".into()),
            ("scope".to_string(), scope.into()),
        ]);
        let mut diags = Vec::new();
        let spec = build(&mut Params::new(&mut diags, "/p".into(), &map));
        let messages = diags
            .iter()
            .map(|d| format!("{} ({})", d.message, d.hint.clone().unwrap_or_default()))
            .collect();
        (spec, messages)
    }

    #[test]
    fn scopes_all_and_availability_zone_cut_everything_or_the_other_azs() {
        let other_azs_only = |scope| match build_with(scope).0.map(|s| s.effect) {
            Some(Effect::Blackout {
                keep_control_plane: true,
                other_azs_only,
            }) => other_azs_only,
            other => panic!("{scope}: {other:?}"),
        };
        assert!(!other_azs_only("all"));
        assert!(other_azs_only("availability-zone"));
    }

    #[test]
    fn other_scopes_are_rejected_by_name() {
        for scope in ["vpc", "prefix-list", "s3", "dynamodb", "s3express"] {
            let (spec, messages) = build_with(scope);
            assert!(spec.is_none(), "{scope}");
            assert!(
                messages[0].contains(&format!("scope `{scope}` has no local meaning")),
                "{messages:?}"
            );
        }
        let (_, messages) = build_with("availability_zone");
        assert!(messages[0].contains("did you mean `availability-zone`?"), "{messages:?}");
    }
}
