//! Proving a site's ownership by DNS: the owner publishes the site's verification token
//! as a TXT record at `_lastmile.<host>`, and the controller looks it up with a real
//! resolver (hickory). Useful where serving a file is awkward (a CDN, a shop platform).
//!
//! The lookup asks the configured nameserver (`dns_nameserver`, so tests can point it
//! at a responder on loopback) or the system's resolver. A fresh resolver per check:
//! an owner who just published the record and presses Verify again must not get a
//! cached "no such record" back.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, Protocol, ResolverConfig, ResolverOpts};
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
