//! Execution receipts: an ordered record of what one invocation's code did outside its isolate —
//! each `fetch()` hop and each API call, with its target (no query string), decision, rule,
//! status, bytes and duration — and how the invocation ended. Never a secret, never a body.
//!
//! The ingress opens a receipt under the request's trace id before it dispatches, the egress
//! pipeline and the API layer add entries as they audit, and the ingress closes it when the
//! invocation has answered: `execute` returns it in its body; `load()` and `get()` keep it for
//! [`KEEP`] under a random id (`isogate-receipt` header, `GET /v1/receipts/{id}`, the tenant's
//! own only). Calls made after the answer (`ctx.waitUntil`) are not in it.

use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most entries of one receipt (more are counted in `truncated`).
pub const MAX_ENTRIES: usize = 256;
/// How long a kept receipt can be fetched.
pub const KEEP: Duration = Duration::from_secs(300);
/// Most receipts kept at once (the oldest go first).
pub const MAX_KEPT: usize = 10_000;
/// Most receipts open at once (requests in flight).
const MAX_OPEN: usize = 100_000;

/// One thing the code did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Entry {
    /// One outbound HTTP hop (a `fetch()`, a redirect it followed, or an API's upstream
    /// request).
    Fetch {
        /// Method.
        method: String,
        /// `scheme://host:port/path`, without the query string.
        target: String,
        /// `allow`, `deny`, `report_deny` or `rate_limited`.
        decision: &'static str,
        /// The egress rule that decided, if one did.
        #[serde(skip_serializing_if = "Option::is_none")]
        rule: Option<String>,
        /// Why it failed, if it did (the egress failure label).
        #[serde(skip_serializing_if = "str::is_empty")]
        reason: &'static str,
        /// The upstream's status (0: none).
        status: u16,
        /// Response body bytes.
        bytes: usize,
        /// Milliseconds.
        duration_ms: f64,
    },
    /// One call of a tenant API.
    Api {
        /// `env.<api>`.
        api: String,
        /// The tool as the code named it.
        tool: String,
        /// `ok`, or the error code (`invalid_arguments`, `egress_denied`, …).
        outcome: &'static str,
        /// Milliseconds.
        duration_ms: f64,
    },
    /// One call of a client-side tool (answered by the client that sent the code).
    Tool {
        /// `<namespace>.<tool>`.
        tool: String,
        /// `ok`, or the error code (`tool_error`, …).
        outcome: &'static str,
        /// Milliseconds.
        duration_ms: f64,
    },
}

/// A closed receipt. As JSON it is one ordered list: the entries, then how the invocation
/// ended, `{"type": "outcome", "outcome": "completed", "truncated": n}` (`truncated` only when
/// entries were left out).
#[derive(Debug, Clone, PartialEq)]
pub struct Receipt {
    /// What the code did, in order.
    pub entries: Vec<Entry>,
    /// Entries left out past [`MAX_ENTRIES`].
    pub truncated: usize,
    /// `completed`, `threw`, or the limit or failure that ended it (`cpu_limit`, …).
    pub outcome: String,
}

impl Serialize for Receipt {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        struct Outcome<'a>(&'a str, usize);
        impl Serialize for Outcome<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut map = s.serialize_map(None)?;
                map.serialize_entry("type", "outcome")?;
                map.serialize_entry("outcome", self.0)?;
                if self.1 > 0 {
                    map.serialize_entry("truncated", &self.1)?;
                }
                map.end()
            }
        }
        let mut seq = s.serialize_seq(Some(self.entries.len() + 1))?;
        for entry in &self.entries {
            seq.serialize_element(entry)?;
        }
        seq.serialize_element(&Outcome(&self.outcome, self.truncated))?;
        seq.end()
    }
}

