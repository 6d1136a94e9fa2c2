//! Where an agent is: country, region, city and autonomous system, from the address the
//! controller sees.
//!
//! **Invariant:** an agent's location never comes from the agent. It is looked up from
//! the TCP peer address of its request (or, behind a trusted reverse proxy, from the
//! `X-Forwarded-For` entry that proxy added), so a volunteer cannot claim to be in a
//! country that pays better or that a site owner asked for.
//!
//! Three sources, in order of precedence:
//! 1. **CIDR overrides** from the configuration, for private and test ranges that no
//!    public database knows (an office LAN, the demo's 127.0.0.0/8 agents). The most
//!    specific matching network wins; only the fields it sets replace the databases'.
//! 2. A **City database** for country, region and city.
//! 3. An **ASN database** for the autonomous system.
//!
//! The databases are MaxMind DB files, read with `maxminddb` and opened once at start.
//! Two record layouts are understood, because both are what one finds in the wild:
//! MaxMind's GeoLite2 layout (`country.iso_code`, `subdivisions[0].iso_code`,
//! `city.names.en`; `autonomous_system_number`, `autonomous_system_organization`) and
//! the flat layout of the ip-location-db packages (`country_code`, `state1`, `city` as
//! plain strings). Either database may supply any field: geography is taken from the
//! City database first, the autonomous system from the ASN database first. A field a
//! database does not know stays `None`; looking an address up never fails, it only knows
//! less. ip-location-db records carry a subdivision *name* rather than an ISO code, so
//! with such a database `region` holds the name ("Minnesota"), not the code ("MN").
//!
//! IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, what a dual-stack listener reports for
//! an IPv4 client) are treated as the IPv4 address everywhere in this module.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use ipnet::IpNet;
use lastmile_protocol::Location;
use maxminddb::Reader;
use serde::{Deserialize, Serialize};

/// Geo databases, overrides and trusted proxies, as configured.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GeoConfig {
    /// City database (GeoLite2-City layout, or ip-location-db's city layout).
    pub city_db: Option<PathBuf>,
    /// ASN database (GeoLite2-ASN layout).
    pub asn_db: Option<PathBuf>,
    /// Overrides for private and test ranges; the most specific matching network wins,
    /// and an override field that is set wins over the database.
    #[serde(default)]
    pub overrides: Vec<CidrOverride>,
    /// Proxies whose X-Forwarded-For is believed.
    #[serde(default)]
    pub trusted_proxies: Vec<IpNet>,
}

/// A configured location for a network, e.g. `{ network = "10.0.0.0/8", country = "DE" }`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct CidrOverride {
    pub network: IpNet,
    /// The fields that are set replace what the databases say; the others do not.
    #[serde(flatten)]
    pub location: Location,
}

/// Why the geo databases could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    /// A configured database file is missing, unreadable or not a MaxMind DB.
    #[error("cannot open geo database {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: maxminddb::MaxMindDbError,
    },
}

/// The geo resolver: opened once at start and shared behind an `Arc`; lookups only read.
#[derive(Debug)]
pub struct Geo {
    city: Option<Reader<Vec<u8>>>,
    asn: Option<Reader<Vec<u8>>>,
    /// Most specific first; among equal prefixes, configuration order.
    overrides: Vec<CidrOverride>,
    trusted_proxies: Vec<IpNet>,
}

impl Geo {
    /// Opens the configured databases. Without any, only the overrides place addresses.
    pub fn open(config: &GeoConfig) -> Result<Geo, GeoError> {
        let mut overrides = config.overrides.clone();
        for o in &mut overrides {
            o.network = canonical_net(o.network);
        }
        // A stable sort keeps configuration order among networks of the same size.
        overrides.sort_by_key(|o| std::cmp::Reverse(o.network.prefix_len()));
        let geo = Geo {
            city: config.city_db.as_ref().map(open_db).transpose()?,
            asn: config.asn_db.as_ref().map(open_db).transpose()?,
            overrides,
            trusted_proxies: config
                .trusted_proxies
                .iter()
                .copied()
                .map(canonical_net)
                .collect(),
        };
        if geo.city.is_none() && geo.asn.is_none() {
            tracing::info!(
                overrides = geo.overrides.len(),
                "no geo database configured: only the CIDR overrides place agents"
            );
        }
        Ok(geo)
    }

