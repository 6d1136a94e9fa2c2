//! Confidence intervals for what a report states: percentiles and availability.
//!
//! **Percentiles: distribution-free order-statistic intervals.** For n samples and the
//! quantile q, let B ~ Binomial(n, q) count the samples below the true quantile ξ_q.
//! Whatever the latency distribution (continuous), the interval between the order
//! statistics `[X(l), X(u)]` covers ξ_q with probability `P(l <= B <= u-1)
//! = 1 - P(B <= l-1) - P(B >= u)`. We take the equal-tailed choice: `l` the largest rank
//! with `P(B <= l-1) <= α/2`, `u` the smallest with `P(B >= u) <= α/2`. When one tail
//! cannot be kept under α/2 even at the extreme order statistic (`X(1)` or `X(n)`), that
//! end is the extreme and the other tail gets the rest of α. The interval then exists
//! exactly when `q^n + (1-q)^n <= α`, which gives the minimum sample counts of
//! [`min_samples`] (at 95 %: p50 6, p90 29, p95 59, p99 299). With fewer samples the
//! interval is `None` and the report says so instead of printing a precise-looking figure.
//! Coverage is at least nominal for continuous distributions; the unit test below
//! measures it on lognormal samples.
//!
//! The order statistics are read from the merged HdrHistogram: the lower bound is the
//! lowest value of `X(l)`'s bucket and the upper bound the highest value of `X(u)`'s,
//! so the histogram's 0.1 % quantization can only widen the interval, never move it off
//! the true value.
//!
//! **Availability: Clopper-Pearson.** The exact binomial interval (inverting two
//! one-sided binomial tests) rather than Wilson's score interval: availabilities in an
//! SLA sit next to 100 %, where Wilson's coverage dips below nominal for some n, and
//! a contract needs an interval whose coverage is guaranteed (Clopper-Pearson's is, at
//! the price of being slightly wide). It is computed by bisection on the binomial tail.
//!
//! Binomial probabilities are summed outward from the mode in ratios
//! (`pmf(k+1)/pmf(k) = (n-k)/(k+1) · p/(1-p)`), stopping once terms fall below 1e-22 of
//! the mode's, so the cost grows with √n, not n.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{Error, Result};

/// The confidence level of every interval in a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
pub enum Confidence {
    #[serde(rename = "0.9")]
    P90,
    #[default]
    #[serde(rename = "0.95")]
    P95,
    #[serde(rename = "0.99")]
    P99,
}

impl Confidence {
    /// Parses `0.9`, `0.95` or `0.99`.
    pub fn parse(raw: &str) -> Result<Confidence> {
        match raw.trim() {
            "0.9" | "0.90" => Ok(Confidence::P90),
            "0.95" => Ok(Confidence::P95),
            "0.99" => Ok(Confidence::P99),
            other => Err(Error::invalid(
                "invalid_confidence",
                format!("confidence {other:?} is not one of 0.9, 0.95, 0.99"),
            )),
        }
    }

    /// The level, e.g. 0.95.
    pub fn level(self) -> f64 {
        match self {
            Confidence::P90 => 0.90,
            Confidence::P95 => 0.95,
            Confidence::P99 => 0.99,
        }
    }

    /// 1 - level.
    pub fn alpha(self) -> f64 {
        1.0 - self.level()
    }

    /// The two-sided critical value of the standard normal, z_{1-α/2}.
    pub fn z(self) -> f64 {
        match self {
            Confidence::P90 => 1.644_853_626_951_472_2,
            Confidence::P95 => 1.959_963_984_540_054,
            Confidence::P99 => 2.575_829_303_548_901,
        }
    }
}

/// Binomial(n, p) probabilities over the range where they are not negligible.
struct Binomial {
    /// First k held in `pmf`.
    lo: u64,
    /// P(lo <= B <= lo+i), summed from the bottom.
    cum: Vec<f64>,
    /// P(B >= lo+i), summed from the top so small upper tails keep their precision.
    tail: Vec<f64>,
}

