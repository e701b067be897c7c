//! Inventories: JSON arrays of host descriptions, for `plan` and `validate`.

use crate::diagnostic::{join, Diagnostic, Origin};
use crate::template::parse_json;
use faultline_agent::protocol::HostDescription;
use serde_json::Value;

/// Parses an inventory, reporting every bad entry and duplicate host id.
pub fn parse(text: &str) -> Result<Vec<HostDescription>, Vec<Diagnostic>> {
    let value = parse_json(text, Origin::Inventory).map_err(|d| vec![d])?;
    from_value(&value)
}

/// Reads host descriptions out of a parsed inventory.
pub fn from_value(value: &Value) -> Result<Vec<HostDescription>, Vec<Diagnostic>> {
    let Some(items) = value.as_array() else {
        return Err(vec![Diagnostic::at(
            Origin::Inventory,
            "",
            "an inventory is a JSON array of host descriptions",
        )
        .hint("see experiments/inventory.json")]);
    };
    let mut hosts: Vec<HostDescription> = Vec::with_capacity(items.len());
    let mut diags = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match serde_json::from_value::<HostDescription>(item.clone()) {
            Ok(h) if hosts.iter().any(|o| o.host_id == h.host_id) => {
                diags.push(Diagnostic::at(
                    Origin::Inventory,
                    join(&join("", i), "HostId"),
                    format!("host `{}` appears twice", h.host_id),
                ));
            }
            Ok(h) => hosts.push(h),
            Err(e) => diags.push(Diagnostic::at(Origin::Inventory, join("", i), e.to_string()).hint(
                "a host description has HostId, Placement.AvailabilityZone and optionally State, Tags, Address, Agent",
            )),
        }
    }
    if diags.is_empty() {
        Ok(hosts)
    } else {
        Err(diags)
    }
}
