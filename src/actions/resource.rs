//! What a target selects: the resource types actions act on, and how templates name them.

use serde::Serialize;

/// What a target selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ResourceType {
    /// Hosts (also `aws:ec2:instance`).
    #[serde(rename = "faultline:host")]
    Host,
    /// Availability zones.
    #[serde(rename = "faultline:az")]
    Az,
    /// Subnets: each AZ's network is one (`subnet-<AZ>` in `vpc-faultline`).
    #[serde(rename = "aws:ec2:subnet")]
    Subnet,
}

impl ResourceType {
    /// The name used in templates.
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceType::Host => "faultline:host",
            ResourceType::Az => "faultline:az",
            ResourceType::Subnet => "aws:ec2:subnet",
        }
    }

    /// What resources of this type are called, in messages.
    pub fn plural(self) -> &'static str {
        match self {
            ResourceType::Host => "hosts",
            ResourceType::Az => "availability zones",
            ResourceType::Subnet => "subnets",
        }
    }

    /// The key of `action.targets` that names a target of this type.
    pub fn target_key(self) -> &'static str {
        match self {
            ResourceType::Host => "Hosts",
            ResourceType::Az => "AvailabilityZones",
            ResourceType::Subnet => "Subnets",
        }
    }

    /// Every key of `action.targets` that names a target of this type: FIS writes
    /// `Instances` for `aws:ec2:instance`.
    pub fn target_keys(self) -> &'static [&'static str] {
        match self {
            ResourceType::Host => &["Hosts", "Instances"],
            ResourceType::Az => &["AvailabilityZones"],
            ResourceType::Subnet => &["Subnets"],
        }
    }
}
