//! One worker process as the gateway sees it: the child, its channel, the invocations in flight
//! on it, and what its heartbeats said.
#![allow(unsafe_code)] // spawning and signalling worker processes (an OS API); each block has a `// SAFETY:` line

use crate::metrics::Metrics;
use futures::StreamExt;
use isogate_pool::wire::{
    self, Answer, Event, FromWorker, Query, QueryAnswer, ToWorker, WorkerSettings,
};
use isogate_pool::{
    BodyPart, BodySink, BodyStream, EgressPort, ErrorKind, Hold, Invocation, Invoker, Limits,
    PoolError, PoolObserver, Window, WorkerCode, WorkerError,
};
use std::collections::{HashMap, HashSet};
use std::os::fd::AsRawFd;
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Where an invocation's answer goes.
pub(super) enum Reply {
    Http(oneshot::Sender<Result<Answer, PoolError>>),
    Json(oneshot::Sender<Result<Answer, PoolError>>),
}

impl Reply {
    fn send(self, answer: Result<Answer, PoolError>) {
        let _ = match self {
            Reply::Http(tx) | Reply::Json(tx) => tx.send(answer),
        };
    }

    fn fail(self, error: WorkerError) {
        match self {
            Reply::Http(tx) => {
                let _ = tx.send(Ok(Answer::Http(Invocation::failed(error))));
            }
            Reply::Json(tx) => {
                let _ = tx.send(Ok(Answer::Json(Invocation::failed(error))));
            }
        }
    }
}

/// An invocation dispatched to a worker, until its work has ended.
pub(super) struct Pending {
    invoker: Invoker,
    limits: Limits,
    reply: Option<Reply>,
    hold: Option<Hold>,
    /// The message, kept (shared, not copied) so that an invocation a dead worker never
    /// started can be sent to its replacement.
    message: Arc<ToWorker>,
    /// For `get()`: the code, sent only when the worker asks for it.
    code: Option<Arc<WorkerCode>>,
    dispatched: Instant,
    /// The channel lane it was sent down (what concerns it later goes the same way).
    lane: Option<usize>,
    /// When an isolate thread took it (`FromWorker::Started`).
    started: Option<Instant>,
    attempts: u32,
    done: bool,
    /// Where a streamed response body goes (`FromWorker::Body`); dropped at its `End` (or with
    /// the invocation: the receiver then sees the body break off).
    pub(super) body: Option<BodySink>,
    /// Once the body streams: the parts on their way to the task that passes them to `body`
    /// at the client's pace ([`Process::forward_body`]).
    forward: Option<mpsc::UnboundedSender<BodyPart>>,
}

impl Pending {
    pub(super) fn new(
        invoker: Invoker,
        limits: Limits,
        reply: Reply,
        hold: Hold,
        message: ToWorker,
        code: Option<Arc<WorkerCode>>,
    ) -> Pending {
        Pending {
            invoker,
            limits,
            reply: Some(reply),
            hold: Some(hold),
            message: Arc::new(message),
            code,
            dispatched: Instant::now(),
            lane: None,
            started: None,
            attempts: 0,
            done: false,
            body: None,
            forward: None,
        }
    }

    pub(super) fn tenant(&self) -> &str {
        &self.invoker.tenant
    }

    /// Answers the caller with `error` and frees its slot.
    pub(super) fn fail(mut self, error: WorkerError) {
        if let Some(reply) = self.reply.take() {
            reply.fail(error);
        }
        drop(self.hold.take());
    }
}

/// The gateway's writing end of a worker's channel. The calling task (pingora's, for an
/// invocation) encodes its frame and writes it straight to the socket when nothing is queued
/// ahead of it — no hand-off to a writer task, no extra wake-up; only what the socket does not
/// take at once goes to the backlog, which [`Outgoing::drain`] writes as the socket drains.
/// Frames never interleave: a frame is written directly only while the backlog is empty, under
/// the backlog's lock.
struct Outgoing {
    half: tokio::net::unix::OwnedWriteHalf,
    backlog: Mutex<Vec<u8>>,
    wake: tokio::sync::Notify,
}

