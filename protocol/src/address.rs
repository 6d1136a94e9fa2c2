//! Which IP addresses are public: the one address-classification table that the agent's
//! target guard and the controller's site verification both call.
//!
//! The tables below are the IANA IPv4 and IPv6 Special-Purpose Address Registries
//! (<https://www.iana.org/assignments/iana-ipv4-special-registry>,
//! <https://www.iana.org/assignments/iana-ipv6-special-registry>): every block whose
//! "Globally Reachable" column is `False`, plus a few that are not in the registries or
//! are marked otherwise but that nothing on the public internet serves a web site from
//! (multicast, deprecated site-local, ORCHID identifiers, Teredo, the former 6to4 relay
//! anycast). Each row is written as data, `(network, prefix length, name)`, so that it can
//! be read against the registry line by line.
//!
//! IPv6 forms that carry an IPv4 address (IPv4-mapped, IPv4-compatible, NAT64's
//! well-known prefix, 6to4) are decoded and the IPv4 address is judged by the IPv4
//! table: `64:ff9b::7f00:1` is loopback, `2002:c0a8:101::1` is a private network, while
//! `64:ff9b::808:808` is as public as `8.8.8.8`. Pure: no I/O, std only.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IPv4 blocks that are not public. Registry rows whose "Globally Reachable" is `True`
/// (192.0.0.9/32 PCP anycast, 192.0.0.10/32 TURN anycast, 192.31.196.0/24 AS112,
/// 192.52.193.0/24 AMT, 192.175.48.0/24 AS112 direct delegation) are not listed; the first
/// two lie inside 192.0.0.0/24, which is refused as a whole, as nothing serves a web site
/// from an anycast protocol address.
pub const IPV4_SPECIAL: &[(Ipv4Addr, u8, &str)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8, "\"this network\" (RFC 791)"),
    (Ipv4Addr::new(0, 0, 0, 0), 32, "\"this host\" (RFC 1122)"),
    (Ipv4Addr::new(10, 0, 0, 0), 8, "private use (RFC 1918)"),
    (
        Ipv4Addr::new(100, 64, 0, 0),
        10,
        "shared address space, carrier-grade NAT (RFC 6598)",
    ),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "loopback (RFC 1122)"),
    (Ipv4Addr::new(169, 254, 0, 0), 16, "link-local (RFC 3927)"),
    (Ipv4Addr::new(172, 16, 0, 0), 12, "private use (RFC 1918)"),
    (
        Ipv4Addr::new(192, 0, 0, 0),
        24,
        "IETF protocol assignments (RFC 6890)",
    ),
    (
        Ipv4Addr::new(192, 0, 0, 0),
        29,
        "IPv4 service continuity prefix, DS-Lite (RFC 7335)",
    ),
    (
        Ipv4Addr::new(192, 0, 0, 8),
        32,
        "IPv4 dummy address (RFC 7600)",
    ),
    (
        Ipv4Addr::new(192, 0, 0, 170),
        32,
        "NAT64/DNS64 discovery (RFC 8880)",
    ),
    (
        Ipv4Addr::new(192, 0, 0, 171),
        32,
        "NAT64/DNS64 discovery (RFC 8880)",
    ),
    (
        Ipv4Addr::new(192, 0, 2, 0),
        24,
        "documentation, TEST-NET-1 (RFC 5737)",
    ),
    (
        Ipv4Addr::new(192, 88, 99, 0),
        24,
        "deprecated 6to4 relay anycast (RFC 7526)",
    ),
    (Ipv4Addr::new(192, 168, 0, 0), 16, "private use (RFC 1918)"),
    (Ipv4Addr::new(198, 18, 0, 0), 15, "benchmarking (RFC 2544)"),
    (
        Ipv4Addr::new(198, 51, 100, 0),
        24,
        "documentation, TEST-NET-2 (RFC 5737)",
    ),
    (
        Ipv4Addr::new(203, 0, 113, 0),
        24,
        "documentation, TEST-NET-3 (RFC 5737)",
    ),
    // Not in the special-purpose registry (it has one of its own), never a unicast
    // server.
    (Ipv4Addr::new(224, 0, 0, 0), 4, "multicast (RFC 5771)"),
    (Ipv4Addr::new(240, 0, 0, 0), 4, "reserved (RFC 1112)"),
    (
        Ipv4Addr::new(255, 255, 255, 255),
        32,
        "limited broadcast (RFC 919)",
    ),
];

