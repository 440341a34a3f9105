//! All encoding in one place: frames on the wire and records on disk.
//!
//! Frame layout: `[version: u8][payload length: u32 big-endian][payload]`, payload = bincode (`=2.0.1`,
//! standard config: little-endian varints) of a [`Request`] or [`Response`].
//!
//! Guarantees:
//! - [`parse_header`] checks the version and the announced length against the configured maximum *before*
//!   the caller allocates or reads the payload.
//! - Decoding runs with a bincode allocation limit proportional to the input: the smallest of
//!   4 KiB, 64 KiB, 1 MiB, 16 MiB, 256 MiB that is at least [`DECODE_BYTES_PER_INPUT_BYTE`] times the payload
//!   length. A length prefix that claims more (a vector of 2^60 elements, a 1 GiB string in a 10-byte frame)
//!   fails with [`Error::Malformed`] before anything is allocated, so garbage can make a node allocate at most
//!   a small multiple of what it actually received (property-tested with a counting allocator).
//! - Trailing bytes after a message are an error, bad UTF-8 is an error, unknown enum tags are an error:
//!   decoding never panics (property-tested with arbitrary bytes).
//! - Stored records carry [`RECORD_VERSION`] as their first byte; an unknown record version is refused
//!   rather than misread.
//!
//! Caveat: bincode 2 is no longer developed upstream (3.0.0 is an intentionally non-compiling release); it is
//! pinned exactly and used only here, so replacing it is a one-module change.

use bincode::config::{self, Configuration, LittleEndian, Varint};
use bincode::{BorrowDecode, Decode, Encode};

use crate::compact::{NameColumns, StoredNames};
use crate::error::{Error, Result};
use crate::profile::Profile;
use crate::wire::client::{Request, Response, PROTOCOL_VERSION};
use crate::wire::dead_letter::DeadLetter;
use crate::wire::peer::PeerMessage;
use crate::wire::segment::{Catalog, SegmentChange};

/// Bytes in a frame header: the version byte and the big-endian `u32` payload length.
pub const FRAME_HEADER_BYTES: usize = 5;

/// How many bytes of decoded memory one byte of input may claim. Decoded structures are larger than their
/// encoding (a 1-byte empty string becomes a 24-byte `String`), so this leaves room for legitimate messages.
pub const DECODE_BYTES_PER_INPUT_BYTE: usize = 64;

/// The largest allocation budget for one message or record (256 MiB).
pub const DECODE_LIMIT_BYTES: usize = 1 << 28;

/// Format version of stored metadata records (membership table, ...).
pub const RECORD_VERSION: u8 = 1;

/// Format version of stored profile records: 2 since window features, 3 since distinct counts (window
/// slots gained their sketch, window parameters the sketch size) and identity links (a new `Profile`
/// field), 4 since per-incarnation actors (counter slots, window slots and flag dots name the node *and*
/// its incarnation, [`crate::hlc::Actor`]). Records of versions 1 to 3 are still read and upgraded (their
/// actors become the legacy actors, incarnation 0); they are rewritten as version 4 on their next change.
pub const PROFILE_RECORD_VERSION: u8 = 4;

/// Format version of a profile record as a node's own store keeps it ([`encode_numbered_record_into`]):
/// `[5][state hash, u64 little-endian][bincode(profile)]`, with every feature and node name written as
/// its number in the node's [`StoredNames`] (or as text where it has none). Smaller than a version-4
/// record (the benchmark's profiles take a third less disk), and decoded without a UTF-8 check or an
/// interning lookup per name. Only the store that wrote it can read it; everything that leaves a node
/// is version 4.
pub const NUMBERED_RECORD_VERSION: u8 = 5;

/// Bytes before a [`NUMBERED_RECORD_VERSION`] record's body: the version and the state hash.
const NUMBERED_HEADER_BYTES: usize = 9;

type Limited<const N: usize> = Configuration<LittleEndian, Varint, config::Limit<N>>;

fn bincode_config<const N: usize>() -> Limited<N> {
    config::standard().with_limit::<N>()
}

/// The allocation budget for decoding `input_len` bytes (see the module docs).
pub fn decode_budget(input_len: usize) -> usize {
    const CLASSES: [usize; 5] = [1 << 12, 1 << 16, 1 << 20, 1 << 24, DECODE_LIMIT_BYTES];
    let want = input_len.saturating_mul(DECODE_BYTES_PER_INPUT_BYTE);
    CLASSES
        .into_iter()
        .find(|&c| c >= want)
        .unwrap_or(DECODE_LIMIT_BYTES)
}

/// Encodes a message as one complete frame (header and payload).
pub fn encode_frame<T: Encode>(message: &T) -> Result<Vec<u8>> {
    let mut buf = vec![PROTOCOL_VERSION, 0, 0, 0, 0];
    encode_into(message, &mut buf)?;
    let len = u32::try_from(buf.len() - FRAME_HEADER_BYTES)
        .map_err(|_| Error::Encode("frame longer than 4 GiB".into()))?;
    buf[1..FRAME_HEADER_BYTES].copy_from_slice(&len.to_be_bytes());
    Ok(buf)
}

/// The number of bytes `value` encodes to, counted without writing them (what a client that packs
/// several messages into one frame checks against the frame limit).
pub fn encoded_len<T: Encode>(value: &T) -> Result<usize> {
    let mut writer = bincode::enc::write::SizeWriter::default();
    bincode::encode_into_writer(value, &mut writer, config::standard())
        .map_err(|e| Error::Encode(e.to_string()))?;
    Ok(writer.bytes_written)
}

/// Encodes a request frame.
pub fn encode_request(request: &Request) -> Result<Vec<u8>> {
    encode_frame(request)
}

/// Encodes a response frame.
pub fn encode_response(response: &Response) -> Result<Vec<u8>> {
    encode_frame(response)
}

/// Reads a frame header: checks the version and that the payload length is at most `max_frame_bytes`.
/// Returns the payload length.
pub fn parse_header(header: [u8; FRAME_HEADER_BYTES], max_frame_bytes: u32) -> Result<usize> {
    let [version, a, b, c, d] = header;
    if version != PROTOCOL_VERSION {
        return Err(Error::UnsupportedVersion {
            got: version,
            supported: PROTOCOL_VERSION,
        });
    }
    let len = u32::from_be_bytes([a, b, c, d]);
    if len > max_frame_bytes {
        return Err(Error::FrameTooLarge {
            len: u64::from(len),
            max: u64::from(max_frame_bytes),
        });
    }
    Ok(len as usize)
}

fn decode_with_budget<'a, T: BorrowDecode<'a, ()>>(
    bytes: &'a [u8],
) -> std::result::Result<(T, usize), bincode::error::DecodeError> {
    match decode_budget(bytes.len()) {
        b if b <= 1 << 12 => {
            bincode::borrow_decode_from_slice(bytes, bincode_config::<{ 1 << 12 }>())
        }
        b if b <= 1 << 16 => {
            bincode::borrow_decode_from_slice(bytes, bincode_config::<{ 1 << 16 }>())
        }
        b if b <= 1 << 20 => {
            bincode::borrow_decode_from_slice(bytes, bincode_config::<{ 1 << 20 }>())
        }
        b if b <= 1 << 24 => {
            bincode::borrow_decode_from_slice(bytes, bincode_config::<{ 1 << 24 }>())
        }
        _ => bincode::borrow_decode_from_slice(bytes, bincode_config::<DECODE_LIMIT_BYTES>()),
    }
}

