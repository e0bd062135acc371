//! The worker process: a [`Pool`] behind the wire, confined, holding no secret and no socket.
//!
//! The gateway spawns the same binary with an internal subcommand, an empty environment and
//! inherited Unix sockets: the control channel at [`wire::CHANNEL_FD`] and a lane of two per
//! isolate thread ([`wire::lane_fds`]). The worker confines itself first (seccomp, Landlock,
//! rlimits, no new privileges — see [`crate::confine`]), then reads its [`WorkerSettings`],
//! starts its isolate threads and only answers frames:
//!
//! - invocations run on the local [`Pool`]; the answer goes back as [`FromWorker::Done`], and
//!   [`FromWorker::Released`] follows when all of the invocation's work has ended (or `Done`
//!   says it already has);
//! - a Worker's `fetch()` becomes [`FromWorker::Egress`]; the gateway runs its egress pipeline
//!   (policy, credentials, network) and answers with [`ToWorker::Fetched`];
//! - pool events and a periodic [`FromWorker::Heartbeat`] (what each isolate thread is running
//!   and its CPU so far) feed the gateway's metrics and watchdog.
//!
//! Threads: each isolate thread reads its own lane (a task on its event loop) and queues what
//! arrives on itself, and writes its own frames (`Started`, `Egress`, `Done`) straight onto its
//! lane, so a request crosses this process without waking another thread; the main thread
//! reads the control channel (blocking reads, no event loop); a heartbeat thread sends the
//! heartbeats on it. Observer events are summed and ride along with the next frame that goes
//! out anyway.
//!
//! The worker exits when the channel closes; the gateway kills it when it misbehaves.
#![allow(unsafe_code)] // the worker's inherited channel fd (an OS API); each block has a `// SAFETY:` line

use crate::api::{
    BodyPart, BodySink, ErrorKind, HttpResponse, Invocation, Invoker, SealedCode, WorkerError,
};
use crate::cache::WorkerKey;
use crate::egress::{
    ApiAnswer, ApiCall, ApiFailure, BodyStream, EgressPort, EgressRequest, FetchReply, Fetched,
    Window,
};
use crate::observe::{CacheEvent, PoolObserver, StartKind};
use crate::pool::{Hold, Pool, PoolError, PoolSettings, Reply};
use crate::wire::{
    self, Answer, Event, FromWorker, Probe, Query, QueryAnswer, ToWorker, WorkerSettings,
    MAX_BODY_BYTES,
};
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::num::NonZeroUsize;
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::Decoder;

/// Confines the process (`confinement`: before any thread exists, so that every thread is
/// bound by it), then runs the worker on the inherited channels (the control channel and
/// `lanes` lanes) until the control channel closes.
pub fn serve(confinement: crate::confine::Confinement, lanes: usize) -> Result<(), String> {
    let report = crate::confine::confine(&confinement)
        .map_err(|e| format!("confinement failed ({}): {e}", e.as_str()))?;
    let confined = (
        render(&report),
        report.seccomp && report.no_new_privs && report.landlock.is_full(),
    );
    let inherited = |fd: i32| -> Result<UnixStream, String> {
        if !report.open_fds.contains(&fd) {
            return Err(format!("channel fd {fd} is not open"));
        }
        // SAFETY: the supervisor placed one end of a socket pair at each channel fd (dup2
        // before exec; `confine` saw it open); each is taken here once, and nothing else in
        // this process owns it.
        let channel = unsafe { UnixStream::from_raw_fd(fd) };
        // Blocking: the main thread blocks in read, writers block while the gateway catches
        // up. (A lane's reading end is made non-blocking by the thread that reads it.)
        channel
            .set_nonblocking(false)
            .map_err(|e| format!("channel fd {fd}: {e}"))?;
        Ok(channel)
    };
    let control = inherited(wire::CHANNEL_FD)?;
    let lanes = (0..lanes)
        .map(|k| {
            let (from_gateway, to_gateway) = wire::lane_fds(k);
            Ok((inherited(from_gateway)?, inherited(to_gateway)?))
        })
        .collect::<Result<Vec<_>, String>>()?;
    run(Arc::new(control), lanes, confined)
}

fn render(r: &crate::confine::ConfineReport) -> String {
    format!(
        "no_new_privs={} seccomp={} landlock={} data_limit_bytes={} nofile={}",
        r.no_new_privs,
        r.seccomp,
        r.landlock,
        r.data_limit_bytes
            .map_or_else(|| "unlimited".to_string(), |b| b.to_string()),
        r.nofile_limit
    )
}

