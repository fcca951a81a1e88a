//! Routing between Subnets of a Vpc on the fast path: the table of routed Subnets
//! ([`crate::routes`] decides it) and what follows from it in the maps. Each attachment on a
//! routed Subnet's switch has its source entry name its Vpc's routing domain and gateway MAC, and
//! its addresses published in the domain ([`Table::Routed`]). When the table changes, every
//! routed endpoint that goes is withdrawn before any source changes, and new ones are published
//! only after the sources that may use them, so no frame is routed where OVN would not route it.

use std::collections::BTreeMap;

use sidelane_agent_common::fastpath::{DOMAIN_OFF, Endpoint, EndpointKey, Source};
use tracing::info;

use super::{
    DataplaneError,
    fastpath::{FastpathDataplane, PortRoute, SWITCH_OFF, Table},
};

/// The route a source entry holds now.
fn route_held(src: &Source) -> Option<PortRoute> {
    (src.domain != DOMAIN_OFF).then_some(PortRoute {
        domain: src.domain,
        gateway_mac: src.gw_mac,
    })
}

impl FastpathDataplane {
    /// The route of switch `switch` in the table as last handed on.
    pub(super) fn route_of(&self, switch: u32) -> Option<PortRoute> {
        if switch == SWITCH_OFF {
            return None;
        }
        self.routes.as_ref()?.get(&switch).copied()
    }

    /// Takes the table of routed Subnets (by switch number) and brings every attachment's
    /// entries in line with it.
    pub fn set_routes(&mut self, routes: BTreeMap<u32, PortRoute>) -> Result<(), DataplaneError> {
        self.routes = Some(routes);
        let changed: Vec<(u32, Source, Option<PortRoute>)> = self
            .all_sources()
            .into_iter()
            .filter_map(|(host, src)| {
                let wanted = self.route_of(src.switch);
                (route_held(&src) != wanted).then_some((host, src, wanted))
            })
            .collect();
        for (host, _, _) in &changed {
            self.remove_table_endpoints_of(Table::Routed, *host, &format!("ifindex {host}"))?;
        }
        for (host, src, wanted) in &changed {
            self.put_source(
                *host,
                Source {
                    domain: wanted.map_or(DOMAIN_OFF, |r| r.domain),
                    gw_mac: wanted.map_or([0; 6], |r| r.gateway_mac),
                    ..*src
                },
            )?;
        }
        for (host, _, wanted) in &changed {
            let Some(route) = wanted else {
                continue;
            };
            let published: Vec<(EndpointKey, Endpoint)> = self
                .endpoints_of(*host)
                .into_iter()
                .filter(|(table, _, _)| *table == Table::Switched)
                .map(|(_, key, ep)| {
                    (
                        EndpointKey {
                            switch: route.domain,
                            ..key
                        },
                        Endpoint {
                            router_mac: route.gateway_mac,
                            ..ep
                        },
                    )
                })
                .collect();
            for (key, ep) in published {
                self.insert_endpoint(Table::Routed, key, ep, &format!("ifindex {host}"))?;
            }
        }
        if !changed.is_empty() {
            info!(
                attachments = changed.len(),
                "routing on the fast path changed"
            );
        }
        Ok(())
    }
}
