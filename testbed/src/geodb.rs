//! Test geo databases: small MaxMind DB files that place test addresses where a test
//! wants them.
//!
//! The controller places an agent from the address it connects from, never from what the
//! agent says. On one machine every agent connects from loopback, so the demo and the
//! end-to-end tests give each agent its own address in 127.0.0.0/8 and write City and ASN
//! databases that put those addresses in different countries, regions and networks. The
//! files use the same layout as MaxMind's GeoLite2-City and GeoLite2-ASN databases, so
//! the controller reads them through exactly the code path that reads the real ones.
//!
//! Empty strings and ASN 0 mean "unknown" and are left out of the records, as a real
//! database leaves out what it does not know.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

/// One network of a test geo database.
#[derive(Debug, Clone)]
pub struct TestNetwork {
    pub network: ipnet::IpNet,
    /// ISO 3166-1 alpha-2 country code, e.g. "DE".
    pub country: String,
    /// ISO 3166-2 subdivision code without the country, e.g. "BE" for DE-BE.
    pub region: String,
    /// English city name.
    pub city: String,
    /// Autonomous system number.
    pub asn: u32,
    /// Name of the autonomous system's organisation.
    pub as_org: String,
}

impl TestNetwork {
    /// A network with its place and autonomous system (a city database and an ASN
    /// database written from it both know it).
    pub fn new(network: ipnet::IpNet, place: [&str; 3], asn: u32, as_org: &str) -> TestNetwork {
        let [country, region, city] = place.map(str::to_owned);
        TestNetwork {
            network,
            country,
            region,
            city,
            asn,
            as_org: as_org.to_owned(),
        }
    }
}

/// Writes a City database (GeoLite2-City layout: `country.iso_code`,
/// `subdivisions[0].iso_code` and `.names.en`, `city.names.en`) to `path`.
///
/// A test network has no separate subdivision name, so `names.en` repeats the code.
pub fn write_city_db(path: &Path, networks: &[TestNetwork]) -> anyhow::Result<()> {
    let mut writer = mmdb_writer::Writer::builder("GeoLite2-City")
        .description(&[("en", "Lastmile test City database")])
        .build();
    for net in networks {
        let record = CityRecord {
            country: non_empty(&net.country).map(|code| Place {
                iso_code: Some(code),
                names: names(code),
            }),
            subdivisions: non_empty(&net.region)
                .map(|code| {
                    vec![Place {
                        iso_code: Some(code),
                        names: names(code),
                    }]
                })
                .unwrap_or_default(),
            city: non_empty(&net.city).map(|name| Place {
                iso_code: None,
                names: names(name),
            }),
        };
        writer
            .insert(net.network, &record)
            .with_context(|| format!("cannot add {} to the City database", net.network))?;
    }
    write(path, &writer)
}

/// Writes an ASN database (GeoLite2-ASN layout: `autonomous_system_number`,
/// `autonomous_system_organization`) to `path`. Networks with ASN 0 are left out.
pub fn write_asn_db(path: &Path, networks: &[TestNetwork]) -> anyhow::Result<()> {
    let mut writer = mmdb_writer::Writer::builder("GeoLite2-ASN")
        .description(&[("en", "Lastmile test ASN database")])
        .build();
    for net in networks.iter().filter(|n| n.asn != 0) {
        let record = AsnRecord {
            autonomous_system_number: net.asn,
            autonomous_system_organization: non_empty(&net.as_org),
        };
        writer
            .insert(net.network, &record)
            .with_context(|| format!("cannot add {} to the ASN database", net.network))?;
    }
    write(path, &writer)
}

/// GeoLite2-City record, reduced to what the controller reads.
#[derive(Serialize)]
struct CityRecord<'a> {
    country: Option<Place<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    subdivisions: Vec<Place<'a>>,
    city: Option<Place<'a>>,
}

/// A country, subdivision or city: an optional ISO code and names by language.
#[derive(Serialize)]
struct Place<'a> {
    iso_code: Option<&'a str>,
    names: BTreeMap<&'static str, &'a str>,
}

