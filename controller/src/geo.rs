//! TEMPORARY STUB (lead) until geo lands.
use std::net::IpAddr;
use std::path::PathBuf;
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
pub struct GeoConfig { pub city_db: Option<PathBuf>, pub asn_db: Option<PathBuf>, #[serde(default)] pub overrides: Vec<CidrOverride>, #[serde(default)] pub trusted_proxies: Vec<ipnet::IpNet> }
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct CidrOverride { pub network: ipnet::IpNet, #[serde(flatten)] pub location: lastmile_protocol::Location }
#[derive(Debug, thiserror::Error)]
pub enum GeoError { #[error("x")] X }
pub struct Geo;
impl Geo {
    pub fn open(_c: &GeoConfig) -> Result<Geo, GeoError> { Ok(Geo) }
    pub fn locate(&self, _ip: IpAddr) -> lastmile_protocol::Location { Default::default() }
    pub fn client_ip(&self, peer: IpAddr, _x: Option<&str>) -> IpAddr { peer }
}