impl Binomial {
    fn new(n: u64, p: f64) -> Binomial {
        if p <= 0.0 {
            return Binomial::from_pmf(0, vec![1.0]);
        }
        if p >= 1.0 {
            return Binomial::from_pmf(n, vec![1.0]);
        }
        const CUTOFF: f64 = 1e-22;
        let mode = (((n + 1) as f64) * p).floor().min(n as f64) as u64;
        let odds = p / (1.0 - p);
        let mut up = Vec::new();
        let mut w = 1.0;
        let mut k = mode;
        while k < n {
            w *= (n - k) as f64 / (k + 1) as f64 * odds;
            if w < CUTOFF {
                break;
            }
            up.push(w);
            k += 1;
        }
        let mut down = Vec::new();
        let mut w = 1.0;
        let mut k = mode;
        while k > 0 {
            w *= k as f64 / (n - k + 1) as f64 / odds;
            if w < CUTOFF {
                break;
            }
            down.push(w);
            k -= 1;
        }
        let lo = mode - down.len() as u64;
        let mut pmf: Vec<f64> = down.into_iter().rev().collect();
        pmf.push(1.0);
        pmf.extend(up);
        let total: f64 = pmf.iter().sum();
        for v in &mut pmf {
            *v /= total;
        }
        Binomial::from_pmf(lo, pmf)
    }

    fn from_pmf(lo: u64, pmf: Vec<f64>) -> Binomial {
        let mut cum = Vec::with_capacity(pmf.len());
        let mut acc = 0.0;
        for v in &pmf {
            acc += v;
            cum.push(acc.min(1.0));
        }
        let mut tail = vec![0.0; pmf.len()];
        let mut acc = 0.0;
        for (i, v) in pmf.iter().enumerate().rev() {
            acc += v;
            tail[i] = acc.min(1.0);
        }
        Binomial { lo, cum, tail }
    }

    /// P(B <= k).
    fn cdf(&self, k: i64) -> f64 {
        if k < self.lo as i64 {
            return 0.0;
        }
        let i = ((k - self.lo as i64) as usize).min(self.cum.len() - 1);
        self.cum[i]
    }

    /// P(B >= k).
    fn sf(&self, k: i64) -> f64 {
        let i = (k - self.lo as i64).max(0) as usize;
        self.tail.get(i).copied().unwrap_or(0.0)
    }
}

/// The ranks (1-based) of the order statistics bounding the q-quantile of n samples,
/// or `None` when n is too small for an interval at this confidence.
///
/// Remembered per thread (at most [`RANKS_REMEMBERED`] answers): the ranks depend only
/// on (n, q, confidence), every phase of a report row has the same n, and building the
/// binomial over a row of 300k samples was a fifth of a 30-day report's time.
pub fn quantile_ranks(n: u64, q: f64, confidence: Confidence) -> Option<(u64, u64)> {
    use std::cell::RefCell;
    use std::collections::HashMap;
    /// (n, q's bits, alpha's bits) to ranks.
    type Remembered = HashMap<(u64, u64, u64), Option<(u64, u64)>>;
    thread_local! {
        static RANKS: RefCell<Remembered> = RefCell::new(HashMap::new());
    }
    let key = (n, q.to_bits(), confidence.alpha().to_bits());
    if let Some(known) = RANKS.with(|r| r.borrow().get(&key).copied()) {
        return known;
    }
    let ranks = exact_quantile_ranks(n, q, confidence);
    RANKS.with(|r| {
        let mut r = r.borrow_mut();
        if r.len() >= RANKS_REMEMBERED {
            r.clear();
        }
        r.insert(key, ranks);
    });
    ranks
}

/// Most (n, q, confidence) answers [`quantile_ranks`] keeps per thread.
const RANKS_REMEMBERED: usize = 4096;