/// IPv6 blocks that are not public, whatever they contain. Registry rows whose "Globally
/// Reachable" is `True` (2001:1::1/128, 2001:1::2/128, 2001:1::3/128 anycast,
/// 2001:3::/32 AMT, 2001:4:112::/48 AS112, 2001:30::/28 DETs, 2620:4f:8000::/48 AS112)
/// are not listed, nor 2001::/23 as a whole (its not-reachable parts are).
pub const IPV6_SPECIAL: &[(Ipv6Addr, u8, &str)] = &[
    (
        Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 1),
        128,
        "loopback (RFC 4291)",
    ),
    (
        Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0),
        128,
        "unspecified (RFC 4291)",
    ),
    (
        Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
        48,
        "local-use IPv4/IPv6 translation (RFC 8215)",
    ),
    (
        Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0),
        64,
        "discard-only (RFC 6666)",
    ),
    (
        Ipv6Addr::new(0x100, 0, 0, 1, 0, 0, 0, 0),
        64,
        "dummy IPv6 prefix (RFC 9780)",
    ),
    // Registry: globally reachable "N/A"; a Teredo address reaches a host behind a NAT
    // through a relay, which is the volunteer's or the controller's own network.
    (
        Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
        32,
        "Teredo (RFC 4380)",
    ),
    (
        Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 0),
        48,
        "benchmarking (RFC 5180)",
    ),
    // ORCHIDs are cryptographic identifiers, "not routable at the IP layer" (RFC 7343),
    // although the registry marks ORCHIDv2 globally reachable.
    (
        Ipv6Addr::new(0x2001, 0x10, 0, 0, 0, 0, 0, 0),
        28,
        "deprecated ORCHID (RFC 4843)",
    ),
    (
        Ipv6Addr::new(0x2001, 0x20, 0, 0, 0, 0, 0, 0),
        28,
        "ORCHIDv2 (RFC 7343)",
    ),
    (
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
        32,
        "documentation (RFC 3849)",
    ),
    (
        Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0),
        20,
        "documentation (RFC 9637)",
    ),
    (
        Ipv6Addr::new(0x5f00, 0, 0, 0, 0, 0, 0, 0),
        16,
        "segment routing SIDs (RFC 9602)",
    ),
    (
        Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0),
        7,
        "unique local (RFC 4193)",
    ),
    (
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0),
        10,
        "link-local unicast (RFC 4291)",
    ),
    // Deprecated by RFC 3879, not in the registry: a site's private network.
    (
        Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0),
        10,
        "deprecated site-local (RFC 3879)",
    ),
    // Its own registry; never a unicast server.
    (
        Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0),
        8,
        "multicast (RFC 4291)",
    ),
];

/// IPv6 forms that carry an IPv4 address: `(network, prefix length, name, bit offset of
/// the IPv4 address)`. An address in one of them is as public as the IPv4 address it
/// carries. Rows of [`IPV6_SPECIAL`] come first (`::1` is loopback, not IPv4-compatible
/// `0.0.0.1`).
pub const IPV6_EMBEDDING_V4: &[(Ipv6Addr, u8, &str, u8)] = &[
    (
        Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0),
        96,
        "IPv4-mapped (RFC 4291)",
        96,
    ),
    (
        Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0),
        96,
        "deprecated IPv4-compatible (RFC 4291)",
        96,
    ),
    (
        Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0),
        96,
        "NAT64 well-known prefix (RFC 6052)",
        96,
    ),
    (
        Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0),
        16,
        "6to4 (RFC 3056)",
        16,
    ),
];

/// One row of a table: a block and its registry name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub network: IpAddr,
    pub prefix_len: u8,
    pub name: &'static str,
}

impl fmt::Display for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.name, self.network, self.prefix_len)
    }
}

/// Why an address is not public.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NonPublic {
    /// The (most specific) block the address lies in; for an embedded IPv4 address, the
    /// IPv4 block.
    pub block: Block,
    /// The IPv6 form the IPv4 address was carried in, if it was.
    pub embedded_in: Option<Block>,
}

impl fmt::Display for NonPublic {
    /// E.g. `loopback (RFC 1122) 127.0.0.0/8, carried in NAT64 well-known prefix
    /// (RFC 6052) 64:ff9b::/96`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.embedded_in {
            None => write!(f, "{}", self.block),
            Some(form) => write!(f, "{}, carried in {}", self.block, form),
        }
    }
}

/// Whether `ip` lies in no special-purpose block (decoding embedded IPv4).
pub fn is_public(ip: IpAddr) -> bool {
    non_public(ip).is_none()
}

/// The special-purpose block `ip` lies in, or `None` for a public address.
pub fn non_public(ip: IpAddr) -> Option<NonPublic> {
    match ip {
        IpAddr::V4(v4) => non_public_v4(v4).map(|block| NonPublic {
            block,
            embedded_in: None,
        }),
        IpAddr::V6(v6) => non_public_v6(v6),
    }
}

fn contains(network: u128, prefix_len: u8, bits: u32, ip: u128) -> bool {
    let host_bits = bits.saturating_sub(u32::from(prefix_len));
    host_bits >= bits || (network ^ ip) >> host_bits == 0
}

