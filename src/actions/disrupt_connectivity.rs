//! `aws:network:disrupt-connectivity`: cut a subnet off, as FIS does by swapping its network
//! ACL. A subnet here is an AZ's network, so scope `all` is that AZ's blackout on its agents:
//! nothing in or out, traffic inside the subnet still flows.

use super::{ActionDef, ActionId, ActionSpec, Effect, Kind, Param, Params, DURATION};
use crate::template::catalog::did_you_mean;
use crate::template::ResourceType;

pub(super) const DEF: ActionDef = ActionDef {
    id: "aws:network:disrupt-connectivity",
    aliases: &[],
    target: Some(ResourceType::Subnet),
    summary: "Cuts the subnet off: nothing in or out, traffic inside it still flows (scope all).",
    params: &[DURATION, SCOPE, PREFIX_LIST],
    build,
};

const SCOPE: Param = Param {
    name: "scope",
    kind: Kind::Text,
    required: true,
    default: None,
    description: "What is cut: all (everything outside the subnet). FIS's other scopes have no local meaning yet.",
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

/// FIS's scopes, and why each one faultline does not run cannot be.
const UNSUPPORTED: &[(&str, &str)] = &[
    (
        "availability-zone",
        "the agents' blackout keeps a list of peers and cannot cut only the other AZs' subnets yet",
    ),
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
            Some("remove it and use scope all".into()),
        );
    }
    let scope = p.text(SCOPE.name)?;
    if scope != "all" {
        let (message, hint) = match UNSUPPORTED.iter().find(|(s, _)| *s == scope) {
            Some((_, why)) => (format!("scope `{scope}` has no local meaning: {why}"), "use scope all".to_string()),
            None => (
                format!("`{scope}` is not a disrupt-connectivity scope"),
                did_you_mean(scope, std::iter::once("all").chain(UNSUPPORTED.iter().map(|(s, _)| *s)))
                    .map(|m| format!("did you mean `{m}`? this build runs scope all"))
                    .unwrap_or_else(|| "this build runs scope all".into()),
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
        },
    })
}
