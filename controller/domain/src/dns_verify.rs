//! Proving a site's ownership by DNS: the owner publishes the site's verification token
//! as a TXT record at `_lastmile.<host>`, and the controller looks it up with a real
//! resolver (hickory). Useful where serving a file is awkward (a CDN, a shop platform).
//!
//! The lookup asks the configured nameserver (`dns_nameserver`, so tests can point it
//! at a responder on loopback) or the system's resolver. A fresh resolver per check:
//! an owner who just published the record and presses Verify again must not get a
//! cached "no such record" back.
//!
//! [`lookup_ips`] resolves a site's host for verification by file the same way, so that
//! one configured nameserver answers both proofs (and tests can answer on loopback).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, Protocol, ResolverConfig, ResolverOpts,
};
use hickory_resolver::error::ResolveErrorKind;
use hickory_resolver::TokioAsyncResolver;

use crate::error::{Error, Result};

/// The name whose TXT records must hold the token.
pub fn record_name(host: &str) -> String {
    format!("_lastmile.{}", host.trim_end_matches('.'))
}

fn resolver(nameserver: Option<SocketAddr>) -> Result<TokioAsyncResolver> {
    let mut opts = ResolverOpts::default();
    opts.timeout = Duration::from_secs(3);
    opts.attempts = 2;
    opts.cache_size = 0;
    // Every address of a name, both families: site verification checks each of them.
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    match nameserver {
        Some(addr) => {
            let mut config = ResolverConfig::new();
            config.add_name_server(NameServerConfig::new(addr, Protocol::Udp));
            config.add_name_server(NameServerConfig::new(addr, Protocol::Tcp));
            Ok(TokioAsyncResolver::tokio(config, opts))
        }
        None => {
            let (config, _) = hickory_resolver::system_conf::read_system_conf().map_err(|e| {
                Error::Unavailable(format!("cannot read the system's DNS configuration: {e}"))
            })?;
            Ok(TokioAsyncResolver::tokio(config, opts))
        }
    }
}

/// The TXT strings published at `name` (each record's strings joined, as RFC 7208
/// reads long TXT values). An absent name or record is an empty list, not an error.
pub async fn txt_values(nameserver: Option<SocketAddr>, name: &str) -> Result<Vec<String>> {
    let fqdn = format!("{}.", name.trim_end_matches('.'));
    match resolver(nameserver)?.txt_lookup(fqdn).await {
        Ok(found) => Ok(found
            .iter()
            .map(|txt| {
                txt.txt_data()
                    .iter()
                    .map(|part| String::from_utf8_lossy(part).into_owned())
                    .collect::<String>()
            })
            .collect()),
        Err(e) => match e.kind() {
            ResolveErrorKind::NoRecordsFound { .. } => Ok(Vec::new()),
            _ => Err(Error::invalid(
                "verification_failed",
                format!("cannot look up TXT records of {name}: {e}"),
            )),
        },
    }
}

/// The addresses `host` (a name, not an IP literal) resolves to, asked once: from the
/// configured nameserver (A and AAAA, a fresh resolver without cache), or the system's
/// resolver (`getaddrinfo`, so `/etc/hosts` counts) when none is configured. An error
/// says why there is no address, for the owner.
pub async fn lookup_ips(
    nameserver: Option<SocketAddr>,
    host: &str,
) -> std::result::Result<Vec<IpAddr>, String> {
    let ips: Vec<IpAddr> = match nameserver {
        Some(_) => {
            let fqdn = format!("{}.", host.trim_end_matches('.'));
            let resolver = resolver(nameserver).map_err(|e| e.to_string())?;
            match resolver.lookup_ip(fqdn).await {
                Ok(found) => found.iter().collect(),
                Err(e) => match e.kind() {
                    ResolveErrorKind::NoRecordsFound { .. } => Vec::new(),
                    _ => return Err(format!("cannot resolve {host}: {e}")),
                },
            }
        }
        None => tokio::net::lookup_host((host, 0))
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .map(|a| a.ip())
            .collect(),
    };
    if ips.is_empty() {
        return Err(format!("{host} has no address (no A or AAAA record)"));
    }
    Ok(ips)
}
