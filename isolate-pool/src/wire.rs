//! The wire between the gateway and a worker process: one enum of messages per direction, one
//! framing, one serialisation, size limits — in this module only.
//!
//! Framing is tokio-util's length-delimited codec (4-byte big-endian length, at most
//! [`MAX_FRAME_BYTES`]); each frame is one message in MessagePack (`rmp-serde`, self-describing,
//! so the pool's serde types — untagged module sources, JSON `env` values — cross unchanged;
//! bodies are MessagePack binaries via `serde_bytes`). The channel is a Unix socket pair that the
//! gateway creates and the worker inherits as a file descriptor: the worker opens nothing.
//!
//! The gateway trusts nothing a worker sends: a frame over the limit or a message that does not
//! decode kills that worker (the supervisor's rule), and identities are never taken from the
//! worker — an egress call names an invocation id, and the gateway looks up which tenant it
//! dispatched that id for.

use crate::api::{
    BodyPart, CodeDigest, HttpRequest, HttpResponse, Invocation, Invoker, Limits, WorkerCode,
};
use crate::egress::{ApiAnswer, ApiCall, EgressRequest, Fetched};
use crate::observe::{CacheEvent, StartKind};
use crate::pool::PoolError;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::codec::LengthDelimitedCodec;

/// Version of this protocol; a worker answers a different one with an error and exits.
pub const PROTOCOL: u32 = 9;

/// Largest body (request, response, egress) that may cross the wire.
pub const MAX_BODY_BYTES: usize = 32 << 20;

/// Largest frame: a body at [`MAX_BODY_BYTES`] plus headers, code and framing.
pub const MAX_FRAME_BYTES: usize = 48 << 20;

/// The file descriptor number the worker finds its end of the control channel at.
pub use crate::confine::CHANNEL_FD;

/// The channels a worker with `lanes` isolate threads is given: the control channel, then two
/// per isolate thread ([`lane_fds`]).
pub fn channels(lanes: usize) -> usize {
    1 + 2 * lanes
}

/// The fds of isolate thread `lane`'s channel lane in the worker: (frames from the gateway,
/// frames to the gateway). A lane is two socket pairs so that the worker's thread reads its
/// end without blocking (tokio) and writes its own end blocking (it cannot await inside an
/// answer), and neither mode is shared with the other (`O_NONBLOCK` belongs to the open file).
///
/// What travels where: the gateway sends `Load`/`Execute` down the lane it picks round-robin,
/// a `get()` down the lane of the Worker's home thread ([`crate::pool::home_thread`]), and
/// everything about an invocation or an egress call (bodies, credits, answers) down the lane
/// the invocation or call came on; the isolate thread reads its lane itself and queues the job
/// on itself, so a request wakes no other thread of the worker. An isolate thread writes its
/// frames (`Started`, `Done`, `Egress`, bodies…) on its lane; anything else (`Hello`, queries,
/// heartbeats, probes) uses the control channel. The gateway reads each lane on the runtime of
/// the task that first used it (pingora's), so an answer wakes the waiting task directly.
pub fn lane_fds(lane: usize) -> (i32, i32) {
    let first = CHANNEL_FD + 1 + 2 * i32::try_from(lane).unwrap_or(i32::MAX / 4);
    (first, first + 1)
}

/// What a worker process is told before it starts (the first frame).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerSettings {
    /// Must equal [`PROTOCOL`].
    pub protocol: u32,
    /// Index of this worker (for names in logs).
    pub index: usize,
    /// Isolate threads in this process.
    pub threads: usize,
    /// Warm isolates kept in this process.
    pub warm_isolates: usize,
    /// Cached Workers in this process.
    pub max_cached_workers: usize,
    /// Idle TTL of a cached Worker.
    pub idle_ttl: Duration,
    /// Jobs that may wait per isolate thread.
    pub queue_capacity: usize,
    /// How often the worker reports what it runs while an invocation runs (at idle: on a
    /// change, else once a second).
    pub heartbeat: Duration,
    /// RLIMIT_DATA of the process, bytes.
    pub data_limit_bytes: Option<u64>,
    /// Whether test-only probes ([`ToWorker::Probe`]) are obeyed.
    pub test_probes: bool,
}