impl Outgoing {
    fn send(&self, frame: Vec<u8>) -> std::io::Result<()> {
        let mut backlog = self.backlog.lock().unwrap_or_else(|p| p.into_inner());
        if !backlog.is_empty() {
            backlog.extend_from_slice(&frame);
            return Ok(());
        }
        let written = match self.half.try_write(&frame) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        };
        if written < frame.len() {
            backlog.extend_from_slice(&frame[written..]);
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Writes the backlog as the socket takes it; ends when the socket fails.
    async fn drain(self: Arc<Self>) {
        loop {
            self.wake.notified().await;
            loop {
                if self.half.writable().await.is_err() {
                    return;
                }
                let mut backlog = self.backlog.lock().unwrap_or_else(|p| p.into_inner());
                if backlog.is_empty() {
                    break;
                }
                match self.half.try_write(&backlog) {
                    Ok(n) => {
                        backlog.drain(..n);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
        }
    }
}

/// A channel lane of a worker process ([`wire::lane_fds`]): frames to one isolate thread, and
/// the frames that thread writes. Opened on the first dispatch, on that task's runtime
/// (pingora's), so the reader that takes an answer off the lane wakes the waiting task on its
/// own runtime: the gateway side of a request has the two wake-ups of the in-process pool.
struct Lane {
    /// Until opened: the gateway's ends (to the worker, from the worker).
    ends: Mutex<
        Option<(
            std::os::unix::net::UnixStream,
            std::os::unix::net::UnixStream,
        )>,
    >,
    out: std::sync::OnceLock<Arc<Outgoing>>,
}

/// What a dead worker leaves behind.
pub(super) struct Lost {
    /// Tenants to blame (cordoning).
    pub(super) blamed: Vec<String>,
    /// Invocations it had not started: to be sent to its replacement.
    pub(super) unstarted: Vec<(u64, Pending)>,
}

/// Runs `cmd.spawn()` on one long-lived thread. A worker's parent-death signal fires when the
/// *thread* that forked it exits, not the process; runtime threads come and go (a blocking
/// pool's idle threads exit), so every worker is forked by this thread, which lives as long as
/// the gateway.
async fn spawn_from_spawner_thread(cmd: std::process::Command) -> std::io::Result<Child> {
    type Job = (
        std::process::Command,
        oneshot::Sender<std::io::Result<Child>>,
    );
    static SPAWNER: std::sync::OnceLock<std::sync::Mutex<std::sync::mpsc::Sender<Job>>> =
        std::sync::OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let started = std::thread::Builder::new()
            .name("isogate-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            });
        if let Err(e) = started {
            tracing::error!(error = %e, "cannot start the worker spawner thread");
        }
        std::sync::Mutex::new(tx)
    });
    let (tx, rx) = oneshot::channel();
    spawner
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send((cmd, tx))
        .map_err(|_| std::io::Error::other("the worker spawner thread is gone"))?;
    rx.await
        .map_err(|_| std::io::Error::other("the worker spawner thread is gone"))?
}

/// How often an invocation is sent to a worker before a lost worker fails it.
const MAX_ATTEMPTS: u32 = 3;

/// Why the watchdog kills a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kill {
    /// Invocation `id` overran its CPU budget.
    Cpu(u64),
    /// Invocation `id` overran its wall-clock budget.
    Wall(u64),
    /// No heartbeat for too long.
    Hung,
    /// The worker sent something that is not a message of the protocol.
    Malformed,
}

impl Kill {
    pub(super) fn label(self) -> &'static str {
        match self {
            Kill::Cpu(_) => "cpu",
            Kill::Wall(_) => "wall",
            Kill::Hung => "heartbeat",
            Kill::Malformed => "malformed",
        }
    }
}

/// How a worker process ended (the `cause` label of restarts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ExitCause {
    /// Killed by the watchdog.
    Killed(Kill),
    /// Died of a signal (SIGSYS: a syscall its filter forbids; SIGABRT: an allocation failure
    /// or abort; SIGSEGV: a crash; SIGKILL from outside, e.g. the OOM killer).
    Signal(i32),
    /// Exited by itself (status).
    Exited(i32),
    /// Its channel failed and the process could not be waited for.
    Crashed,
}

impl ExitCause {
    pub(super) fn as_str(&self) -> &'static str {
        match self {
            ExitCause::Killed(Kill::Cpu(_)) => "watchdog_cpu",
            ExitCause::Killed(Kill::Wall(_)) => "watchdog_wall",
            ExitCause::Killed(Kill::Hung) => "heartbeat",
            ExitCause::Killed(Kill::Malformed) => "malformed",
            ExitCause::Signal(libc::SIGSYS) => "seccomp",
            ExitCause::Signal(libc::SIGABRT) => "abort",
            ExitCause::Signal(libc::SIGSEGV) | ExitCause::Signal(libc::SIGBUS) => "crash",
            ExitCause::Signal(_) => "signal",
            ExitCause::Exited(_) | ExitCause::Crashed => "exit",
        }
    }

    /// Every label value (restarts are initialised to 0 for each).
    pub(super) const LABELS: &'static [&'static str] = &[
        "watchdog_cpu",
        "watchdog_wall",
        "heartbeat",
        "malformed",
        "seccomp",
        "abort",
        "crash",
        "signal",
        "exit",
    ];
}

impl std::fmt::Display for ExitCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitCause::Killed(k) => write!(f, "killed by the watchdog ({})", k.label()),
            ExitCause::Signal(s) => write!(f, "died of signal {s}"),
            ExitCause::Exited(c) => write!(f, "exited with status {c}"),
            ExitCause::Crashed => write!(f, "channel failed"),
        }
    }
}