/// Reads whole frames off the channel (blocking).
struct Frames {
    channel: Arc<UnixStream>,
    codec: tokio_util::codec::LengthDelimitedCodec,
    buf: bytes::BytesMut,
    chunk: Vec<u8>,
}

impl Frames {
    /// The next frame; `None` when the gateway closed the channel.
    fn next(&mut self) -> Result<Option<bytes::BytesMut>, String> {
        loop {
            if let Some(frame) = self
                .codec
                .decode(&mut self.buf)
                .map_err(|e| format!("channel: {e}"))?
            {
                return Ok(Some(frame));
            }
            let n = match (&*self.channel).read(&mut self.chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("channel: {e}")),
            };
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&self.chunk[..n]);
        }
    }
}

fn run(
    channel: Arc<UnixStream>,
    lanes: Vec<(UnixStream, UnixStream)>,
    (confinement, complete): (String, bool),
) -> Result<(), String> {
    let mut frames = Frames {
        channel: channel.clone(),
        codec: wire::codec(),
        buf: bytes::BytesMut::with_capacity(64 << 10),
        chunk: vec![0; 64 << 10],
    };
    let settings = match frames.next()? {
        Some(frame) => match wire::decode::<ToWorker>(&frame) {
            Ok(ToWorker::Hello(s)) => s,
            Ok(_) => return Err("the first message was not Hello".into()),
            Err(e) => return Err(e.to_string()),
        },
        None => return Ok(()),
    };
    if settings.protocol != wire::PROTOCOL {
        return Err(format!(
            "protocol {} requested, this worker speaks {}",
            settings.protocol,
            wire::PROTOCOL
        ));
    }
    if lanes.len() != settings.threads.max(1) {
        return Err(format!(
            "{} channel lanes for {} isolate threads",
            lanes.len(),
            settings.threads.max(1)
        ));
    }
    let (readers, writers): (Vec<_>, Vec<_>) = lanes.into_iter().unzip();

    let out = Arc::new(Outbox {
        channel,
        write: Mutex::new(()),
        lanes: writers.into_iter().map(Mutex::new).collect(),
        events: Mutex::new(Events::default()),
        bodies: Mutex::new(HashMap::new()),
    });
    let egress = Arc::new(RemoteEgress {
        out: out.clone(),
        calls: Arc::new(Mutex::new(HashMap::new())),
        next: AtomicU64::new(1),
    });
    let pool = Arc::new(
        Pool::start(
            PoolSettings {
                threads: settings.threads.max(1),
                warm_isolates: settings.warm_isolates,
                max_cached_workers: settings.max_cached_workers.max(1),
                idle_ttl: settings.idle_ttl,
                queue_capacity: settings.queue_capacity.max(1),
            },
            egress.clone(),
            Arc::new(RemoteObserver(out.clone())),
        )
        .map_err(|e| format!("pool: {e}"))?,
    );
    out.send(&FromWorker::Ready {
        confinement,
        complete,
    });

    {
        let pool = pool.clone();
        let out = out.clone();
        let every = settings.heartbeat.max(Duration::from_millis(5));
        std::thread::Builder::new()
            .name("isogate-heartbeat".into())
            .spawn(move || {
                let mut beats = Beats::default();
                loop {
                    std::thread::sleep(every);
                    let running: Vec<(u64, Duration)> = pool
                        .running()
                        .into_iter()
                        .map(|r| (r.invocation, r.cpu))
                        .collect();
                    let (warm, ready) = (pool.warm_isolates(), pool.is_ready());
                    if beats.due(Instant::now(), running.is_empty(), warm, ready) {
                        out.send(&FromWorker::Heartbeat {
                            running,
                            warm,
                            ready,
                        });
                    }
                }
            })
            .map_err(|e| format!("heartbeat thread: {e}"))?;
    }

    let codes = Mutex::new(lru::LruCache::new(
        NonZeroUsize::new(settings.max_cached_workers.max(1)).unwrap_or(NonZeroUsize::MIN),
    ));
    let worker = Arc::new(Worker {
        pool: pool.clone(),
        egress,
        codes,
        out,
        settings,
    });
    for (lane, reader) in readers.into_iter().enumerate() {
        let worker = worker.clone();
        pool.spawn_on(
            lane,
            Box::new(move || Box::pin(read_lane(lane, reader, worker))),
        )
        .map_err(|e| format!("lane {lane}: {e}"))?;
    }
    while let Some(frame) = frames.next()? {
        let message = wire::decode::<ToWorker>(&frame).map_err(|e| e.to_string())?;
        worker.dispatch(message);
    }
    Ok(())
}

/// At most this long between two heartbeats of an idle worker (well within the gateway's
/// heartbeat timeout).
const IDLE_HEARTBEAT: Duration = Duration::from_secs(1);