pub(crate) fn decode_exact<'a, T: BorrowDecode<'a, ()>>(
    bytes: &'a [u8],
    what: &'static str,
) -> Result<T> {
    let (value, read) = decode_with_budget(bytes).map_err(|e| Error::Malformed {
        what,
        reason: e.to_string(),
    })?;
    if read != bytes.len() {
        return Err(Error::Malformed {
            what,
            reason: format!("{} trailing bytes", bytes.len() - read),
        });
    }
    Ok(value)
}

/// Decodes a request payload (the bytes after the header).
pub fn decode_request(payload: &[u8]) -> Result<Request> {
    decode_exact(payload, "request")
}

/// Decodes a response payload (the bytes after the header).
pub fn decode_response(payload: &[u8]) -> Result<Response> {
    decode_exact(payload, "response")
}

/// Splits a complete frame held in memory into its payload, checking the header. For tests and tools; the
/// network path reads the header first and then exactly the payload.
pub fn split_frame(frame: &[u8], max_frame_bytes: u32) -> Result<&[u8]> {
    let header: [u8; FRAME_HEADER_BYTES] = frame
        .get(..FRAME_HEADER_BYTES)
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| Error::Malformed {
            what: "frame",
            reason: "shorter than its header".into(),
        })?;
    let len = parse_header(header, max_frame_bytes)?;
    let payload = &frame[FRAME_HEADER_BYTES..];
    if payload.len() != len {
        return Err(Error::Malformed {
            what: "frame",
            reason: format!("header says {len} bytes, frame has {}", payload.len()),
        });
    }
    Ok(payload)
}

/// The frame of a read answer (`Response::Profile` or `Response::Profiles`), encoded straight from the
/// profiles: each view is written as it is walked ([`Profile::for_each_visible`]), never built. The bytes
/// are exactly those of [`encode_response`] on the response with the built views (property-tested), so
/// clients decode it as any other response.
///
/// The enum prefix is taken from encoding an empty response of the same variant, so it follows the
/// `Response` definition instead of repeating its variant numbers.
#[derive(Debug)]
pub struct ReadFrame {
    buf: Vec<u8>,
    /// Views still to push.
    remaining: usize,
}

impl ReadFrame {
    /// The answer to a `Get`: one view to [`push`](ReadFrame::push).
    pub fn one() -> Result<ReadFrame> {
        let mut buf = encode_frame(&Response::Profile(None))?;
        // Drop the `None` tag: `push` writes the option.
        buf.pop();
        Ok(ReadFrame { buf, remaining: 1 })
    }

    /// The answer to a `GetMany` of `count` keys: `count` views to push, in key order.
    pub fn many(count: usize) -> Result<ReadFrame> {
        let mut buf = encode_frame(&Response::Profiles(Vec::new()))?;
        // Replace the empty vector's length with `count`.
        buf.pop();
        // Room for the views up front (≈ 700 bytes for 20 features), bounded whatever `count` says.
        buf.reserve(count.min(1024) * 768);
        encode_into(&(count as u64), &mut buf)?;
        Ok(ReadFrame {
            buf,
            remaining: count,
        })
    }

    /// Appends the next view: that of `profile` at `now_ms` (optionally projected), or none.
    pub fn push(
        &mut self,
        profile: Option<&Profile>,
        now_ms: u64,
        projection: Option<&[String]>,
    ) -> Result<()> {
        self.remaining = self.remaining.checked_sub(1).ok_or_else(|| {
            Error::Encode("read frame: more views pushed than it was made for".into())
        })?;
        let Some(profile) = profile else {
            self.buf.push(0);
            return Ok(());
        };
        let start = self.buf.len();
        let buf = &mut self.buf;
        match profile.for_each_visible(now_ms, projection, |name, feature| {
            encode_into(&(name, feature), buf)
        }) {
            Some(Ok(0)) => {
                self.buf.truncate(start);
                self.buf.push(0);
            }
            Some(Ok(n)) => {
                // `Some`, then the map's length ahead of the entries just written.
                let mut head = vec![1u8];
                encode_into(&(n as u64), &mut head)?;
                self.buf.splice(start..start, head);
            }
            Some(Err(e)) => return Err(e),
            // Linked profiles: build the combined view.
            None => encode_into(&profile.view(now_ms, projection), &mut self.buf)?,
        }
        Ok(())
    }

    /// The finished frame (header with its payload length).
    pub fn finish(mut self) -> Result<Vec<u8>> {
        if self.remaining != 0 {
            return Err(Error::Encode(format!(
                "read frame: {} views missing",
                self.remaining
            )));
        }
        let len = u32::try_from(self.buf.len() - FRAME_HEADER_BYTES)
            .map_err(|_| Error::Encode("frame longer than 4 GiB".into()))?;
        self.buf[1..FRAME_HEADER_BYTES].copy_from_slice(&len.to_be_bytes());
        Ok(self.buf)
    }
}

/// Appends `value`'s bincode encoding to `buf`. Every encoder of this module writes through here.
fn encode_into<T: Encode>(value: &T, buf: &mut Vec<u8>) -> Result<()> {
    bincode::encode_into_writer(value, VecSink(buf), config::standard())
        .map_err(|e| Error::Encode(e.to_string()))
}

/// bincode's writer for a `Vec`. bincode writes most of a message a byte at a time (enum tags, small
/// varints, `Option` tags); through `std::io::Write` each of those bytes was a `memcpy` call, which
/// `perf` showed as 16 % of a node's CPU serving `GetMany`. A single byte is pushed instead.
struct VecSink<'a>(&'a mut Vec<u8>);

impl bincode::enc::write::Writer for VecSink<'_> {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> std::result::Result<(), bincode::error::EncodeError> {
        match bytes {
            [byte] => self.0.push(*byte),
            _ => self.0.extend_from_slice(bytes),
        }
        Ok(())
    }
}

/// Encodes a profile as a stored record: `[RECORD_VERSION][bincode(profile)]`.
pub fn encode_record(profile: &Profile) -> Result<Vec<u8>> {
    // A 20-feature record is ≈ 700 bytes: start there rather than double up to it.
    let mut buf = Vec::with_capacity(768);
    encode_record_into(profile, &mut buf)?;
    Ok(buf)
}

/// [`encode_record`] into `buf` (cleared first), for a caller that reuses one buffer: the same bytes.
pub fn encode_record_into(profile: &Profile, buf: &mut Vec<u8>) -> Result<()> {
    buf.clear();
    buf.push(PROFILE_RECORD_VERSION);
    encode_into(profile, buf)
}