fn exact_quantile_ranks(n: u64, q: f64, confidence: Confidence) -> Option<(u64, u64)> {
    if n == 0 || !(0.0..1.0).contains(&q) || q <= 0.0 {
        return None;
    }
    let alpha = confidence.alpha();
    let b = Binomial::new(n, q);
    // Lower tail of the extreme: P(B <= 0); upper: P(B >= n).
    let low_extreme = b.cdf(0);
    let high_extreme = b.sf(n as i64);
    if low_extreme + high_extreme > alpha {
        return None;
    }
    let (low_budget, high_budget) = if low_extreme > alpha / 2.0 {
        (low_extreme, alpha - low_extreme)
    } else if high_extreme > alpha / 2.0 {
        (alpha - high_extreme, high_extreme)
    } else {
        (alpha / 2.0, alpha / 2.0)
    };
    // Largest l with P(B <= l-1) <= low_budget (l = 1 qualifies, see above).
    let (mut lo, mut hi) = (1u64, n);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if b.cdf(mid as i64 - 1) <= low_budget {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    let l = lo;
    // Smallest u with P(B >= u) <= high_budget (u = n qualifies).
    let (mut lo, mut hi) = (1u64, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if b.sf(mid as i64) <= high_budget {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let u = lo;
    Some((l.min(u), u))
}

/// The smallest sample count for which [`quantile_ranks`] gives an interval.
pub fn min_samples(q: f64, confidence: Confidence) -> u64 {
    let alpha = confidence.alpha();
    let mut n = 1u64;
    while q.powf(n as f64) + (1.0 - q).powf(n as f64) > alpha && n < 1_000_000_000 {
        n += 1;
    }
    n
}

/// `[low, high]` for the q-quantile of the samples in `h`, in the histogram's units;
/// `None` when `h` holds too few samples.
pub fn quantile_interval(h: &Histogram<u64>, q: f64, confidence: Confidence) -> Option<[u64; 2]> {
    quantile_intervals(h, &[q], confidence)[0]
}

/// [`quantile_interval`] for several quantiles, in one pass over the histogram (a
/// report asks for four per phase and row; each pass walks every counter).
pub fn quantile_intervals(
    h: &Histogram<u64>,
    qs: &[f64],
    confidence: Confidence,
) -> Vec<Option<[u64; 2]>> {
    let ranks: Vec<Option<(u64, u64)>> = qs
        .iter()
        .map(|&q| quantile_ranks(h.len(), q, confidence))
        .collect();
    let mut wanted: Vec<u64> = ranks.iter().flatten().flat_map(|&(l, u)| [l, u]).collect();
    wanted.sort_unstable();
    wanted.dedup();
    let values = values_at_ranks(h, &wanted);
    let at = |rank: u64| {
        wanted
            .binary_search(&rank)
            .ok()
            .and_then(|i| values.get(i).copied())
    };
    ranks
        .into_iter()
        .map(|r| {
            let (l, u) = r?;
            Some([h.lowest_equivalent(at(l)?), h.highest_equivalent(at(u)?)])
        })
        .collect()
}

/// The values of the rank-th smallest samples (1-based) for ascending `ranks`, as far
/// as the histogram holds that many samples.
fn values_at_ranks(h: &Histogram<u64>, ranks: &[u64]) -> Vec<u64> {
    let mut values = Vec::with_capacity(ranks.len());
    let mut seen = 0u64;
    let mut next = ranks.iter().peekable();
    for v in h.iter_recorded() {
        seen += v.count_since_last_iteration();
        while next.next_if(|&&rank| seen >= rank).is_some() {
            values.push(v.value_iterated_to());
        }
        if next.peek().is_none() {
            break;
        }
    }
    values
}

/// Clopper-Pearson interval for `successes` out of `n`, as fractions; `None` when n = 0.
pub fn proportion_interval(successes: u64, n: u64, confidence: Confidence) -> Option<[f64; 2]> {
    if n == 0 || successes > n {
        return None;
    }
    let half = confidence.alpha() / 2.0;
    // Lower: P(B >= x | p) = α/2, increasing in p.
    let low = if successes == 0 {
        0.0
    } else {
        bisect(|p| Binomial::new(n, p).sf(successes as i64) < half)
    };
    // Upper: P(B <= x | p) = α/2, decreasing in p.
    let high = if successes == n {
        1.0
    } else {
        bisect(|p| Binomial::new(n, p).cdf(successes as i64) > half)
    };
    Some([low, high])
}

/// The boundary in [0, 1] where `below(p)` turns from true to false.
fn bisect(below: impl Fn(f64) -> bool) -> f64 {
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    for _ in 0..64 {
        let mid = (lo + hi) / 2.0;
        if below(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (lo + hi) / 2.0
}

/// Two-sided p-value of the pooled two-proportion z-test for `x1/n1` vs `x2/n2`;
/// `None` when either side has no samples. Equal proportions of 0 or 1 give 1.
pub fn two_proportion_p_value(x1: u64, n1: u64, x2: u64, n2: u64) -> Option<f64> {
    if n1 == 0 || n2 == 0 {
        return None;
    }
    let (p1, p2) = (x1 as f64 / n1 as f64, x2 as f64 / n2 as f64);
    let pooled = (x1 + x2) as f64 / (n1 + n2) as f64;
    let se = (pooled * (1.0 - pooled) * (1.0 / n1 as f64 + 1.0 / n2 as f64)).sqrt();
    if se == 0.0 {
        return Some(1.0);
    }
    let z = ((p1 - p2) / se).abs();
    Some(erfc(z / std::f64::consts::SQRT_2))
}

/// The complementary error function (Numerical Recipes' Chebyshev fit, |error| < 1.2e-7).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::histogram;
    use rand::{Rng, SeedableRng};

    #[test]
    fn remembered_ranks_are_the_exact_ones_for_each_n_q_and_confidence() {
        for confidence in [Confidence::P90, Confidence::P95, Confidence::P99] {
            for n in [1u64, 5, 20, 59, 300, 4_321, 333_360] {
                for q in [0.5, 0.9, 0.95, 0.99] {
                    let exact = exact_quantile_ranks(n, q, confidence);
                    // Asked twice: the second answer comes from memory.
                    assert_eq!(quantile_ranks(n, q, confidence), exact, "{n} {q}");
                    assert_eq!(quantile_ranks(n, q, confidence), exact, "{n} {q}");
                }
            }
        }
        // Different confidences of one (n, q) are kept apart.
        assert_ne!(
            quantile_ranks(1_000, 0.5, Confidence::P90),
            quantile_ranks(1_000, 0.5, Confidence::P99)
        );
    }

    #[test]
    fn minimum_samples_follow_the_extreme_order_statistic_rule() {
        let c = Confidence::P95;
        assert_eq!(min_samples(0.5, c), 6);
        assert_eq!(min_samples(0.95, c), 59);
        assert_eq!(min_samples(0.99, c), 299);
        assert_eq!(min_samples(0.95, Confidence::P99), 90);
        assert!(quantile_ranks(58, 0.95, c).is_none());
        assert_eq!(quantile_ranks(59, 0.95, c).map(|r| r.1), Some(59));
        assert!(quantile_ranks(298, 0.99, c).is_none());
        assert!(quantile_ranks(299, 0.99, c).is_some());
    }

    #[test]
    fn ranks_are_the_textbook_ones_for_the_median_of_100() {
        // Classic table value: for n = 100 the 95 % interval of the median is X(40)..X(61).
        assert_eq!(quantile_ranks(100, 0.5, Confidence::P95), Some((40, 61)));
    }

    #[test]
    fn large_samples_give_ranks_near_the_normal_approximation() {
        let n = 1_000_000u64;
        let (l, u) = quantile_ranks(n, 0.95, Confidence::P95).unwrap();
        let sd = (n as f64 * 0.95 * 0.05).sqrt();
        let expect_l = 950_000.0 - 1.96 * sd;
        let expect_u = 950_000.0 + 1.96 * sd;
        assert!((l as f64 - expect_l).abs() < 3.0, "{l} vs {expect_l}");
        assert!((u as f64 - expect_u).abs() < 3.0, "{u} vs {expect_u}");
    }

    #[test]
    fn clopper_pearson_matches_known_values() {
        // R: binom.test(0, 10)$conf.int = [0, 0.3084971]; binom.test(5, 10) = [0.187086, 0.812914].
        let [lo, hi] = proportion_interval(0, 10, Confidence::P95).unwrap();
        assert_eq!(lo, 0.0);
        assert!((hi - 0.308_497_1).abs() < 1e-6, "{hi}");
        let [lo, hi] = proportion_interval(5, 10, Confidence::P95).unwrap();
        assert!((lo - 0.187_086_3).abs() < 1e-6, "{lo}");
        assert!((hi - 0.812_913_7).abs() < 1e-6, "{hi}");
        // 995 of 1000: [0.9883705, 0.9983746] (exact binomial sums, computed independently).
        let [lo, hi] = proportion_interval(995, 1000, Confidence::P95).unwrap();
        assert!((lo - 0.988_370_5).abs() < 1e-6, "{lo}");
        assert!((hi - 0.998_374_6).abs() < 1e-6, "{hi}");
        assert!(proportion_interval(0, 0, Confidence::P95).is_none());
    }

    #[test]
    fn two_proportion_test_finds_a_real_difference_and_not_a_fake_one() {
        // 99.0 % vs 99.9 % on 10 000 samples each: clearly different.
        let p = two_proportion_p_value(9_900, 10_000, 9_990, 10_000).unwrap();
        assert!(p < 1e-6, "{p}");
        // 99.0 % vs 98.9 % on 1000 samples each: noise.
        let p = two_proportion_p_value(990, 1000, 989, 1000).unwrap();
        assert!(p > 0.5, "{p}");
        assert_eq!(two_proportion_p_value(10, 10, 20, 20), Some(1.0));
        assert!((erfc(1.0) - 0.157_299_207).abs() < 1e-6);
    }

    /// Several intervals in one pass are each the interval asked for alone, whatever
    /// the sample count (none, too few for some quantiles, many).
    #[test]
    fn intervals_in_one_pass_equal_one_at_a_time() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let qs = [0.5, 0.9, 0.95, 0.99];
        for n in [0usize, 1, 10, 59, 60, 299, 300, 5_000] {
            let mut h = histogram::new_histogram();
            for _ in 0..n {
                h.record(rng.gen_range(1..5_000_000)).unwrap();
            }
            for confidence in [Confidence::P90, Confidence::P95, Confidence::P99] {
                let together = quantile_intervals(&h, &qs, confidence);
                let alone: Vec<_> = qs
                    .iter()
                    .map(|&q| {
                        let (l, u) = quantile_ranks(h.len(), q, confidence)?;
                        let nth = |rank: u64| {
                            let mut seen = 0;
                            h.iter_recorded().find_map(|v| {
                                seen += v.count_since_last_iteration();
                                (seen >= rank).then(|| v.value_iterated_to())
                            })
                        };
                        Some([h.lowest_equivalent(nth(l)?), h.highest_equivalent(nth(u)?)])
                    })
                    .collect();
                assert_eq!(together, alone, "n = {n}");
            }
        }
    }

    /// Lognormal latencies with known quantiles: over many trials the intervals cover
    /// the true value at close to their nominal rate.
    #[test]
    fn quantile_intervals_cover_the_true_value_at_close_to_nominal_rate() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        // ln X ~ N(mu, sigma): X_q = exp(mu + sigma * z_q). Values in microseconds.
        let (mu, sigma) = (11.5f64, 0.6f64); // median ~ 99 ms
        let z = [
            (0.5, 0.0),
            (0.95, 1.644_853_626_951_472_2),
            (0.99, 2.326_347_874_040_841),
        ];
        let trials = 1000;
        for (q, zq) in z {
            let truth = (mu + sigma * zq).exp();
            for n in [400u64, 2000] {
                let mut covered = 0;
                for _ in 0..trials {
                    let mut h = histogram::new_histogram();
                    for _ in 0..n {
                        // Box-Muller.
                        let (u1, u2): (f64, f64) = (rng.gen(), rng.gen());
                        let normal = (-2.0 * (1.0 - u1).ln()).sqrt()
                            * (2.0 * std::f64::consts::PI * u2).cos();
                        h.saturating_record((mu + sigma * normal).exp() as u64);
                    }
                    let [lo, hi] = quantile_interval(&h, q, Confidence::P95).unwrap();
                    if lo as f64 <= truth && truth <= hi as f64 {
                        covered += 1;
                    }
                }
                let coverage = f64::from(covered) / f64::from(trials);
                println!(
                    "coverage of the 95 % interval for p{:.0} with n = {n}: {coverage:.3} ({trials} trials)",
                    q * 100.0
                );
                assert!(
                    (0.93..=0.975).contains(&coverage),
                    "p{q} n={n}: coverage {coverage}"
                );
            }
        }
    }

    #[test]
    fn interval_brackets_the_reported_percentile() {
        let mut h = histogram::new_histogram();
        for v in 1..=1000u64 {
            h.record(v * 100).unwrap();
        }
        for q in [0.5, 0.9, 0.95, 0.99] {
            let [lo, hi] = quantile_interval(&h, q, Confidence::P95).unwrap();
            let p = h.value_at_quantile(q);
            assert!(lo <= p && p <= hi, "q={q}: {lo} <= {p} <= {hi}");
        }
    }
}