/// Which heartbeats are sent. While an invocation runs, every one (the gateway's watchdog reads
/// its CPU from them); at idle, one when something changed (the last invocation ended, the warm
/// count or readiness moved) and otherwise one per [`IDLE_HEARTBEAT`]: an idle worker does not
/// wake the gateway every period.
#[derive(Default)]
struct Beats {
    /// The last heartbeat sent: when, whether it listed a running invocation, warm, ready.
    last: Option<(Instant, bool, usize, bool)>,
}

impl Beats {
    fn due(&mut self, now: Instant, idle: bool, warm: usize, ready: bool) -> bool {
        let quiet = self.last.is_some_and(|(at, was_running, w, r)| {
            idle && !was_running
                && w == warm
                && r == ready
                && now.saturating_duration_since(at) < IDLE_HEARTBEAT
        });
        if !quiet {
            self.last = Some((now, !idle, warm, ready));
        }
        !quiet
    }
}

thread_local! {
    /// On an isolate thread that reads a lane: that lane (its frames go out on it).
    static LANE: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Reads lane `lane` on its isolate thread and dispatches what arrives there: jobs are queued
/// on this thread, answers wake the invocation waiting on this thread. A frame that cannot be
/// read or decoded ends the process (the gateway sees it and starts another).
async fn read_lane(lane: usize, reader: UnixStream, worker: Arc<Worker>) {
    use futures::StreamExt;
    LANE.with(|l| l.set(Some(lane)));
    let stream = reader
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixStream::from_std(reader));
    let stream = match stream {
        Ok(s) => s,
        Err(e) => lane_failed(lane, &e.to_string()),
    };
    let mut frames = tokio_util::codec::FramedRead::new(stream, wire::codec());
    while let Some(frame) = frames.next().await {
        let message = frame
            .map_err(|e| e.to_string())
            .and_then(|f| wire::decode::<ToWorker>(&f).map_err(|e| e.to_string()));
        match message {
            Ok(message) => worker.dispatch(message),
            Err(e) => lane_failed(lane, &e),
        }
    }
}

fn lane_failed(lane: usize, error: &str) -> ! {
    tracing::error!(lane, error, "worker: a channel lane failed; exiting");
    std::process::exit(70)
}

type Codes = Mutex<lru::LruCache<WorkerKey, SealedCode>>;

/// What dispatching a frame needs, shared by the control reader and the lane readers.
struct Worker {
    pool: Arc<Pool>,
    egress: Arc<RemoteEgress>,
    codes: Codes,
    out: Arc<Outbox>,
    settings: WorkerSettings,
}