/// Encodes `profile` as its node's store keeps it ([`NUMBERED_RECORD_VERSION`]) into `buf` (cleared
/// first), numbering its names with `names` (which may so gain numbers the caller must persist before
/// the record: [`StoredNames::unsaved`]). `scratch` is reused for the version-4 encoding that the state
/// hash is taken of, so the hash equals [`state_hash`] on every node whatever its numbering.
pub fn encode_numbered_record_into(
    profile: &Profile,
    names: &mut StoredNames,
    scratch: &mut Vec<u8>,
    buf: &mut Vec<u8>,
) -> Result<()> {
    encode_record_into(profile, scratch)?;
    let hash = record_hash(scratch);
    buf.clear();
    buf.push(NUMBERED_RECORD_VERSION);
    buf.extend_from_slice(&hash.to_le_bytes());
    names.encoding(|| encode_into(profile, buf))
}

/// Decodes a record of its node's store: a [`NUMBERED_RECORD_VERSION`] record with the node's name
/// table `names`, any older version as [`decode_record`] does. Returns the profile and its state hash
/// (for an older record, the hash of its bytes, as [`record_hash`] gave before).
pub fn decode_stored_record(
    bytes: &[u8],
    names: &std::sync::Arc<NameColumns>,
) -> Result<(Profile, u64)> {
    match bytes.split_first() {
        Some((&NUMBERED_RECORD_VERSION, _)) => {
            let malformed = |reason: String| Error::Malformed {
                what: "record",
                reason,
            };
            let (hash, body) = bytes
                .get(1..NUMBERED_HEADER_BYTES)
                .and_then(|h| <[u8; 8]>::try_from(h).ok())
                .zip(bytes.get(NUMBERED_HEADER_BYTES..))
                .ok_or_else(|| {
                    malformed(format!("{} bytes, shorter than its header", bytes.len()))
                })?;
            let profile = names.decoding(|| decode_exact(body, "record"))?;
            Ok((profile, u64::from_le_bytes(hash)))
        }
        _ => Ok((decode_record(bytes)?, record_hash(bytes))),
    }
}

/// A profile as version-1 records stored it (before window features).
#[derive(Decode)]
struct ProfileV1 {
    gauges: crate::compact::VecMap<crate::compact::Symbol, crate::crdt::gauge::GaugeRegister>,
    counters: crate::compact::VecMap<crate::compact::Symbol, crate::crdt::counter::Counter>,
    flags: crate::compact::VecMap<crate::compact::Symbol, crate::crdt::flag::FlagRegister>,
    erased_at: Option<crate::hlc::Marker>,
}

/// Window parameters as version-2 records stored them (before the sketch size).
#[derive(Decode)]
struct WindowSpecV2 {
    aggregation: crate::crdt::window::Aggregation,
    bucket_ms: u64,
    span_ms: u64,
}

/// A window slot as version-2 records stored it (before the sketch).
#[derive(Decode)]
struct WindowSlotV2 {
    first: crate::hlc::Timestamp,
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
}

/// A window as version-2 records stored it.
#[derive(Decode)]
struct WindowV2 {
    spec: WindowSpecV2,
    buckets: std::collections::BTreeMap<
        u64,
        std::collections::BTreeMap<crate::hlc::NodeId, WindowSlotV2>,
    >,
}

impl WindowV2 {
    fn upgrade(self) -> crate::crdt::window::Window {
        use crate::crdt::window::{Window, WindowSlot, WindowSpec};
        let buckets = self
            .buckets
            .into_iter()
            .map(|(start, slots)| {
                let slots = slots
                    .into_iter()
                    .map(|(node, s)| {
                        let slot = WindowSlot {
                            first: s.first,
                            count: s.count,
                            sum: s.sum,
                            min: s.min,
                            max: s.max,
                            hashes: Vec::new(),
                        };
                        (crate::hlc::Actor::legacy(node), slot)
                    })
                    .collect();
                (start, slots)
            })
            .collect();
        Window {
            spec: WindowSpec {
                aggregation: self.spec.aggregation,
                bucket_ms: self.spec.bucket_ms,
                span_ms: self.spec.span_ms,
                max_exact: 0,
            },
            buckets,
        }
    }
}

/// A profile as version-2 records stored it (before distinct counts and identity links).
#[derive(Decode)]
struct ProfileV2 {
    gauges: crate::compact::VecMap<crate::compact::Symbol, crate::crdt::gauge::GaugeRegister>,
    counters: crate::compact::VecMap<crate::compact::Symbol, crate::crdt::counter::Counter>,
    flags: crate::compact::VecMap<crate::compact::Symbol, crate::crdt::flag::FlagRegister>,
    erased_at: Option<crate::hlc::Marker>,
    windows: crate::compact::VecMap<crate::compact::Symbol, WindowV2>,
    seen: crate::crdt::seen::Seen,
}

/// Decodes a stored record, refusing unknown format versions.
pub fn decode_record(bytes: &[u8]) -> Result<Profile> {
    match bytes.split_first() {
        Some((&PROFILE_RECORD_VERSION, rest)) => decode_exact(rest, "record"),
        Some((&3, rest)) => crate::hlc::decoding_legacy_actors(|| decode_exact(rest, "record")),
        Some((&2, rest)) => {
            let v2: ProfileV2 =
                crate::hlc::decoding_legacy_actors(|| decode_exact(rest, "record"))?;
            Ok(Profile {
                gauges: v2.gauges,
                counters: v2.counters,
                flags: v2.flags,
                erased_at: v2.erased_at,
                windows: v2
                    .windows
                    .into_iter()
                    .map(|(name, w)| (name, w.upgrade()))
                    .collect(),
                seen: v2.seen.into(),
                identity: Default::default(),
            })
        }
        Some((&1, rest)) => {
            let v1: ProfileV1 =
                crate::hlc::decoding_legacy_actors(|| decode_exact(rest, "record"))?;
            Ok(Profile {
                gauges: v1.gauges,
                counters: v1.counters,
                flags: v1.flags,
                erased_at: v1.erased_at,
                windows: Default::default(),
                seen: Default::default(),
                identity: Default::default(),
            })
        }
        _ => decode_versioned(bytes, "record"),
    }
}

/// Decodes a peer message payload (the bytes after the frame header).
pub fn decode_peer(payload: &[u8]) -> Result<PeerMessage> {
    decode_exact(payload, "peer message")
}

/// Encodes any stored value (profiles, node metadata) as `[RECORD_VERSION][bincode(value)]`.
pub fn encode_versioned<T: Encode>(value: &T) -> Result<Vec<u8>> {
    let mut buf = vec![RECORD_VERSION];
    encode_into(value, &mut buf)?;
    Ok(buf)
}

/// Decodes a value written by [`encode_versioned`], refusing unknown format versions.
pub fn decode_versioned<T: for<'a> BorrowDecode<'a, ()>>(
    bytes: &[u8],
    what: &'static str,
) -> Result<T> {
    match bytes.split_first() {
        Some((&RECORD_VERSION, rest)) => decode_exact(rest, what),
        Some((&other, _)) => Err(Error::Malformed {
            what,
            reason: format!("unknown record version {other}"),
        }),
        None => Err(Error::Malformed {
            what,
            reason: "empty".into(),
        }),
    }
}