/// GeoLite2-ASN record.
#[derive(Serialize)]
struct AsnRecord<'a> {
    autonomous_system_number: u32,
    autonomous_system_organization: Option<&'a str>,
}

fn names(english: &str) -> BTreeMap<&'static str, &str> {
    BTreeMap::from([("en", english)])
}

fn non_empty(s: &str) -> Option<&str> {
    Some(s).filter(|s| !s.is_empty())
}

fn write(path: &Path, writer: &mmdb_writer::Writer) -> anyhow::Result<()> {
    let bytes = writer
        .to_bytes()
        .with_context(|| format!("cannot build geo database {}", path.display()))?;
    std::fs::write(path, bytes)
        .with_context(|| format!("cannot write geo database {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::net::IpAddr;

    #[derive(Deserialize)]
    struct Names {
        en: Option<String>,
    }
    #[derive(Deserialize)]
    struct ReadPlace {
        iso_code: Option<String>,
        names: Option<Names>,
    }
    #[derive(Deserialize)]
    struct ReadCity {
        country: Option<ReadPlace>,
        subdivisions: Option<Vec<ReadPlace>>,
        city: Option<ReadPlace>,
    }
    #[derive(Deserialize)]
    struct ReadAsn {
        autonomous_system_number: Option<u32>,
        autonomous_system_organization: Option<String>,
    }

    fn networks() -> Vec<TestNetwork> {
        vec![
            TestNetwork::new(
                "127.0.0.2/32".parse().unwrap(),
                ["DE", "BE", "Berlin"],
                64_501,
                "Test AS64501",
            ),
            TestNetwork::new("2001:db8::/32".parse().unwrap(), ["US", "", ""], 0, ""),
        ]
    }

    #[test]
    fn written_databases_read_back_with_maxminddb() {
        let dir = std::env::temp_dir().join(format!("lastmile-geodb-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let city_path = dir.join("city.mmdb");
        let asn_path = dir.join("asn.mmdb");
        write_city_db(&city_path, &networks()).unwrap();
        write_asn_db(&asn_path, &networks()).unwrap();

        let city = maxminddb::Reader::open_readfile(&city_path).unwrap();
        assert_eq!(city.metadata().database_type, "GeoLite2-City");
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        let record: ReadCity = city.lookup(ip).unwrap().decode().unwrap().unwrap();
        assert_eq!(record.country.unwrap().iso_code.as_deref(), Some("DE"));
        let region = record.subdivisions.unwrap().remove(0);
        assert_eq!(region.iso_code.as_deref(), Some("BE"));
        assert_eq!(region.names.unwrap().en.as_deref(), Some("BE"));
        let town = record.city.unwrap().names.unwrap().en;
        assert_eq!(town.as_deref(), Some("Berlin"));

        let v6: ReadCity = city
            .lookup("2001:db8::7".parse().unwrap())
            .unwrap()
            .decode()
            .unwrap()
            .unwrap();
        assert_eq!(v6.country.unwrap().iso_code.as_deref(), Some("US"));
        assert!(v6.subdivisions.is_none(), "an empty region is left out");
        assert!(v6.city.is_none(), "an empty city is left out");

        let neighbour = city.lookup("127.0.0.3".parse().unwrap()).unwrap();
        assert!(!neighbour.has_data(), "only the listed network is placed");

        let asn = maxminddb::Reader::open_readfile(&asn_path).unwrap();
        assert_eq!(asn.metadata().database_type, "GeoLite2-ASN");
        let record: ReadAsn = asn.lookup(ip).unwrap().decode().unwrap().unwrap();
        assert_eq!(record.autonomous_system_number, Some(64_501));
        assert_eq!(
            record.autonomous_system_organization.as_deref(),
            Some("Test AS64501")
        );
        let unknown = asn.lookup("2001:db8::7".parse().unwrap()).unwrap();
        assert!(!unknown.has_data(), "ASN 0 is left out");

        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unwritable_path_is_an_error_naming_the_path() {
        let path = Path::new("/nonexistent-lastmile-dir/city.mmdb");
        let err = write_city_db(path, &networks()).unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent-lastmile-dir/city.mmdb"));
    }
}
