//! The files generated from the action catalog are its output: the JSON Schema
//! (`faultline schema`), the README's action table and `docs/actions.md`.
//!
//! `FAULTLINE_BLESS=1 cargo test --test offline catalog` rewrites them from the catalog.

use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn bless() -> bool {
    std::env::var_os("FAULTLINE_BLESS").is_some_and(|v| v == "1")
}

/// Fails (or, when blessing, rewrites the file) when `file` is not `want`.
fn same(file: &str, want: &str) {
    let path = root().join(file);
    if bless() {
        std::fs::write(&path, want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap();
    assert!(
        have == want,
        "{file} differs from what the catalog generates; run `FAULTLINE_BLESS=1 cargo test --test offline catalog` \
         and commit the result\n--- generated:\n{want}"
    );
}

#[test]
fn the_checked_in_schema_is_what_faultline_schema_prints() {
    let out = Command::new(env!("CARGO_BIN_EXE_faultline"))
        .arg("schema")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    same(
        "schemas/experiment-template.schema.json",
        &String::from_utf8(out.stdout).unwrap(),
    );
}

const BEGIN: &str =
    "<!-- actions: generated from src/actions by `FAULTLINE_BLESS=1 cargo test --test offline catalog` -->\n";
const END: &str = "<!-- end of actions -->\n";

#[test]
fn the_readme_action_table_is_the_catalog() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let (head, rest) = readme.split_once(BEGIN).expect("README.md has the actions marker");
    let (_, tail) = rest.split_once(END).expect("README.md has the end of actions marker");
    same(
        "README.md",
        &format!("{head}{BEGIN}{}{END}{tail}", faultline::actions::markdown_table()),
    );
}

#[test]
fn the_parameter_reference_is_the_catalog() {
    let text = format!(
        "# Actions\n\n<!-- generated from src/actions by `FAULTLINE_BLESS=1 cargo test --test offline catalog` -->\n\n\
             Every action a template may name, with its parameters. Parameters are strings in a \
             template, as in FIS; a whole number is written \"50\".\n\n{}",
        faultline::actions::markdown_reference()
    );
    same("docs/actions.md", &format!("{}\n", text.trim_end()));
}