/// Encodes a dead letter as its stored record: `[RECORD_VERSION][bincode(entry)]`.
pub fn encode_dead_letter(entry: &DeadLetter) -> Result<Vec<u8>> {
    encode_versioned(entry)
}

/// Decodes a stored dead letter: [`Error::Malformed`] for anything that is not a record of a known version,
/// and for an entry whose id differs from the id of its record's name (`expected_id`).
pub fn decode_dead_letter(bytes: &[u8], expected_id: u64) -> Result<DeadLetter> {
    let entry: DeadLetter = decode_versioned(bytes, "dead letter")?;
    if entry.id != expected_id {
        return Err(Error::Malformed {
            what: "dead letter",
            reason: format!("record of id {expected_id} holds id {}", entry.id),
        });
    }
    Ok(entry)
}

/// Encodes a change of a node's segment change log for storage (versioned like every record).
pub fn encode_change(change: &SegmentChange) -> Result<Vec<u8>> {
    encode_versioned(change)
}

/// Decodes a stored change: [`Error::Malformed`] for anything that is not a record of a known version,
/// and for one whose `seq` differs from its record name's (`expected_seq`).
pub fn decode_change(bytes: &[u8], expected_seq: u64) -> Result<SegmentChange> {
    let change: SegmentChange = decode_versioned(bytes, "segment change")?;
    if change.seq != expected_seq {
        return Err(Error::Malformed {
            what: "segment change",
            reason: format!("record of seq {expected_seq} holds seq {}", change.seq),
        });
    }
    Ok(change)
}

/// Encodes the runtime segment catalog for storage.
pub fn encode_catalog(catalog: &Catalog) -> Result<Vec<u8>> {
    encode_versioned(catalog)
}

/// Decodes a stored runtime segment catalog.
pub fn decode_catalog(bytes: &[u8]) -> Result<Catalog> {
    decode_versioned(bytes, "segment catalog")
}

/// A counting global allocator for the tests of this crate: measures the peak bytes allocated by the
/// current thread inside [`alloc_probe::measure`]. Other threads are not counted.
/// The digest of a profile's state (anti-entropy compares these): equal states (after merge) have equal hashes, because the encoding is
/// canonical (ordered maps, siblings sorted by dot).
pub fn state_hash(profile: &Profile) -> u64 {
    encode_record(profile).map_or(0, |bytes| record_hash(&bytes))
}

/// [`state_hash`] of a profile from its stored record (the output of [`encode_record`]), so a node
/// that has just encoded a record gets the hash without encoding again.
///
/// XXH3-64 of the bytes: specified (so stable across builds and platforms, which a digest two nodes
/// compare must be) and many times faster than the byte-at-a-time FNV-1a the ring uses for short keys; a
/// restart hashes every stored record (≈ 1 GB for a million profiles), where FNV-1a was 9 % of the
/// load's CPU. Caveat: nodes of builds from before this change hash records differently, so during a
/// rolling upgrade anti-entropy sees every bucket as differing and re-sends full states until all nodes
/// run the new build (merges are idempotent: extra traffic, never a wrong result).
pub fn record_hash(record: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(record)
}

