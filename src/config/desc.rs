//! The configuration translated into what the data plane's tables are
//! built from: the one direction imports go (`dataplane::desc` never names
//! the configuration).

use super::Config;
use crate::dataplane::desc::TableDesc;

impl Config {
    /// What the data plane's tables are built from.
    pub fn table_desc(&self) -> TableDesc<'_> {
        TableDesc {
            node_addr: self.node.address,
            node_addr6: self.node.address6,
            overlay_addr: self.ingress.address,
            overlay_mac: self.ingress.mac,
            vni: self.ingress.vni,
            vxlan_port: self.ingress.port,
            overlay_mtu: self.ingress.mtu,
            timeouts: self.timeouts,
            services: &self.services,
        }
    }
}
