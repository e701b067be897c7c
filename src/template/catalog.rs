//! Names templates may use: action ids (from the catalog, [`crate::actions`]), signals, and
//! the did-you-mean that suggests one of them.

use crate::actions::ActionId;

/// Every action id, in catalog order (see [`crate::actions`]).
pub const ACTION_IDS: [&str; ActionId::ALL.len()] = {
    let mut out = [""; ActionId::ALL.len()];
    let mut i = 0;
    while i < out.len() {
        out[i] = ActionId::ALL[i].as_str();
        i += 1;
    }
    out
};

/// Signal names `faultline:process:kill` accepts.
pub use faultline_agent::faults::kill::SIGNALS;

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