#[cfg(test)]
#[allow(unsafe_code)]
pub(super) mod alloc_probe {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static LIVE: Cell<isize> = const { Cell::new(0) };
        static PEAK: Cell<isize> = const { Cell::new(0) };
    }

    struct Probe;

    fn track(delta: isize) {
        let _ = LIVE.try_with(|live| {
            let now = live.get() + delta;
            live.set(now);
            let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
        });
    }

    // SAFETY: every call is forwarded unchanged to the system allocator; only sizes are recorded.
    unsafe impl GlobalAlloc for Probe {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: same contract as the caller's.
            let p = unsafe { System.alloc(layout) };
            if !p.is_null() {
                track(layout.size() as isize);
            }
            p
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: same contract as the caller's.
            unsafe { System.dealloc(ptr, layout) };
            track(-(layout.size() as isize));
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            // SAFETY: same contract as the caller's.
            let p = unsafe { System.realloc(ptr, layout, new_size) };
            if !p.is_null() {
                track(new_size as isize - layout.size() as isize);
            }
            p
        }
    }

    #[global_allocator]
    static GLOBAL: Probe = Probe;

    /// Runs `f` and returns its result and the peak bytes it had allocated at once on this thread.
    pub fn measure<R>(f: impl FnOnce() -> R) -> (R, usize) {
        let base = LIVE.with(Cell::get);
        PEAK.with(|p| p.set(base));
        let r = f();
        let peak = PEAK.with(Cell::get);
        (r, usize::try_from(peak - base).unwrap_or(0))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::crdt::value::Value;
    use crate::profile::tests::{actor, play, step, NAMES};
    use crate::wire::client::GaugeWrite;
    use crate::wire::dead_letter::Capture;
    use crate::wire::reply::ErrorCode;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    /// A read frame refuses more views than it was made for and a finish with views missing (a frame
    /// with the wrong count would be misread by the client).
    #[test]
    fn read_frame_counts_its_views() {
        let mut one = ReadFrame::one().expect("encodes");
        one.push(None, 0, None).expect("encodes");
        assert!(matches!(one.push(None, 0, None), Err(Error::Encode(_))));
        let mut many = ReadFrame::many(2).expect("encodes");
        many.push(None, 0, None).expect("encodes");
        assert!(matches!(many.finish(), Err(Error::Encode(_))));
        let empty = ReadFrame::many(0)
            .expect("encodes")
            .finish()
            .expect("encodes");
        assert_eq!(
            empty,
            encode_response(&Response::Profiles(Vec::new())).expect("encodes")
        );
    }

    fn sample() -> Request {
        Request::Put {
            key: "u1".into(),
            gauges: vec![GaugeWrite {
                name: "cart_value".into(),
                value: Value::F64(42.5),
                ttl_ms: None,
            }],
            timestamp_ms: None,
            quorum: 1,
        }
    }

    #[test]
    fn request_round_trips_through_a_frame() {
        let frame = encode_request(&sample()).expect("encodes");
        let payload = split_frame(&frame, 1 << 20).expect("valid frame");
        assert_eq!(decode_request(payload).expect("decodes"), sample());
    }

    #[test]
    fn a_writes_request_and_its_answer_round_trip_and_encoded_len_is_exact() {
        use crate::wire::client::{ErrorReply, WriteOp, WriteReply};
        let op = WriteOp::try_from(sample()).expect("a put is a write");
        assert_eq!(op.key(), "u1");
        assert_eq!(Request::from(op.clone()), sample());
        assert_eq!(WriteOp::try_from(Request::Status), Err(Request::Status));
        let request = Request::Writes {
            writes: vec![
                op.clone(),
                WriteOp::Erase {
                    key: "k".into(),
                    quorum: 2,
                },
            ],
        };
        let frame = encode_request(&request).expect("encodes");
        assert_eq!(
            encoded_len(&request).expect("sizes"),
            frame.len() - FRAME_HEADER_BYTES
        );
        let payload = split_frame(&frame, 1 << 20).expect("valid frame");
        assert_eq!(decode_request(payload).expect("decodes"), request);

        let replies = vec![
            WriteReply::Incremented(vec![3]),
            WriteReply::Error(ErrorReply {
                code: ErrorCode::LimitExceeded,
                message: "too big".into(),
            }),
        ];
        let frame = encode_response(&Response::Written(replies.clone())).expect("encodes");
        let payload = split_frame(&frame, 1 << 20).expect("valid frame");
        assert_eq!(
            decode_response(payload).expect("decodes"),
            Response::Written(replies.clone())
        );
        // A reply converts to the response the write alone would get, and back.
        for reply in replies {
            assert_eq!(WriteReply::from(Response::from(reply.clone())), reply);
        }
        match WriteReply::from(Response::Leaving) {
            WriteReply::Error(e) => assert_eq!(e.code, ErrorCode::Internal),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn oversized_and_foreign_frames_are_refused_from_the_header() {
        let mut header = [PROTOCOL_VERSION, 0, 0, 0, 0];
        header[1..].copy_from_slice(&(2_000_000u32).to_be_bytes());
        assert!(matches!(
            parse_header(header, 1_000_000),
            Err(Error::FrameTooLarge { .. })
        ));
        header[0] = 9;
        assert!(matches!(
            parse_header(header, 1 << 30),
            Err(Error::UnsupportedVersion { got: 9, .. })
        ));
    }

    #[test]
    fn the_allocation_probe_sees_allocations() {
        let (v, peak) = alloc_probe::measure(|| vec![1u8; 100_000]);
        assert_eq!(v.len(), 100_000);
        assert!(peak >= 100_000);
    }

    #[test]
    fn the_budget_grows_with_the_input() {
        assert_eq!(decode_budget(0), 1 << 12);
        assert_eq!(decode_budget(64), 1 << 12);
        assert_eq!(decode_budget(65), 1 << 16);
        assert_eq!(decode_budget(4 << 20), DECODE_LIMIT_BYTES);
        assert_eq!(decode_budget(usize::MAX), DECODE_LIMIT_BYTES);
    }

    #[test]
    fn a_large_legitimate_request_decodes() {
        let keys: Vec<String> = (0..1000).map(|i| format!("user-{i}")).collect();
        let req = Request::GetMany {
            keys,
            features: Some(vec!["a".into(); 1000]),
            quorum: 1,
        };
        let frame = encode_request(&req).expect("encodes");
        assert_eq!(
            decode_request(&frame[FRAME_HEADER_BYTES..]).expect("decodes"),
            req
        );
    }

    /// Every budget class decodes a legitimate message of its size: the allocation limit of each class
    /// is at least the budget it stands for (the largest message needs more than the 16 MiB below it).
    #[test]
    fn a_legitimate_message_of_every_size_class_decodes() {
        let mut classes = BTreeSet::new();
        for n in [1, 100, 1_000, 10_000, 1_000_000] {
            let req = Request::GetMany {
                keys: (0..n).map(|i| format!("user-{i}")).collect(),
                features: None,
                quorum: 1,
            };
            let frame = encode_request(&req).expect("encodes");
            let payload = &frame[FRAME_HEADER_BYTES..];
            classes.insert(decode_budget(payload.len()));
            assert_eq!(decode_request(payload).expect("decodes"), req, "{n} keys");
        }
        assert_eq!(classes.len(), 5, "one message per class: {classes:?}");
    }

    /// In every budget class, a payload that claims four times its budget is refused before the
    /// decoder allocates it (the existing property test only reaches the two smallest classes).
    #[test]
    fn every_size_class_refuses_claims_beyond_its_budget() {
        for class in [1usize << 12, 1 << 16, 1 << 20, 1 << 24, DECODE_LIMIT_BYTES] {
            let len = class / DECODE_BYTES_PER_INPUT_BYTE;
            assert_eq!(decode_budget(len), class);
            // GetMany (variant 1) with a varint count of keys whose `String`s alone take 4 x the class.
            let keys = (4 * class / std::mem::size_of::<String>()) as u64;
            let mut payload = vec![1u8, 0xFD];
            payload.extend_from_slice(&keys.to_le_bytes());
            payload.resize(len, 0);
            let (result, peak) = alloc_probe::measure(|| decode_request(&payload));
            assert!(matches!(result, Err(Error::Malformed { .. })), "{result:?}");
            assert!(peak <= 2 * class + 4096, "class {class}: peak {peak}");
        }
    }

    #[test]
    fn a_huge_length_prefix_is_refused_before_allocation() {
        // Variant 1 = GetMany; then a varint length of u64::MAX for `keys`.
        let payload = [1u8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
        assert!(matches!(
            decode_request(&payload),
            Err(Error::Malformed { .. })
        ));
        // Variant 0 = Get with a 1 TiB key.
        let mut payload = vec![0u8, 0xFD];
        payload.extend_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(matches!(
            decode_request(&payload),
            Err(Error::Malformed { .. })
        ));
    }

    #[test]
    fn trailing_bytes_and_bad_utf8_are_refused() {
        let frame = encode_request(&sample()).expect("encodes");
        let mut payload = frame[FRAME_HEADER_BYTES..].to_vec();
        payload.push(0);
        assert!(matches!(
            decode_request(&payload),
            Err(Error::Malformed { .. })
        ));
        // Get { key: [0xFF], features: None }
        let payload = [0u8, 1, 0xFF, 0];
        assert!(matches!(
            decode_request(&payload),
            Err(Error::Malformed { .. })
        ));
    }

    /// A stored record keeps every kind's state, the flag's causal context included.
    #[test]
    fn records_round_trip_every_kind() {
        let p = every_kind();
        let bytes = encode_record(&p).expect("encodes");
        assert_eq!(decode_record(&bytes).expect("decodes"), p);
    }

    /// A profile with a gauge, a counter and a flag with a causal context.
    fn every_kind() -> Profile {
        let mut p = Profile::default();
        let node = crate::hlc::NodeId::new("n1").expect("valid");
        let mut clock = crate::hlc::Clock::new(node.clone(), 1_000);
        let limits = crate::limits::Limits::default();
        let v = Value::Str("x".into());
        let gauge = crate::profile::GaugeUpdate {
            name: "g",
            value: &v,
            expires_at_ms: Some(5_000),
        };
        p.put_gauges(&[gauge], &clock.stamp(1_000), &limits)
            .expect("valid");
        let ts = clock.tick(1_000);
        p.increment(&[("c", -3)], clock.actor(), ts, &limits)
            .expect("valid");
        for value in [true, false] {
            let context = crate::CausalContext::default();
            let flag = crate::profile::FlagUpdate {
                name: "f",
                value,
                context: &context,
                marker: clock.stamp(1_000),
                actor: clock.actor().clone(),
                expires_at_ms: None,
            };
            p.set_flag(flag, 1_000, &limits).expect("valid");
        }
        assert!(!p.flags["f"].clock.is_empty());
        p
    }

    /// [`every_kind`] with twenty more gauges, stamped by two nodes.
    fn wide() -> Profile {
        let mut p = every_kind();
        let limits = crate::limits::Limits::default();
        for (i, node) in ["n1", "n2"].into_iter().enumerate() {
            let node = crate::hlc::NodeId::new(node).expect("valid");
            let mut clock = crate::hlc::Clock::new(node, 1_000);
            let values: Vec<Value> = (0..10).map(|v| Value::I64(v * 7)).collect();
            let names: Vec<String> = (0..10).map(|g| format!("feature_{i}_{g}")).collect();
            let gauges: Vec<_> = names
                .iter()
                .zip(&values)
                .map(|(name, value)| crate::profile::GaugeUpdate {
                    name,
                    value,
                    expires_at_ms: None,
                })
                .collect();
            p.put_gauges(&gauges, &clock.stamp(2_000), &limits)
                .expect("valid");
        }
        p
    }

    /// A numbered record holds the same profile in fewer bytes; its header carries the state hash every
    /// node computes from the text form; it reads with the table that numbered it, or with a table
    /// restored from what that one saved, and with no other.
    #[test]
    fn numbered_records_round_trip_with_their_table_only() {
        use crate::compact::{NameKind, StoredNames, Symbol};
        let p = wide();
        let text_form = encode_record(&p).expect("encodes");
        let mut names = StoredNames::new();
        let (mut scratch, mut numbered) = (Vec::new(), Vec::new());
        encode_numbered_record_into(&p, &mut names, &mut scratch, &mut numbered).expect("encodes");
        assert_eq!(numbered[0], NUMBERED_RECORD_VERSION);
        assert!(
            numbered.len() * 10 < text_form.len() * 7,
            "{} against {} bytes",
            numbered.len(),
            text_form.len()
        );
        let (back, hash) = decode_stored_record(&numbered, &names.columns()).expect("decodes");
        assert_eq!(back, p);
        assert_eq!(hash, state_hash(&p));
        // Outside the scope names are text again: the version-4 form is unchanged.
        assert_eq!(encode_record(&p).expect("encodes"), text_form);

        // Every name is numbered once and waits to be saved: 23 feature names, 2 nodes.
        let unsaved: Vec<_> = names
            .unsaved()
            .into_iter()
            .map(|(kind, n, text)| (kind, n, text.to_owned()))
            .collect();
        let features = unsaved.iter().filter(|u| u.0 == NameKind::Feature).count();
        assert_eq!((features, unsaved.len() - features), (23, 2));
        names.mark_saved();
        assert!(names.unsaved().is_empty());
        let again = {
            let mut again = Vec::new();
            encode_numbered_record_into(&p, &mut names, &mut scratch, &mut again).expect("encodes");
            again
        };
        assert_eq!(again, numbered, "a second encoding reuses the numbers");
        assert!(names.unsaved().is_empty());

        let restored = StoredNames::restore(
            unsaved
                .iter()
                .filter(|u| u.0 == NameKind::Feature)
                .map(|(_, n, text)| (*n, Some(Symbol::new(text)))),
            unsaved
                .iter()
                .filter(|u| u.0 == NameKind::Node)
                .map(|(_, n, text)| {
                    let node = crate::hlc::NodeId::new(text).expect("valid");
                    (*n, Some(node.name()))
                }),
        );
        let (back, _) = decode_stored_record(&numbered, &restored.columns()).expect("decodes");
        assert_eq!(back, p);

        // Without its table: typed errors, never another profile.
        assert!(matches!(
            decode_record(&numbered),
            Err(Error::Malformed { .. })
        ));
        let empty = StoredNames::new().columns();
        let err = decode_stored_record(&numbered, &empty).expect_err("numbers it does not hold");
        assert!(
            err.to_string().contains("not in the stored name table"),
            "{err}"
        );
        for cut in [1, 5, 9, numbered.len() - 1] {
            assert!(decode_stored_record(&numbered[..cut], &names.columns()).is_err());
        }
        // A version-4 record reads too, hashed as before.
        let (back, hash) = decode_stored_record(&text_form, &empty).expect("decodes");
        assert_eq!((back, hash), (p.clone(), record_hash(&text_form)));
        // A decoding scope does not outlive its call: text decodes after it.
        assert_eq!(decode_record(&text_form).expect("decodes"), p);
    }

    /// Once a table holds its most names, a new name is written as text, and still reads.
    #[test]
    fn a_full_name_table_writes_new_names_as_text() {
        use crate::compact::{StoredNames, Symbol, MAX_STORED_NAMES};
        let last = (MAX_STORED_NAMES - 1) as u32;
        let mut names = StoredNames::restore(
            [(last, Some(Symbol::new("numbered_last")))],
            [(
                0,
                Some(crate::hlc::NodeId::new("n1").expect("valid").name()),
            )],
        );
        let p = wide();
        let (mut scratch, mut numbered) = (Vec::new(), Vec::new());
        encode_numbered_record_into(&p, &mut names, &mut scratch, &mut numbered).expect("encodes");
        // No feature got a number (their column is full); node n2 did (n1 had one).
        let unsaved = names.unsaved();
        assert_eq!(unsaved.len(), 1, "{unsaved:?}");
        let (back, hash) = decode_stored_record(&numbered, &names.columns()).expect("decodes");
        assert_eq!((back, hash), (p.clone(), state_hash(&p)));
    }

    #[test]
    fn records_carry_their_version() {
        let bytes = encode_record(&Profile::default()).expect("encodes");
        assert_eq!(bytes[0], PROFILE_RECORD_VERSION);
        assert_eq!(decode_record(&bytes).expect("decodes"), Profile::default());
        let mut bad = bytes.clone();
        bad[0] = 99;
        assert!(decode_record(&bad).is_err());
        assert!(decode_record(&[]).is_err());
    }

    /// A version-1 record (written before window features) is read and upgraded: same gauges, counters,
    /// flags and watermark, no windows; re-encoding writes the current version.
    #[test]
    fn version_one_records_are_upgraded() {
        use crate::crdt::value::Value;
        use crate::hlc::{Clock, NodeId};
        use crate::profile::GaugeUpdate;
        #[derive(Encode)]
        struct ProfileV1Out<'a> {
            gauges: &'a crate::compact::VecMap<
                crate::compact::Symbol,
                crate::crdt::gauge::GaugeRegister,
            >,
            counters:
                &'a crate::compact::VecMap<crate::compact::Symbol, crate::crdt::counter::Counter>,
            flags:
                &'a crate::compact::VecMap<crate::compact::Symbol, crate::crdt::flag::FlagRegister>,
            erased_at: &'a Option<crate::hlc::Marker>,
        }
        let limits = crate::Limits::default();
        let mut clock = Clock::new(NodeId::new("n1").expect("valid"), 1_000);
        let mut p = Profile::default();
        let v = Value::I64(3);
        let m = clock.stamp(10);
        p.put_gauges(
            &[GaugeUpdate {
                name: "g",
                value: &v,
                expires_at_ms: None,
            }],
            &m,
            &limits,
        )
        .expect("valid");
        let ts = clock.tick(11);
        p.increment(&[("c", 2)], clock.actor(), ts, &limits)
            .expect("valid");
        p.erase(clock.stamp(5));
        let old = ProfileV1Out {
            gauges: &p.gauges,
            counters: &p.counters,
            flags: &p.flags,
            erased_at: &p.erased_at,
        };
        let mut v1 = vec![1u8];
        crate::hlc::decoding_legacy_actors(|| {
            bincode::encode_into_std_write(&old, &mut v1, config::standard())
        })
        .expect("encodes");
        let upgraded = decode_record(&v1).expect("a version-1 record reads");
        assert_eq!(upgraded, p);
        assert_eq!(
            encode_record(&upgraded).expect("encodes")[0],
            PROFILE_RECORD_VERSION
        );
    }

    /// A small profile for the identity record tests: a counter of node `i`, stamped at `at`.
    fn linked_small(i: usize, delta: i64, at: u64) -> Profile {
        let node = crate::hlc::NodeId::new(["n1", "n2", "n3"][i % 3]).expect("valid");
        let mut clock = crate::hlc::Clock::new(node.clone(), 1_000);
        let mut p = Profile::default();
        let ts = clock.tick(at);
        p.increment(
            &[("c", delta)],
            clock.actor(),
            ts,
            &crate::Limits::default(),
        )
        .expect("valid");
        p
    }

    #[test]
    fn records_with_links_round_trip_and_deeper_nesting_is_refused() {
        let limits = crate::Limits::default();
        let mut u = linked_small(0, 1, 10);
        u.absorb("u", "a", &linked_small(1, 2, 20), &limits)
            .expect("links");
        u.set_alias(
            "v",
            crate::hlc::Clock::new(crate::hlc::NodeId::new("n1").expect("valid"), 1_000).stamp(30),
            &limits,
        )
        .expect("valid");
        let bytes = encode_record(&u).expect("encodes");
        assert_eq!(decode_record(&bytes).expect("decodes"), u);
        // Hand-built nesting the absorb path never makes: refused by the decoder, not recursed into.
        let mut deep = Profile::default();
        let mut inner = u.clone();
        inner
            .identity
            .get_mut()
            .absorbed
            .insert("b".into(), u.clone());
        deep.identity.get_mut().absorbed.insert("x".into(), inner);
        let bytes = encode_record(&deep).expect("encodes");
        let err = decode_record(&bytes).expect_err("too deep");
        assert!(err.to_string().contains("nested"), "{err}");
        // The guard is released after a failed decode: the next decode works.
        assert!(decode_record(&encode_record(&u).expect("encodes")).is_ok());
    }

    /// A version-2 record (written before distinct counts) is read and upgraded: windows keep their slots,
    /// gain empty sketches and sketch size 0 (their aggregations have none); re-encoding writes version 3.
    #[test]
    fn version_two_records_are_upgraded() {
        use crate::crdt::window::{Aggregation, Observation, WindowSpec};
        use crate::hlc::{Clock, NodeId, Timestamp};
        use std::collections::BTreeMap;
        #[derive(Encode)]
        struct SpecV2Out {
            aggregation: Aggregation,
            bucket_ms: u64,
            span_ms: u64,
        }
        #[derive(Encode)]
        struct SlotV2Out {
            first: Timestamp,
            count: u64,
            sum: f64,
            min: f64,
            max: f64,
        }
        #[derive(Encode)]
        struct WindowV2Out {
            spec: SpecV2Out,
            buckets: BTreeMap<u64, BTreeMap<NodeId, SlotV2Out>>,
        }
        #[derive(Encode)]
        struct ProfileV2Out<'a> {
            gauges: &'a crate::compact::VecMap<
                crate::compact::Symbol,
                crate::crdt::gauge::GaugeRegister,
            >,
            counters:
                &'a crate::compact::VecMap<crate::compact::Symbol, crate::crdt::counter::Counter>,
            flags:
                &'a crate::compact::VecMap<crate::compact::Symbol, crate::crdt::flag::FlagRegister>,
            erased_at: &'a Option<crate::hlc::Marker>,
            windows: crate::compact::VecMap<crate::compact::Symbol, WindowV2Out>,
            seen: &'a crate::crdt::seen::Seen,
        }
        let limits = crate::Limits::default();
        let n1 = NodeId::new("n1").expect("valid");
        let mut clock = Clock::new(n1.clone(), 1_000);
        let mut p = Profile::default();
        let spec = WindowSpec {
            aggregation: Aggregation::Sum,
            bucket_ms: 1_000,
            span_ms: 60_000,
            max_exact: 0,
        };
        for (at, v) in [(5_000, 2.0), (5_500, 3.0), (9_000, -1.0)] {
            let ts = clock.tick(at);
            p.observe(
                "revenue",
                spec,
                clock.actor(),
                at,
                Observation::Value(v),
                ts,
                &limits,
            )
            .expect("fits");
        }
        let ts = clock.tick(10_000);
        p.increment(&[("c", 2)], clock.actor(), ts, &limits)
            .expect("valid");
        p.seen
            .get_mut()
            .insert("m1", 9_000, limits.dedup_window_ms, limits.max_seen_ids);
        let windows = p
            .windows
            .iter()
            .map(|(name, w)| {
                let buckets = w
                    .buckets
                    .iter()
                    .map(|(start, slots)| {
                        let slots = slots
                            .iter()
                            .map(|(node, s)| {
                                let slot = SlotV2Out {
                                    first: s.first,
                                    count: s.count,
                                    sum: s.sum,
                                    min: s.min,
                                    max: s.max,
                                };
                                (node.node.clone(), slot)
                            })
                            .collect();
                        (*start, slots)
                    })
                    .collect();
                let spec = SpecV2Out {
                    aggregation: w.spec.aggregation,
                    bucket_ms: w.spec.bucket_ms,
                    span_ms: w.spec.span_ms,
                };
                (name.clone(), WindowV2Out { spec, buckets })
            })
            .collect();
        let old = ProfileV2Out {
            gauges: &p.gauges,
            counters: &p.counters,
            flags: &p.flags,
            erased_at: &p.erased_at,
            windows,
            seen: &p.seen,
        };
        let mut v2 = vec![2u8];
        crate::hlc::decoding_legacy_actors(|| {
            bincode::encode_into_std_write(&old, &mut v2, config::standard())
        })
        .expect("encodes");
        let upgraded = decode_record(&v2).expect("a version-2 record reads");
        assert_eq!(upgraded, p);
        assert_eq!(upgraded.windows["revenue"].value(9_000), (3, Some(4.0)));
        assert_eq!(
            encode_record(&upgraded).expect("encodes")[0],
            PROFILE_RECORD_VERSION
        );
        assert!(upgraded.identity.is_empty());
    }

    /// A version-3 record (actors were node ids) reads as the node's legacy actors; a record of this
    /// version keeps real incarnations.
    #[test]
    fn version_3_records_read_with_legacy_actors() {
        use crate::hlc::{Clock, NodeId};
        let limits = crate::Limits::default();
        let mut p = linked_small(0, 4, 10);
        let mut clock = Clock::new(NodeId::new("n2").expect("valid"), 1_000);
        let context = crate::CausalContext::default();
        let flag = crate::profile::FlagUpdate {
            name: "f",
            value: true,
            context: &context,
            marker: clock.stamp(20),
            actor: clock.actor().clone(),
            expires_at_ms: None,
        };
        p.set_flag(flag, 20, &limits).expect("valid");
        let mut v3 = vec![3u8];
        crate::hlc::decoding_legacy_actors(|| {
            bincode::encode_into_std_write(&p, &mut v3, config::standard())
        })
        .expect("encodes");
        assert_eq!(decode_record(&v3).expect("a version-3 record reads"), p);
        // Now with a real incarnation: it survives the current format, and has no legacy form.
        let actor = crate::hlc::Actor::new(NodeId::new("n3").expect("valid"), 0xabc);
        let mut clock = Clock::for_actor(actor.clone(), 1_000);
        let ts = clock.tick(30);
        p.increment(&[("c", 1)], clock.actor(), ts, &limits)
            .expect("valid");
        let bytes = encode_record(&p).expect("encodes");
        let back = decode_record(&bytes).expect("decodes");
        assert!(back.counters["c"].slots.contains_key(&actor));
        let mut legacy = Vec::new();
        let refused = crate::hlc::decoding_legacy_actors(|| {
            bincode::encode_into_std_write(&p, &mut legacy, config::standard())
        });
        assert!(refused.is_err(), "an incarnation is never silently dropped");
    }

    /// Builds payloads that start like a real message (a valid variant tag) and then claim huge lengths.
    pub(in crate::wire) fn hostile_payload() -> impl Strategy<Value = Vec<u8>> {
        (
            0u8..8,
            proptest::collection::vec(any::<u8>(), 0..64),
            any::<u64>(),
        )
            .prop_map(|(tag, tail, len)| {
                let mut p = vec![tag, 0xFD];
                p.extend_from_slice(&len.to_le_bytes());
                p.extend_from_slice(&tail);
                p
            })
    }

    /// Three played profiles (one with windows), one with a linked profile absorbed, and no profile: the
    /// shapes a read frame must encode (shared with the encoded view's tests).
    pub(in crate::wire) fn varied_profiles(
        steps: &[crate::profile::tests::Step],
        windows: &[(usize, Vec<(u64, i32)>)],
        now: u64,
        link: bool,
    ) -> [Option<Profile>; 5] {
        use crate::compact::Symbol;
        use crate::crdt::window::{Aggregation, Observation, Window, WindowSpec};
        use crate::hlc::Timestamp;
        let [mut a, b, c] = play(steps);
        for (name, events) in windows {
            let mut w = Window::new(WindowSpec {
                aggregation: Aggregation::Sum,
                bucket_ms: 10,
                span_ms: 40,
                max_exact: 0,
            });
            for (at, v) in events {
                let _ = w.add(
                    &actor(0),
                    now.saturating_sub(*at),
                    Observation::Value(f64::from(*v)),
                    Timestamp::from_millis(*at),
                );
            }
            a.windows.insert(Symbol::new(NAMES[*name]), w);
        }
        let mut linked = b.clone();
        if link {
            linked
                .identity
                .get_mut()
                .absorbed
                .insert("other".into(), c.clone());
        }
        [Some(a), Some(b), Some(c), Some(linked), None]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The read path encodes views straight from the profile (`for_each_visible`, `ReadFrame`): the
        /// bytes must be exactly those of the built view's response, whatever the kinds, collisions of
        /// one name across kinds, expiry, projection, windows and linked profiles.
        #[test]
        fn read_frames_encode_exactly_the_built_views(
            steps in proptest::collection::vec(step(), 0..40),
            windows in proptest::collection::vec((0..3usize, proptest::collection::vec((0u64..120, -3i32..9), 0..6)), 0..3),
            now in 1_000u64..1_500,
            project in any::<bool>(),
            link in any::<bool>(),
        ) {
            let profiles = varied_profiles(&steps, &windows, now, link);
            let profiles: Vec<Option<&Profile>> = profiles.iter().map(Option::as_ref).collect();
            let projection: Option<Vec<String>> = project.then(|| vec!["a".into(), "c".into()]);
            let projection = projection.as_deref();
            for &p in &profiles {
                let mut one = ReadFrame::one().expect("encodes");
                one.push(p, now, projection).expect("encodes");
                let built = Response::Profile(p.and_then(|p| p.view(now, projection)));
                prop_assert_eq!(one.finish().expect("encodes"), encode_response(&built).expect("encodes"));
            }
            let mut many = ReadFrame::many(profiles.len()).expect("encodes");
            for &p in &profiles {
                many.push(p, now, projection).expect("encodes");
            }
            let built = Response::Profiles(profiles.iter().map(|p| p.and_then(|p| p.view(now, projection))).collect());
            prop_assert_eq!(many.finish().expect("encodes"), encode_response(&built).expect("encodes"));
        }
    }

    proptest! {

        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// Garbage never makes the decoder allocate beyond the budget for its size (plus a fixed slack for
        /// the error value itself).
        #[test]
        fn decoding_garbage_allocates_within_the_budget(
            bytes in prop_oneof![proptest::collection::vec(any::<u8>(), 0..512), hostile_payload()]
        ) {
            let budget = decode_budget(bytes.len());
            let (_, peak) = alloc_probe::measure(|| decode_request(&bytes).is_ok());
            prop_assert!(peak <= 2 * budget + 4096, "peak {peak} > 2 x budget {budget}");
            let (_, peak) = alloc_probe::measure(|| decode_response(&bytes).is_ok());
            prop_assert!(peak <= 2 * budget + 4096, "peak {peak} > 2 x budget {budget}");
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_request(&bytes);
            let _ = decode_response(&bytes);
            let _ = decode_record(&bytes);
            let _ = split_frame(&bytes, 4096);
            let mut numbered = vec![NUMBERED_RECORD_VERSION];
            numbered.extend_from_slice(&bytes);
            let names = crate::compact::StoredNames::restore(
                [(0, Some(crate::compact::Symbol::new("a"))), (3, None)],
                [],
            );
            let _ = decode_stored_record(&numbered, &names.columns());
        }
    }

    #[test]
    fn a_dead_letter_survives_storage_and_garbage_is_a_typed_error() {
        let e = Capture::raw(
            ErrorCode::InvalidRequest,
            "invalid event: neither userId nor anonymousId",
            "web",
            1_700_000_000_000,
            r#"{"type":"track","event":"x"}"#,
            &crate::limits::Limits::default(),
        )
        .with_ids(None, Some("m-1".into()))
        .into_entry(3);
        let bytes = encode_dead_letter(&e).expect("encodes");
        assert_eq!(decode_dead_letter(&bytes, 3), Ok(e.clone()));
        assert!(matches!(
            decode_dead_letter(&bytes, 4),
            Err(Error::Malformed { .. })
        ));
        let mut bad_version = bytes.clone();
        bad_version[0] = 99;
        for garbage in [
            &[][..],
            &bytes[..bytes.len() / 2],
            &bad_version[..],
            &[1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff][..],
        ] {
            assert!(
                matches!(decode_dead_letter(garbage, 3), Err(Error::Malformed { .. })),
                "{garbage:?}"
            );
        }
    }
}