/// Gateway → worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToWorker {
    /// The first frame.
    Hello(WorkerSettings),
    /// `load()`: run `code` once.
    Load {
        /// Invocation id (also in `invoker`).
        id: u64,
        /// Who runs it.
        invoker: Invoker,
        /// The code.
        code: Arc<WorkerCode>,
        /// The request.
        request: HttpRequest,
        /// Limits.
        limits: Limits,
    },
    /// `get()`: run the cached Worker `invoker.worker_id`; `code` is sent when the gateway
    /// does not know the worker to hold that digest (the worker answers
    /// [`FromWorker::NeedCode`] when it lacks it).
    Get {
        /// Invocation id.
        id: u64,
        /// Who runs it (tenant and Worker id).
        invoker: Invoker,
        /// Digest of the code the gateway holds for that id.
        digest: CodeDigest,
        /// The code, if sent.
        code: Option<Arc<WorkerCode>>,
        /// The request.
        request: HttpRequest,
        /// Limits.
        limits: Limits,
        /// The tenant's bound on cached Workers.
        tenant_cap: usize,
    },
    /// Code Mode.
    Execute {
        /// Invocation id.
        id: u64,
        /// Who runs it.
        invoker: Invoker,
        /// The snippet.
        source: String,
        /// Its `env`.
        env: serde_json::Value,
        /// Limits.
        limits: Limits,
    },
    /// A question about the worker's cache, answered by [`FromWorker::Answered`].
    Query {
        /// Echoed in the answer.
        call: u64,
        /// The question.
        query: Query,
    },
    /// The answer to [`FromWorker::Egress`].
    Fetched {
        /// The call it answers.
        call: u64,
        /// What came of it.
        fetched: Fetched,
    },
    /// The answer to [`FromWorker::Api`].
    ApiAnswered {
        /// The call it answers.
        call: u64,
        /// What came of it.
        answer: ApiAnswer,
    },
    /// A part of a streamed `fetch()` response body (after its `Fetched` with `streamed` set;
    /// the last one is an `End`). The gateway sends at most [`crate::BODY_WINDOW`] bytes ahead
    /// of the worker's [`FromWorker::FetchCredit`]s.
    FetchedBody {
        /// The call it belongs to.
        call: u64,
        /// The part.
        part: BodyPart,
    },
    /// The gateway passed `bytes` (window shares) of invocation `id`'s streamed response body
    /// on to the client: the worker may send that much more.
    BodyCredit {
        /// Invocation id.
        id: u64,
        /// Window shares given back.
        bytes: u32,
    },
    /// The client of invocation `id`'s streamed response went away: cancel the Worker's
    /// stream.
    BodyCancel {
        /// Invocation id.
        id: u64,
    },
    /// Test-only: make the worker attempt something its confinement must stop. Ignored unless
    /// [`WorkerSettings::test_probes`].
    Probe(Probe),
}

/// A question about (or an order to) a worker's cache of Workers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Query {
    /// Ids of `tenant`'s Workers held warm.
    CachedIds {
        /// The tenant.
        tenant: String,
    },
    /// Drop a cached Worker (`worker_id`) or all of a tenant's; answers how many were dropped.
    Evict {
        /// Tenant.
        tenant: String,
        /// One Worker, or all of the tenant's.
        worker_id: Option<String>,
    },
}

/// The answer to a [`Query`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueryAnswer {
    /// For `CachedIds`.
    Ids(Vec<String>),
    /// For `Evict`.
    Evicted(usize),
}

