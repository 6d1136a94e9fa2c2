//! The target guard: which addresses an agent may fetch.
//!
//! Volunteers lend us their line, not their home network. A check must never make an
//! agent fetch something on the volunteer's LAN, the machine itself or a cloud metadata
//! address, so every address a name resolves to is checked *before* connecting, and the
//! connection goes only to an address that passed (no second resolution in between,
//! which is what a DNS-rebinding attack would exploit). Local-test mode
//! (`--allow-private`) turns the guard off for the demo and tests.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Whether `ip` lies in a range an agent must not fetch outside local-test mode.
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_forbidden_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_forbidden_v4(v4),
            None => is_forbidden_v6(v6),
        },
    }
}

fn is_forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || a == 0
        // Carrier-grade NAT, 100.64.0.0/10: the ISP's side of the volunteer's line.
        || (a == 100 && (b & 0xc0) == 64)
        // Reserved for future use, 240.0.0.0/4.
        || a >= 240
}

fn is_forbidden_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        // Unique local addresses, fc00::/7.
        || (first & 0xfe00) == 0xfc00
        // Link-local unicast, fe80::/10.
        || (first & 0xffc0) == 0xfe80
        // IPv4-compatible (deprecated) ::a.b.c.d and NAT64 well-known prefix with a private v4 inside.
        || ip.to_ipv4().is_some_and(|v4| ip.segments()[..6] == [0; 6] && is_forbidden_v4(v4))
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
        ] {
            assert!(!forbidden(ip), "{ip} should be allowed");
        }
    }
}
