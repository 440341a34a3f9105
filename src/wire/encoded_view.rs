//! A client view read where it lies: the answer to a `Get` kept as the bytes that came off the wire,
//! checked once, and read feature by feature without building a [`ProfileView`].
//!
//! Decoding a [`ProfileView`] interns every feature name and every marker's node id ([`Symbol::new`], a
//! lock and a hash each) and builds a map; criterion's `codec/decode_response_profile_20` measures that at
//! a few microseconds for 20 features, a visible share of a read that takes under 100 µs end to end.
//! [`EncodedView`] does none of it: [`decode_get_answer`] walks the payload once to check it, keeps the
//! payload, and [`EncodedView::features`] then yields each name, string value and node id as a `&str`
//! borrowed from it.
//!
//! Guarantees:
//! - The check is the one every decode gets: the bincode allocation budget of the payload's size, valid
//!   UTF-8, known enum tags, node ids parsed as [`NodeId::new`] parses them, no trailing bytes. And one
//!   more: feature names strictly increasing, as every node writes them (a [`ProfileView`] decode
//!   would sort them; a borrowed view cannot, so it refuses them).
//! - What [`EncodedView::features`] yields is exactly what decoding the same payload as a
//!   [`Response::Profile`] holds, in the same order (property-tested in the codec's tests against the
//!   views the node's read path encodes).
//! - Bad bytes are a typed [`Error::Malformed`](crate::Error::Malformed), never a panic.
//!
//! Caveats: a flag still decodes into an owned [`FlagView`] (its sibling list and its causal context,
//! which a write of the flag must carry back as an owned value anyway). Looking a feature up by name
//! ([`EncodedView::get`]) is a scan, which for the tens of features of a profile is what a sorted map's
//! binary search costs in practice. Only `Get` answers have this form; `GetMany` answers decode as usual.

use std::sync::OnceLock;

use bincode::config::{self, Configuration};
use bincode::de::read::SliceReader;
use bincode::de::{BorrowDecoder, DecoderImpl};
use bincode::error::DecodeError;
use bincode::BorrowDecode;

use crate::compact::{Symbol, VecMap};
use crate::crdt::value::{Text, Value};
use crate::crdt::window::Aggregation;
use crate::error::Result;
use crate::hlc::{Marker, NodeId, Timestamp};
use crate::profile::{FeatureView, FlagView, ProfileView};
use crate::wire::client::Response;
use crate::wire::codec;

/// What a `Get` was answered with: a view (or none: nothing visible), or any other response (an error).
#[derive(Debug, Clone, PartialEq)]
pub enum GetAnswer {
    /// A [`Response::Profile`], kept encoded.
    View(Option<EncodedView>),
    /// Any other response, decoded as usual (boxed: a `Response` is large, and this is the rare case).
    Other(Box<Response>),
}

/// Decodes the payload of a response to a `Get` (the bytes after the frame header), keeping a
/// [`Response::Profile`]'s view encoded. Any other response decodes as [`codec::decode_response`] does.
pub fn decode_get_answer(payload: Vec<u8>) -> Result<GetAnswer> {
    let prefix = profile_prefix()?;
    let Some(body) = payload.strip_prefix(prefix) else {
        return codec::decode_response(&payload).map(|r| GetAnswer::Other(Box::new(r)));
    };
    let checked: Checked = codec::decode_exact(body, "response")?;
    Ok(GetAnswer::View(checked.0.map(|len| EncodedView {
        // The option's tag is one byte; the map's length follows it.
        entries_at: prefix.len() + 1,
        len,
        payload,
    })))
}

/// The payload bytes a `Response::Profile` starts with (its variant tag), taken from encoding one, so
/// they follow the `Response` definition instead of repeating its variant number.
fn profile_prefix() -> Result<&'static [u8]> {
    static PREFIX: OnceLock<Vec<u8>> = OnceLock::new();
    if let Some(prefix) = PREFIX.get() {
        return Ok(prefix);
    }
    let mut frame = codec::encode_response(&Response::Profile(None))?;
    // Drop the `None` tag, keep the payload.
    frame.pop();
    let prefix = frame.split_off(codec::FRAME_HEADER_BYTES);
    Ok(PREFIX.get_or_init(|| prefix))
}