impl Worker {
    /// Handles one frame from the gateway, on whichever thread read it.
    fn dispatch(&self, message: ToWorker) {
        let Worker {
            pool,
            egress,
            codes,
            out,
            settings,
        } = self;
        match message {
            ToWorker::Hello(_) => tracing::warn!("worker: ignoring a second Hello"),
            ToWorker::Load {
                id,
                invoker,
                code,
                request,
                limits,
            } => {
                let (hold, reply) = ending(out, id, |inv| Answer::Http(bounded(inv)));
                pool.submit_load(
                    invoker,
                    code,
                    request,
                    limits,
                    hold,
                    streamed(reply, out, id),
                );
            }
            ToWorker::Get {
                id,
                invoker,
                digest,
                code,
                request,
                limits,
                tenant_cap,
            } => {
                let key =
                    WorkerKey::new(&invoker.tenant, invoker.worker_id.as_deref().unwrap_or(""));
                let sealed = {
                    let mut codes = lock(codes);
                    match code {
                        Some(code) => {
                            let sealed = SealedCode::new(Arc::unwrap_or_clone(code));
                            codes.put(key, sealed.clone());
                            Some(sealed)
                        }
                        None => codes.get(&key).filter(|c| c.digest() == digest).cloned(),
                    }
                };
                let Some(sealed) = sealed else {
                    out.send(&FromWorker::NeedCode { id });
                    return;
                };
                let (hold, reply) = ending(out, id, |inv| Answer::Http(bounded(inv)));
                let reply = streamed(reply, out, id);
                pool.submit_get(invoker, sealed, request, limits, tenant_cap, hold, reply);
            }
            ToWorker::Execute {
                id,
                invoker,
                source,
                env,
                limits,
            } => {
                let (hold, reply) = ending(out, id, Answer::Json);
                pool.submit_execute(invoker, source, env, limits, hold, reply);
            }
            ToWorker::Query { call, query } => {
                let answer = match query {
                    Query::CachedIds { tenant } => QueryAnswer::Ids(pool.cached_ids(&tenant)),
                    Query::Evict { tenant, worker_id } => {
                        let mut codes = lock(codes);
                        codes
                            .iter()
                            .filter(|(k, _)| {
                                &*k.tenant == tenant.as_str()
                                    && worker_id.as_deref().is_none_or(|w| &*k.id == w)
                            })
                            .map(|(k, _)| k.clone())
                            .collect::<Vec<_>>()
                            .into_iter()
                            .for_each(|k| {
                                codes.pop(&k);
                            });
                        QueryAnswer::Evicted(match worker_id {
                            Some(id) => usize::from(pool.evict(&tenant, &id)),
                            None => pool.evict_tenant(&tenant),
                        })
                    }
                };
                out.send(&FromWorker::Answered { call, answer });
            }
            ToWorker::Fetched { call, fetched } => egress.complete(call, fetched),
            ToWorker::ApiAnswered { call, answer } => egress.answered(call, answer),
            ToWorker::FetchedBody { call, part } => egress.body(call, part),
            ToWorker::BodyCredit { id, bytes } => {
                if let Some(window) = lock(&out.bodies).get(&id) {
                    window.give(bytes);
                }
            }
            ToWorker::BodyCancel { id } => {
                if let Some(window) = lock(&out.bodies).remove(&id) {
                    window.close();
                }
            }
            ToWorker::Probe(probe) if settings.test_probes => run_probe(probe),
            ToWorker::Probe(_) => tracing::warn!("worker: ignoring a probe (probes are disabled)"),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The worker's writing ends, shared by every thread: an isolate thread writes on its lane,
/// any other thread on the control channel. Each message goes out as one whole frame in one
/// `write` under the channel's lock (frames never interleave); summed observer events go out
/// ahead of it in the same `write`.
struct Outbox {
    channel: Arc<UnixStream>,
    write: Mutex<()>,
    /// Each lane's writing end (blocking), by isolate thread.
    lanes: Vec<Mutex<UnixStream>>,
    events: Mutex<Events>,
    /// Streamed response bodies being sent, by invocation id: the window the gateway refills
    /// with [`ToWorker::BodyCredit`] (closed by [`ToWorker::BodyCancel`]).
    bodies: Mutex<HashMap<u64, Window>>,
}

/// Observer events not yet sent.
#[derive(Default)]
struct Events {
    /// Isolate starts and warm isolates taken, in order.
    isolates: Vec<Event>,
    /// Cache hits/misses/evictions per tenant, summed.
    cache: HashMap<(String, CacheEvent), u64>,
    /// The latest cached-Worker count per tenant.
    cached: HashMap<String, usize>,
}

impl Outbox {
    /// Sends `message` (after any pending events). A message that cannot be encoded is logged
    /// and dropped; a failed write means the gateway is gone (the reader sees it and exits).
    ///
    /// Frames are copies of bytes leaving the isolate: encoded outside its memory account (an
    /// isolate thread encodes its own `Egress` and `Done`).
    fn send(&self, message: &FromWorker) {
        crate::engine::untracked(|| {
            let mut bytes = self.pending_events();
            if let Err(e) = wire::frame_into(&mut bytes, message) {
                tracing::error!(error = %e, "worker: dropping a message that cannot be sent");
            }
            self.write(&bytes);
        })
    }

    /// An invocation's answer; one too large for the wire becomes the Worker's error.
    fn send_done(&self, id: u64, answer: Result<Answer, PoolError>, released: bool) {
        crate::engine::untracked(|| self.encode_done(id, answer, released))
    }

    fn encode_done(&self, id: u64, answer: Result<Answer, PoolError>, released: bool) {
        let mut bytes = self.pending_events();
        let done = FromWorker::Done {
            id,
            answer,
            released,
        };
        if let Err(e) = wire::frame_into(&mut bytes, &done) {
            let FromWorker::Done { answer, .. } = done else {
                unreachable!()
            };
            let error = WorkerError::new(
                ErrorKind::Exception,
                format!("the Worker's answer cannot be sent to the gateway: {e}"),
            );
            let answer = match answer {
                Ok(Answer::Json(_)) => Answer::Json(Invocation::failed(error)),
                _ => Answer::Http(Invocation::failed(error)),
            };
            let done = FromWorker::Done {
                id,
                answer: Ok(answer),
                released,
            };
            if let Err(e) = wire::frame_into(&mut bytes, &done) {
                tracing::error!(error = %e, "worker: cannot send an answer");
            }
        }
        self.write(&bytes);
    }

    fn pending_events(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        let events = {
            let mut events = lock(&self.events);
            if events.isolates.is_empty() && events.cache.is_empty() && events.cached.is_empty() {
                return bytes;
            }
            std::mem::take(&mut *events)
        };
        let isolates = events.isolates.into_iter();
        let cache = (events.cache.into_iter()).map(|((tenant, e), n)| Event::Cache(tenant, e, n));
        let cached = (events.cached.into_iter()).map(|(tenant, n)| Event::CachedWorkers(tenant, n));
        for event in isolates.chain(cache).chain(cached) {
            if let Err(e) = wire::frame_into(&mut bytes, &FromWorker::Event(event)) {
                tracing::error!(error = %e, "worker: dropping an event that cannot be sent");
            }
        }
        bytes
    }

    fn write(&self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let written = match LANE
            .with(std::cell::Cell::get)
            .and_then(|k| self.lanes.get(k))
        {
            Some(lane) => lock(lane).write_all(bytes),
            None => {
                let _whole = lock(&self.write);
                (&*self.channel).write_all(bytes)
            }
        };
        if let Err(e) = written {
            tracing::debug!(error = %e, "worker: the channel is closed");
        }
    }
}

/// How an invocation's end is told: `Done` when it answers, and its release (all work ended)
/// either inside `Done` (it came first: the common case) or as `Released` after it.
struct Ending {
    out: Arc<Outbox>,
    id: u64,
    state: AtomicU8,
}

const RELEASED: u8 = 1;
const ANSWERED: u8 = 2;

impl Ending {
    fn answer(&self, answer: Result<Answer, PoolError>) {
        let released = self.state.fetch_or(ANSWERED, Ordering::AcqRel) & RELEASED != 0;
        self.out.send_done(self.id, answer, released);
    }

    fn release(&self) {
        if self.state.fetch_or(RELEASED, Ordering::AcqRel) & ANSWERED != 0 {
            self.out.send(&FromWorker::Released { id: self.id });
        }
    }
}

/// The pool's hold and reply for invocation `id`: the hold reports when a thread starts it and
/// when its work has ended, the reply sends its answer (`wrap` makes it an [`Answer`]).
fn ending<T: 'static>(
    out: &Arc<Outbox>,
    id: u64,
    wrap: impl FnOnce(Invocation<T>) -> Answer + Send + 'static,
) -> (Hold, Reply<T>) {
    let ending = Arc::new(Ending {
        out: out.clone(),
        id,
        state: AtomicU8::new(0),
    });
    let started = out.clone();
    let hold = Hold::with_start(Release(ending.clone()), move || {
        started.send(&FromWorker::Started { id });
    });
    let reply = Reply::new(move |answer: Result<Invocation<T>, PoolError>| {
        ending.answer(answer.map(wrap));
    });
    (hold, reply)
}

/// A `load()`/`get()` reply whose streamed response body goes to the gateway as
/// [`FromWorker::Body`] frames, written by the isolate thread (between `Done` and `Released`).
/// A streamed response body goes out as [`FromWorker::Body`] frames, never more than a window
/// ahead of what the gateway has passed on to the client ([`ToWorker::BodyCredit`]); a client
/// that went away closes the window ([`ToWorker::BodyCancel`]), which cancels the stream.
fn streamed(reply: Reply<HttpResponse>, out: &Arc<Outbox>, id: u64) -> Reply<HttpResponse> {
    let window = Window::default();
    lock(&out.bodies).insert(id, window.clone());
    let out = out.clone();
    reply.with_body(BodySink::new(
        move |part| {
            let end = matches!(part, BodyPart::End(_));
            out.send(&FromWorker::Body { id, part });
            if end {
                lock(&out.bodies).remove(&id);
            }
            true
        },
        window,
    ))
}

/// A response too large for the wire becomes the Worker's error, not a broken channel.
fn bounded(mut inv: Invocation<HttpResponse>) -> Invocation<HttpResponse> {
    if let Ok(r) = &inv.outcome {
        if r.body.len() > MAX_BODY_BYTES {
            inv.outcome = Err(WorkerError::new(
                ErrorKind::Exception,
                format!(
                    "the Worker's response body of {} bytes exceeds the limit of {MAX_BODY_BYTES} bytes",
                    r.body.len()
                ),
            ));
        }
    }
    inv
}

/// Tells the gateway that an invocation's work has ended when the pool drops its hold.
struct Release(Arc<Ending>);

impl Drop for Release {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// `fetch()` from this process: one round trip to the gateway, which runs the egress pipeline;
/// a streamed response body follows as [`ToWorker::FetchedBody`] frames, paced by the
/// [`FromWorker::FetchCredit`]s this side sends as the Worker reads.
struct RemoteEgress {
    out: Arc<Outbox>,
    calls: Arc<Calls>,
    next: AtomicU64,
}

/// An egress call of this worker: waiting for its answer, or streaming its response body.
enum Call {
    Waiting(oneshot::Sender<FetchReply>),
    Streaming(mpsc::UnboundedSender<BodyPart>),
    /// An API call waiting for its answer.
    Api(oneshot::Sender<ApiAnswer>),
}

type Calls = Mutex<HashMap<u64, Call>>;

/// An egress call in flight: dropped before its answer (the Worker aborted the `fetch()`, or
/// the invocation ended), it tells the gateway to drop the upstream request. (An answered call
/// is no longer waiting: `complete` took it out.)
struct InFlight {
    out: Arc<Outbox>,
    calls: Arc<Calls>,
    call: u64,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        cancel_if(&self.out, &self.calls, self.call, |c| {
            matches!(c, Call::Waiting(_) | Call::Api(_))
        });
    }
}

/// A streamed body's reader went away (the Worker cancelled it, or its invocation ended)
/// before the end: the gateway stops reading the upstream.
struct StreamGuard {
    out: Arc<Outbox>,
    calls: Arc<Calls>,
    call: u64,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        cancel_if(&self.out, &self.calls, self.call, |c| {
            matches!(c, Call::Streaming(_))
        });
    }
}

/// Removes `call` if it is in the state `which` accepts and tells the gateway to drop it.
fn cancel_if(out: &Outbox, calls: &Calls, call: u64, which: impl Fn(&Call) -> bool) {
    let mut calls = lock(calls);
    if calls.get(&call).is_some_and(which) {
        calls.remove(&call);
        drop(calls);
        out.send(&FromWorker::CancelEgress { call });
    }
}

impl RemoteEgress {
    /// Registers a new call waiting in `state` and sends the message `ask` makes for its id;
    /// the guard withdraws the call if it is dropped before its answer.
    fn start(&self, state: Call, ask: impl FnOnce(u64) -> FromWorker) -> InFlight {
        let call = self.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.calls).insert(call, state);
        self.out.send(&ask(call));
        InFlight {
            out: self.out.clone(),
            calls: self.calls.clone(),
            call,
        }
    }