struct Beat {
    at: Instant,
    cpu: HashMap<u64, Duration>,
}

/// A running worker process.
/// An egress call of a worker being answered.
struct EgressCall {
    task: tokio::task::AbortHandle,
    /// What of a streamed body the worker may still be sent before it reads more.
    window: Window,
}

pub(super) struct Process {
    pub(super) pid: u32,
    index: usize,
    out: Arc<Outgoing>,
    lanes: Vec<Lane>,
    /// Serialises opening the lanes; holds the lanes' reader and drainer tasks once open.
    lane_tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    next_lane: AtomicUsize,
    egress: Arc<dyn EgressPort>,
    /// The supervisor's runtime (the egress runtime): egress and API calls run there, next to
    /// the upstream connections, whichever runtime reads the lane they came on.
    home: tokio::runtime::Handle,
    pending: Mutex<HashMap<u64, Pending>>,
    beat: Mutex<Beat>,
    warm: AtomicUsize,
    ready: AtomicBool,
    alive: AtomicBool,
    killed: Mutex<Option<Kill>>,
    queries: Mutex<HashMap<u64, oneshot::Sender<QueryAnswer>>>,
    /// Egress calls of this worker in flight, until their answer and any streamed body are
    /// sent: `CancelEgress` aborts the task (dropping the upstream request); `FetchCredit`
    /// refills the body's window.
    egress_calls: Mutex<HashMap<u64, EgressCall>>,
    next_query: AtomicU64,
    /// Tenants this gateway dispatched invocations of to this worker: the only tenant names a
    /// worker's events may carry into metric labels.
    tenants: Mutex<HashSet<String>>,
    metrics: Arc<Metrics>,
}

impl Process {
    /// Spawns `isogate __worker` with an empty environment, one end of a socket pair at
    /// [`wire::CHANNEL_FD`] and a lane of two per isolate thread ([`wire::lane_fds`]);
    /// returns the process and a future that resolves when it has ended.
    pub(super) async fn spawn(
        settings: WorkerSettings,
        egress: Arc<dyn EgressPort>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<(Arc<Process>, oneshot::Receiver<ExitCause>)> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        let lane_count = settings.threads.max(1);
        let mut lanes = Vec::with_capacity(lane_count);
        // The worker's ends, by the fd each must have in the worker (the i-th at CHANNEL_FD + i).
        let mut placed: Vec<Option<std::os::unix::net::UnixStream>> =
            std::iter::repeat_with(|| None)
                .take(wire::channels(lane_count))
                .collect();
        let mut place = |fd: i32, end| {
            let slot = usize::try_from(fd - wire::CHANNEL_FD).ok();
            if let Some(slot) = slot.and_then(|i| placed.get_mut(i)) {
                *slot = Some(end);
            }
        };
        place(wire::CHANNEL_FD, theirs);
        for k in 0..lane_count {
            let (to_worker, worker_reads) = std::os::unix::net::UnixStream::pair()?;
            let (from_worker, worker_writes) = std::os::unix::net::UnixStream::pair()?;
            let (reads_at, writes_at) = wire::lane_fds(k);
            place(reads_at, worker_reads);
            place(writes_at, worker_writes);
            lanes.push(Lane {
                ends: Mutex::new(Some((to_worker, from_worker))),
                out: std::sync::OnceLock::new(),
            });
        }
        let channels: Vec<_> = placed.into_iter().flatten().collect();
        if channels.len() != wire::channels(lane_count) {
            return Err(std::io::Error::other("the channel layout has a gap"));
        }
        let exe = std::env::current_exe()?;
        let mut cmd = std::process::Command::new(exe);
        cmd.arg("__worker")
            .arg("--parent")
            .arg(std::process::id().to_string())
            .env_clear()
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit());
        if let Some(limit) = settings.data_limit_bytes {
            cmd.arg("--data-limit").arg(limit.to_string());
        }
        cmd.arg("--lanes").arg(lane_count.to_string());
        // Only stdio and the channels (from CHANNEL_FD on) cross into the worker.
        let fds: Vec<_> = channels.iter().map(AsRawFd::as_raw_fd).collect();
        isogate_pool::confine::inherit_only(&mut cmd, &fds);
        let mut child = spawn_from_spawner_thread(cmd).await?;
        drop(channels);
        let pid = child.id();
        ours.set_nonblocking(true)?;
        let stream = tokio::net::UnixStream::from_std(ours)?;
        let (read_half, write_half) = stream.into_split();
        let frames = tokio_util::codec::FramedRead::new(read_half, wire::codec());
        let out = Arc::new(Outgoing {
            half: write_half,
            backlog: Mutex::new(Vec::new()),
            wake: tokio::sync::Notify::new(),
        });
        let drainer = tokio::spawn(out.clone().drain());
        let index = settings.index;
        let process = Arc::new(Process {
            pid,
            index,
            out,
            lanes,
            lane_tasks: Mutex::new(Vec::new()),
            next_lane: AtomicUsize::new(0),
            egress: egress.clone(),
            home: tokio::runtime::Handle::current(),
            pending: Mutex::new(HashMap::new()),
            beat: Mutex::new(Beat {
                at: Instant::now(),
                cpu: HashMap::new(),
            }),
            warm: AtomicUsize::new(0),
            ready: AtomicBool::new(false),
            alive: AtomicBool::new(true),
            killed: Mutex::new(None),
            queries: Mutex::new(HashMap::new()),
            egress_calls: Mutex::new(HashMap::new()),
            next_query: AtomicU64::new(1),
            tenants: Mutex::new(HashSet::new()),
            metrics: metrics.clone(),
        });
        process.send(ToWorker::Hello(settings)).ok();

