//! Experiment templates: parsing, the schema pass, the semantic pass (docs/architecture.md, "Validate").

pub mod fis;
pub mod model;
pub mod schema;
pub mod semantic;

pub use crate::diagnostic::{At, Diagnostic, Origin};
pub use model::*;

use serde_json::Value;
use std::path::{Path, PathBuf};

/// Why a template could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The template or alarms file is invalid.
    #[error("{} is invalid ({} error{})", .template.display(), .diagnostics.len(), if .diagnostics.len() == 1 { "" } else { "s" })]
    Invalid {
        /// The template file.
        template: PathBuf,
        /// The alarms file, when one was given.
        alarms: Option<PathBuf>,
        /// Every error found.
        diagnostics: Vec<Diagnostic>,
    },
}

impl LoadError {
    /// Every error, one per line, each prefixed by its file.
    pub fn render(&self) -> String {
        match self {
            LoadError::Read { .. } => self.to_string(),
            LoadError::Invalid {
                template,
                alarms,
                diagnostics,
            } => render_all(diagnostics, template, alarms.as_deref()),
        }
    }
}

/// Renders diagnostics, one per line, each prefixed by the file it is about.
pub fn render_all(diagnostics: &[Diagnostic], template: &Path, alarms: Option<&Path>) -> String {
    diagnostics
        .iter()
        .map(|d| {
            let file = match (d.origin, alarms) {
                (Origin::Alarms, Some(a)) => a,
                _ => template,
            };
            d.render(&file.display().to_string())
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Parses JSON text, reporting a syntax error with its line and column.
pub fn parse_json(text: &str, origin: Origin) -> Result<Value, Diagnostic> {
    serde_json::from_str(text).map_err(|e| {
        let message = e.to_string();
        let message = message
            .rsplit_once(" at line ")
            .map(|(m, _)| m.to_string())
            .unwrap_or(message);
        Diagnostic {
            origin,
            at: At::Position {
                line: e.line().max(1),
                column: e.column().max(1),
            },
            message: format!("not valid JSON: {message}"),
            hint: None,
        }
    })
}

/// Runs both passes on parsed documents.
///
/// The schema pass runs first; the semantic pass then reports only what the schema did
/// not already report at the same place or above it, so a user sees each mistake once.
/// FIS spellings (CloudFormation's PascalCase, `Instances`) are normalised first; every
/// diagnostic points at the user's own keys.
pub fn validate(template: &Value, alarms_file: Option<&Value>) -> Result<Experiment, Vec<Diagnostic>> {
    let user = template;
    let template = &fis::normalise(user);
    let mut diags = schema::check_template(template);
    if let Some(a) = alarms_file {
        diags.extend(schema::check_alarms(a));
    }
    let to_user = |mut d: Diagnostic| {
        if let (Origin::Template, At::Pointer(p)) = (d.origin, &d.at) {
            d.at = At::Pointer(fis::user_pointer(user, p));
        }
        d
    };
    match semantic::build(template, alarms_file) {
        Ok(mut e) if diags.is_empty() => {
            e.warnings = e.warnings.into_iter().map(to_user).collect();
            Ok(e)
        }
        Ok(_) => Err(merge(diags, Vec::new()).into_iter().map(to_user).collect()),
        Err(semantic) => Err(merge(diags, semantic).into_iter().map(to_user).collect()),
    }
}

/// Validates an alarms file on its own (both passes).
pub fn validate_alarms(doc: &Value) -> Result<std::collections::BTreeMap<String, Alarm>, Vec<Diagnostic>> {
    let schema = schema::check_alarms(doc);
    match semantic::build_alarms(doc) {
        Ok(a) if schema.is_empty() => Ok(a),
        Ok(_) => Err(merge(schema, Vec::new())),
        Err(sem) => Err(merge(schema, sem)),
    }
}

/// Schema findings followed by the semantic ones the schema did not already report at the
/// same place or above it.
fn merge(mut diags: Vec<Diagnostic>, semantic: Vec<Diagnostic>) -> Vec<Diagnostic> {
    let covered: Vec<(Origin, String)> = diags
        .iter()
        .filter_map(|d| Some((d.origin, d.pointer()?.to_string())))
        .collect();
    for d in semantic {
        let shadowed = d.pointer().is_some_and(|p| {
            covered
                .iter()
                .any(|(o, c)| *o == d.origin && (p == c || p.starts_with(&format!("{c}/"))))
        });
        if !shadowed {
            diags.push(d);
        }
    }
    diags.sort_by(|a, b| (a.origin as u8, a.pointer()).cmp(&(b.origin as u8, b.pointer())));
    diags
}

/// Validates texts; the entry point for callers that already read the files.
pub fn validate_text(template: &str, alarms_file: Option<&str>) -> Result<Experiment, Vec<Diagnostic>> {
    let template = parse_json(template, Origin::Template);
    let alarms = alarms_file.map(|a| parse_json(a, Origin::Alarms)).transpose();
    match (template, alarms) {
        (Ok(t), Ok(a)) => validate(&t, a.as_ref()),
        (t, a) => Err(t.err().into_iter().chain(a.err()).collect()),
    }
}

/// Reads and validates a template file and an optional alarms file.
pub fn load(path: &Path, alarms: Option<&Path>) -> Result<Experiment, LoadError> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|source| LoadError::Read {
            path: p.to_path_buf(),
            source,
        })
    };
    let text = read(path)?;
    let alarms_text = alarms.map(read).transpose()?;
    validate_text(&text, alarms_text.as_deref()).map_err(|diagnostics| LoadError::Invalid {
        template: path.to_path_buf(),
        alarms: alarms.map(Path::to_path_buf),
        diagnostics,
    })
}