    fn complete(&self, call: u64, fetched: Fetched) {
        let Some(Call::Waiting(waiter)) = lock(&self.calls).remove(&call) else {
            return;
        };
        let rest = match &fetched {
            Fetched::Sent(response) if response.streamed => {
                let (tx, rx) = mpsc::unbounded_channel();
                lock(&self.calls).insert(call, Call::Streaming(tx));
                let out = self.out.clone();
                let guard = StreamGuard {
                    out: self.out.clone(),
                    calls: self.calls.clone(),
                    call,
                };
                Some(BodyStream::new(
                    rx,
                    move |bytes| out.send(&FromWorker::FetchCredit { call, bytes }),
                    Some(Box::new(guard)),
                ))
            }
            _ => None,
        };
        // A waiter that went away drops the stream with its guard (which cancels the call).
        let _ = waiter.send((fetched, rest));
    }

    fn answered(&self, call: u64, answer: ApiAnswer) {
        if let Some(Call::Api(waiter)) = lock(&self.calls).remove(&call) {
            let _ = waiter.send(answer);
        }
    }

    /// A part of a streamed body; its `End` retires the call.
    fn body(&self, call: u64, part: BodyPart) {
        let mut calls = lock(&self.calls);
        if let Some(Call::Streaming(tx)) = calls.get(&call) {
            let end = matches!(part, BodyPart::End(_));
            let _ = tx.send(part);
            if end {
                calls.remove(&call);
            }
        }
    }
}