    /// Location of an address: overrides first, then the databases; unknown fields stay
    /// `None`.
    pub fn locate(&self, ip: IpAddr) -> Location {
        let ip = ip.to_canonical();
        let from_city = lookup(self.city.as_ref(), ip);
        let from_asn = lookup(self.asn.as_ref(), ip);
        let mut location = Location {
            country: from_city.country.or(from_asn.country),
            region: from_city.region.or(from_asn.region),
            city: from_city.city.or(from_asn.city),
            asn: from_asn.asn.or(from_city.asn),
            as_org: from_asn.as_org.or(from_city.as_org),
        };
        if let Some(o) = self.overrides.iter().find(|o| o.network.contains(&ip)) {
            let set = o.location.clone();
            location = Location {
                country: set.country.or(location.country),
                region: set.region.or(location.region),
                city: set.city.or(location.city),
                asn: set.asn.or(location.asn),
                as_org: set.as_org.or(location.as_org),
            };
        }
        location
    }

    /// The client address for a request: the TCP peer, unless the peer is a trusted
    /// proxy, in which case the right-most `X-Forwarded-For` entry that is not itself a
    /// trusted proxy (walking from the right, because only the entries our own proxies
    /// appended can be believed; anything further left was sent by the client).
    ///
    /// A malformed entry met on that walk, or an empty header, gives the peer. If every
    /// entry is a trusted proxy, the left-most one is the closest to the client we know.
    /// Several `X-Forwarded-For` headers must be joined with `,` in order by the caller.
    pub fn client_ip(&self, peer: IpAddr, x_forwarded_for: Option<&str>) -> IpAddr {
        let peer = peer.to_canonical();
        let Some(header) = x_forwarded_for else {
            return peer;
        };
        if !self.is_trusted_proxy(peer) {
            return peer;
        }
        let mut closest = peer;
        for entry in header.rsplit(',') {
            let Some(ip) = parse_forwarded_entry(entry) else {
                tracing::debug!(%peer, header, "malformed X-Forwarded-For: using the peer");
                return peer;
            };
            if !self.is_trusted_proxy(ip) {
                return ip;
            }
            closest = ip;
        }
        closest
    }

    fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }
}

fn open_db(path: &PathBuf) -> Result<Reader<Vec<u8>>, GeoError> {
    let reader = Reader::open_readfile(path).map_err(|source| GeoError::Open {
        path: path.clone(),
        source,
    })?;
    let meta = reader.metadata();
    tracing::info!(
        path = %path.display(),
        database_type = %meta.database_type,
        ip_version = meta.ip_version,
        build_epoch = meta.build_epoch,
        "opened geo database"
    );
    if meta.ip_version == 4 {
        tracing::warn!(
            path = %path.display(),
            "geo database covers IPv4 only: IPv6 agents will not be placed by it"
        );
    }
    Ok(reader)
}

/// What one database says about an address, in [`Location`]'s terms.
fn lookup(reader: Option<&Reader<Vec<u8>>>, ip: IpAddr) -> Location {
    let Some(reader) = reader else {
        return Location::default();
    };
    if ip.is_ipv6() && reader.metadata().ip_version == 4 {
        return Location::default();
    }
    let record = reader
        .lookup(ip)
        .and_then(|result| result.decode::<Record>());
    match record {
        Ok(Some(record)) => record.into_location(),
        Ok(None) => Location::default(),
        Err(error) => {
            // Per request, so not a warning: a database this broken shows at once in
            // the agents list, where every agent is unplaced.
            tracing::debug!(%ip, %error, "geo database record unreadable");
            Location::default()
        }
    }
}

/// A database record in either layout; fields of the other layout or unknown to us are
/// ignored.
#[derive(Deserialize)]
struct Record {
    /// GeoLite2: `{ iso_code, names }`.
    country: Option<Place>,
    /// GeoLite2: largest subdivision first.
    subdivisions: Option<Vec<Place>>,
    /// GeoLite2: `{ names }`; ip-location-db: a plain name.
    city: Option<CityField>,
    /// ip-location-db.
    country_code: Option<String>,
    /// ip-location-db: the largest subdivision's name.
    state1: Option<String>,
    autonomous_system_number: Option<u32>,
    autonomous_system_organization: Option<String>,
}

