//! The PostgreSQL URL the pool connects with: the operator's, completed with this
//! product's one default of its own.
//!
//! libpq's default `sslmode` is `prefer`: it encrypts whenever the server offers TLS,
//! and Debian's PostgreSQL does out of the box (a self-signed certificate). On the
//! loopback that protects nothing (the bytes never leave the machine, and whoever can
//! read them there can read the database's files), and it is not free: the accept path
//! sends a score of statements a transaction, each one framed and encrypted both ways.
//! `bench ingest --in-process` on PostgreSQL 15 here: 23.7k results/s with TLS, 28.0k
//! without. So a URL naming a server on this machine, and saying nothing of TLS, has
//! `sslmode=disable` added. Any other URL is used as written.

use std::net::IpAddr;

/// `url` as the pool connects with it: with `sslmode=disable` added when it names a
/// PostgreSQL server on this machine (a loopback address or `localhost`) and nothing
/// says how to use TLS: no `sslmode` in the URL, and `pgsslmode` (the `PGSSLMODE`
/// environment variable, which libpq reads when the URL is silent) unset. A URL whose
/// server comes from elsewhere (no host in it, a `host`, `hostaddr` or `service`
/// parameter, several hosts) is used as written.
pub fn with_local_defaults(url: &str, pgsslmode: Option<&str>) -> String {
    if pgsslmode.is_some_and(|mode| !mode.is_empty()) || !names_this_machine(url) {
        return url.to_owned();
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}sslmode=disable")
}

/// Whether `url` names a server on this machine, and nothing else decides the server
/// or its TLS.
fn names_this_machine(url: &str) -> bool {
    let Ok(parsed) = url::Url::parse(url) else {
        return false;
    };
    let decided_elsewhere = parsed
        .query_pairs()
        .any(|(key, _)| matches!(&*key, "sslmode" | "host" | "hostaddr" | "service"));
    if decided_elsewhere {
        return false;
    }
    match parsed.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        // `postgres:` is not a scheme the URL standard knows, so its hosts are not
        // parsed: an IPv4 address arrives as a name.
        Some(url::Host::Domain(name)) => match name.parse::<IpAddr>() {
            Ok(ip) => ip.is_loopback(),
            Err(_) => name.eq_ignore_ascii_case("localhost"),
        },
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::with_local_defaults;

    #[test]
    fn a_server_on_this_machine_is_reached_without_tls() {
        for (url, expected) in [
            (
                "postgres://postgres@127.0.0.1:5432/lastmile",
                "postgres://postgres@127.0.0.1:5432/lastmile?sslmode=disable",
            ),
            (
                "postgresql://u:secret@127.8.9.10/db",
                "postgresql://u:secret@127.8.9.10/db?sslmode=disable",
            ),
            (
                "postgres://postgres@[::1]:5432/db",
                "postgres://postgres@[::1]:5432/db?sslmode=disable",
            ),
            (
                "postgres://postgres@LocalHost/db?connect_timeout=5",
                "postgres://postgres@LocalHost/db?connect_timeout=5&sslmode=disable",
            ),
        ] {
            assert_eq!(with_local_defaults(url, None), expected, "{url}");
        }
    }

    #[test]
    fn any_other_url_is_used_as_written() {
        for url in [
            // Another machine.
            "postgres://postgres@db.example.net/lastmile",
            "postgres://postgres@10.0.0.5:5432/lastmile",
            "postgres://postgres@[2001:db8::1]/lastmile",
            // The operator said how to use TLS.
            "postgres://postgres@127.0.0.1/lastmile?sslmode=require",
            "postgres://postgres@localhost/lastmile?connect_timeout=5&sslmode=verify-full",
            // The server is named elsewhere: libpq's PGHOST or socket, a parameter, a
            // service file, or several hosts.
            "postgres:///lastmile",
            "postgres://127.0.0.1/lastmile?host=db.example.net",
            "postgres://localhost/lastmile?hostaddr=10.0.0.5",
            "postgres://localhost/lastmile?service=prod",
            "postgres://127.0.0.1:5432,db.example.net:5432/lastmile",
            "not a url",
        ] {
            assert_eq!(with_local_defaults(url, None), url, "{url}");
        }
    }

    #[test]
    fn pgsslmode_in_the_environment_is_left_to_libpq() {
        let url = "postgres://postgres@127.0.0.1/lastmile";
        assert_eq!(with_local_defaults(url, Some("require")), url);
        assert_eq!(
            with_local_defaults(url, Some("")),
            format!("{url}?sslmode=disable")
        );
    }
}