impl EgressPort for RemoteEgress {
    fn enabled(&self) -> bool {
        // The gateway decides (a disabled egress answers every call with its refusal).
        true
    }

    fn fetch(
        &self,
        invoker: Invoker,
        request: EgressRequest,
        left: u32,
    ) -> BoxFuture<'static, FetchReply> {
        if request.body.len() > MAX_BODY_BYTES {
            let message = format!(
                "fetch(): request body of {} bytes exceeds the limit of {MAX_BODY_BYTES} bytes",
                request.body.len()
            );
            return Box::pin(std::future::ready((
                Fetched::Rejected {
                    message,
                    charged: false,
                    detail: None,
                },
                None,
            )));
        }
        let (tx, rx) = oneshot::channel();
        let in_flight = self.start(Call::Waiting(tx), |call| FromWorker::Egress {
            call,
            invocation: invoker.invocation,
            request,
            left,
        });
        Box::pin(async move {
            let _in_flight = in_flight;
            rx.await.unwrap_or_else(|_| (gone(), None))
        })
    }

    /// The engine has checked the API name and bounded the arguments and tool name.
    fn api(&self, invoker: Invoker, api: ApiCall, left: u32) -> BoxFuture<'static, ApiAnswer> {
        let (tx, rx) = oneshot::channel();
        let in_flight = self.start(Call::Api(tx), |call| FromWorker::Api {
            call,
            invocation: invoker.invocation,
            api,
            left,
        });
        Box::pin(async move {
            let _in_flight = in_flight;
            rx.await.unwrap_or_else(|_| ApiAnswer::Failed {
                failure: ApiFailure::new(
                    crate::egress::ApiErrorCode::ApiUnavailable,
                    "the gateway did not answer",
                ),
                charged: false,
            })
        })
    }
}

