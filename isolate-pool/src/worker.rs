//! The worker process: a [`Pool`] behind the wire, confined, holding no secret and no socket.
//!
//! The gateway spawns the same binary with an internal subcommand, an empty environment and
//! one inherited file descriptor ([`wire::CHANNEL_FD`], one end of a Unix socket pair). The
//! worker confines itself first (seccomp, Landlock, rlimits, no new privileges — see
//! [`crate::confine`]), then reads its [`WorkerSettings`], starts its isolate threads and only
//! answers frames:
//!
//! - invocations run on the local [`Pool`]; the answer goes back as [`FromWorker::Done`], and
//!   [`FromWorker::Released`] follows when all of the invocation's work has ended;
//! - a Worker's `fetch()` becomes [`FromWorker::Egress`]; the gateway runs its egress pipeline
//!   (policy, credentials, network) and answers with [`ToWorker::Fetched`];
//! - pool events and a periodic [`FromWorker::Heartbeat`] (what each isolate thread is running
//!   and its CPU so far) feed the gateway's metrics and watchdog.
//!
//! The worker exits when the channel closes; the gateway kills it when it misbehaves.

use crate::api::{ErrorKind, HttpResponse, Invocation, Invoker, SealedCode, WorkerError};
use crate::cache::WorkerKey;
use crate::egress::{EgressPort, EgressRequest, Fetched};
use crate::observe::{CacheEvent, PoolObserver, StartKind};
use crate::pool::{Hold, Pool, PoolSettings};
use crate::wire::{
    self, Answer, Event, FromWorker, Probe, Query, QueryAnswer, ToWorker, WorkerSettings,
    MAX_BODY_BYTES,
};
use futures::future::BoxFuture;
use futures::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::Framed;

type Out = mpsc::UnboundedSender<FromWorker>;

