//! Criterion benchmark of the secret scrubber: a 1 MiB response body carrying three injected
//! secrets in every form the scrubber knows (raw, percent/form-encoded, JSON-escaped, base64 in
//! three alignments, hex, HTML entities, UTF-16), scrubbed with the request's automaton (built
//! once per set of credential values and cached), and the automaton build itself.
//!
//! Two more bodies: 1 MiB of JSON without a secret, and the sieve's worst case (1 MiB dense with
//! pieces of the secrets' forms, so the automaton runs over all of it).
//!
//! `cargo bench -p isogate-benches --bench scrub` — the budget is ≤ 2 ms per 1 MiB body.
#![allow(unreachable_pub, missing_docs)] // a benchmark binary (criterion_group! defines undocumented items)

use base64::Engine;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use isogate_gateway::egress::{
    redact,
    scrub::{Scrubber, StreamScrub},
};
use isogate_pool::EgressResponse;
use secrecy::SecretString;

const SECRETS: [&str; 3] = [
    "ghp_0123456789abcdefghijklmnopqrstuvwxyz",
    "sk-live/AbCdEf+0987654321 zyx",
    "xoxb-1111-2222-QwErTyUiOp",
];

fn forms(s: &str) -> Vec<String> {
    let b = s.as_bytes();
    let b64 = base64::engine::general_purpose::STANDARD;
    vec![
        s.to_string(),
        url::form_urlencoded::byte_serialize(b).collect(),
        b.iter().map(|c| format!("%{c:02X}")).collect(),
        b.iter().map(|c| format!("\\u{c:04x}")).collect(),
        s.replace('/', "\\/"),
        b64.encode(format!("u:{s}")),
        b64.encode(format!("us:{s}")),
        b64.encode(format!("use:{s}")),
        hex::encode(b),
        b.iter().map(|c| format!("&#{c};")).collect(),
        b.iter().map(|c| format!("&#x{c:x};")).collect(),
        String::from_utf8_lossy(&b.iter().flat_map(|c| [*c, 0]).collect::<Vec<u8>>()).into_owned(),
    ]
}

fn body() -> Vec<u8> {
    let mut out = Vec::with_capacity(1 << 20);
    let mut i = 0u64;
    let all: Vec<String> = SECRETS.iter().flat_map(|s| forms(s)).collect();
    while out.len() < (1 << 20) {
        let line = format!(
            "{{\"id\":{i},\"title\":\"issue number {i} about the thing\",\"state\":\"open\",\"labels\":[\"bug\",\"p{}\"]}},\n",
            i % 4
        );
        out.extend_from_slice(line.as_bytes());
        if i.is_multiple_of(200) {
            out.extend_from_slice(all[(i / 200) as usize % all.len()].as_bytes());
        }
        i += 1;
    }
    out.truncate(1 << 20);
    out
}

/// The sieve's worst case: 1 MiB made of 7-byte pieces of every form of the secrets, in a
/// scrambled order, so nearly every looked-up offset holds a gram of a secret and the automaton
/// runs over the whole body (matches are rare: a piece is shorter than a window).
fn dense_body() -> Vec<u8> {
    let all: Vec<u8> = SECRETS
        .iter()
        .flat_map(|s| forms(s))
        .collect::<String>()
        .into_bytes();
    let pieces: Vec<&[u8]> = all.chunks(7).collect();
    let mut out = Vec::with_capacity(1 << 20);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    while out.len() < (1 << 20) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(pieces[(x % pieces.len() as u64) as usize]);
    }
    out.truncate(1 << 20);
    out
}

/// 1 MiB of JSON without any secret.
fn clean_body() -> Vec<u8> {
    let mut out = Vec::with_capacity(1 << 20);
    let mut i = 0u64;
    while out.len() < (1 << 20) {
        let line = format!(
            "{{\"id\":{i},\"title\":\"issue number {i} about the thing\",\"state\":\"open\",\"labels\":[\"bug\",\"p{}\"]}},\n",
            i % 4
        );
        out.extend_from_slice(line.as_bytes());
        i += 1;
    }
    out.truncate(1 << 20);
    out
}

fn bench(c: &mut Criterion) {
    let injected: Vec<(String, SecretString)> = SECRETS
        .iter()
        .enumerate()
        .map(|(i, s)| (format!("c{i}"), SecretString::from(s.to_string())))
        .collect();
    let scrubber = Scrubber::new(&injected);
    let body = body();
    let response = EgressResponse {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body,
        streamed: false,
        hops: 0,
        url: String::new(),
    };
    // Every form is found.
    let out = redact::scrub_with(response.clone(), &scrubber, |_| {});
    for s in SECRETS {
        assert!(!out.body.windows(s.len()).any(|w| w == s.as_bytes()));
    }
    c.bench_function("scrub_1mib_3_secrets_all_forms", |b| {
        b.iter(|| black_box(redact::scrub_with(response.clone(), &scrubber, |_| {})))
    });
    for (name, body) in [
        ("scrub_1mib_no_secret", clean_body()),
        ("scrub_1mib_dense_secret_grams", dense_body()),
    ] {
        let response = EgressResponse {
            body,
            ..response.clone()
        };
        c.bench_function(name, |b| {
            b.iter(|| black_box(redact::scrub_with(response.clone(), &scrubber, |_| {})))
        });
    }
    // The live path scrubs a body as it arrives, in the egress's 16 KiB reads.
    let shared = std::sync::Arc::new(Scrubber::new(&injected));
    c.bench_function("scrub_1mib_3_secrets_streamed_16k_chunks", |b| {
        b.iter(|| {
            let mut scrub = StreamScrub::new(shared.clone());
            let mut n = 0;
            for chunk in response.body.chunks(16 * 1024) {
                n += scrub.push(chunk).len();
            }
            black_box(n + scrub.finish().len())
        })
    });
    c.bench_function("scrubber_build_3_secrets", |b| {
        b.iter(|| black_box(Scrubber::new(black_box(&injected))))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
