//! The demo's synthetic shoppers: sessions of Segment-format events (`page`, `Product Viewed`,
//! `Product Added`, `identify`, `Order Completed`) for a fixed population of users.
//!
//! Guarantees: the sequence of events (their order, users, products and amounts) is a pure function of
//! the seed and the user count: [`SplitMix64`] is the only source of randomness and nothing reads a clock.
//! A user starts anonymous (events carry only its `anonymousId`); after some browsing it may `identify`
//! (`userId`, `anonymousId` and traits, which links the anonymous history into the user); an order always
//! comes after an identify; later events carry both ids. At most one session per user is active at a time,
//! so a user's events are generated in a consistent order.
//!
//! Caveats: message ids are `demo-<run>-<n>`, where `run` is given by the caller (the demo uses its start
//! time) so that a second run on the same directory is not deduplicated away; events carry no timestamp
//! (the node takes the time it receives them). The behaviour is plausible, not calibrated against real
//! traffic.

use serde_json::{json, Value as Json};

/// SplitMix64 (Steele, Lea and Flood, 2014): a tiny, fast, well-mixed 64-bit generator, enough for
/// synthetic data (not for anything adversarial).
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`; 0 for `n == 0`), by multiply-shift (bias below 2^-32 for the sizes
    /// used here).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// A uniformly chosen element of a non-empty slice.
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        let n = u64::try_from(items.len()).unwrap_or(u64::MAX);
        let i = usize::try_from(self.below(n)).unwrap_or(0);
        &items[i.min(items.len().saturating_sub(1))]
    }
}

/// A product of the demo shop: id, name, category, price.
type Product = (&'static str, &'static str, &'static str, f64);

const PRODUCTS: &[Product] = &[
    ("p-100", "Trail Running Shoes", "shoes", 129.0),
    ("p-101", "City Sneakers", "shoes", 89.0),
    ("p-102", "Leather Boots", "shoes", 189.0),
    ("p-200", "Rain Jacket", "outerwear", 149.0),
    ("p-201", "Down Parka", "outerwear", 279.0),
    ("p-202", "Fleece Hoodie", "outerwear", 59.0),
    ("p-300", "Merino T-Shirt", "tops", 45.0),
    ("p-301", "Oxford Shirt", "tops", 69.0),
    ("p-302", "Linen Shirt", "tops", 55.0),
    ("p-400", "Daypack 20L", "bags", 79.0),
    ("p-401", "Weekender Duffel", "bags", 159.0),
    ("p-500", "Wool Socks (3 pack)", "accessories", 24.0),
    ("p-501", "Beanie", "accessories", 19.0),
    ("p-502", "Sunglasses", "accessories", 119.0),
    ("p-600", "Smart Watch", "electronics", 349.0),
    ("p-601", "Wireless Earbuds", "electronics", 179.0),
];

const FIRST_NAMES: &[&str] = &[
    "Ada", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hugo", "Iris", "Jonas", "Kemi",
    "Liam", "Maya", "Noor", "Oscar", "Priya", "Quinn", "Rosa", "Sami", "Tara", "Umar", "Vera",
    "Wen", "Yara",
];

const PLANS: &[&str] = &["free", "free", "free", "plus", "pro"];

/// One synthetic user.
#[derive(Debug, Clone)]
struct User {
    user_id: String,
    anonymous_id: String,
    identified: bool,
    /// Spends several times more per order (the demo's VIPs).
    big_spender: bool,
    /// In a session now.
    busy: bool,
}

/// A session in progress: whose, and its remaining events (next one last).
#[derive(Debug)]
struct Session {
    user: usize,
    events: Vec<Json>,
}

/// The user id of user number `i` of the demo: `u-0042`.
pub fn user_id(i: u64) -> String {
    format!("u-{i:04}")
}

/// The demo's event generator: interleaves the sessions of several users at once.
#[derive(Debug)]
pub struct Generator {
    rng: SplitMix64,
    users: Vec<User>,
    sessions: Vec<Session>,
    run: u64,
    next_message: u64,
    orders: u64,
}

impl Generator {
    /// Users `u-0000 .. u-<users-1>` (at least one), behaviour from `seed`, message ids tagged with
    /// `run`.
    pub fn new(seed: u64, users: u32, run: u64) -> Generator {
        let mut rng = SplitMix64::new(seed);
        let users: Vec<User> = (0..u64::from(users.max(1)))
            .map(|i| User {
                user_id: user_id(i),
                anonymous_id: format!("anon-{:016x}", rng.next_u64()),
                identified: false,
                big_spender: rng.chance(0.08),
                busy: false,
            })
            .collect();
        Generator {
            rng,
            users,
            sessions: Vec::new(),
            run,
            next_message: 0,
            orders: 0,
        }
    }

    /// How many sessions run interleaved: a quarter of the users, 1 to 48.
    fn concurrency(&self) -> usize {
        (self.users.len() / 4).clamp(1, 48)
    }

    /// The next event (a Segment-format JSON object with a `messageId`).
    pub fn next_event(&mut self) -> Json {
        loop {
            while self.sessions.len() < self.concurrency() {
                let user = self.pick_user();
                let events = self.session(user);
                self.sessions.push(Session { user, events });
            }
            let n = u64::try_from(self.sessions.len()).unwrap_or(1);
            let i = usize::try_from(self.rng.below(n)).unwrap_or(0);
            let session = &mut self.sessions[i];
            if let Some(mut event) = session.events.pop() {
                self.next_message += 1;
                if let Some(object) = event.as_object_mut() {
                    object.insert(
                        "messageId".into(),
                        format!("demo-{}-{}", self.run, self.next_message).into(),
                    );
                }
                return event;
            }
            let done = self.sessions.swap_remove(i);
            self.users[done.user].busy = false;
        }
    }

    /// A user not in a session: regulars (the first tenth) a third of the time, else anyone.
    fn pick_user(&mut self) -> usize {
        let n = self.users.len();
        loop {
            let pool = if self.rng.chance(0.33) {
                (n / 10).max(1)
            } else {
                n
            };
            let i = usize::try_from(self.rng.below(u64::try_from(pool).unwrap_or(1))).unwrap_or(0);
            if !self.users[i].busy {
                self.users[i].busy = true;
                return i;
            }
        }
    }

    /// The ids an event of `user` carries now.
    fn ids(&self, user: usize) -> serde_json::Map<String, Json> {
        let u = &self.users[user];
        let mut ids = serde_json::Map::new();
        ids.insert("anonymousId".into(), u.anonymous_id.clone().into());
        if u.identified {
            ids.insert("userId".into(), u.user_id.clone().into());
        }
        ids
    }

    fn event(&self, user: usize, body: Json) -> Json {
        let mut event = self.ids(user);
        if let Json::Object(body) = body {
            event.extend(body);
        }
        Json::Object(event)
    }

    fn page(&self, user: usize, name: &str, path: &str) -> Json {
        self.event(
            user,
            json!({"type": "page", "name": name, "properties": {"path": path}}),
        )
    }

    fn track(&self, user: usize, name: &str, properties: Json) -> Json {
        self.event(
            user,
            json!({"type": "track", "event": name, "properties": properties}),
        )
    }

    fn identify(&mut self, user: usize) -> Json {
        self.users[user].identified = true;
        let first = *self.rng.pick(FIRST_NAMES);
        let plan = *self.rng.pick(PLANS);
        let u = &self.users[user];
        let email = format!("{}@example.com", u.user_id);
        self.event(
            user,
            json!({"type": "identify", "traits": {"email": email, "first_name": first, "plan": plan}}),
        )
    }

    /// The events of one session of `user`, in order.
    fn session(&mut self, user: usize) -> Vec<Json> {
        let mut events = vec![self.page(user, "Home", "/")];
        let category = self.rng.pick(PRODUCTS).2;
        if self.rng.chance(0.6) {
            events.push(self.page(user, "Category", &format!("/c/{category}")));
        }
        // Anonymous visitors sometimes sign in while browsing.
        let sign_in_early = !self.users[user].identified && self.rng.chance(0.3);
        let views = 1 + self.rng.below(6);
        let mut viewed: Vec<Product> = Vec::new();
        for k in 0..views {
            let product = if self.rng.chance(0.6) {
                PRODUCTS
                    .iter()
                    .filter(|p| p.2 == category)
                    .nth(usize::try_from(self.rng.below(3)).unwrap_or(0))
                    .copied()
                    .unwrap_or(*self.rng.pick(PRODUCTS))
            } else {
                *self.rng.pick(PRODUCTS)
            };
            events.push(self.page(user, "Product", &format!("/p/{}", product.0)));
            events.push(self.track(
                user,
                "Product Viewed",
                json!({"product_id": product.0, "name": product.1, "category": product.2,
                       "price": product.3}),
            ));
            viewed.push(product);
            if sign_in_early && k == 0 {
                let identify = self.identify(user);
                events.push(identify);
            }
        }
        let add_chance = if views >= 3 { 0.55 } else { 0.2 };
        let mut cart: Vec<(Product, u64)> = Vec::new();
        if self.rng.chance(add_chance) {
            let adds = 1 + self.rng.below(2);
            for _ in 0..adds {
                let product = *self.rng.pick(&viewed);
                let quantity = if self.users[user].big_spender {
                    1 + self.rng.below(3)
                } else {
                    1
                };
                events.push(self.track(
                    user,
                    "Product Added",
                    json!({"product_id": product.0, "name": product.1, "category": product.2,
                           "price": product.3, "quantity": quantity}),
                ));
                cart.push((product, quantity));
            }
        }
        if !cart.is_empty() && self.rng.chance(0.45) {
            events.push(self.page(user, "Checkout", "/checkout"));
            if !self.users[user].identified {
                let identify = self.identify(user);
                events.push(identify);
            }
            self.orders += 1;
            let revenue: f64 = cart.iter().map(|(p, q)| p.3 * *q as f64).sum();
            let products: Vec<Json> = cart
                .iter()
                .map(|(p, q)| json!({"product_id": p.0, "price": p.3, "quantity": q}))
                .collect();
            events.push(self.track(
                user,
                "Order Completed",
                json!({"order_id": format!("o-{}-{}", self.run, self.orders),
                       "revenue": revenue, "currency": "USD", "products": products}),
            ));
        }
        events.reverse();
        events
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn splitmix64_matches_the_reference() {
        // The reference implementation's first outputs for seed 1234567.
        let mut rng = SplitMix64::new(1_234_567);
        assert_eq!(rng.next_u64(), 6_457_827_717_110_365_317);
        assert_eq!(rng.next_u64(), 3_203_168_211_198_807_973);
        let mut rng = SplitMix64::new(7);
        for _ in 0..1000 {
            assert!(rng.below(10) < 10);
            let u = rng.unit();
            assert!((0.0..1.0).contains(&u));
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_events() {
        let events = |seed| {
            let mut g = Generator::new(seed, 50, 1);
            (0..2000).map(|_| g.next_event()).collect::<Vec<_>>()
        };
        assert_eq!(events(42), events(42));
        assert_ne!(events(42), events(43));
    }

    #[test]
    fn users_browse_anonymously_identify_before_ordering_and_buy() {
        let mut g = Generator::new(9, 40, 7);
        let mut identified = std::collections::BTreeSet::new();
        let mut counts = std::collections::BTreeMap::<String, u64>::new();
        let mut ids = std::collections::BTreeSet::new();
        for _ in 0..20_000 {
            let e = g.next_event();
            assert!(ids.insert(e["messageId"].as_str().unwrap().to_owned()));
            assert!(e["messageId"].as_str().unwrap().starts_with("demo-7-"));
            let anon = e["anonymousId"].as_str().unwrap().to_owned();
            let kind = match e["type"].as_str().unwrap() {
                "track" => e["event"].as_str().unwrap().to_owned(),
                other => other.to_owned(),
            };
            match kind.as_str() {
                "identify" => {
                    assert!(e["userId"].as_str().unwrap().starts_with("u-"));
                    assert!(e["traits"]["email"].is_string());
                    identified.insert(anon);
                }
                "Order Completed" => {
                    assert!(identified.contains(&anon), "an order before identify: {e}");
                    assert!(e["userId"].is_string());
                    assert!(e["properties"]["revenue"].as_f64().unwrap() > 0.0);
                }
                _ if !identified.contains(&anon) => assert!(e.get("userId").is_none(), "{e}"),
                _ => assert!(e["userId"].is_string(), "{e}"),
            }
            *counts.entry(kind).or_default() += 1;
        }
        for kind in [
            "page",
            "identify",
            "Product Viewed",
            "Product Added",
            "Order Completed",
        ] {
            assert!(counts.get(kind).copied().unwrap_or(0) > 10, "{counts:?}");
        }
        assert!(counts["page"] > counts["Product Added"]);
        assert!(counts["Product Added"] > counts["Order Completed"]);
    }
}