/// A client view kept as the payload it arrived in (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedView {
    payload: Vec<u8>,
    /// Where the map's length starts in `payload`.
    entries_at: usize,
    /// How many features the map holds.
    len: usize,
}

impl EncodedView {
    /// The visible features in name order, borrowed from the payload.
    pub fn features(&self) -> Features<'_> {
        let bytes = self.payload.get(self.entries_at..).unwrap_or_default();
        let mut decoder = DecoderImpl::new(SliceReader::new(bytes), config::standard(), ());
        // Checked when the view was made: the length is there and reads as `len`.
        let remaining = match u64::borrow_decode(&mut decoder) {
            Ok(_) => self.len,
            Err(_) => 0,
        };
        Features { decoder, remaining }
    }

    /// The feature called `name`, if the view holds it.
    pub fn get(&self, name: &str) -> Option<FeatureRef<'_>> {
        self.features()
            .take_while(|(n, _)| *n <= name)
            .find(|(n, _)| *n == name)
            .map(|(_, f)| f)
    }

    /// How many features the view holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the view holds no feature (a node never sends one: it answers "none" instead).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The owned [`ProfileView`] of the same features (interning each name and node id, as a decoded
    /// response does). Fails only when a node id is new and this process's node-name table is full
    /// ([`crate::Error::TooManyNodeIds`]).
    pub fn to_view(&self) -> crate::Result<ProfileView> {
        Ok(ProfileView {
            features: self
                .features()
                .map(|(name, feature)| Ok((Symbol::new(name), feature.to_view()?)))
                .collect::<crate::Result<VecMap<_, _>>>()?,
        })
    }

    /// The whole response payload the view was read from.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
}

/// The features of an [`EncodedView`], in name order; see [`EncodedView::features`].
pub struct Features<'a> {
    decoder: DecoderImpl<SliceReader<'a>, Configuration, ()>,
    remaining: usize,
}

impl std::fmt::Debug for Features<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Features")
            .field("remaining", &self.remaining)
            .finish_non_exhaustive()
    }
}

impl<'a> Iterator for Features<'a> {
    type Item = (&'a str, FeatureRef<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        self.remaining = self.remaining.checked_sub(1)?;
        // The bytes were checked when the view was made, so this does not fail; if it did, the iteration
        // would end rather than yield garbage.
        match <(&'a str, FeatureRef<'a>)>::borrow_decode(&mut self.decoder) {
            Ok(entry) => Some(entry),
            Err(_) => {
                self.remaining = 0;
                None
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.remaining))
    }
}

/// One feature of an [`EncodedView`]: a [`FeatureView`] whose strings are borrowed.
#[derive(Debug, Clone, PartialEq, BorrowDecode)]
pub enum FeatureRef<'a> {
    /// [`FeatureView::Gauge`].
    Gauge {
        /// The value.
        value: ValueRef<'a>,
        /// The marker of the write that set it.
        version: MarkerRef<'a>,
        /// When it expires, if it has a TTL.
        expires_at_ms: Option<u64>,
    },
    /// [`FeatureView::Counter`].
    Counter {
        /// The sum of all increments.
        value: i64,
    },
    /// [`FeatureView::Flag`], decoded (see the module's caveats).
    Flag(FlagView),
    /// [`FeatureView::Window`].
    Window {
        /// What it aggregates.
        aggregation: Aggregation,
        /// The aggregate (`None` for the min or max of no events).
        value: Option<f64>,
        /// Events in the span.
        events: u64,
    },
}

