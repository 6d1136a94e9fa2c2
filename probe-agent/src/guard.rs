//! The target guard: which addresses an agent may fetch.
//!
//! Volunteers lend us their line, not their home network. A check must never make an
//! agent fetch something on the volunteer's LAN, the machine itself or a cloud metadata
//! address, so every address a name resolves to is checked *before* connecting, and the
//! connection goes only to an address that passed (no second resolution in between,
//! which is what a DNS-rebinding attack would exploit). Local-test mode
//! (`--allow-private`) turns the guard off for the demo and tests; `--allow-net` lets
//! one network the volunteer names through (both applied by the caller, `measure`).

use std::net::IpAddr;

use lastmile_protocol::address::{self, NonPublic};

/// Whether `ip` lies in a range an agent must not fetch outside local-test mode: any
/// special-purpose block of the IANA registries, embedded IPv4 forms decoded (the table
/// is [`lastmile_protocol::address`], shared with the controller's site verification).
pub fn is_forbidden(ip: IpAddr) -> bool {
    why_forbidden(ip).is_some()
}

/// The block that forbids `ip`, for messages; `None` for a public address.
pub fn why_forbidden(ip: IpAddr) -> Option<NonPublic> {
    address::non_public(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forbidden(s: &str) -> bool {
        is_forbidden(s.parse().unwrap())
    }

    #[test]
    fn private_loopback_and_link_local_are_forbidden() {
        for ip in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "127.0.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            // Special ranges the first guard let through (issue 13).
            "64:ff9b::7f00:1",
            "64:ff9b::a00:1",
            "64:ff9b:1::1",
            "2002:c0a8:0101::1",
            "fec0::1",
            "2001:db8::1",
            "100::1",
            "2001::1",
            "198.18.0.1",
            "192.0.0.1",
        ] {
            assert!(forbidden(ip), "{ip} should be forbidden");
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "100.128.0.1",
            "2001:4860:4860::8888",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:0808:0808::1",
        ] {
            assert!(!forbidden(ip), "{ip} should be allowed");
        }
    }
}
