//! What a measurement costs the owner, and how it is split between the volunteer who
//! measured it and the platform.
//!
//! A check's price per accepted result is fixed by the check itself (its kind and its
//! selection), so an owner knows it before a run starts and a run's cost can be
//! checked against the owner's credit before any assignment exists.
//!
//! | input | rule |
//! | --- | --- |
//! | kind `http` | base price 5 cents |
//! | kind `page` | base price 15 cents (HTML plus its sub-resources) |
//! | classes: only `dialup` | x 4 |
//! | classes: only `satellite` (or satellite and dialup) | x 3 |
//! | classes: only `mobile` or slower | x 2 |
//! | classes: any, or including dsl/cable/fibre | x 1 |
//! | countries: every listed country outside [`WELL_COVERED_COUNTRIES`] | x 1.5 (rounded up) |
//!
//! Scarcity is judged by the *cheapest* way to serve the selection: a check that
//! accepts fibre or dialup can be served by fibre, so it pays the fibre price. The
//! platform keeps [`PLATFORM_FEE_BPS`] (20 %) of each price, rounded to the nearest
//! cent; the volunteer earns the rest.

use lastmile_protocol::{CheckKind, ConnectionClass};

use crate::money::{Currency, Money};

/// The currency prices are set in.
pub const PRICE_CURRENCY: Currency = Currency::USD;

/// Every currency prices exist in: the only ones credit may be bought or granted in,
/// since credit in any other could never be spent. Adding a currency is one line here
/// (with prices in it).
pub const PRICED_CURRENCIES: &[Currency] = &[PRICE_CURRENCY];

/// Whether prices exist in `currency`, so that credit in it can be spent.
pub fn is_priced(currency: Currency) -> bool {
    PRICED_CURRENCIES.contains(&currency)
}

/// The priced currencies for a message: `usd`, or `usd, eur`.
pub fn priced_currencies() -> String {
    PRICED_CURRENCIES
        .iter()
        .map(Currency::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The platform's share of each price, in basis points (1/100 of a percent).
pub const PLATFORM_FEE_BPS: i64 = 2_000;

/// Countries where volunteers are plentiful; a check limited to other countries pays
/// the scarce-country rate.
pub const WELL_COVERED_COUNTRIES: [&str; 12] = [
    "US", "CA", "GB", "DE", "FR", "NL", "SE", "ES", "IT", "JP", "AU", "PL",
];

/// Base price of one result of a check kind, in minor units of [`PRICE_CURRENCY`].
pub fn base_price_minor(kind: CheckKind) -> i64 {
    match kind {
        CheckKind::Http => 5,
        // A page load is the document plus typically tens of sub-resources: more of
        // the volunteer's line and time than one fetch.
        CheckKind::Page => 15,
        // A throughput load fills the volunteer's line for seconds over several
        // connections, and spends their data allowance.
        CheckKind::Throughput => 40,
        // A video session downloads its media (20 s of a rendition by default): a
        // throughput load's share of the line and the data allowance.
        CheckKind::Video => 40,
        // A udp stream is few bytes (about 20 KB a second each way by default) but has
        // the volunteer's line to itself for its duration, as a load does.
        CheckKind::Udp => 20,
    }
}

/// Price multiplier of a connection class, in percent.
pub fn class_multiplier_pct(class: ConnectionClass) -> i64 {
    match class {
        ConnectionClass::Dialup => 400,
        ConnectionClass::Satellite => 300,
        ConnectionClass::Mobile => 200,
        ConnectionClass::Dsl | ConnectionClass::Cable | ConnectionClass::Fibre => 100,
    }
}

/// The price of one accepted result of a check with this kind and selection (empty
/// lists mean "any").
pub fn price_per_result(
    kind: CheckKind,
    classes: &[ConnectionClass],
    countries: &[String],
) -> Money {
    let class_pct = classes
        .iter()
        .map(|c| class_multiplier_pct(*c))
        .min()
        .unwrap_or(100);
    let scarce_countries = !countries.is_empty()
        && countries.iter().all(|c| {
            !WELL_COVERED_COUNTRIES
                .iter()
                .any(|w| w.eq_ignore_ascii_case(c))
        });
    let country_pct = if scarce_countries { 150 } else { 100 };
    let base = base_price_minor(kind);
    // base * class% * country% / 10_000, rounded up to a whole cent.
    let minor = (base * class_pct * country_pct + 9_999) / 10_000;
    Money::new(minor, PRICE_CURRENCY)
}

/// How a price is split: `(volunteer's earnings, platform fee)`, which add up to the
/// price exactly. The fee is rounded to the nearest minor unit (half up).
pub fn split(price: Money) -> (Money, Money) {
    let fee = ((i128::from(price.minor) * i128::from(PLATFORM_FEE_BPS) + 5_000) / 10_000) as i64;
    (
        Money::new(price.minor - fee, price.currency),
        Money::new(fee, price.currency),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scarce_classes_and_countries_cost_more() {
        let any = price_per_result(CheckKind::Http, &[], &[]);
        assert_eq!(any, Money::new(5, Currency::USD));
        let dialup = price_per_result(CheckKind::Http, &[ConnectionClass::Dialup], &[]);
        assert_eq!(dialup.minor, 20);
        let dialup_or_fibre = price_per_result(
            CheckKind::Http,
            &[ConnectionClass::Dialup, ConnectionClass::Fibre],
            &[],
        );
        assert_eq!(dialup_or_fibre.minor, 5, "served by the cheapest class");
        let brazil = price_per_result(CheckKind::Http, &[], &["BR".to_owned()]);
        assert_eq!(brazil.minor, 8, "5 x 1.5 rounded up");
        let us_or_br = price_per_result(CheckKind::Http, &[], &["us".to_owned(), "BR".to_owned()]);
        assert_eq!(us_or_br.minor, 5);
    }

    #[test]
    fn a_page_load_costs_more_than_one_fetch_under_the_same_rules() {
        let http = price_per_result(CheckKind::Http, &[], &[]);
        let page = price_per_result(CheckKind::Page, &[], &[]);
        assert!(page.minor > http.minor, "{page:?} vs {http:?}");
        assert_eq!(page, Money::new(15, Currency::USD));
        // The selection's multipliers apply to a page as to a fetch.
        let dialup = price_per_result(CheckKind::Page, &[ConnectionClass::Dialup], &[]);
        assert_eq!(dialup.minor, 60);
        let brazil = price_per_result(CheckKind::Page, &[], &["BR".to_owned()]);
        assert_eq!(brazil.minor, 23, "15 x 1.5 rounded up");
        let (volunteer, fee) = split(page);
        assert_eq!((volunteer.minor, fee.minor), (12, 3));
    }

    #[test]
    fn the_split_adds_up_to_the_price() {
        for minor in 0..500 {
            let price = Money::new(minor, Currency::USD);
            let (volunteer, fee) = split(price);
            assert_eq!(volunteer.minor + fee.minor, minor);
            assert!(fee.minor >= 0 && volunteer.minor >= 0);
        }
        assert_eq!(split(Money::new(5, Currency::USD)).1.minor, 1);
        assert_eq!(split(Money::new(100, Currency::USD)).1.minor, 20);
    }
}