/// A GeoLite2 country, subdivision or city.
#[derive(Deserialize)]
struct Place {
    iso_code: Option<String>,
    names: Option<Names>,
}

#[derive(Deserialize)]
struct Names {
    en: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum CityField {
    Name(String),
    Place(Place),
}

impl Record {
    fn into_location(self) -> Location {
        let region = self
            .subdivisions
            .and_then(|s| s.into_iter().next())
            .and_then(|s| known(s.iso_code).or_else(|| known(s.names.and_then(|n| n.en))));
        let city = match self.city {
            Some(CityField::Name(name)) => known(Some(name)),
            Some(CityField::Place(place)) => known(place.names.and_then(|n| n.en)),
            None => None,
        };
        Location {
            country: known(self.country.and_then(|c| c.iso_code)).or(known(self.country_code)),
            region: region.or(known(self.state1)),
            city,
            asn: self.autonomous_system_number.filter(|&n| n != 0),
            as_org: known(self.autonomous_system_organization),
        }
    }
}

/// ip-location-db writes `""` for what it does not know.
fn known(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.trim().is_empty())
}

/// One `X-Forwarded-For` entry: an address, tolerating the `ip:port` and `[v6]:port`
/// forms some proxies write.
fn parse_forwarded_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    let ip = entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            entry
                .strip_prefix('[')
                .and_then(|e| e.strip_suffix(']'))
                .and_then(|e| e.parse::<IpAddr>().ok())
        })?;
    Some(ip.to_canonical())
}

