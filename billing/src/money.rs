//! Money: integer minor units (cents) with an ISO 4217 currency. Never a float.
//!
//! Amounts are `i64` minor units. Arithmetic that could overflow is checked and
//! returns `None`; a single amount is capped at [`MAX_MINOR`] (ten billion units of
//! the major currency), so sums of many amounts stay far from `i64::MAX`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The largest single amount the ledger accepts, in minor units (1e12).
pub const MAX_MINOR: i64 = 1_000_000_000_000;

/// An ISO 4217 currency code, stored lower case (`usd`, `eur`), as Stripe writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency([u8; 3]);

impl Currency {
    /// US dollars, the currency prices are set in.
    pub const USD: Currency = Currency(*b"usd");
    /// Euros.
    pub const EUR: Currency = Currency(*b"eur");

    /// The lower-case code.
    pub fn as_str(&self) -> &str {
        // Only ASCII letters are ever stored (see `from_str`).
        std::str::from_utf8(&self.0).unwrap_or("???")
    }
}

/// A currency code that is not three ASCII letters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("currency must be a three-letter ISO 4217 code such as usd, not {0:?}")]
pub struct BadCurrency(pub String);

impl FromStr for Currency {
    type Err = BadCurrency;

    fn from_str(s: &str) -> Result<Currency, BadCurrency> {
        let bytes = s.as_bytes();
        if bytes.len() != 3 || !bytes.iter().all(u8::is_ascii_alphabetic) {
            return Err(BadCurrency(s.to_owned()));
        }
        let mut code = [0u8; 3];
        for (to, from) in code.iter_mut().zip(bytes) {
            *to = from.to_ascii_lowercase();
        }
        Ok(Currency(code))
    }
}

impl TryFrom<String> for Currency {
    type Error = BadCurrency;
    fn try_from(s: String) -> Result<Currency, BadCurrency> {
        s.parse()
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> String {
        c.as_str().to_owned()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An amount of one currency in minor units. May be negative (a debit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    pub minor: i64,
    pub currency: Currency,
}

impl Money {
    /// `minor` units of `currency`.
    pub fn new(minor: i64, currency: Currency) -> Money {
        Money { minor, currency }
    }

    /// The sum, or `None` on a currency mismatch or overflow.
    pub fn checked_add(self, other: Money) -> Option<Money> {
        if self.currency != other.currency {
            return None;
        }
        Some(Money::new(
            self.minor.checked_add(other.minor)?,
            self.currency,
        ))
    }
}

impl std::ops::Neg for Money {
    type Output = Money;

    /// The same amount with the sign flipped.
    fn neg(self) -> Money {
        Money::new(-self.minor, self.currency)
    }
}

impl fmt::Display for Money {
    /// `12.34 usd` (two decimal places; every currency we price in has two).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.minor < 0 { "-" } else { "" };
        let abs = self.minor.unsigned_abs();
        write!(f, "{sign}{}.{:02} {}", abs / 100, abs % 100, self.currency)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn currency_codes_are_three_letters_stored_lower_case() {
        assert_eq!("USD".parse::<Currency>().unwrap(), Currency::USD);
        assert!("us".parse::<Currency>().is_err());
        assert!("u$d".parse::<Currency>().is_err());
        assert!("usdx".parse::<Currency>().is_err());
    }

    #[test]
    fn money_prints_with_two_decimals() {
        assert_eq!(Money::new(1234, Currency::USD).to_string(), "12.34 usd");
        assert_eq!(Money::new(-5, Currency::EUR).to_string(), "-0.05 eur");
    }

    #[test]
    fn adding_different_currencies_is_refused() {
        let a = Money::new(1, Currency::USD);
        assert_eq!(a.checked_add(Money::new(1, Currency::EUR)), None);
        assert_eq!(a.checked_add(a), Some(Money::new(2, Currency::USD)));
    }
}