/// Test-only probes of the confinement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Probe {
    /// `socket(AF_INET, SOCK_STREAM)` in native code, as an engine bug could.
    Socket,
    /// `open("/etc/hostname")` in native code.
    Open,
    /// Allocate without bound through the Rust allocator until the process limit stops it.
    Exhaust,
    /// Write a frame that is not a message of this protocol to the channel.
    Garbage,
    /// Write a frame header announcing more than [`MAX_FRAME_BYTES`].
    Oversized,
}

/// What an invocation answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Answer {
    /// `load()`/`get()`.
    Http(Invocation<HttpResponse>),
    /// Code Mode.
    Json(Invocation<serde_json::Value>),
}

/// Worker → gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FromWorker {
    /// The pool is started and confined; what the confinement achieved.
    Ready {
        /// `confine`'s report, rendered for the log.
        confinement: String,
        /// Whether every layer of the confinement is fully in force (else the gateway warns).
        complete: bool,
    },
    /// An invocation's answer (its `ctx.waitUntil` work may continue: see `Released`).
    Done {
        /// Invocation id.
        id: u64,
        /// The answer, or why the worker's pool did not take the job.
        answer: Result<Answer, PoolError>,
        /// All of the invocation's work had already ended (it stands for a `Released` too,
        /// saving a frame for the common invocation without `ctx.waitUntil` work).
        released: bool,
    },
    /// An isolate thread took the invocation off its queue: from now on it is not retried
    /// elsewhere if this worker dies.
    Started {
        /// Invocation id.
        id: u64,
    },
    /// A part of a streamed response body (after the invocation's `Done`, before `Released`).
    Body {
        /// Invocation id.
        id: u64,
        /// The part.
        part: BodyPart,
    },
    /// All of an invocation's work has ended; its tenant slot may be freed.
    Released {
        /// Invocation id.
        id: u64,
    },
    /// A `get()` whose code the worker does not hold: send it again with the code.
    NeedCode {
        /// Invocation id.
        id: u64,
    },
    /// An outbound request of a running invocation.
    Egress {
        /// Call id, echoed by [`ToWorker::Fetched`].
        call: u64,
        /// The invocation making it (the gateway decides whose it is).
        invocation: u64,
        /// The request.
        request: EgressRequest,
        /// Subrequests left including this one.
        left: u32,
    },
    /// A tenant API call of a running invocation (`env.<api>.<tool>(args)`); its call id shares
    /// the egress calls' numbering, so [`FromWorker::CancelEgress`] withdraws it too.
    Api {
        /// Call id, echoed by [`ToWorker::ApiAnswered`].
        call: u64,
        /// The invocation making it (the gateway decides whose it is).
        invocation: u64,
        /// The call.
        api: ApiCall,
        /// Subrequests left including this one.
        left: u32,
    },
    /// The egress or API call `call` is no longer wanted (the Worker aborted its `fetch()`, or the
    /// invocation ended): the gateway drops the upstream request.
    CancelEgress {
        /// The call's id.
        call: u64,
    },
    /// The Worker took `bytes` (window shares) of a streamed `fetch()` body: the gateway may
    /// send that much more.
    FetchCredit {
        /// The call.
        call: u64,
        /// Window shares given back.
        bytes: u32,
    },
    /// The answer to a [`ToWorker::Query`].
    Answered {
        /// The query's `call`.
        call: u64,
        /// The answer.
        answer: QueryAnswer,
    },
    /// A pool event (metrics).
    Event(Event),
    /// Sent every [`WorkerSettings::heartbeat`] while an invocation runs; at idle when the
    /// warm count or readiness changed, after the last invocation ended, and once a second.
    Heartbeat {
        /// Invocations being polled now, with their CPU so far.
        running: Vec<(u64, Duration)>,
        /// Warm isolates ready.
        warm: usize,
        /// Whether the pool reached its warm target once.
        ready: bool,
    },
}

/// A [`crate::PoolObserver`] call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// `isolate_started`.
    IsolateStarted(StartKind, Duration),
    /// `isolate_taken`.
    IsolateTaken(StartKind),
    /// `cache_event`, `n` times (the worker sums them between two frames it sends anyway).
    Cache(String, CacheEvent, u64),
    /// `cached_workers`.
    CachedWorkers(String, usize),
}

