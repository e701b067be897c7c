//! The actions faultline knows: ids and parameter names (value rules live in `semantic`).

use super::model::ResourceType;

/// Every action id of design §2, in the order the docs list them.
pub const ACTION_IDS: [&str; 7] = [
    "faultline:process:kill",
    "faultline:process:pause",
    "faultline:host:cpu-stress",
    "faultline:host:memory-stress",
    "faultline:network:latency",
    "faultline:az:blackout",
    "aws:fis:wait",
];

/// The resource type an action's `targets` must name; `None` for an action without targets.
pub fn target_type(action_id: &str) -> Option<ResourceType> {
    match action_id {
        "aws:fis:wait" => None,
        "faultline:az:blackout" => Some(ResourceType::Az),
        _ => Some(ResourceType::Host),
    }
}

/// Signal names `faultline:process:kill` accepts.
pub use faultline_agent::protocol::SIGNALS;

/// The closest candidate to `word`, when one is close enough to be a plausible typo.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(&lower, &c.to_ascii_lowercase()), c))
        .filter(|(d, c)| *d <= (c.len().min(word.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(
            did_you_mean("faultline:host:cpu-stres", ACTION_IDS),
            Some("faultline:host:cpu-stress")
        );
        assert_eq!(did_you_mean("sigkill", SIGNALS), Some("SIGKILL"));
        assert_eq!(did_you_mean("reboot", ACTION_IDS), None);
        assert_eq!(did_you_mean("fial", ["fail", "skip"]), Some("fail"));
        assert_eq!(did_you_mean("zz", ["a", "b"]), None);
    }
}
