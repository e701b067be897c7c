//! Tables in faultline's one style (comfy-table), for every command that prints one.

use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};

/// A table with its header.
pub fn table<'a>(header: impl IntoIterator<Item = &'a str>) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_header(header);
    t
}
