//! One validation finding: which document, where in it, what is wrong, what to do; and the
//! did-you-mean that suggests a name for a typo. Shared by the template passes and the action
//! catalog's parameter checks.

use serde::Serialize;
use std::fmt;

/// Which document a diagnostic is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// The experiment template.
    Template,
    /// The file given with `--alarms`.
    Alarms,
    /// An inventory of host descriptions.
    Inventory,
}

/// Where in the document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum At {
    /// A JSON pointer (RFC 6901); `""` is the whole document.
    Pointer(String),
    /// A line and column (1-based), for text that is not JSON.
    Position {
        /// Line, 1-based.
        line: usize,
        /// Column, 1-based.
        column: usize,
    },
}

/// A validation error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// The document.
    pub origin: Origin,
    /// Where in it.
    pub at: At,
    /// What is wrong.
    pub message: String,
    /// What to do about it, when there is something to say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Diagnostic {
    /// An error at a JSON pointer.
    pub fn at(origin: Origin, pointer: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic {
            origin,
            at: At::Pointer(pointer.into()),
            message: message.into(),
            hint: None,
        }
    }

    /// Adds a hint.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Adds a hint when there is one.
    pub fn maybe_hint(mut self, hint: Option<String>) -> Self {
        self.hint = hint;
        self
    }

    /// The pointer, when the diagnostic has one.
    pub fn pointer(&self) -> Option<&str> {
        match &self.at {
            At::Pointer(p) => Some(p),
            At::Position { .. } => None,
        }
    }

    /// Formats as `FILE: /pointer: message (hint)` or `FILE:LINE:COLUMN: message`.
    pub fn render(&self, file: &str) -> String {
        let place = match &self.at {
            At::Pointer(p) if p.is_empty() => format!("{file}: (document)"),
            At::Pointer(p) => format!("{file}: {p}"),
            At::Position { line, column } => format!("{file}:{line}:{column}"),
        };
        match &self.hint {
            Some(h) => format!("{place}: {}\n    hint: {h}", self.message),
            None => format!("{place}: {}", self.message),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(match self.origin {
            Origin::Template => "template",
            Origin::Alarms => "alarms",
            Origin::Inventory => "inventory",
        }))
    }
}

/// Escapes one reference token of a JSON pointer (RFC 6901).
pub fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// `base` extended by one token.
pub fn join(base: &str, token: impl fmt::Display) -> String {
    format!("{base}/{}", escape(&token.to_string()))
}

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
            did_you_mean(
                "faultline:host:cpu-stres",
                [
                    "faultline:host:cpu-stress",
                    "faultline:host:memory-stress",
                    "faultline:host:stop"
                ]
            ),
            Some("faultline:host:cpu-stress")
        );
        assert_eq!(
            did_you_mean("sigkill", faultline_agent::faults::kill::SIGNALS),
            Some("SIGKILL")
        );
        assert_eq!(
            did_you_mean(
                "reboot",
                [
                    "faultline:host:cpu-stress",
                    "faultline:host:memory-stress",
                    "faultline:host:stop"
                ]
            ),
            None
        );
        assert_eq!(did_you_mean("fial", ["fail", "skip"]), Some("fail"));
        assert_eq!(did_you_mean("zz", ["a", "b"]), None);
    }
}
