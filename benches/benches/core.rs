//! Criterion micro-benchmarks of the featurestore core (`cargo bench -p benches`).
//!
//! What is measured, on the same 20-feature profiles the load generator uses
//! ([`benches::keyspace::Keyspace`]):
//! - `hlc`: a local tick and the observation of a remote timestamp;
//! - `merge`: each feature lattice (gauge, counter, flag with concurrent siblings) and whole profiles
//!   (20 gauges; 14 gauges + 3 counters + 3 flags);
//! - `write`: one client write decided and applied ([`featurestore::profile::apply`]) to a 20-feature
//!   profile, and what the node's write-ahead log encodes for it (the whole record before, the delta
//!   now);
//! - `read_path`: building the client view of a 20-feature profile (what every `Get` does);
//! - `codec`: a stored record and a `Response::Profile` frame, encoded and decoded; request frames decoded;
//! - `ring`: the owner and the 3-node preference list of a key.
//!
//! Merges are measured on a fresh copy of the receiving state each iteration (`iter_batched_ref`), so the
//! copy is not part of the figure.

#![allow(missing_docs)]

use std::hint::black_box;

use benches::keyspace::Keyspace;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use featurestore::cluster::ring::Ring;
use featurestore::crdt::counter::Counter;
use featurestore::crdt::gauge::GaugeRegister;
use featurestore::crdt::Lattice;
use featurestore::profile::{apply, apply_in_place, CounterDelta, Write};
use featurestore::wire::client::GaugeWrite;
use featurestore::wire::codec::{
    decode_record, decode_request, decode_response, decode_stored_record,
    encode_numbered_record_into, encode_record, encode_record_into, encode_request,
    encode_response, record_hash, ReadFrame, FRAME_HEADER_BYTES,
};
use featurestore::wire::encoded_view::{decode_get_answer, GetAnswer};
use featurestore::{Clock, Limits, NodeId, Request, Response, Timestamp, Value};

mod fixtures;

use fixtures::{actor, gauge_profile, marker, mixed_profile, node, NOW};

fn hlc(c: &mut Criterion) {
    let mut g = c.benchmark_group("hlc");
    let mut clock = Clock::new(node("n1"), 1_000);
    let mut now = NOW;
    g.bench_function("tick", |b| {
        b.iter(|| {
            now += 1;
            black_box(clock.tick(black_box(now / 1_000)))
        })
    });
    let mut clock = Clock::new(node("n1"), 1_000);
    let remote = Timestamp {
        wall_ms: NOW,
        logical: 7,
    };
    g.bench_function("observe", |b| {
        b.iter(|| black_box(clock.observe(black_box(remote), NOW)))
    });
    g.finish();
}