/// Why a frame could not be used.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Serialisation failed (a bug, or a value MessagePack cannot carry).
    #[error("cannot encode a wire message: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    /// The peer sent something that is not a message of this protocol.
    #[error("malformed wire message: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    /// The encoded message exceeds [`MAX_FRAME_BYTES`].
    #[error("wire message of {0} bytes exceeds the limit of {MAX_FRAME_BYTES}")]
    TooLarge(usize),
}

/// The framing codec, with the frame limit.
pub fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME_BYTES)
        .new_codec()
}

/// Appends one message to `out` as a whole frame (length prefix included, as [`codec`] reads
/// it), so that several frames go out in one `write`. On error `out` is left as it was.
pub fn frame_into<T: Serialize>(out: &mut Vec<u8>, message: &T) -> Result<(), WireError> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    if let Err(e) = rmp_serde::encode::write_named(out, message) {
        out.truncate(start);
        return Err(e.into());
    }
    let len = out.len() - start - 4;
    if len > MAX_FRAME_BYTES {
        out.truncate(start);
        return Err(WireError::TooLarge(len));
    }
    out[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// Decodes one message.
pub fn decode<T: DeserializeOwned>(frame: &[u8]) -> Result<T, WireError> {
    Ok(rmp_serde::from_slice(frame)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ErrorKind, InvocationStats, ModuleSource, WorkerError};
    use crate::egress::EgressResponse;

    fn encode<T: Serialize>(m: &T) -> Result<Vec<u8>, WireError> {
        let mut out = Vec::new();
        frame_into(&mut out, m)?;
        Ok(out)
    }

    /// Through [`frame_into`] and the codec, as the two processes do.
    fn roundtrip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(m: T) {
        use tokio_util::codec::Decoder;
        let mut buf = bytes::BytesMut::from(&encode(&m).unwrap()[..]);
        let frame = codec().decode(&mut buf).unwrap().unwrap();
        assert!(buf.is_empty());
        let back: T = decode(&frame).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn frames_appended_to_one_buffer_come_out_in_order() {
        use tokio_util::codec::Decoder;
        let mut out = Vec::new();
        frame_into(&mut out, &FromWorker::Started { id: 1 }).unwrap();
        frame_into(&mut out, &FromWorker::Released { id: 2 }).unwrap();
        let before = out.len();
        let big = HttpRequest {
            method: "GET".into(),
            url: "u".into(),
            headers: vec![],
            body: vec![0; MAX_FRAME_BYTES + 1],
        };
        assert!(matches!(
            frame_into(&mut out, &big),
            Err(WireError::TooLarge(_))
        ));
        assert_eq!(out.len(), before, "a refused message leaves nothing behind");
        let mut buf = bytes::BytesMut::from(&out[..]);
        let mut codec = codec();
        let first = codec.decode(&mut buf).unwrap().unwrap();
        let second = codec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(
            decode::<FromWorker>(&first).unwrap(),
            FromWorker::Started { id: 1 }
        );
        assert_eq!(
            decode::<FromWorker>(&second).unwrap(),
            FromWorker::Released { id: 2 }
        );
        assert!(codec.decode(&mut buf).unwrap().is_none());
    }

    #[test]
    fn every_message_shape_survives_the_wire() {
        let code: WorkerCode = serde_json::from_str(
            r#"{"mainModule":"w.js","modules":{"w.js":"export default {}","d.json":{"json":{"a":[1,null]}},"t":{"text":"x"}},"env":{"K":"v"},"globalOutbound":null}"#,
        )
        .unwrap();
        assert!(matches!(code.modules["d.json"], ModuleSource::Json { .. }));
        let invoker = Invoker {
            tenant: "t".into(),
            worker_id: Some("w".into()),
            invocation: 9,
            apis: Vec::new(),
            trace: 0,
            tools: Vec::new(),
        };
        let request = HttpRequest {
            method: "POST".into(),
            url: "http://w/x".into(),
            headers: vec![("a".into(), "b".into())],
            body: (0..=255u8).collect(),
        };
        let limits = Limits {
            cpu_ms: 1,
            memory_mb: 2,
            wall_ms: 3,
            subrequests: 4,
            worker_concurrency: 32,
        };
        roundtrip(ToWorker::Get {
            id: 9,
            invoker: invoker.clone(),
            digest: code.digest(),
            code: Some(Arc::new(code.clone())),
            request: request.clone(),
            limits,
            tenant_cap: 5,
        });
        roundtrip(ToWorker::Execute {
            id: 1,
            invoker,
            source: "async () => 1".into(),
            env: serde_json::json!({"x": [1, 2.5, "s", {"y": null}]}),
            limits,
        });
        roundtrip(ToWorker::Fetched {
            call: 3,
            fetched: Fetched::Sent(EgressResponse {
                status: 200,
                headers: vec![],
                body: vec![0; 10],
                streamed: true,
                hops: 1,
                url: String::new(),
            }),
        });
        roundtrip(ToWorker::FetchedBody {
            call: 3,
            part: BodyPart::Chunk(vec![1, 2, 3]),
        });
        roundtrip(ToWorker::FetchedBody {
            call: 3,
            part: BodyPart::End(Err("broke".into())),
        });
        roundtrip(FromWorker::FetchCredit { call: 3, bytes: 7 });
        roundtrip(ToWorker::BodyCredit { id: 4, bytes: 9 });
        roundtrip(ToWorker::BodyCancel { id: 4 });
        roundtrip(FromWorker::Done {
            id: 2,
            answer: Ok(Answer::Json(Invocation {
                outcome: Err(WorkerError::new(ErrorKind::CpuLimit, "x")),
                logs: vec![],
                stats: InvocationStats::default(),
            })),
            released: true,
        });
        roundtrip(FromWorker::Event(Event::Cache(
            "t".into(),
            crate::CacheEvent::Hit,
            3,
        )));
        roundtrip(FromWorker::Heartbeat {
            running: vec![(1, Duration::from_micros(1500))],
            warm: 2,
            ready: true,
        });
    }

    #[test]
    fn bodies_are_binary_not_arrays_of_numbers() {
        let request = HttpRequest {
            method: "GET".into(),
            url: "u".into(),
            headers: vec![],
            body: vec![0xff; 4096],
        };
        assert!(encode(&request).unwrap().len() < 4096 + 68);
    }

    #[test]
    fn a_frame_over_the_limit_is_refused_before_it_is_read() {
        use tokio_util::codec::Decoder;
        let mut codec = codec();
        let mut buf = bytes::BytesMut::new();
        buf.extend_from_slice(&((MAX_FRAME_BYTES as u32) + 1).to_be_bytes());
        buf.extend_from_slice(&[0u8; 16]);
        assert!(codec.decode(&mut buf).is_err());
        let mut ok = bytes::BytesMut::new();
        ok.extend_from_slice(&3u32.to_be_bytes());
        ok.extend_from_slice(b"abc");
        assert_eq!(&codec.decode(&mut ok).unwrap().unwrap()[..], b"abc");
        let big = HttpRequest {
            method: "GET".into(),
            url: "u".into(),
            headers: vec![],
            body: vec![0; MAX_FRAME_BYTES + 1],
        };
        assert!(matches!(encode(&big), Err(WireError::TooLarge(_))));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for frame in [
            &b""[..],
            b"\xc1",
            b"\x81\xa5Hello\xc0",
            b"\xdd\xff\xff\xff\xff",
            b"\xc6\xff\xff\xff\xff",
        ] {
            assert!(decode::<ToWorker>(frame).is_err());
            assert!(decode::<FromWorker>(frame).is_err());
        }
    }
}
