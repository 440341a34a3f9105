//! The shared keyspace: which keys exist, what each profile holds, and how keys are chosen.
//!
//! Every target (featurestore, Redis, the echo floor) is driven from the same [`Keyspace`]: profile `i` has
//! the key [`Keyspace::key`] and the 20 features of [`FEATURES`], with values that are a pure function of
//! `i` (so a loaded store can be checked and two runs load identical data). As Redis hash fields the
//! features take about 300 bytes per profile (names plus values as text).
//!
//! Keys are chosen uniformly or by a Zipf law with exponent 0.99 over ranks ([`KeyDist`]); ranks are
//! scattered over the key indices by a fixed bijection so the hot keys are not neighbours.
//!
//! Randomness comes from [`Rng`] (SplitMix64), seeded explicitly: runs are reproducible and nothing here
//! reads the clock or the OS.

use std::fmt;
use std::str::FromStr;

use featurestore::Value;

/// The kind of value a benchmark feature holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureType {
    /// A float such as `cart_value` (two decimals as text).
    F64,
    /// An integer such as `orders_total`.
    I64,
    /// A boolean such as `push_opt_in`.
    Bool,
    /// A short string such as `plan`.
    Str,
}

/// The 20 features of every benchmark profile: realistic names of behavioural features.
pub const FEATURES: [(&str, FeatureType); 20] = [
    ("cart_value", FeatureType::F64),
    ("session_depth", FeatureType::I64),
    ("page_views_30m", FeatureType::I64),
    ("orders_total", FeatureType::I64),
    ("last_seen_ms", FeatureType::I64),
    ("ltv_usd", FeatureType::F64),
    ("avg_basket", FeatureType::F64),
    ("email_opens_7d", FeatureType::I64),
    ("push_opt_in", FeatureType::Bool),
    ("is_subscriber", FeatureType::Bool),
    ("country", FeatureType::Str),
    ("plan", FeatureType::Str),
    ("device", FeatureType::Str),
    ("churn_score", FeatureType::F64),
    ("fraud_score", FeatureType::F64),
    ("days_active", FeatureType::I64),
    ("coupon_used", FeatureType::Bool),
    ("app_version", FeatureType::Str),
    ("segment", FeatureType::Str),
    ("lang", FeatureType::Str),
];

/// A small, fast, seedable PRNG (SplitMix64). Not cryptographic; plenty for choosing keys.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator with the given seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform float in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniform integer in `0..n` (`n > 0`; Lemire's multiply-shift, bias below 2^-32 for our `n`).
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

/// Zipf-distributed ranks in `1..=n` with exponent `s`, by rejection-inversion (Hörmann and Derflinger,
/// 1996; the algorithm of Apache Commons' `RejectionInversionZipfSampler`). O(1) per sample, no table.
#[derive(Debug, Clone)]
pub struct Zipf {
    n: f64,
    s: f64,
    h_integral_x1: f64,
    h_integral_n: f64,
    threshold: f64,
}

impl Zipf {
    /// A sampler over `1..=n` (`n >= 1`) with exponent `s > 0`.
    pub fn new(n: usize, s: f64) -> Self {
        let n = n.max(1) as f64;
        let mut z = Zipf {
            n,
            s,
            h_integral_x1: 0.0,
            h_integral_n: 0.0,
            threshold: 0.0,
        };
        z.h_integral_x1 = z.h_integral(1.5) - 1.0;
        z.h_integral_n = z.h_integral(n + 0.5);
        z.threshold = 2.0 - z.h_integral_inverse(z.h_integral(2.5) - z.h(2.0));
        z
    }

    fn h(&self, x: f64) -> f64 {
        (-self.s * x.ln()).exp()
    }

    fn h_integral(&self, x: f64) -> f64 {
        let log_x = x.ln();
        helper2((1.0 - self.s) * log_x) * log_x
    }

    fn h_integral_inverse(&self, x: f64) -> f64 {
        let mut t = x * (1.0 - self.s);
        if t < -1.0 {
            t = -1.0;
        }
        (helper1(t) * x).exp()
    }

    /// One rank in `1..=n` (rank 1 is the most popular).
    pub fn sample(&self, rng: &mut Rng) -> usize {
        // Bounded: the acceptance probability is above 0.9 for every n and s, so 64 rounds practically
        // never run out; if they do, the last candidate is returned.
        let mut k = 1.0;
        for _ in 0..64 {
            let u = self.h_integral_n + rng.next_f64() * (self.h_integral_x1 - self.h_integral_n);
            let x = self.h_integral_inverse(u);
            k = (x + 0.5).floor().clamp(1.0, self.n);
            if k - x <= self.threshold || u >= self.h_integral(k + 0.5) - self.h(k) {
                break;
            }
        }
        k as usize
    }
}

/// `ln(1 + x) / x`, accurate near 0.
fn helper1(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.ln_1p() / x
    } else {
        1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x))
    }
}

/// `(exp(x) - 1) / x`, accurate near 0.
fn helper2(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.exp_m1() / x
    } else {
        1.0 + x * 0.5 * (1.0 + x * (1.0 / 3.0) * (1.0 + 0.25 * x))
    }
}

/// How keys are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyDist {
    /// Every key equally likely.
    Uniform,
    /// Zipf with exponent 0.99 (a few hot keys, a long tail).
    Zipf,
}

impl KeyDist {
    /// The name used on the command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyDist::Uniform => "uniform",
            KeyDist::Zipf => "zipf",
        }
    }
}