impl FeatureRef<'_> {
    /// The owned [`FeatureView`] (fails as [`MarkerRef::to_marker`] does).
    pub fn to_view(&self) -> crate::Result<FeatureView> {
        Ok(match self {
            FeatureRef::Gauge {
                value,
                version,
                expires_at_ms,
            } => FeatureView::Gauge {
                value: value.to_value(),
                version: version.to_marker()?,
                expires_at_ms: *expires_at_ms,
            },
            FeatureRef::Counter { value } => FeatureView::Counter { value: *value },
            FeatureRef::Flag(flag) => FeatureView::Flag(flag.clone()),
            FeatureRef::Window {
                aggregation,
                value,
                events,
            } => FeatureView::Window {
                aggregation: *aggregation,
                value: *value,
                events: *events,
            },
        })
    }
}

/// A gauge's [`Value`], a string borrowed. Encoded as [`Value`] is: the same variants in the same order.
#[derive(Debug, Clone, Copy, PartialEq, BorrowDecode)]
pub enum ValueRef<'a> {
    /// [`Value::Bool`].
    Bool(bool),
    /// [`Value::I64`].
    I64(i64),
    /// [`Value::F64`].
    F64(f64),
    /// [`Value::Str`].
    Str(&'a str),
}

impl ValueRef<'_> {
    /// The owned [`Value`].
    pub fn to_value(&self) -> Value {
        match *self {
            ValueRef::Bool(b) => Value::Bool(b),
            ValueRef::I64(i) => Value::I64(i),
            ValueRef::F64(x) => Value::F64(x),
            ValueRef::Str(s) => Value::Str(Text::new(s)),
        }
    }
}

/// A [`Marker`] whose node id is borrowed. Only decoding makes one, after parsing the node id as
/// [`NodeId::new`] parses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarkerRef<'a> {
    ts: Timestamp,
    node: &'a str,
}

impl<'a> MarkerRef<'a> {
    /// When the write was stamped.
    pub fn ts(&self) -> Timestamp {
        self.ts
    }

    /// The node that stamped it.
    pub fn node(&self) -> &'a str {
        self.node
    }

    /// The owned [`Marker`]: its node id interned, which fails only when the id is new and this
    /// process's node-name table is full ([`crate::Error::TooManyNodeIds`]).
    pub fn to_marker(&self) -> crate::Result<Marker> {
        Ok(Marker {
            ts: self.ts,
            node: NodeId::new(self.node)?,
        })
    }
}

impl<'de, C> BorrowDecode<'de, C> for MarkerRef<'de> {
    fn borrow_decode<D: BorrowDecoder<'de, Context = C>>(
        decoder: &mut D,
    ) -> std::result::Result<Self, DecodeError> {
        let ts = Timestamp::borrow_decode(decoder)?;
        let node = <&str>::borrow_decode(decoder)?;
        if !NodeId::is_valid(node) {
            return Err(DecodeError::OtherString(format!(
                "{:?} is not a node id",
                node.chars().take(64).collect::<String>()
            )));
        }
        Ok(MarkerRef { ts, node })
    }
}

/// The check [`decode_get_answer`] runs: a `Option<ProfileView>` walked entry by entry without keeping
/// anything. Holds the number of features (`None` for no view).
struct Checked(Option<usize>);

