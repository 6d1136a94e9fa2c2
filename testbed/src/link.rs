//! TEMPORARY STUB (lead) until the link emulator lands.
use std::net::SocketAddr;
use std::time::Duration;
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkProfile { pub down_bps: u64, pub up_bps: u64, pub rtt: Duration }
impl LinkProfile { pub fn for_class(_c: lastmile_protocol::ConnectionClass) -> LinkProfile { LinkProfile { down_bps: 1, up_bps: 1, rtt: Duration::ZERO } } }
pub struct Link { addr: SocketAddr, profile: LinkProfile }
impl Link {
    pub async fn start(listen: SocketAddr, _upstream: SocketAddr, profile: LinkProfile) -> std::io::Result<Link> { Ok(Link { addr: listen, profile }) }
    pub fn addr(&self) -> SocketAddr { self.addr }
    pub fn profile(&self) -> LinkProfile { self.profile }
}