fn gone() -> Fetched {
    Fetched::Rejected {
        message: "fetch failed: the gateway did not answer".into(),
        charged: false,
        detail: None,
    }
}

/// Pool events, summed until the next frame goes out (an answer or a heartbeat). Warm counts
/// travel with heartbeats.
struct RemoteObserver(Arc<Outbox>);

impl PoolObserver for RemoteObserver {
    fn isolate_started(&self, kind: StartKind, took: std::time::Duration) {
        lock(&self.0.events)
            .isolates
            .push(Event::IsolateStarted(kind, took));
    }
    fn isolate_taken(&self, kind: StartKind) {
        lock(&self.0.events)
            .isolates
            .push(Event::IsolateTaken(kind));
    }
    fn cache_event(&self, tenant: &str, event: CacheEvent) {
        *lock(&self.0.events)
            .cache
            .entry((tenant.to_string(), event))
            .or_default() += 1;
    }
    fn cached_workers(&self, tenant: &str, count: usize) {
        lock(&self.0.events)
            .cached
            .insert(tenant.to_string(), count);
    }
}

/// Test-only: bytes straight onto the channel, as a compromised worker could write them.
fn raw_write(bytes: &[u8]) {
    // SAFETY: writes from a valid slice to the inherited channel descriptor, which stays open
    // for the life of the process; a short or failed write only makes the probe weaker.
    let _ = unsafe { libc::write(wire::CHANNEL_FD, bytes.as_ptr().cast(), bytes.len()) };
}