/// The open and kept receipts of the gateway.
#[derive(Default)]
pub struct Receipts {
    open: Mutex<HashMap<u64, (Vec<Entry>, usize)>>,
    kept: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    by_id: HashMap<String, (String, Instant, Receipt)>,
    order: std::collections::VecDeque<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An open receipt: entries recorded under [`Trace::id`] go into it until it is closed, or
/// dropped (a request refused before or while it ran: nothing is kept).
pub struct Trace {
    receipts: Arc<Receipts>,
    /// The trace id (`Invoker::trace`).
    pub id: u64,
}

impl Trace {
    /// Ends the receipt with the invocation's `outcome`.
    pub fn close(self, outcome: &str) -> Receipt {
        let (entries, truncated) = lock(&self.receipts.open)
            .remove(&self.id)
            .unwrap_or_default();
        Receipt {
            entries,
            truncated,
            outcome: outcome.to_string(),
        }
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        lock(&self.receipts.open).remove(&self.id);
    }
}

impl Receipts {
    /// Starts collecting under a new trace id.
    pub fn open(self: &Arc<Self>) -> Trace {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut open = lock(&self.open);
        if open.len() < MAX_OPEN {
            open.insert(id, (Vec::new(), 0));
        }
        Trace {
            receipts: self.clone(),
            id,
        }
    }

    /// Adds an entry to the receipt of `trace`, if it is open.
    pub fn record(&self, trace: u64, entry: Entry) {
        if trace == 0 {
            return;
        }
        if let Some((entries, truncated)) = lock(&self.open).get_mut(&trace) {
            if entries.len() < MAX_ENTRIES {
                entries.push(entry);
            } else {
                *truncated += 1;
            }
        }
    }

    /// Keeps `receipt` of `tenant` for [`KEEP`]; its id.
    pub fn keep(&self, tenant: &str, receipt: Receipt) -> String {
        // A CSPRNG in user space (seeded from the OS): no system call per request.
        let id = hex::encode(rand::random::<[u8; 16]>());
        let mut kept = lock(&self.kept);
        let now = Instant::now();
        while kept.order.len() >= MAX_KEPT
            || kept
                .order
                .front()
                .and_then(|oldest| kept.by_id.get(oldest))
                .is_some_and(|(_, at, _)| now.duration_since(*at) > KEEP)
        {
            let Some(oldest) = kept.order.pop_front() else {
                break;
            };
            kept.by_id.remove(&oldest);
        }
        kept.by_id
            .insert(id.clone(), (tenant.to_string(), now, receipt));
        kept.order.push_back(id.clone());
        id
    }

    /// The kept receipt `id`, if it is `tenant`'s and not older than [`KEEP`].
    pub fn get(&self, tenant: &str, id: &str) -> Option<Receipt> {
        let kept = lock(&self.kept);
        let (owner, at, receipt) = kept.by_id.get(id)?;
        (owner == tenant && at.elapsed() <= KEEP).then(|| receipt.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(n: usize) -> Entry {
        Entry::Api {
            api: "a".into(),
            tool: format!("t{n}"),
            outcome: "ok",
            duration_ms: 1.0,
        }
    }

    #[test]
    fn receipts_collect_in_order_bounded_and_by_owner() {
        let r = Arc::new(Receipts::default());
        let trace = r.open();
        let id = trace.id;
        for n in 0..MAX_ENTRIES + 3 {
            r.record(id, api(n));
        }
        r.record(id + 1000, api(0)); // not open: dropped
        let receipt = trace.close("completed");
        assert_eq!(receipt.entries.len(), MAX_ENTRIES);
        assert_eq!(receipt.entries[1], api(1));
        assert_eq!(receipt.truncated, 3);
        // One list: the entries in order, then the outcome.
        let json = serde_json::to_value(&receipt).unwrap();
        let list = json.as_array().unwrap();
        assert_eq!(list.len(), MAX_ENTRIES + 1);
        assert_eq!(list[1]["type"], "api");
        assert_eq!(list[1]["tool"], "t1");
        assert_eq!(
            list[MAX_ENTRIES],
            serde_json::json!({"type": "outcome", "outcome": "completed", "truncated": 3})
        );
        let kept = r.keep("alpha", receipt.clone());
        assert_eq!(r.get("alpha", &kept), Some(receipt));
        assert_eq!(r.get("beta", &kept), None);
        assert_eq!(r.get("alpha", "nope"), None);
        // Closed: later entries are dropped; a dropped trace leaves nothing open.
        r.record(id, api(0));
        assert!(lock(&r.open).is_empty());
        let abandoned = r.open();
        r.record(abandoned.id, api(0));
        drop(abandoned);
        assert!(lock(&r.open).is_empty());
    }
}
