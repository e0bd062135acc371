//! Volume: thousands of sequential `load()` calls and `get()` calls over many ids with a small
//! cache, all correct, with the process's memory bounded.

mod common;

use common::{worker, Gateway, ALPHA_KEY};
use serde_json::Value;

#[test]
fn five_thousand_sequential_loads_are_correct_and_rss_stays_bounded() {
    let g = Gateway::start(
        "threads: 2, warm_isolates: 8, max_cached_workers: 50, idle_ttl_s: 300",
        &common::tenants_yaml(),
    );
    let code = worker(
        r#"let n = 0; export default { async fetch(request) {
            n += 1;
            return Response.json({ n, q: new URL(request.url).searchParams.get("i") });
        } }"#,
    );
    let mut rss_after_warmup = 0;
    for i in 0..5000 {
        let r = g.load(
            ALPHA_KEY,
            &code,
            Some(serde_json::json!({"url": format!("/?i={i}")})),
        );
        assert_eq!(r.status(), 200);
        let v: Value = r.json().unwrap();
        assert_eq!(v["n"], 1, "load() #{i} reused an isolate");
        assert_eq!(v["q"], i.to_string());
        if i == 500 {
            rss_after_warmup = g.rss_kib();
        }
    }
    let rss_end = g.rss_kib();
    assert!(rss_after_warmup > 0);
    // 4,500 further isolates created and discarded: memory must not grow with them.
    assert!(
        rss_end < rss_after_warmup + 32 * 1024,
        "RSS grew from {rss_after_warmup} KiB to {rss_end} KiB over 4,500 loads"
    );
}

#[test]
fn two_thousand_gets_over_five_hundred_ids_with_a_small_cache() {
    let g = Gateway::start(
        "threads: 2, warm_isolates: 4, max_cached_workers: 64, idle_ttl_s: 300",
        &common::tenant_yaml("alpha", ALPHA_KEY, "max_cached_workers: 48"),
    );
    for id in 0..500 {
        let code = worker(&format!(
            "let hits = 0; export default {{ async fetch() {{ hits += 1; return Response.json({{ id: {id}, hits }}); }} }}"
        ));
        assert_eq!(
            g.put_worker(ALPHA_KEY, &format!("w{id}"), &code).status(),
            201
        );
    }
    let rss_start = g.rss_kib();
    for i in 0..2000u32 {
        // A skewed pattern: a hot set of 20 ids and a long cold tail.
        let id = if i % 2 == 0 { i % 20 } else { (i * 7919) % 500 };
        let r = g.get_worker(ALPHA_KEY, &format!("w{id}"), "");
        assert_eq!(r.status(), 200);
        let v: Value = r.json().unwrap();
        assert_eq!(v["id"], id, "request for w{id} answered by another Worker");
        assert!(v["hits"].as_u64().unwrap() >= 1);
    }
    let v = g.list(ALPHA_KEY);
    let warm = v["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["state"] == "warm")
        .count();
    assert!(
        warm > 0 && warm <= 48,
        "{warm} warm workers, tenant cap is 48"
    );
    let rss_end = g.rss_kib();
    assert!(
        rss_end < rss_start + 64 * 1024,
        "RSS grew from {rss_start} KiB to {rss_end} KiB"
    );
}