impl fmt::Display for KeyDist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown key distribution name.
#[derive(Debug, thiserror::Error)]
#[error("unknown key distribution {0:?} (expected uniform or zipf)")]
pub struct UnknownDist(String);

impl FromStr for KeyDist {
    type Err = UnknownDist;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "uniform" => Ok(KeyDist::Uniform),
            "zipf" => Ok(KeyDist::Zipf),
            other => Err(UnknownDist(other.to_owned())),
        }
    }
}

/// The Zipf exponent of [`KeyDist::Zipf`].
pub const ZIPF_EXPONENT: f64 = 0.99;

/// Chooses key indices of a keyspace according to a [`KeyDist`].
#[derive(Debug, Clone)]
pub struct KeyChooser {
    profiles: usize,
    zipf: Option<Zipf>,
    /// Multiplier of the rank → index bijection (coprime with `profiles`).
    scatter: u64,
}

impl KeyChooser {
    /// A chooser over `0..profiles` (`profiles >= 1`).
    pub fn new(profiles: usize, dist: KeyDist) -> Self {
        let profiles = profiles.max(1);
        let zipf = (dist == KeyDist::Zipf).then(|| Zipf::new(profiles, ZIPF_EXPONENT));
        // A large odd multiplier, moved until it is coprime with the keyspace size.
        let mut scatter: u64 = 2_654_435_761;
        while gcd(scatter, profiles as u64) != 1 {
            scatter += 2;
        }
        KeyChooser {
            profiles,
            zipf,
            scatter,
        }
    }

    /// The next key index.
    pub fn next(&self, rng: &mut Rng) -> usize {
        match &self.zipf {
            None => rng.below(self.profiles),
            Some(z) => {
                let rank = (z.sample(rng) - 1) as u64;
                ((rank * self.scatter) % self.profiles as u64) as usize
            }
        }
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The keyspace: `profiles` profiles of the 20 [`FEATURES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keyspace {
    /// Number of profiles.
    pub profiles: usize,
}

const STRINGS: [&str; 8] = [
    "gold", "silver", "bronze", "trial", "ios-17", "android", "web-eu", "de-DE",
];

impl Keyspace {
    /// A keyspace of `profiles` profiles.
    pub fn new(profiles: usize) -> Self {
        Keyspace { profiles }
    }

    /// The key of profile `i`: `user-` and the zero-padded index (12 bytes for indices below 10^7).
    pub fn key(&self, i: usize) -> String {
        format!("user-{i:07}")
    }

    /// The value of feature `f` of profile `i` (a pure function of both; `salt` varies written values).
    pub fn value(i: usize, f: usize, salt: u64) -> Value {
        let mut rng = Rng::new((i as u64) << 8 ^ f as u64 ^ salt.rotate_left(32));
        let r = rng.next_u64();
        match FEATURES[f % FEATURES.len()].1 {
            FeatureType::F64 => Value::F64((r % 100_000) as f64 / 100.0),
            FeatureType::I64 => Value::I64((r % 100_000) as i64),
            FeatureType::Bool => Value::Bool(r & 1 == 1),
            FeatureType::Str => Value::Str(STRINGS[(r % STRINGS.len() as u64) as usize].into()),
        }
    }

    /// Every feature of profile `i` as `(name, value)`.
    pub fn profile(&self, i: usize) -> Vec<(&'static str, Value)> {
        FEATURES
            .iter()
            .enumerate()
            .map(|(f, (name, _))| (*name, Self::value(i, f, 0)))
            .collect()
    }

    /// Every feature of profile `i` as Redis hash fields (values as text).
    pub fn redis_fields(&self, i: usize) -> Vec<(&'static str, String)> {
        self.profile(i)
            .into_iter()
            .map(|(name, v)| (name, redis_text(&v)))
            .collect()
    }
}

/// The text form of a value in a Redis hash: floats with two decimals, booleans as `1`/`0`.
pub fn redis_text(value: &Value) -> String {
    match value {
        Value::F64(x) => format!("{x:.2}"),
        Value::I64(i) => i.to_string(),
        Value::Bool(b) => if *b { "1" } else { "0" }.to_owned(),
        Value::Str(s) => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_stays_in_range_and_prefers_low_ranks() {
        let z = Zipf::new(1000, ZIPF_EXPONENT);
        let mut rng = Rng::new(7);
        let mut counts = vec![0u32; 1001];
        for _ in 0..100_000 {
            let k = z.sample(&mut rng);
            assert!((1..=1000).contains(&k));
            counts[k] += 1;
        }
        // Rank 1 is drawn about twice as often as rank 2 (s ≈ 1) and far more often than rank 1000.
        assert!(counts[1] > counts[2] && counts[2] > counts[10] && counts[10] > counts[1000]);
        let ratio = f64::from(counts[1]) / f64::from(counts[2]);
        assert!((1.7..2.3).contains(&ratio), "{ratio}");
    }

    #[test]
    fn chooser_is_a_bijection_of_ranks() {
        let c = KeyChooser::new(1000, KeyDist::Zipf);
        let mut seen = vec![false; 1000];
        for rank in 0..1000u64 {
            let i = ((rank * c.scatter) % 1000) as usize;
            assert!(!seen[i]);
            seen[i] = true;
        }
    }

    #[test]
    fn profiles_are_about_300_bytes_as_redis_fields() {
        let ks = Keyspace::new(10);
        let bytes: usize = ks
            .redis_fields(3)
            .iter()
            .map(|(n, v)| n.len() + v.len())
            .sum();
        assert!((200..400).contains(&bytes), "{bytes}");
        assert_eq!(ks.profile(3), ks.profile(3));
    }
}