/// Test-only: what an engine bug could attempt. The confinement must end the process.
fn run_probe(probe: Probe) {
    tracing::warn!(?probe, "worker: running a confinement probe");
    match probe {
        Probe::Socket => {
            // SAFETY: a plain syscall with constant arguments; the result (if the process
            // survives at all) is closed right away.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            if fd >= 0 {
                // SAFETY: `fd` was just returned by socket() and is owned here.
                unsafe { libc::close(fd) };
                tracing::error!("worker: probe opened a socket: confinement is not in force");
            }
        }
        Probe::Open => match std::fs::File::open("/etc/hostname") {
            Ok(_) => tracing::error!("worker: probe opened a file: confinement is not in force"),
            Err(e) => tracing::warn!(error = %e, "worker: probe could not open a file"),
        },
        Probe::Garbage => raw_write(&[0, 0, 0, 5, 0xc1, 0xc1, 0xc1, 0xc1, 0xc1]),
        Probe::Oversized => {
            let mut frame = ((wire::MAX_FRAME_BYTES as u32) + 1).to_be_bytes().to_vec();
            frame.extend_from_slice(&[0; 64]);
            raw_write(&frame);
        }
        Probe::Exhaust => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                let block = vec![1u8; 64 << 20];
                hoard.push(block);
                std::hint::black_box(&hoard);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{HttpResponse, InvocationStats};

    fn outbox() -> (Arc<Outbox>, Frames) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let out = Arc::new(Outbox {
            channel: Arc::new(ours),
            write: Mutex::new(()),
            lanes: Vec::new(),
            events: Mutex::new(Events::default()),
            bodies: Mutex::new(HashMap::new()),
        });
        let frames = Frames {
            channel: Arc::new(theirs),
            codec: wire::codec(),
            buf: bytes::BytesMut::new(),
            chunk: vec![0; 1024],
        };
        (out, frames)
    }

    fn next(frames: &mut Frames) -> FromWorker {
        wire::decode(&frames.next().unwrap().unwrap()).unwrap()
    }

    fn ok() -> Invocation<HttpResponse> {
        Invocation {
            outcome: Ok(HttpResponse {
                status: 200,
                headers: vec![],
                body: b"hi".to_vec(),
                streamed: false,
            }),
            logs: vec![],
            stats: InvocationStats::default(),
        }
    }

    #[test]
    fn an_invocation_released_before_its_answer_sends_one_done() {
        let (out, mut frames) = outbox();
        let (mut hold, reply) = ending(&out, 7, |inv| Answer::Http(bounded(inv)));
        hold.started();
        assert_eq!(next(&mut frames), FromWorker::Started { id: 7 });
        // Events summed meanwhile go out ahead of the next frame, the answer.
        RemoteObserver(out.clone()).cache_event("t", CacheEvent::Hit);
        RemoteObserver(out.clone()).cache_event("t", CacheEvent::Hit);
        drop(hold);
        reply.send(ok());
        assert_eq!(
            next(&mut frames),
            FromWorker::Event(Event::Cache("t".into(), CacheEvent::Hit, 2))
        );
        match next(&mut frames) {
            FromWorker::Done { id, released, .. } => assert_eq!((id, released), (7, true)),
            other => panic!("{other:?}"),
        }
        // Nothing else: the release rode with Done.
        out.send(&FromWorker::NeedCode { id: 0 });
        assert_eq!(next(&mut frames), FromWorker::NeedCode { id: 0 });
    }

    #[test]
    fn work_after_the_answer_is_released_by_its_own_frame() {
        let (out, mut frames) = outbox();
        let (hold, reply) = ending(&out, 8, |inv| Answer::Http(bounded(inv)));
        reply.send(ok());
        match next(&mut frames) {
            FromWorker::Done { id, released, .. } => assert_eq!((id, released), (8, false)),
            other => panic!("{other:?}"),
        }
        drop(hold);
        assert_eq!(next(&mut frames), FromWorker::Released { id: 8 });
    }

    /// An isolate thread that reads a lane writes on it; every other thread on the control
    /// channel.
    #[test]
    fn frames_go_out_on_the_lane_of_the_writing_thread() {
        let (mut out, mut control) = outbox();
        let mut lanes = Vec::new();
        let mut writers = Vec::new();
        for _ in 0..2 {
            let (ours, theirs) = UnixStream::pair().unwrap();
            writers.push(Mutex::new(ours));
            lanes.push(Frames {
                channel: Arc::new(theirs),
                codec: wire::codec(),
                buf: bytes::BytesMut::new(),
                chunk: vec![0; 1024],
            });
        }
        Arc::get_mut(&mut out).unwrap().lanes = writers;
        std::thread::scope(|s| {
            for lane in 0..2u64 {
                let out = &out;
                s.spawn(move || {
                    LANE.with(|l| l.set(Some(lane as usize)));
                    out.send(&FromWorker::Started { id: lane });
                });
            }
        });
        out.send(&FromWorker::Started { id: 9 });
        assert_eq!(next(&mut lanes[0]), FromWorker::Started { id: 0 });
        assert_eq!(next(&mut lanes[1]), FromWorker::Started { id: 1 });
        assert_eq!(next(&mut control), FromWorker::Started { id: 9 });
    }

    #[test]
    fn an_idle_worker_beats_once_a_second_and_a_busy_one_every_period() {
        let mut beats = Beats::default();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // The first heartbeat always goes.
        assert!(beats.due(at(0), true, 4, true));
        // Idle and unchanged: quiet until a second has passed.
        assert!(!beats.due(at(25), true, 4, true));
        assert!(!beats.due(at(975), true, 4, true));
        assert!(beats.due(at(1000), true, 4, true));
        // A change of the warm count or of readiness goes at once.
        assert!(beats.due(at(1025), true, 3, true));
        assert!(beats.due(at(1050), true, 3, false));
        // While an invocation runs, every period (the watchdog reads its CPU).
        assert!(beats.due(at(1075), false, 3, false));
        assert!(beats.due(at(1100), false, 3, false));
        // The heartbeat after the last invocation ended goes too: it clears the running list.
        assert!(beats.due(at(1125), true, 3, false));
        assert!(!beats.due(at(1150), true, 3, false));
    }

    #[test]
    fn a_dropped_reply_still_answers() {
        let (out, mut frames) = outbox();
        let (hold, reply) = ending::<HttpResponse>(&out, 9, |inv| Answer::Http(bounded(inv)));
        drop(reply);
        match next(&mut frames) {
            FromWorker::Done {
                id,
                answer: Ok(Answer::Http(inv)),
                released: false,
            } => {
                assert_eq!(id, 9);
                assert_eq!(inv.outcome.unwrap_err().kind, ErrorKind::Internal);
            }
            other => panic!("{other:?}"),
        }
        drop(hold);
        assert_eq!(next(&mut frames), FromWorker::Released { id: 9 });
    }
}