/// The longest-prefix row of [`IPV4_SPECIAL`] containing `ip`.
fn non_public_v4(ip: Ipv4Addr) -> Option<Block> {
    let ip = u128::from(u32::from(ip));
    IPV4_SPECIAL
        .iter()
        .filter(|(net, len, _)| contains(u128::from(u32::from(*net)), *len, 32, ip))
        .max_by_key(|(_, len, _)| *len)
        .map(|(net, len, name)| Block {
            network: IpAddr::V4(*net),
            prefix_len: *len,
            name,
        })
}

fn non_public_v6(ip: Ipv6Addr) -> Option<NonPublic> {
    let bits = u128::from(ip);
    let special = IPV6_SPECIAL
        .iter()
        .filter(|(net, len, _)| contains(u128::from(*net), *len, 128, bits))
        .max_by_key(|(_, len, _)| *len);
    if let Some((net, len, name)) = special {
        return Some(NonPublic {
            block: Block {
                network: IpAddr::V6(*net),
                prefix_len: *len,
                name,
            },
            embedded_in: None,
        });
    }
    let (net, len, name, offset) = IPV6_EMBEDDING_V4
        .iter()
        .filter(|(net, len, _, _)| contains(u128::from(*net), *len, 128, bits))
        .max_by_key(|(_, len, _, _)| *len)?;
    // The 32 bits from `offset` (counted from the most significant bit).
    let shift = 128 - 32 - u32::from(*offset);
    let v4 = Ipv4Addr::from(((bits >> shift) & 0xffff_ffff) as u32);
    non_public_v4(v4).map(|block| NonPublic {
        block,
        embedded_in: Some(Block {
            network: IpAddr::V6(*net),
            prefix_len: *len,
            name,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    /// Every row as (first address, last address, prefix length, bits of the family).
    fn rows() -> Vec<(u128, u128, u8, u32, &'static str)> {
        let v4 = IPV4_SPECIAL.iter().map(|(net, len, name)| {
            let first = u128::from(u32::from(*net));
            let size = 1u128 << (32 - u32::from(*len));
            (first, first + size - 1, *len, 32, *name)
        });
        let v6 = IPV6_SPECIAL.iter().map(|(net, len, name)| {
            let first = u128::from(*net);
            let host = 128 - u32::from(*len);
            let last = if host == 128 {
                u128::MAX
            } else {
                first | ((1u128 << host) - 1)
            };
            (first, last, *len, 128, *name)
        });
        v4.chain(v6).collect()
    }

    fn addr(value: u128, bits: u32) -> IpAddr {
        if bits == 32 {
            IpAddr::V4(Ipv4Addr::from(value as u32))
        } else {
            IpAddr::V6(Ipv6Addr::from(value))
        }
    }

    /// Whether some row other than `(first, len)` of the same family contains `value`.
    fn in_other_row(value: u128, bits: u32, first: u128, len: u8) -> bool {
        rows()
            .into_iter()
            .filter(|r| r.3 == bits && !(r.0 == first && r.2 == len))
            .any(|r| r.0 <= value && value <= r.1)
    }

    #[test]
    fn table_rows_are_networks() {
        for (first, _, len, bits, name) in rows() {
            let host = bits - u32::from(len);
            let mask = if host == 128 {
                u128::MAX
            } else {
                (1u128 << host) - 1
            };
            assert_eq!(first & mask, 0, "{name}: host bits set");
        }
        for (net, len, name, offset) in IPV6_EMBEDDING_V4 {
            assert_eq!(u128::from(*net) & ((1u128 << (128 - len)) - 1), 0, "{name}");
            assert!(u32::from(*offset) + 32 <= 128, "{name}");
        }
    }

    #[test]
    fn every_row_is_refused_from_its_first_to_its_last_address() {
        for (first, last, len, bits, name) in rows() {
            for value in [first, last] {
                let a = addr(value, bits);
                let found = non_public(a).unwrap_or_else(|| panic!("{a} ({name}) allowed"));
                // The row itself, or a more specific one inside it.
                assert!(found.block.prefix_len >= len, "{a}: {found}");
                assert!(found.embedded_in.is_none(), "{a}: {found}");
            }
        }
    }

    #[test]
    fn the_neighbours_just_outside_a_row_are_allowed_unless_another_row_holds_them() {
        let mut checked = 0;
        for (first, last, len, bits, name) in rows() {
            let max = if bits == 32 {
                u128::from(u32::MAX)
            } else {
                u128::MAX
            };
            let below = first.checked_sub(1);
            let above = if last < max { Some(last + 1) } else { None };
            for value in [below, above].into_iter().flatten() {
                if in_other_row(value, bits, first, len) {
                    continue;
                }
                // An IPv6 neighbour may be an embedding form; judge those by their IPv4.
                let a = addr(value, bits);
                if let Some(found) = non_public(a) {
                    assert!(
                        found.embedded_in.is_some(),
                        "{a}, next to {name}, is refused: {found}"
                    );
                    continue;
                }
                checked += 1;
            }
        }
        assert!(checked > 40, "only {checked} neighbours were checked");
        for public in [
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "192.0.1.0",
            "192.0.3.0",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2001:1::",
            "2001:db7:ffff:ffff:ffff:ffff:ffff:ffff",
            "2001:db9::",
            "3fff:1000::",
            "100:0:0:2::",
            "2001:1:ffff::",
            "2001:3::1",
            "fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            assert!(is_public(ip(public)), "{public} should be allowed");
        }
    }

    #[test]
    fn embedded_ipv4_is_judged_by_the_ipv4_table() {
        for (a, v4_block) in [
            ("64:ff9b::7f00:1", "127.0.0.0/8"),
            ("64:ff9b::a00:1", "10.0.0.0/8"),
            ("64:ff9b::a9fe:a9fe", "169.254.0.0/16"),
            ("64:ff9b::c0a8:1", "192.168.0.0/16"),
            ("2002:c0a8:0101::1", "192.168.0.0/16"),
            ("2002:7f00:1::", "127.0.0.0/8"),
            ("2002:a00:1:ffff:ffff:ffff:ffff:ffff", "10.0.0.0/8"),
            ("::ffff:192.168.0.1", "192.168.0.0/16"),
            ("::ffff:127.0.0.1", "127.0.0.0/8"),
            ("::ffff:10.0.0.1", "10.0.0.0/8"),
            ("::10.0.0.1", "10.0.0.0/8"),
            ("::127.0.0.1", "127.0.0.0/8"),
            ("::ffff:198.18.0.1", "198.18.0.0/15"),
        ] {
            let found = non_public(ip(a)).unwrap_or_else(|| panic!("{a} allowed"));
            assert_eq!(
                format!("{}/{}", found.block.network, found.block.prefix_len),
                v4_block,
                "{a}: {found}"
            );
            assert!(found.embedded_in.is_some(), "{a}: {found}");
        }
        // `::1` and `::` are loopback and unspecified, not IPv4-compatible 0.0.0.x.
        assert_eq!(
            non_public(ip("::1")).map(|f| f.block.name),
            Some("loopback (RFC 4291)")
        );
        assert_eq!(
            non_public(ip("::")).map(|f| f.block.name),
            Some("unspecified (RFC 4291)")
        );
    }

    #[test]
    fn the_ranges_the_issue_names_are_refused() {
        for a in [
            "64:ff9b:1::1",
            "64:ff9b:1:ffff::1",
            "fec0::1",
            "feff:ffff::1",
            "2001:db8::1",
            "3fff::1",
            "3fff:fff:ffff::1",
            "100::1",
            "2001::1",
            "2001:0:ffff::1",
            "2001:2::1",
            "2001:20::1",
            "198.18.0.1",
            "198.19.255.255",
            "192.0.0.1",
            "192.0.0.255",
            "192.0.2.1",
            "198.51.100.1",
            "203.0.113.1",
            "192.88.99.1",
            "224.0.0.1",
            "239.255.255.255",
            "240.0.0.1",
            "255.255.255.255",
            "100.64.0.1",
            "100.127.255.255",
            "fd00::1",
            "fc00::1",
            "fe80::1",
            "169.254.169.254",
            "127.0.0.1",
            "::1",
            "0.0.0.0",
            "::",
            "ff02::1",
        ] {
            assert!(!is_public(ip(a)), "{a} should be refused");
        }
    }

    #[test]
    fn public_addresses_are_allowed_in_every_form() {
        for a in [
            "8.8.8.8",
            "1.1.1.1",
            "100.128.0.1",
            "2001:4860:4860::8888",
            "2606:4700:4700::1111",
            "64:ff9b::808:808",
            "2002:0808:0808::1",
            "::ffff:8.8.8.8",
        ] {
            assert!(
                is_public(ip(a)),
                "{a} should be allowed: {:?}",
                non_public(ip(a))
            );
        }
    }

    #[test]
    fn the_match_is_named_for_error_messages() {
        let found = non_public(ip("64:ff9b::7f00:1")).map(|f| f.to_string());
        assert_eq!(
            found.as_deref(),
            Some("loopback (RFC 1122) 127.0.0.0/8, carried in NAT64 well-known prefix (RFC 6052) 64:ff9b::/96")
        );
        let found = non_public(ip("192.0.0.9")).map(|f| f.block.to_string());
        assert_eq!(
            found.as_deref(),
            Some("IETF protocol assignments (RFC 6890) 192.0.0.0/24")
        );
    }
}