fn merges(c: &mut Criterion) {
    let mut g = c.benchmark_group("merge");
    let older = GaugeRegister::new(marker("n1", NOW, 0), Value::F64(1.5), None);
    let newer = GaugeRegister::new(marker("n2", NOW, 1), Value::F64(2.5), None);
    g.bench_function("gauge_newer_wins", |b| {
        b.iter_batched_ref(
            || older.clone(),
            |r| black_box(r.merge(black_box(&newer))),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("gauge_older_ignored", |b| {
        b.iter_batched_ref(
            || newer.clone(),
            |r| black_box(r.merge(black_box(&older))),
            BatchSize::SmallInput,
        )
    });

    let mut ca = Counter::default();
    let mut cb = Counter::default();
    for (i, n) in ["n1", "n2", "n3"].iter().enumerate() {
        ca.apply(&actor(n), 5, Timestamp::from_millis(NOW));
        cb.apply(&actor(n), 5 + i as i64, Timestamp::from_millis(NOW + 1));
    }
    g.bench_function("counter_3_slots", |b| {
        b.iter_batched_ref(
            || ca.clone(),
            |c| black_box(c.merge(black_box(&cb))),
            BatchSize::SmallInput,
        )
    });

    // Two replicas that each took concurrent flag writes: merging keeps every sibling.
    let pa = mixed_profile("n1", "n2", NOW);
    let pb = mixed_profile("n3", "n4", NOW + 5);
    let fa = pa.flags.get("vip").cloned().unwrap_or_default();
    let fb = pb.flags.get("vip").cloned().unwrap_or_default();
    g.bench_function("flag_with_siblings", |b| {
        b.iter_batched_ref(
            || fa.clone(),
            |f| black_box(f.merge(black_box(&fb))),
            BatchSize::SmallInput,
        )
    });

    let old20 = gauge_profile(7, "n1", NOW);
    let new20 = gauge_profile(8, "n2", NOW + 1);
    g.bench_function("profile_20_gauges_all_newer", |b| {
        b.iter_batched_ref(
            || old20.clone(),
            |p| black_box(p.merge(black_box(&new20))),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("profile_20_gauges_identical", |b| {
        b.iter_batched_ref(
            || old20.clone(),
            |p| black_box(p.merge(black_box(&old20))),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("profile_mixed_20_with_siblings", |b| {
        b.iter_batched_ref(
            || pa.clone(),
            |p| black_box(p.merge(black_box(&pb))),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("clone_profile_20_gauges", |b| {
        b.iter(|| black_box(old20.clone()))
    });
    g.finish();
}

/// The coordinator's whole decision of one client write ([`featurestore::profile::apply`]): stamp, check,
/// apply. Measured on a fresh copy of the profile each iteration, like the merges.
fn writes(c: &mut Criterion) {
    let mut g = c.benchmark_group("write");
    let limits = Limits::default();
    let mut clock = Clock::new(node("n1"), 1_000);
    let p20 = gauge_profile(3, "n1", NOW);
    let one = [GaugeWrite {
        name: "cart_value".into(),
        value: Value::F64(42.5),
        ttl_ms: None,
    }];
    g.bench_function("apply_put_1_gauge_into_20", |b| {
        b.iter_batched_ref(
            || p20.clone(),
            |p| {
                black_box(apply(
                    p,
                    Write::Put {
                        gauges: black_box(&one),
                        timestamp_ms: None,
                    },
                    &mut clock,
                    NOW,
                    &limits,
                ))
            },
            BatchSize::SmallInput,
        )
    });
    // What a node logs for that write: before the delta write-ahead log, the whole record (658 bytes);
    // since, the write's delta (46 bytes), which it computes anyway for replication. The node also
    // hashes the whole record (`codec/hash_record_20_reused_buffer`).
    let mut written = p20.clone();
    let applied = apply(
        &mut written,
        Write::Put {
            gauges: &one,
            timestamp_ms: None,
        },
        &mut clock,
        NOW,
        &limits,
    )
    .expect("applies");
    g.bench_function("log_whole_record_put_1_gauge_into_20", |b| {
        b.iter(|| black_box(encode_record(black_box(&written))))
    });
    g.bench_function("log_delta_put_1_gauge_into_20", |b| {
        b.iter(|| {
            let delta = black_box(&written).delta_of_write(black_box(&p20), &applied);
            black_box(encode_record(&delta))
        })
    });
    // The node's whole in-memory work for that write, storage aside. By copy (until 2026-12-07): the
    // profile cloned, the write applied to the clone, the delta found by walking both states. In place
    // (since): the named entries cloned for the undo, the write applied to the profile itself, the
    // delta copied from the named entries.
    g.bench_function("node_write_by_copy_put_1_gauge_into_20", |b| {
        b.iter(|| {
            let old = black_box(&p20);
            let mut new = old.clone();
            let applied = apply(
                &mut new,
                Write::Put {
                    gauges: black_box(&one),
                    timestamp_ms: None,
                },
                &mut clock,
                NOW,
                &limits,
            )
            .expect("applies");
            let delta = new.delta_of_write(old, &applied);
            black_box((new, delta))
        })
    });
    let mut live = p20.clone();
    g.bench_function("node_write_in_place_put_1_gauge_into_20", |b| {
        b.iter(|| {
            let done = apply_in_place(
                black_box(&mut live),
                Write::Put {
                    gauges: black_box(&one),
                    timestamp_ms: None,
                },
                &mut clock,
                NOW,
                &limits,
            )
            .expect("applies");
            black_box((done.applied, done.delta))
        })
    });
    let mixed = mixed_profile("n1", "n2", NOW);
    let deltas = [CounterDelta {
        name: "orders".into(),
        delta: 1,
    }];
    g.bench_function("apply_increment_1_counter_mixed_20", |b| {
        b.iter_batched_ref(
            || mixed.clone(),
            |p| {
                black_box(apply(
                    p,
                    Write::Increment {
                        deltas: black_box(&deltas),
                    },
                    &mut clock,
                    NOW,
                    &limits,
                ))
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn read_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("read_path");
    let p = gauge_profile(3, "n1", NOW);
    g.bench_function("view_20_gauges", |b| {
        b.iter(|| black_box(p.view(black_box(NOW), None)))
    });
    let mixed = mixed_profile("n1", "n2", NOW);
    g.bench_function("view_mixed_20", |b| {
        b.iter(|| black_box(mixed.view(black_box(NOW), None)))
    });
    // What a `Get` costs the node since views are encoded straight from the profile; compare with
    // `view_20_gauges` + `codec/encode_response_profile_20`, the build-then-encode path it replaced.
    for (name, profile) in [
        ("view_frame_20_gauges", &p),
        ("view_frame_mixed_20", &mixed),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut frame = ReadFrame::one().expect("encodes");
                frame
                    .push(Some(black_box(profile)), black_box(NOW), None)
                    .expect("encodes");
                black_box(frame.finish())
            })
        });
    }
    g.finish();
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    let p = gauge_profile(3, "n1", NOW);
    let record = encode_record(&p).expect("encodes");
    g.bench_function("encode_record_20", |b| {
        b.iter(|| black_box(encode_record(black_box(&p))))
    });
    g.bench_function("decode_record_20", |b| {
        b.iter(|| black_box(decode_record(black_box(&record))))
    });
    // The same profile as the sled store keeps it: names numbered (`StoredNames`), what a restart reads.
    let mut names = featurestore::compact::StoredNames::new();
    let (mut scratch, mut numbered) = (Vec::new(), Vec::new());
    encode_numbered_record_into(&p, &mut names, &mut scratch, &mut numbered).expect("encodes");
    g.bench_function("encode_numbered_record_20", |b| {
        b.iter(|| {
            encode_numbered_record_into(black_box(&p), &mut names, &mut scratch, &mut numbered)
                .expect("encodes");
            black_box(numbered.len())
        })
    });
    let columns = names.columns();
    g.bench_function("decode_numbered_record_20", |b| {
        b.iter(|| black_box(decode_stored_record(black_box(&numbered), &columns)))
    });
    // The record hash a node computes on every write (the record itself is no longer built per write).
    let mut buf = Vec::new();
    g.bench_function("hash_record_20_reused_buffer", |b| {
        b.iter(|| {
            encode_record_into(black_box(&p), &mut buf).expect("encodes");
            black_box(record_hash(&buf))
        })
    });
    let response = Response::Profile(p.view(NOW, None));
    let frame = encode_response(&response).expect("encodes");
    g.bench_function("encode_response_profile_20", |b| {
        b.iter(|| black_box(encode_response(black_box(&response))))
    });
    g.bench_function("decode_response_profile_20", |b| {
        b.iter(|| black_box(decode_response(black_box(&frame[FRAME_HEADER_BYTES..]))))
    });
    // What `Client::get_encoded` does with the same answer: check it, keep it, read every feature.
    let payload = frame[FRAME_HEADER_BYTES..].to_vec();
    g.bench_function("decode_get_answer_encoded_20", |b| {
        b.iter(|| {
            let answer = decode_get_answer(black_box(payload.clone())).expect("decodes");
            let GetAnswer::View(Some(view)) = answer else {
                panic!("a view");
            };
            black_box(view.features().count())
        })
    });
    g.bench_function("decode_get_answer_checked_only_20", |b| {
        b.iter(|| black_box(decode_get_answer(black_box(payload.clone())).expect("decodes")))
    });
    let get = encode_request(&Request::Get {
        key: Keyspace::new(10).key(3),
        features: None,
        quorum: 1,
    })
    .expect("encodes");
    g.bench_function("decode_request_get", |b| {
        b.iter(|| black_box(decode_request(black_box(&get[FRAME_HEADER_BYTES..]))))
    });
    let put = encode_request(&Request::Put {
        key: Keyspace::new(10).key(3),
        gauges: vec![GaugeWrite {
            name: "cart_value".into(),
            value: Value::F64(42.5),
            ttl_ms: None,
        }],
        timestamp_ms: None,
        quorum: 1,
    })
    .expect("encodes");
    g.bench_function("decode_request_put_1", |b| {
        b.iter(|| black_box(decode_request(black_box(&put[FRAME_HEADER_BYTES..]))))
    });
    let ks = Keyspace::new(1_000);
    let many = encode_request(&Request::GetMany {
        keys: (0..100).map(|i| ks.key(i)).collect(),
        features: None,
        quorum: 1,
    })
    .expect("encodes");
    g.bench_function("decode_request_get_many_100", |b| {
        b.iter(|| black_box(decode_request(black_box(&many[FRAME_HEADER_BYTES..]))))
    });
    g.finish();
}

fn ring(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring");
    let ks = Keyspace::new(100_000);
    let keys: Vec<String> = (0..1024).map(|i| ks.key(i * 97)).collect();
    for nodes in [3usize, 9] {
        let members: Vec<NodeId> = (1..=nodes).map(|i| node(&format!("n{i}"))).collect();
        let r = Ring::new(1, members, featurestore::cluster::ring::DEFAULT_VNODES);
        let mut i = 0usize;
        g.bench_function(format!("preference_list_3_of_{nodes}"), |b| {
            b.iter(|| {
                i = (i + 1) % keys.len();
                black_box(r.preference_list(black_box(keys[i].as_bytes()), 3))
            })
        });
        g.bench_function(format!("owner_of_{nodes}"), |b| {
            b.iter(|| {
                i = (i + 1) % keys.len();
                black_box(r.owner(black_box(keys[i].as_bytes())).cloned())
            })
        });
    }
    g.finish();
}

criterion_group!(core, hlc, merges, writes, read_path, codec, ring);
criterion_main!(core);