impl<'de, C> BorrowDecode<'de, C> for Checked {
    fn borrow_decode<D: BorrowDecoder<'de, Context = C>>(
        decoder: &mut D,
    ) -> std::result::Result<Self, DecodeError> {
        match u8::borrow_decode(decoder)? {
            0 => return Ok(Checked(None)),
            1 => {}
            found => {
                return Err(DecodeError::UnexpectedVariant {
                    type_name: "Option<ProfileView>",
                    allowed: &bincode::error::AllowedEnumVariants::Range { min: 0, max: 1 },
                    found: u32::from(found),
                })
            }
        }
        let len = u64::borrow_decode(decoder)?;
        let len = usize::try_from(len).map_err(|_| DecodeError::OutsideUsizeRange(len))?;
        let mut previous: Option<&str> = None;
        for _ in 0..len {
            let (name, _) = <(&'de str, FeatureRef<'de>)>::borrow_decode(decoder)?;
            if previous.is_some_and(|p| p >= name) {
                return Err(DecodeError::OtherString(
                    "feature names are not strictly increasing".into(),
                ));
            }
            previous = Some(name);
        }
        Ok(Checked(Some(len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::profile::tests::step;
    use crate::wire::codec::alloc_probe;
    use crate::wire::codec::tests::{hostile_payload, varied_profiles};
    use crate::wire::codec::ReadFrame;
    use proptest::prelude::*;

    fn marker(node: &str, ms: u64) -> Marker {
        Marker {
            ts: Timestamp::from_millis(ms),
            node: NodeId::new(node).expect("valid"),
        }
    }

    fn sample() -> ProfileView {
        let mut features = VecMap::new();
        features.insert(
            Symbol::new("a_str"),
            FeatureView::Gauge {
                value: Value::Str("a string longer than twenty-four bytes".into()),
                version: marker("n1", 5),
                expires_at_ms: Some(99),
            },
        );
        features.insert(Symbol::new("b_count"), FeatureView::Counter { value: -7 });
        features.insert(
            Symbol::new("c_window"),
            FeatureView::Window {
                aggregation: Aggregation::Max,
                value: None,
                events: 0,
            },
        );
        features.insert(
            Symbol::new("d_float"),
            FeatureView::Gauge {
                value: Value::F64(2.5),
                version: marker("n2", 6),
                expires_at_ms: None,
            },
        );
        ProfileView { features }
    }

    fn payload(response: &Response) -> Vec<u8> {
        let frame = codec::encode_response(response).expect("encodes");
        codec::split_frame(&frame, u32::MAX)
            .expect("whole frame")
            .to_vec()
    }

    #[test]
    fn a_view_reads_back_borrowed_as_it_was_encoded() {
        let view = sample();
        let GetAnswer::View(Some(encoded)) =
            decode_get_answer(payload(&Response::Profile(Some(view.clone())))).expect("decodes")
        else {
            panic!("a view");
        };
        assert_eq!(encoded.len(), 4);
        assert_eq!(encoded.to_view().expect("node names"), view);
        let names: Vec<&str> = encoded.features().map(|(n, _)| n).collect();
        assert_eq!(names, ["a_str", "b_count", "c_window", "d_float"]);
        assert_eq!(
            encoded.get("d_float"),
            Some(FeatureRef::Gauge {
                value: ValueRef::F64(2.5),
                version: MarkerRef {
                    ts: Timestamp::from_millis(6),
                    node: "n2"
                },
                expires_at_ms: None,
            })
        );
        let Some(FeatureRef::Gauge { value, version, .. }) = encoded.get("a_str") else {
            panic!("a gauge");
        };
        assert_eq!(
            value,
            ValueRef::Str("a string longer than twenty-four bytes")
        );
        assert_eq!(
            (version.node(), version.ts()),
            ("n1", Timestamp::from_millis(5))
        );
        assert_eq!(version.to_marker().expect("node names"), marker("n1", 5));
        assert_eq!(
            encoded.get("b_count"),
            Some(FeatureRef::Counter { value: -7 })
        );
        assert_eq!(encoded.get("zz"), None);
        assert_eq!(encoded.get("b"), None);
    }

    #[test]
    fn no_view_and_other_responses_decode_as_usual() {
        assert_eq!(
            decode_get_answer(payload(&Response::Profile(None))).expect("decodes"),
            GetAnswer::View(None)
        );
        let other = Response::Error(crate::wire::client::ErrorReply {
            code: crate::wire::client::ErrorCode::Unavailable,
            message: "one of two replicas".into(),
        });
        assert_eq!(
            decode_get_answer(payload(&other)).expect("decodes"),
            GetAnswer::Other(Box::new(other))
        );
    }

    #[test]
    fn bad_bytes_are_malformed() {
        let good = payload(&Response::Profile(Some(sample())));
        // Truncated anywhere inside the view.
        for cut in 2..good.len() {
            let error = decode_get_answer(good[..cut].to_vec()).expect_err("truncated");
            assert!(matches!(error, Error::Malformed { .. }), "{error}");
        }
        // A trailing byte.
        let mut long = good.clone();
        long.push(0);
        assert!(matches!(
            decode_get_answer(long),
            Err(Error::Malformed { .. })
        ));
        // A bad option tag.
        let mut bad_tag = good.clone();
        bad_tag[profile_prefix().expect("prefix").len()] = 2;
        assert!(matches!(
            decode_get_answer(bad_tag),
            Err(Error::Malformed { .. })
        ));
        // A node id that does not parse ("n2" becomes "N2").
        let at = good
            .windows(2)
            .position(|w| w == b"n2")
            .expect("node id in the payload");
        let mut bad_node = good.clone();
        bad_node[at] = b'N';
        let error = decode_get_answer(bad_node).expect_err("bad node id");
        assert!(error.to_string().contains("not a node id"), "{error}");
    }

    #[test]
    fn names_out_of_order_are_refused() {
        let good = payload(&Response::Profile(Some(sample())));
        // Swap the first letters of "a_str" and "b_count": "b_str" then "a_count".
        let a = good.windows(5).position(|w| w == b"a_str").expect("a_str");
        let b = good
            .windows(7)
            .position(|w| w == b"b_count")
            .expect("b_count");
        let mut swapped = good.clone();
        swapped[a] = b'b';
        swapped[b] = b'a';
        let error = decode_get_answer(swapped).expect_err("out of order");
        assert!(error.to_string().contains("strictly increasing"), "{error}");
        // Equal names: "a_x" twice.
        let mut features = VecMap::new();
        features.insert(Symbol::new("a_x"), FeatureView::Counter { value: 1 });
        features.insert(Symbol::new("a_y"), FeatureView::Counter { value: 2 });
        let good = payload(&Response::Profile(Some(ProfileView { features })));
        let y = good.windows(3).position(|w| w == b"a_y").expect("a_y");
        let mut equal = good.clone();
        equal[y + 2] = b'x';
        let error = decode_get_answer(equal).expect_err("equal names");
        assert!(error.to_string().contains("strictly increasing"), "{error}");
        assert!(decode_get_answer(good).is_ok());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// What a client reads borrowed from a read frame is the view the node built, whatever the kinds,
        /// expiry, projection, windows and linked profiles.
        #[test]
        fn read_frames_read_back_as_the_built_views(
            steps in proptest::collection::vec(step(), 0..40),
            windows in proptest::collection::vec((0..3usize, proptest::collection::vec((0u64..120, -3i32..9), 0..6)), 0..3),
            now in 1_000u64..1_500,
            project in any::<bool>(),
            link in any::<bool>(),
        ) {
            let projection: Option<Vec<String>> = project.then(|| vec!["a".into(), "c".into()]);
            let projection = projection.as_deref();
            for p in varied_profiles(&steps, &windows, now, link) {
                let mut one = ReadFrame::one().expect("encodes");
                one.push(p.as_ref(), now, projection).expect("encodes");
                let frame = one.finish().expect("encodes");
                let payload = codec::split_frame(&frame, u32::MAX).expect("whole frame").to_vec();
                match decode_get_answer(payload).expect("decodes") {
                    GetAnswer::View(encoded) => {
                        let view = p.as_ref().and_then(|p| p.view(now, projection));
                        prop_assert_eq!(encoded.map(|e| e.to_view().expect("node names")), view);
                    }
                    other => prop_assert!(false, "not a view: {other:?}"),
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// Garbage never panics the check nor makes it allocate beyond the decode budget for its size (plus
        /// the payload copy the test hands over and a fixed slack for the error value).
        #[test]
        fn garbage_is_refused_within_the_budget(
            bytes in prop_oneof![proptest::collection::vec(any::<u8>(), 0..512), hostile_payload()]
        ) {
            let budget = codec::decode_budget(bytes.len());
            let (_, peak) = alloc_probe::measure(|| decode_get_answer(bytes.clone()).is_ok());
            prop_assert!(peak <= 2 * budget + 4096 + bytes.len(), "peak {peak} > 2 x budget {budget}");
        }
    }
}