/// `::ffff:10.0.0.0/104` and `10.0.0.0/8` are the same network to this module.
fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96).unwrap_or(net),
            None => net,
        },
        _ => net,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lastmile_testbed::geodb::{self, TestNetwork};
    use std::path::Path;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn loc(country: &str, region: &str, city: &str, asn: u32, as_org: &str) -> Location {
        let some = |s: &str| Some(s.to_owned()).filter(|s| !s.is_empty());
        Location {
            country: some(country),
            region: some(region),
            city: some(city),
            asn: Some(asn).filter(|&a| a != 0),
            as_org: some(as_org),
        }
    }

    fn over(network: &str, location: Location) -> CidrOverride {
        CidrOverride {
            network: net(network),
            location,
        }
    }

    /// City and ASN databases written with the testbed's writers, as the demo does.
    fn test_databases(dir: &Path) -> GeoConfig {
        let networks = [
            TestNetwork::new(
                net("127.0.0.2/32"),
                ["DE", "BE", "Berlin"],
                64_501,
                "Test AS64501",
            ),
            TestNetwork::new(
                net("2001:db8:3::/48"),
                ["US", "CA", "San Francisco"],
                64_502,
                "Test AS64502",
            ),
        ];
        let city_db = dir.join("city.mmdb");
        let asn_db = dir.join("asn.mmdb");
        geodb::write_city_db(&city_db, &networks).unwrap();
        geodb::write_asn_db(&asn_db, &networks).unwrap();
        GeoConfig {
            city_db: Some(city_db),
            asn_db: Some(asn_db),
            ..GeoConfig::default()
        }
    }

    #[test]
    fn testbed_database_places_a_loopback_agent() {
        let dir = tempfile::tempdir().unwrap();
        let geo = Geo::open(&test_databases(dir.path())).unwrap();

        assert_eq!(
            geo.locate(ip("127.0.0.2")),
            loc("DE", "BE", "Berlin", 64_501, "Test AS64501")
        );
        assert_eq!(
            geo.locate(ip("2001:db8:3::42")),
            loc("US", "CA", "San Francisco", 64_502, "Test AS64502")
        );
        assert_eq!(geo.locate(ip("127.0.0.9")), Location::default());
    }

    #[test]
    fn overrides_beat_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_databases(dir.path());
        config.overrides = vec![over(
            "127.0.0.0/24",
            Location {
                country: Some("FR".into()),
                city: Some("Paris".into()),
                ..Location::default()
            },
        )];
        let geo = Geo::open(&config).unwrap();

        // Set fields win; unset fields keep what the databases say.
        assert_eq!(
            geo.locate(ip("127.0.0.2")),
            loc("FR", "BE", "Paris", 64_501, "Test AS64501")
        );
        // Outside the databases the override alone places the address.
        assert_eq!(geo.locate(ip("127.0.0.77")), loc("FR", "", "Paris", 0, ""));
    }

    #[test]
    fn most_specific_override_wins() {
        let wide = over("10.0.0.0/8", loc("DE", "HE", "Frankfurt", 64_600, "Office"));
        let narrow = over("10.1.0.0/16", loc("NL", "", "Amsterdam", 0, ""));
        let host = over("10.1.2.3/32", loc("", "", "", 64_999, "Lab"));
        // The configuration order must not matter.
        for overrides in [
            vec![wide.clone(), narrow.clone(), host.clone()],
            vec![host.clone(), narrow.clone(), wide.clone()],
        ] {
            let geo = Geo::open(&GeoConfig {
                overrides,
                ..GeoConfig::default()
            })
            .unwrap();
            assert_eq!(
                geo.locate(ip("10.9.9.9")),
                loc("DE", "HE", "Frankfurt", 64_600, "Office")
            );
            // Only the most specific override applies: no fields leak from wider ones.
            assert_eq!(
                geo.locate(ip("10.1.9.9")),
                loc("NL", "", "Amsterdam", 0, "")
            );
            assert_eq!(geo.locate(ip("10.1.2.3")), loc("", "", "", 64_999, "Lab"));
            assert_eq!(geo.locate(ip("192.168.1.1")), Location::default());
        }
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let geo = Geo::open(&GeoConfig {
            trusted_proxies: vec![net("10.0.0.0/8"), net("fd00::/8")],
            ..GeoConfig::default()
        })
        .unwrap();
        let proxy = ip("10.0.0.1");

        // An untrusted peer cannot claim another address.
        assert_eq!(
            geo.client_ip(ip("203.0.113.9"), Some("198.51.100.7")),
            ip("203.0.113.9")
        );
        // A trusted proxy without the header is the client.
        assert_eq!(geo.client_ip(proxy, None), proxy);
        // The right-most entry that is not a trusted proxy is the client.
        assert_eq!(
            geo.client_ip(proxy, Some("198.51.100.7")),
            ip("198.51.100.7")
        );
        assert_eq!(
            geo.client_ip(proxy, Some("198.51.100.7, 10.0.0.2, fd00::5")),
            ip("198.51.100.7")
        );
        // What the client itself put further left is not believed.
        assert_eq!(
            geo.client_ip(proxy, Some("1.2.3.4, 198.51.100.7")),
            ip("198.51.100.7")
        );
        assert_eq!(
            geo.client_ip(proxy, Some("not-an-address, 198.51.100.7")),
            ip("198.51.100.7")
        );
        // Ports and brackets some proxies write are tolerated.
        assert_eq!(
            geo.client_ip(proxy, Some("198.51.100.7:5123")),
            ip("198.51.100.7")
        );
        assert_eq!(
            geo.client_ip(proxy, Some("[2001:db8::1]:443")),
            ip("2001:db8::1")
        );
        // Malformed where it matters: the peer.
        assert_eq!(geo.client_ip(proxy, Some("198.51.100.7, junk")), proxy);
        assert_eq!(geo.client_ip(proxy, Some("")), proxy);
        assert_eq!(geo.client_ip(proxy, Some("198.51.100.7,,")), proxy);
        // Only proxies: the left-most is the closest to the client.
        assert_eq!(
            geo.client_ip(proxy, Some("10.0.0.3, 10.0.0.2")),
            ip("10.0.0.3")
        );
    }

    #[test]
    fn mapped_ipv6_addresses_are_treated_as_ipv4() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_databases(dir.path());
        config.overrides = vec![over("10.0.0.0/8", loc("NL", "", "", 0, ""))];
        config.trusted_proxies = vec![net("::ffff:192.0.2.0/120")];
        let geo = Geo::open(&config).unwrap();

        assert_eq!(
            geo.locate(ip("::ffff:127.0.0.2")),
            loc("DE", "BE", "Berlin", 64_501, "Test AS64501")
        );
        assert_eq!(geo.locate(ip("::ffff:10.1.1.1")), loc("NL", "", "", 0, ""));
        // A dual-stack listener reports IPv4 clients as mapped addresses.
        assert_eq!(
            geo.client_ip(ip("::ffff:198.51.100.7"), None),
            ip("198.51.100.7")
        );
        // A trusted proxy given in mapped form matches its IPv4 address, and back.
        assert_eq!(
            geo.client_ip(ip("192.0.2.1"), Some("::ffff:198.51.100.7")),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn a_missing_database_is_an_error_naming_its_path() {
        let err = Geo::open(&GeoConfig {
            city_db: Some("/nonexistent/lastmile-city.mmdb".into()),
            ..GeoConfig::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/lastmile-city.mmdb"));
    }

    #[test]
    fn config_reads_overrides_with_flat_location_fields() {
        let config: GeoConfig = toml::from_str(
            r#"
            city_db = "/var/lib/lastmile/city.mmdb"
            trusted_proxies = ["10.0.0.0/8"]

            [[overrides]]
            network = "192.168.0.0/16"
            country = "DE"
            region = "BE"
            city = "Berlin"
            asn = 64512
            "#,
        )
        .unwrap();
        assert_eq!(
            config.city_db,
            Some(PathBuf::from("/var/lib/lastmile/city.mmdb"))
        );
        assert_eq!(config.asn_db, None);
        assert_eq!(config.trusted_proxies, vec![net("10.0.0.0/8")]);
        assert_eq!(config.overrides[0].network, net("192.168.0.0/16"));
        assert_eq!(
            config.overrides[0].location,
            loc("DE", "BE", "Berlin", 64_512, "")
        );
        assert!(toml::from_str::<GeoConfig>("citydb = \"x\"").is_err());
    }

    #[test]
    fn geo_can_be_shared_between_threads() {
        fn shared<T: Send + Sync + 'static>() {}
        shared::<Geo>();
    }

    /// Real public databases fetched by `scripts/fetch-test-data.sh` (never committed).
    fn real_db(name: &str) -> PathBuf {
        let dir = std::env::var_os("LASTMILE_TEST_MMDB_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-data/mmdb")
            });
        let path = dir.join(name);
        assert!(
            path.is_file(),
            "{} is missing: run scripts/fetch-test-data.sh",
            path.display()
        );
        path
    }

    /// ip-location-db's GeoLite2 City files (flat layout), pinned to one release.
    #[test]
    fn real_geolite_database_places_a_well_known_address() {
        let v4 = Geo::open(&GeoConfig {
            city_db: Some(real_db("real-city.mmdb")),
            ..GeoConfig::default()
        })
        .unwrap();
        // University of Minnesota.
        assert_eq!(
            v4.locate(ip("128.101.101.101")),
            loc("US", "Minnesota", "Minneapolis", 0, "")
        );
        // Google Public DNS: a country, and "" for the unknown city becomes None.
        assert_eq!(v4.locate(ip("8.8.8.8")), loc("US", "", "", 0, ""));
        assert_eq!(v4.locate(ip("::ffff:8.8.8.8")), loc("US", "", "", 0, ""));
        // An IPv4-only file knows nothing about IPv6, and says so without failing.
        assert_eq!(v4.locate(ip("2001:4860:4860::8888")), Location::default());
        assert_eq!(v4.locate(ip("127.0.0.1")), Location::default());

        let v6 = Geo::open(&GeoConfig {
            city_db: Some(real_db("real-city-ipv6.mmdb")),
            ..GeoConfig::default()
        })
        .unwrap();
        // RIPE NCC, Amsterdam.
        assert_eq!(
            v6.locate(ip("2001:67c:2e8:22::c100:68b")),
            loc("NL", "North Holland", "Amsterdam", 0, "")
        );
    }

    /// ip-location-db's IPtoASN country file (IPv4 and IPv6 in one tree).
    #[test]
    fn real_country_database_places_anycast_resolvers() {
        let geo = Geo::open(&GeoConfig {
            city_db: Some(real_db("real-country.mmdb")),
            ..GeoConfig::default()
        })
        .unwrap();
        assert_eq!(geo.locate(ip("1.1.1.1")), loc("US", "", "", 0, ""));
        assert_eq!(geo.locate(ip("193.0.14.129")), loc("NL", "", "", 0, ""));
        assert_eq!(
            geo.locate(ip("2001:4860:4860::8888")),
            loc("US", "", "", 0, "")
        );
        assert_eq!(geo.locate(ip("::ffff:1.1.1.1")), loc("US", "", "", 0, ""));
    }
}