        // Reader of the control channel (the lanes get theirs when they open).
        let reader = tokio::spawn(process.clone().read(frames, None));

        // Waiter: the exit status, then the cause.
        let (exited_tx, exited_rx) = oneshot::channel();
        let waiter_proc = process.clone();
        tokio::spawn(async move {
            let status = tokio::task::spawn_blocking(move || child.wait())
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            waiter_proc.alive.store(false, Ordering::SeqCst);
            reader.abort();
            drainer.abort();
            for task in waiter_proc
                .lane_tasks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .drain(..)
            {
                task.abort();
            }
            // Its egress calls (answers, streamed bodies) have no one left to go to.
            for (_, call) in waiter_proc
                .egress_calls
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .drain()
            {
                call.task.abort();
            }
            let killed = *waiter_proc.killed.lock().unwrap_or_else(|p| p.into_inner());
            let cause = match (killed, status) {
                (Some(k), _) => ExitCause::Killed(k),
                (None, Ok(s)) => {
                    use std::os::unix::process::ExitStatusExt;
                    match (s.signal(), s.code()) {
                        (Some(sig), _) => ExitCause::Signal(sig),
                        (None, Some(code)) => ExitCause::Exited(code),
                        _ => ExitCause::Crashed,
                    }
                }
                (None, Err(_)) => ExitCause::Crashed,
            };
            let _ = exited_tx.send(cause);
        });
        Ok((process, exited_rx))
    }

    /// Reads every frame from the worker on the control channel or a lane (`lane`); anything
    /// malformed kills the worker.
    async fn read(
        self: Arc<Self>,
        mut frames: tokio_util::codec::FramedRead<
            tokio::net::unix::OwnedReadHalf,
            tokio_util::codec::LengthDelimitedCodec,
        >,
        lane: Option<usize>,
    ) {
        while let Some(frame) = frames.next().await {
            let message = match frame
                .map_err(|e| e.to_string())
                .and_then(|f| wire::decode::<FromWorker>(&f).map_err(|e| e.to_string()))
            {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!(worker = self.index, lane, error = %e, "supervisor: malformed message from a worker");
                    self.kill(Kill::Malformed);
                    return;
                }
            };
            self.receive(message, lane);
        }
    }

    /// Opens the lanes (once, on the calling task's runtime): a reader for what each isolate
    /// thread writes, a writer for what goes to it. Every lane opens at once: a thread writes
    /// on its lane whatever channel its work came by.
    fn open_lanes(self: &Arc<Self>) -> Result<(), PoolError> {
        if self.lanes.iter().all(|l| l.out.get().is_some()) {
            return Ok(());
        }
        let mut tasks = self.lane_tasks.lock().unwrap_or_else(|p| p.into_inner());
        if !self.is_alive() {
            return Err(PoolError::Unavailable);
        }
        for (k, lane) in self.lanes.iter().enumerate() {
            let Some((to_worker, from_worker)) =
                lane.ends.lock().unwrap_or_else(|p| p.into_inner()).take()
            else {
                continue;
            };
            let opened = (|| {
                to_worker.set_nonblocking(true)?;
                from_worker.set_nonblocking(true)?;
                let (_, half) = tokio::net::UnixStream::from_std(to_worker)?.into_split();
                let (read_half, _) = tokio::net::UnixStream::from_std(from_worker)?.into_split();
                std::io::Result::Ok((half, read_half))
            })();
            let (half, read_half) = match opened {
                Ok(ends) => ends,
                Err(e) => {
                    tracing::error!(worker = self.index, lane = k, error = %e, "supervisor: cannot open a worker's channel lane");
                    drop(tasks);
                    self.kill(Kill::Malformed);
                    return Err(PoolError::Unavailable);
                }
            };
            let out = Arc::new(Outgoing {
                half,
                backlog: Mutex::new(Vec::new()),
                wake: tokio::sync::Notify::new(),
            });
            let frames = tokio_util::codec::FramedRead::new(read_half, wire::codec());
            tasks.push(tokio::spawn(out.clone().drain()).abort_handle());
            tasks.push(tokio::spawn(self.clone().read(frames, Some(k))).abort_handle());
            let _ = lane.out.set(out);
        }
        Ok(())
    }

    /// The writer for `lane` (the control channel's when it has none or is not open).
    fn outgoing(&self, lane: Option<usize>) -> &Outgoing {
        lane.and_then(|k| self.lanes.get(k))
            .and_then(|l| l.out.get())
            .map_or(&*self.out, |o| &**o)
    }

    /// The lane for an invocation: a `get()` goes to its Worker's home thread, anything else to
    /// the next thread round-robin.
    fn lane_for(&self, message: &ToWorker) -> Option<usize> {
        let n = self.lanes.len();
        match message {
            ToWorker::Get { invoker, .. } => Some(isogate_pool::pool::home_thread(
                &invoker.tenant,
                invoker.worker_id.as_deref().unwrap_or(""),
                n,
            )),
            ToWorker::Load { .. } | ToWorker::Execute { .. } => {
                Some(self.next_lane.fetch_add(1, Ordering::Relaxed) % n.max(1))
            }
            _ => None,
        }
    }

    fn pending(&self) -> MutexGuard<'_, HashMap<u64, Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    pub(super) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub(super) fn warm(&self) -> usize {
        self.warm.load(Ordering::Relaxed)
    }

    /// Sends `message` on the control channel.
    pub(super) fn send(&self, message: ToWorker) -> Result<(), PoolError> {
        self.send_shared(None, Arc::new(message))
    }

    /// Sends `message` down `lane` (see [`Process::outgoing`]).
    fn send_on(&self, lane: Option<usize>, message: ToWorker) -> Result<(), PoolError> {
        self.send_shared(lane, Arc::new(message))
    }

    /// Passes a worker's streamed response body to the client's sink as the client takes it:
    /// each chunk waits for room in the sink's window, then its share goes back to the worker
    /// ([`ToWorker::BodyCredit`]), so at most a window waits here and another in the sink. A
    /// client that went away cancels the Worker's stream ([`ToWorker::BodyCancel`]).
    fn forward_body(
        self: &Arc<Self>,
        id: u64,
        lane: Option<usize>,
        mut sink: BodySink,
    ) -> mpsc::UnboundedSender<BodyPart> {
        let (tx, mut rx) = mpsc::unbounded_channel::<BodyPart>();
        let this = self.clone();
        tokio::spawn(async move {
            while let Some(part) = rx.recv().await {
                match part {
                    BodyPart::Chunk(bytes) => {
                        let n = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
                        if !sink.room(bytes.len()).await || !sink.send(BodyPart::Chunk(bytes)) {
                            let _ = this.send_on(lane, ToWorker::BodyCancel { id });
                            return;
                        }
                        let _ = this.send_on(lane, ToWorker::BodyCredit { id, bytes: n });
                    }
                    end => {
                        sink.send(end);
                        return;
                    }
                }
            }
        });
        tx
    }

    /// Runs the egress or API call `call` of the worker as a task that `CancelEgress` can abort
    /// (and `FetchCredit` pace through `window`); the call is forgotten when the task ends.
    fn track_call(
        self: &Arc<Self>,
        call: u64,
        window: Window,
        work: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let this = self.clone();
        let mut calls = self.egress_calls.lock().unwrap_or_else(|p| p.into_inner());
        let task = self.home.spawn(async move {
            work.await;
            this.egress_calls
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&call);
        });
        // Registered under the lock the task takes to unregister: never after it.
        if !task.is_finished() {
            calls.insert(
                call,
                EgressCall {
                    task: task.abort_handle(),
                    window,
                },
            );
        }
    }

    /// Forwards the rest of a streamed `fetch()` body to the worker, never more than the
    /// window ahead of what the worker has read; ends with its `End`.
    async fn send_body(
        &self,
        call: u64,
        lane: Option<usize>,
        mut rest: BodyStream,
        window: &Window,
    ) {
        loop {
            let part = match rest.next().await {
                Some(Ok(bytes)) => {
                    if !window.take(bytes.len()).await {
                        return;
                    }
                    BodyPart::Chunk(bytes)
                }
                Some(Err(e)) => BodyPart::End(Err(e)),
                None => BodyPart::End(Ok(())),
            };
            let end = matches!(part, BodyPart::End(_));
            if self
                .send_on(lane, ToWorker::FetchedBody { call, part })
                .is_err()
                || end
            {
                return;
            }
        }
    }

    /// Encodes `message` on the calling thread and writes it (see [`Outgoing`]). A message too
    /// large for the wire fails its invocation, not the worker.
    fn send_shared(&self, lane: Option<usize>, message: Arc<ToWorker>) -> Result<(), PoolError> {
        if !self.is_alive() {
            return Err(PoolError::Unavailable);
        }
        let mut frame = Vec::new();
        if let Err(e) = wire::frame_into(&mut frame, &*message) {
            tracing::error!(error = %e, "supervisor: cannot encode a message for a worker");
            self.fail_unsendable(&message);
            return Ok(());
        }
        self.outgoing(lane)
            .send(frame)
            .map_err(|_| PoolError::Unavailable)
    }

    /// Records `pending` under `id` and sends its message.
    pub(super) fn dispatch(
        self: &Arc<Self>,
        id: u64,
        mut pending: Pending,
    ) -> Result<(), PoolError> {
        self.open_lanes()?;
        let message = pending.message.clone();
        pending.lane = self.lane_for(&message);
        let lane = pending.lane;
        {
            let mut tenants = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
            if !tenants.contains(pending.tenant()) {
                tenants.insert(pending.tenant().to_string());
            }
        }
        pending.dispatched = Instant::now();
        pending.attempts += 1;
        self.pending().insert(id, pending);
        self.metrics.worker_in_flight.inc();
        if let Err(e) = self.send_shared(lane, message) {
            if self.pending().remove(&id).is_some() {
                self.metrics.worker_in_flight.dec();
            }
            return Err(e);
        }
        Ok(())
    }

    fn knows(&self, tenant: &str) -> bool {
        self.tenants
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(tenant)
    }

    /// Asks the worker about its cache; `None` if it does not answer within a second.
    pub(super) async fn query(&self, query: Query) -> Option<QueryAnswer> {
        let (Query::CachedIds { tenant } | Query::Evict { tenant, .. }) = &query;
        self.tenants
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tenant.clone());
        let call = self.next_query.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.queries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(call, tx);
        if self.send(ToWorker::Query { call, query }).is_err() {
            self.queries
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&call);
            return None;
        }
        let answer = tokio::time::timeout(Duration::from_secs(1), rx).await;
        self.queries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&call);
        answer.ok().and_then(Result::ok)
    }

    /// Handles a frame the worker sent on the control channel or on `lane` (egress answers go
    /// back the way their call came).
    fn receive(self: &Arc<Self>, message: FromWorker, lane: Option<usize>) {
        let (egress, metrics) = (&self.egress, &self.metrics);
        match message {
            FromWorker::Ready {
                confinement,
                complete,
            } => {
                if complete {
                    tracing::info!(worker = self.index, pid = self.pid, confinement = %confinement, "worker process ready");
                } else {
                    tracing::warn!(worker = self.index, pid = self.pid, confinement = %confinement,
                        "worker process ready with a degraded confinement (a kernel feature is missing; see README \"Isolation\")");
                }
            }
            FromWorker::Answered { call, answer } => {
                let waiter = self
                    .queries
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&call);
                if let Some(w) = waiter {
                    let _ = w.send(answer);
                }
            }
            FromWorker::Done {
                id,
                answer,
                released,
            } => {
                let mut pending = self.pending();
                let Some(p) = pending.get_mut(&id) else {
                    return;
                };
                p.done = true;
                if released {
                    drop(p.hold.take());
                }
                metrics
                    .worker_round_trip
                    .observe(p.dispatched.elapsed().as_secs_f64());
                if let Some(reply) = p.reply.take() {
                    reply.send(answer);
                }
                if p.hold.is_none() {
                    pending.remove(&id);
                    metrics.worker_in_flight.dec();
                }
            }
            FromWorker::Body { id, part } => {
                let mut pending = self.pending();
                let Some(p) = pending.get_mut(&id) else {
                    return;
                };
                let end = matches!(part, BodyPart::End(_));
                if p.forward.is_none() {
                    if let Some(sink) = p.body.take() {
                        p.forward = Some(self.forward_body(id, p.lane, sink));
                    }
                }
                if let Some(forward) = &p.forward {
                    let _ = forward.send(part);
                }
                if end {
                    p.forward = None;
                }
            }
            FromWorker::Released { id } => {
                let mut pending = self.pending();
                if let Some(p) = pending.get_mut(&id) {
                    drop(p.hold.take());
                    if p.done {
                        pending.remove(&id);
                        metrics.worker_in_flight.dec();
                    }
                }
            }
            FromWorker::NeedCode { id } => {
                let with_code = self.pending().get_mut(&id).and_then(|p| {
                    let code = p.code.take()?;
                    let lane = p.lane;
                    match &*p.message {
                        ToWorker::Get {
                            id,
                            invoker,
                            digest,
                            request,
                            limits,
                            tenant_cap,
                            ..
                        } => Some((
                            lane,
                            ToWorker::Get {
                                id: *id,
                                invoker: invoker.clone(),
                                digest: *digest,
                                code: Some(code),
                                request: request.clone(),
                                limits: *limits,
                                tenant_cap: *tenant_cap,
                            },
                        )),
                        _ => None,
                    }
                });
                match with_code {
                    Some((lane, m)) => {
                        let _ = self.send_on(lane, m);
                    }
                    // Asked twice, or for something that is not a get(): not this protocol.
                    None => self.kill(Kill::Malformed),
                }
            }
            FromWorker::Started { id } => {
                if let Some(p) = self.pending().get_mut(&id) {
                    p.started = Some(Instant::now());
                }
            }
            FromWorker::Egress {
                call,
                invocation,
                request,
                left,
            } => {
                // The tenant is the one this gateway dispatched the invocation for; a worker
                // cannot name another.
                let invoker = self.pending().get(&invocation).map(|p| p.invoker.clone());
                let this = self.clone();
                let egress = egress.clone();
                let window = Window::default();
                let paced = window.clone();
                self.track_call(call, window, async move {
                    let (fetched, rest) = match invoker {
                        Some(invoker) => egress.fetch(invoker, request, left).await,
                        None => (
                            isogate_pool::Fetched::Rejected {
                                message: "fetch(): the invocation has ended".into(),
                                charged: false,
                                detail: None,
                            },
                            None,
                        ),
                    };
                    if this
                        .send_on(lane, ToWorker::Fetched { call, fetched })
                        .is_ok()
                    {
                        if let Some(rest) = rest {
                            this.send_body(call, lane, rest, &paced).await;
                        }
                    }
                });
            }
            FromWorker::Api {
                call,
                invocation,
                api,
                left,
            } => {
                // Whose call it is comes from the invocation this gateway dispatched.
                let invoker = self.pending().get(&invocation).map(|p| p.invoker.clone());
                let this = self.clone();
                let egress = egress.clone();
                self.track_call(call, Window::default(), async move {
                    let answer = match invoker {
                        Some(invoker) => egress.api(invoker, api, left).await,
                        None => isogate_pool::ApiAnswer::Failed {
                            failure: isogate_pool::ApiFailure::new(
                                isogate_pool::ApiErrorCode::ApiUnavailable,
                                "the invocation has ended",
                            ),
                            charged: false,
                        },
                    };
                    let _ = this.send_on(lane, ToWorker::ApiAnswered { call, answer });
                });
            }
            FromWorker::CancelEgress { call } => {
                let task = self
                    .egress_calls
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&call);
                if let Some(call) = task {
                    call.task.abort();
                }
            }
            FromWorker::FetchCredit { call, bytes } => {
                // Credit for a call that has ended, or more than was taken, changes nothing.
                if let Some(call) = self
                    .egress_calls
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&call)
                {
                    call.window.give(bytes);
                }
            }
            FromWorker::Event(event) => match event {
                Event::IsolateStarted(kind, took) => metrics.isolate_started(kind, took),
                Event::IsolateTaken(kind) => metrics.isolate_taken(kind),
                Event::Cache(tenant, e, n) if self.knows(&tenant) => {
                    metrics.cache_events_by(&tenant, e, n)
                }
                Event::CachedWorkers(tenant, n) if self.knows(&tenant) => {
                    metrics.cached_workers(&tenant, n)
                }
                // A tenant this worker was never given: not a label a worker may invent.
                Event::Cache(..) | Event::CachedWorkers(..) => self.kill(Kill::Malformed),
            },
            FromWorker::Heartbeat {
                running,
                warm,
                ready,
            } => {
                self.warm.store(warm, Ordering::Relaxed);
                self.ready.store(ready, Ordering::SeqCst);
                let mut beat = self.beat.lock().unwrap_or_else(|p| p.into_inner());
                beat.at = Instant::now();
                beat.cpu = running.into_iter().collect();
            }
        }
    }

    /// Whether an invocation overran its limits by `grace`, or the heartbeats stopped.
    pub(super) fn overrun(
        &self,
        now: Instant,
        grace: Duration,
        heartbeat_timeout: Duration,
    ) -> Option<Kill> {
        if !self.is_alive()
            || self
                .killed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some()
        {
            return None;
        }
        let beat = self.beat.lock().unwrap_or_else(|p| p.into_inner());
        if now.saturating_duration_since(beat.at) > heartbeat_timeout {
            return Some(Kill::Hung);
        }
        let pending = self.pending();
        for (id, p) in pending.iter() {
            if p.hold.is_none() && p.done {
                continue;
            }
            // Wall time counts from when a thread took the invocation (time queued behind
            // another invocation is not this one's overrun).
            let wall = Duration::from_millis(p.limits.wall_ms) + grace;
            if p.started
                .is_some_and(|at| now.saturating_duration_since(at) > wall)
            {
                return Some(Kill::Wall(*id));
            }
            if let Some(cpu) = beat.cpu.get(id) {
                if *cpu > Duration::from_millis(p.limits.cpu_ms) + grace {
                    return Some(Kill::Cpu(*id));
                }
            }
        }
        None
    }

    /// SIGKILLs the process (once); the waiter reports the cause.
    pub(super) fn kill(&self, why: Kill) {
        {
            let mut killed = self.killed.lock().unwrap_or_else(|p| p.into_inner());
            if killed.is_some() || !self.is_alive() {
                return;
            }
            *killed = Some(why);
        }
        // Counted here, once per process, for every reason (the watchdog's overruns and hung
        // heartbeats, and a malformed message seen by the reader).
        self.metrics
            .watchdog_kills
            .with_label_values(&[why.label()])
            .inc();
        // SAFETY: kill(2) with our own child's pid; the child has not been reaped (the waiter
        // sets `alive` false only after wait() returns), so the pid cannot have been reused.
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) };
    }

    /// Answers the invocations that were running when the process ended (the overrunning one
    /// with its limit, the others with `worker_crashed`); returns the tenants to blame and the
    /// invocations no thread had started, which may run elsewhere.
    pub(super) fn fail_all(&self, cause: &ExitCause) -> Lost {
        let overrun = match cause {
            ExitCause::Killed(Kill::Cpu(id)) => Some((*id, ErrorKind::CpuLimit)),
            ExitCause::Killed(Kill::Wall(id)) => Some((*id, ErrorKind::WallLimit)),
            _ => None,
        };
        let drained: Vec<(u64, Pending)> = self.pending().drain().collect();
        self.metrics.worker_in_flight.sub(drained.len() as i64);
        let mut lost = Lost {
            blamed: Vec::new(),
            unstarted: Vec::new(),
        };
        for (id, p) in drained {
            if p.started.is_none() && !p.done && p.attempts < MAX_ATTEMPTS {
                lost.unstarted.push((id, p));
                continue;
            }
            let error = match overrun {
                Some((o, kind)) if o == id => {
                    lost.blamed.push(p.invoker.tenant.clone());
                    WorkerError::new(
                        kind,
                        format!(
                            "the invocation overran its {} limit inside a native call; its worker process was stopped",
                            if kind == ErrorKind::CpuLimit { "CPU" } else { "wall-clock" }
                        ),
                    )
                }
                _ => {
                    if overrun.is_none() && p.started.is_some() {
                        lost.blamed.push(p.invoker.tenant.clone());
                    }
                    WorkerError::new(
                        ErrorKind::WorkerCrashed,
                        format!(
                            "the worker process running this invocation ended ({cause}); retry"
                        ),
                    )
                }
            };
            p.fail(error);
        }
        lost.blamed.sort();
        lost.blamed.dedup();
        lost
    }

    /// A message that could not be encoded (too large): its invocation fails, not the worker.
    fn fail_unsendable(&self, message: &ToWorker) {
        let id = match message {
            ToWorker::Load { id, .. } | ToWorker::Get { id, .. } | ToWorker::Execute { id, .. } => {
                *id
            }
            _ => return,
        };
        if let Some(mut p) = self.pending().remove(&id) {
            self.metrics.worker_in_flight.dec();
            if let Some(reply) = p.reply.take() {
                reply.fail(WorkerError::new(
                    ErrorKind::Exception,
                    format!(
                        "the request is too large for the worker channel (limit {} bytes)",
                        wire::MAX_FRAME_BYTES
                    ),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// Frames written directly and through the backlog (one larger than the socket's buffer)
    /// arrive whole and in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn direct_writes_and_the_backlog_keep_frames_in_order() {
        let (ours, mut theirs) = tokio::net::UnixStream::pair().unwrap();
        let (_read, half) = ours.into_split();
        let out = Arc::new(Outgoing {
            half,
            backlog: Mutex::new(Vec::new()),
            wake: tokio::sync::Notify::new(),
        });
        let drainer = tokio::spawn(out.clone().drain());
        let frames: Vec<Vec<u8>> = vec![
            vec![1; 10],
            (0..8 << 20).map(|i| (i % 251) as u8).collect(),
            vec![2; 3],
            vec![3; 100_000],
        ];
        let expected: Vec<u8> = frames.concat();
        // From a thread outside the runtime, as pingora's tasks are.
        let writer = {
            let out = out.clone();
            std::thread::spawn(move || {
                for f in frames {
                    out.send(f).unwrap();
                }
            })
        };
        let mut got = vec![0; expected.len()];
        theirs.read_exact(&mut got).await.unwrap();
        writer.join().unwrap();
        assert!(got == expected, "bytes arrived out of order or damaged");
        assert!(out.backlog.lock().unwrap().is_empty());
        drainer.abort();
    }
}
