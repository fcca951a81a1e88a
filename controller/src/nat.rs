//! NAT gateways as the leader last saw them (`VpcNatGateway`, `IptablesEIP` and the SNAT, DNAT
//! and FIP rules), checked against the Subnets, the Vpcs and the nodes, resolved into what the
//! OVN topology renders ([`GatewayInput`]) and what each object's status says ([`Verdict`]).
//! Pure, but for the addresses it holds, through [`Addresses`] (the IPAM), so that an EIP, a
//! gateway's external address or a `lanIp` is never handed to a pod.
//!
//! A refusal names the field and value. An EIP being deleted while a rule uses it stays in
//! force (Kube-OVN keeps it too) until the last rule that names it is gone.

mod check;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use sidelane_api::crd::{
    IptablesDnatRuleSpec, IptablesEipSpec, IptablesFipRuleSpec, IptablesSnatRuleSpec,
    VpcNatGatewaySpec,
};

use crate::{ovn::GatewayInput, subnet::SubnetConfig};

/// The external Subnet a gateway uses when it names none (Kube-OVN's convention).
pub const DEFAULT_EXTERNAL_SUBNET: &str = "ovn-vpc-external-network";

/// The kinds, as their statuses are keyed.
pub const GATEWAY: &str = "VpcNatGateway";
/// `IptablesEIP`.
pub const EIP: &str = "IptablesEIP";
/// `IptablesSnatRule`.
pub const SNAT: &str = "IptablesSnatRule";
/// `IptablesDnatRule`.
pub const DNAT: &str = "IptablesDnatRule";
/// `IptablesFIPRule`.
pub const FIP: &str = "IptablesFIPRule";

/// Addresses held for NAT objects, by holder (`<kind>/<name>[/<what>]`).
pub trait Addresses {
    /// Holds `ip` (or, when `None`, any free address) of `subnet` for `holder`; what it
    /// holds, or why not (naming the current holder).
    ///
    /// # Errors
    /// The address is held by another, outside the Subnet, or the Subnet is full.
    fn hold(&mut self, holder: &str, subnet: &str, ip: Option<IpAddr>) -> Result<IpAddr, String>;
    /// Releases what every NAT holder not in `keep` holds.
    fn release_others(&mut self, keep: &BTreeSet<String>);
}

/// What the leader knows of the cluster that NAT depends on.
pub struct World<'a> {
    /// Subnets by name.
    pub subnets: BTreeMap<&'a str, &'a SubnetConfig>,
    /// Vpcs with a router (named by a Vpc or by a Subnet).
    pub vpcs: BTreeSet<String>,
}

/// One object's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// In force: what its status shows.
    Accepted(Shown),
    /// Refused: the field and why.
    Refused {
        /// `spec.<field>`.
        field: String,
        /// The whole message (field and value named).
        message: String,
    },
}

/// What an accepted object's status shows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Shown {
    /// The address (an EIP's, a rule's EIP, a gateway's external address).
    pub ip: String,
    /// The gateway.
    pub gateway: String,
    /// What uses an EIP (`snat,dnat,fip`); the gateway chassis of a gateway.
    pub uses: Vec<String>,
    /// The external Subnet (gateways).
    pub external_subnet: String,
    /// Set while an EIP being deleted is kept for the rules that use it.
    pub held_for: Vec<String>,
}

/// The NAT objects and the nodes' labels.
#[derive(Default)]
pub struct Store {
    /// Gateways by name.
    pub gateways: BTreeMap<String, VpcNatGatewaySpec>,
    /// EIPs by name, with whether each is being deleted.
    pub eips: BTreeMap<String, (IptablesEipSpec, bool)>,
    /// SNAT rules.
    pub snats: BTreeMap<String, IptablesSnatRuleSpec>,
    /// DNAT rules.
    pub dnats: BTreeMap<String, IptablesDnatRuleSpec>,
    /// FIP rules.
    pub fips: BTreeMap<String, IptablesFipRuleSpec>,
    /// Node labels by node name.
    pub nodes: BTreeMap<String, BTreeMap<String, String>>,
    /// The addresses statuses showed, by holder: an EIP or a gateway without a fixed address
    /// keeps the one it had across restarts when it is still free.
    pub previous: BTreeMap<String, IpAddr>,
}

/// The outcome of [`Store::resolve`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    /// What the topology renders.
    pub gateways: Vec<GatewayInput>,
    /// Every object's verdict, by (kind, name).
    pub verdicts: BTreeMap<(&'static str, String), Verdict>,
}

impl Resolved {
    /// Whether EIP `name` may lose its finalizer: it is not in force (deleted and unused).
    pub fn eip_free(&self, name: &str) -> bool {
        !matches!(
            self.verdicts.get(&(EIP, name.to_owned())),
            Some(Verdict::Accepted(_))
        )
    }
}

impl Store {
    /// Everything checked, addresses held (and released for what is gone), and rendered.
    pub fn resolve(&self, world: &World<'_>, addresses: &mut dyn Addresses) -> Resolved {
        let mut r = check::Resolver::new(self, world, addresses);
        r.gateways();
        r.eips();
        r.rules();
        r.finish()
    }
}

#[cfg(test)]
mod tests;