/// Confines the process (`confinement`: before any runtime or thread exists, so that every
/// thread is bound by it), then runs the worker on the inherited channel until it closes.
pub fn serve(confinement: crate::confine::Confinement) -> Result<(), String> {
    let report = crate::confine::confine(&confinement)
        .map_err(|e| format!("confinement failed ({}): {e}", e.as_str()))?;
    let confined = (
        render(&report),
        report.seccomp && report.no_new_privs && report.landlock.is_full(),
    );
    // SAFETY: the supervisor placed one end of a socket pair at CHANNEL_FD (dup2 before exec);
    // nothing else in this process owns that descriptor.
    let channel = unsafe { std::os::unix::net::UnixStream::from_raw_fd(wire::CHANNEL_FD) };
    channel
        .set_nonblocking(true)
        .map_err(|e| format!("channel: {e}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("isogate-wire")
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    rt.block_on(run(channel, confined))
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

async fn run(
    channel: std::os::unix::net::UnixStream,
    (confinement, complete): (String, bool),
) -> Result<(), String> {
    let stream = tokio::net::UnixStream::from_std(channel).map_err(|e| format!("channel: {e}"))?;
    let framed = Framed::new(stream, wire::codec());
    let (mut sink, mut frames) = framed.split();
    let settings = match frames.next().await {
        Some(Ok(frame)) => match wire::decode::<ToWorker>(&frame) {
            Ok(ToWorker::Hello(s)) => s,
            Ok(_) => return Err("the first message was not Hello".into()),
            Err(e) => return Err(e.to_string()),
        },
        Some(Err(e)) => return Err(format!("channel: {e}")),
        None => return Ok(()),
    };
    if settings.protocol != wire::PROTOCOL {
        return Err(format!(
            "protocol {} requested, this worker speaks {}",
            settings.protocol,
            wire::PROTOCOL
        ));
    }

    let (out, mut outbox) = mpsc::unbounded_channel::<FromWorker>();
    let writer = tokio::spawn(async move {
        // Everything queued goes out in one flush (one write for a burst of answers).
        let mut batch = Vec::with_capacity(64);
        while outbox.recv_many(&mut batch, 64).await > 0 {
            for message in batch.drain(..) {
                let frame = match wire::encode(&message) {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::error!(error = %e, "worker: dropping a message that cannot be sent");
                        continue;
                    }
                };
                if sink.feed(frame).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });

    let egress = Arc::new(RemoteEgress {
        out: out.clone(),
        calls: Mutex::new(HashMap::new()),
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
    let _ = out.send(FromWorker::Ready {
        confinement,
        complete,
    });

    let heartbeat = {
        let pool = pool.clone();
        let out = out.clone();
        let every = settings.heartbeat.max(std::time::Duration::from_millis(5));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let running = pool
                    .running()
                    .into_iter()
                    .map(|r| (r.invocation, r.cpu))
                    .collect();
                let beat = FromWorker::Heartbeat {
                    running,
                    warm: pool.warm_isolates(),
                    ready: pool.is_ready(),
                };
                if out.send(beat).is_err() {
                    return;
                }
            }
        })
    };

    let codes = Arc::new(Mutex::new(lru::LruCache::new(
        NonZeroUsize::new(settings.max_cached_workers.max(1)).unwrap_or(NonZeroUsize::MIN),
    )));
    while let Some(frame) = frames.next().await {
        let frame = frame.map_err(|e| format!("channel: {e}"))?;
        let message = wire::decode::<ToWorker>(&frame).map_err(|e| e.to_string())?;
        dispatch(message, &pool, &egress, &codes, &out, &settings);
    }
    heartbeat.abort();
    drop(out);
    let _ = writer.await;
    Ok(())
}

type Codes = Arc<Mutex<lru::LruCache<WorkerKey, SealedCode>>>;

fn dispatch(
    message: ToWorker,
    pool: &Arc<Pool>,
    egress: &RemoteEgress,
    codes: &Codes,
    out: &Out,
    settings: &WorkerSettings,
) {
    match message {
        ToWorker::Hello(_) => tracing::warn!("worker: ignoring a second Hello"),
        ToWorker::Load {
            id,
            invoker,
            code,
            request,
            limits,
        } => {
            let pool = pool.clone();
            answer(out, id, |hold| async move {
                let inv = pool.load(invoker, code, request, limits, hold).await?;
                Ok(Answer::Http(bounded(inv)))
            });
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
            let key = WorkerKey::new(&invoker.tenant, invoker.worker_id.as_deref().unwrap_or(""));
            let sealed = {
                let mut codes = codes.lock().unwrap_or_else(|p| p.into_inner());
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
                let _ = out.send(FromWorker::NeedCode { id });
                return;
            };
            let pool = pool.clone();
            answer(out, id, |hold| async move {
                let inv = pool
                    .get(invoker, sealed, request, limits, tenant_cap, hold)
                    .await?;
                Ok(Answer::Http(bounded(inv)))
            });
        }
        ToWorker::Execute {
            id,
            invoker,
            source,
            env,
            limits,
        } => {
            let pool = pool.clone();
            answer(out, id, |hold| async move {
                Ok(Answer::Json(
                    pool.execute(invoker, source, env, limits, hold).await?,
                ))
            });
        }
        ToWorker::Query { call, query } => {
            let answer = match query {
                Query::CachedIds { tenant } => QueryAnswer::Ids(pool.cached_ids(&tenant)),
                Query::Evict { tenant, worker_id } => {
                    let mut codes = codes.lock().unwrap_or_else(|p| p.into_inner());
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
            let _ = out.send(FromWorker::Answered { call, answer });
        }
        ToWorker::Fetched { call, fetched } => egress.complete(call, fetched),
        ToWorker::Probe(probe) if settings.test_probes => run_probe(probe),
        ToWorker::Probe(_) => tracing::warn!("worker: ignoring a probe (probes are disabled)"),
    }
}

/// Runs invocation `id` (`run` gets its hold) on this runtime and sends its answer.
fn answer<F>(out: &Out, id: u64, run: impl FnOnce(Hold) -> F)
where
    F: std::future::Future<Output = Result<Answer, crate::pool::PoolError>> + Send + 'static,
{
    let done = out.clone();
    let running = run(held(out, id));
    tokio::spawn(async move {
        let answer = running.await;
        let _ = done.send(FromWorker::Done { id, answer });
    });
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

/// The pool's hold for invocation `id`: reports when a thread starts it and when it ends.
fn held(out: &Out, id: u64) -> Hold {
    let started = out.clone();
    Hold::with_start(Release(out.clone(), id), move || {
        let _ = started.send(FromWorker::Started { id });
    })
}

/// Tells the gateway that an invocation's work has ended when the pool drops its hold.
struct Release(Out, u64);

impl Drop for Release {
    fn drop(&mut self) {
        let _ = self.0.send(FromWorker::Released { id: self.1 });
    }
}

/// `fetch()` from this process: one round trip to the gateway, which runs the egress pipeline.
struct RemoteEgress {
    out: Out,
    calls: Mutex<HashMap<u64, oneshot::Sender<Fetched>>>,
    next: AtomicU64,
}

impl RemoteEgress {
    fn complete(&self, call: u64, fetched: Fetched) {
        let waiter = self
            .calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&call);
        if let Some(w) = waiter {
            let _ = w.send(fetched);
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
    ) -> BoxFuture<'static, Fetched> {
        if request.body.len() > MAX_BODY_BYTES {
            let message = format!(
                "fetch(): request body of {} bytes exceeds the limit of {MAX_BODY_BYTES} bytes",
                request.body.len()
            );
            return Box::pin(std::future::ready(Fetched::Rejected {
                message,
                charged: false,
            }));
        }
        let call = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(call, tx);
        let sent = self.out.send(FromWorker::Egress {
            call,
            invocation: invoker.invocation,
            request,
            left,
        });
        Box::pin(async move {
            if sent.is_err() {
                return gone();
            }
            rx.await.unwrap_or_else(|_| gone())
        })
    }
}

fn gone() -> Fetched {
    Fetched::Rejected {
        message: "fetch failed: the gateway did not answer".into(),
        charged: false,
    }
}

/// Pool events, forwarded to the gateway's metrics. Warm counts travel with heartbeats.
struct RemoteObserver(Out);

impl PoolObserver for RemoteObserver {
    fn isolate_started(&self, kind: StartKind, took: std::time::Duration) {
        let _ = self
            .0
            .send(FromWorker::Event(Event::IsolateStarted(kind, took)));
    }
    fn isolate_taken(&self, kind: StartKind) {
        let _ = self.0.send(FromWorker::Event(Event::IsolateTaken(kind)));
    }
    fn cache_event(&self, tenant: &str, event: CacheEvent) {
        let _ = self
            .0
            .send(FromWorker::Event(Event::Cache(tenant.to_string(), event)));
    }
    fn cached_workers(&self, tenant: &str, count: usize) {
        let _ = self.0.send(FromWorker::Event(Event::CachedWorkers(
            tenant.to_string(),
            count,
        )));
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
