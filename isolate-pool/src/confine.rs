//! Confinement of a worker process: what a worker process (`isogate __worker`) applies to itself
//! before it runs any Worker code, so that a memory-safety bug in the engine or a native module
//! gives an attacker a process that can compute and talk over the fds it inherited, and nothing
//! else: no file, no new socket, no new process, no signal to another process, bounded memory.
//!
//! [`confine`] applies, in this order (each step's reason is at its function):
//! 1. `PR_SET_PDEATHSIG(SIGKILL)`, then a check that the parent that spawned us is still there
//!    (a worker must never outlive its gateway): [`set_parent_death_signal`].
//! 2. The inherited file descriptors are listed (`/proc/self/fd`, while files can still be
//!    opened) and checked against [`Confinement::keep_fds`] ([`open_fds`]). Then the lazy
//!    once-per-process initialisations of glibc and tokio that would need a forbidden syscall
//!    later are run now ([`prepare_process`]).
//! 3. `RLIMIT_CORE` 0, `RLIMIT_DATA` (the process memory bound), `RLIMIT_NOFILE` just above the
//!    highest open fd: [`set_rlimits`].
//! 4. `PR_SET_NO_NEW_PRIVS`: [`set_no_new_privs`].
//! 5. Landlock, all filesystem rights (and TCP bind/connect, abstract Unix sockets and signals
//!    where the ABI has them) handled with no rule, so no access at all: [`restrict_filesystem`].
//! 6. A seccomp-bpf allowlist on every thread (TSYNC), default action: kill the process
//!    ([`install_seccomp_filter`]).
//!
//! Linux only (x86_64 and aarch64 for seccomp); elsewhere [`confine`] fails with
//! [`ConfineError::Unsupported`].
#![allow(unsafe_code)] // prctl, seccomp, rlimits and fds (OS APIs); each block has a `// SAFETY:` line

use std::fmt;

/// The fd number a worker finds its (first) channel at when spawned with `inherit_only`; the
/// others follow it (`CHANNEL_FD + 1`, …).
pub const CHANNEL_FD: i32 = 3;

/// What a worker process asks [`confine`] for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confinement {
    /// `RLIMIT_DATA` for the whole process; `None` leaves it as inherited.
    ///
    /// `RLIMIT_DATA` (Linux ≥ 4.7) counts what can actually hold data: `brk` and every private
    /// writable mapping (malloc arenas as they are committed, thread stacks, the pool's lazily
    /// backed large allocations). `RLIMIT_AS` is deliberately NOT set: it also counts address
    /// space that never holds a byte — glibc reserves 64 MiB (`PROT_NONE`) per malloc arena and
    /// creates up to 8 arenas per core, each thread reserves its stack and guard, the allocator
    /// maps over-budget allocations lazily — so an `RLIMIT_AS` low enough to bound memory fails
    /// thread and arena creation long before memory is short. Measured: a warm pool of 2 isolate
    /// threads and 4 isolates has `VmSize` 295 MB for `VmData` 24 MB and `VmRSS` 9 MB (the
    /// `confine` integration test `confinement_binds_threads_started_before_it` prints it).
    ///
    /// An allocation refused by this limit makes Rust's allocator abort the process (SIGABRT):
    /// the supervisor sees a dead worker, never a hang.
    pub data_limit_bytes: Option<u64>,
    /// File descriptors the worker keeps: 0, 1, 2 and its channel. Each must be open.
    pub keep_fds: Vec<i32>,
    /// Whether an open fd outside `keep_fds` is an error ([`ConfineError::UnexpectedFds`]):
    /// the spawner must not leak a gateway socket or file into a worker. Set `false` only when
    /// threads that own fds (a runtime, a pool) were started before confining.
    pub reject_unexpected_fds: bool,
    /// The pid that spawned this process (the gateway passes its own pid). `None`: only checks
    /// that the parent is not init (pid 1), i.e. that we were not already re-parented.
    pub expected_parent: Option<u32>,
    /// Whether a non-empty environment is an error ([`ConfineError::Environment`]): a worker is
    /// spawned with an empty environment (`Command::env_clear`), so no secret of the gateway's
    /// environment reaches it (`/proc/PID/environ` keeps the environment a process was started
    /// with, whatever it does later: only the spawner can keep it clean; this checks it did).
    pub require_empty_env: bool,
    /// `RLIMIT_NOFILE` is set to the highest open fd, plus 1, plus 2 for tokio's signal socket
    /// pair, plus this headroom. After confinement the only calls that create fds are `epoll_create1`,
    /// `eventfd2` and `fcntl(F_DUPFD_CLOEXEC)`: a tokio runtime takes about 4 (epoll, its clone,
    /// eventfd, a clone of the signal receiver), so the default (256) fits 60 isolate threads.
    pub fd_headroom: u64,
}

impl Confinement {
    /// What a worker process spawned by the supervisor asks for: stdio and its `channels`
    /// channels from [`CHANNEL_FD`] on (see `inherit_only`), nothing else open, an empty
    /// environment, the gateway's pid as parent, `data_limit_bytes` as the process memory bound.
    pub fn worker(data_limit_bytes: Option<u64>, gateway_pid: u32, channels: usize) -> Confinement {
        let channels = i32::try_from(channels).unwrap_or(i32::MAX - CHANNEL_FD);
        Confinement {
            data_limit_bytes,
            keep_fds: [0, 1, 2]
                .into_iter()
                .chain(CHANNEL_FD..CHANNEL_FD + channels)
                .collect(),
            expected_parent: Some(gateway_pid),
            ..Confinement::default()
        }
    }
}

impl Default for Confinement {
    fn default() -> Self {
        Confinement {
            data_limit_bytes: None,
            keep_fds: vec![0, 1, 2],
            reject_unexpected_fds: true,
            expected_parent: None,
            require_empty_env: true,
            fd_headroom: 256,
        }
    }
}

/// What Landlock enforced (log it: the caller degrades with a warning, never silently).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LandlockStatus {
    /// Everything requested is enforced (a kernel with the newest ABI the `landlock` crate
    /// knows).
    Full {
        /// Landlock ABI level of the kernel.
        abi: u32,
        /// The domain binds every thread of the process (ABI ≥ 8, `LANDLOCK_RESTRICT_SELF_TSYNC`);
        /// otherwise only the calling thread and the threads it starts afterwards.
        all_threads: bool,
    },
    /// Some rights are enforced; the kernel's ABI lacks others. Usual: the filesystem is fully
    /// closed from ABI 5 (Linux 6.10: ABI 2 adds cross-directory renames, 3 truncation, 5 device
    /// ioctls), TCP from ABI 4, abstract Unix sockets and signals from ABI 6; newer ABIs add
    /// rights (UDP, pathname Unix sockets, all-threads enforcement) that seccomp covers anyway.
    Partial {
        /// Landlock ABI level of the kernel.
        abi: u32,
        /// As for `Full`.
        all_threads: bool,
    },
    /// Nothing is enforced: the kernel lacks Landlock or it is disabled at boot (`abi` 0).
    NotEnforced {
        /// Landlock ABI level of the kernel (0: none).
        abi: u32,
    },
}

impl LandlockStatus {
    /// The ABI level (0: Landlock unavailable).
    pub fn abi(self) -> u32 {
        match self {
            LandlockStatus::Full { abi, .. }
            | LandlockStatus::Partial { abi, .. }
            | LandlockStatus::NotEnforced { abi } => abi,
        }
    }

    /// Whether any restriction is in force.
    pub fn is_enforced(self) -> bool {
        !matches!(self, LandlockStatus::NotEnforced { .. })
    }

    /// Whether every requested restriction is in force.
    pub fn is_full(self) -> bool {
        matches!(self, LandlockStatus::Full { .. })
    }
}

impl fmt::Display for LandlockStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LandlockStatus::Full { abi, all_threads } => {
                write!(f, "fully enforced (ABI {abi}, all threads: {all_threads})")
            }
            LandlockStatus::Partial { abi, all_threads } => {
                write!(
                    f,
                    "partially enforced (ABI {abi}, all threads: {all_threads})"
                )
            }
            LandlockStatus::NotEnforced { abi } => write!(f, "not enforced (ABI {abi})"),
        }
    }
}

/// What [`confine`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfineReport {
    /// `PR_SET_NO_NEW_PRIVS` is set.
    pub no_new_privs: bool,
    /// The seccomp allowlist is installed on every thread.
    pub seccomp: bool,
    /// What Landlock enforced.
    pub landlock: LandlockStatus,
    /// `RLIMIT_DATA` now in force (`None`: left as inherited).
    pub data_limit_bytes: Option<u64>,
    /// `RLIMIT_NOFILE` now in force.
    pub nofile_limit: u64,
    /// Fds that were open when confining.
    pub open_fds: Vec<i32>,
}

/// Why confinement failed; one variant per step. The worker must exit on any of them.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    /// This platform has no confinement (only Linux on x86_64/aarch64 has).
    #[error("process confinement is not supported on this platform")]
    Unsupported,
    /// `PR_SET_PDEATHSIG` failed.
    #[error("PR_SET_PDEATHSIG failed: {0}")]
    ParentDeathSignal(#[source] std::io::Error),
    /// The parent that spawned this process is gone (we were re-parented).
    #[error("the parent process is gone (parent is now pid {actual}, expected {expected:?})")]
    ParentGone {
        /// The pid expected (`None`: anything but 1).
        expected: Option<u32>,
        /// `getppid()` now.
        actual: u32,
    },
    /// `/proc/self/fd` could not be listed.
    #[error("listing open file descriptors failed: {0}")]
    ListFds(#[source] std::io::Error),
    /// The process was started with environment variables (their names; values are never
    /// shown, they may be secrets).
    #[error("the worker's environment is not empty: {0:?}")]
    Environment(Vec<String>),
    /// A descriptor of `keep_fds` is not open.
    #[error("file descriptor {0} should be kept but is not open")]
    MissingFd(i32),
    /// Descriptors outside `keep_fds` are open.
    #[error("unexpected open file descriptors: {0:?}")]
    UnexpectedFds(Vec<i32>),
    /// The process-wide lazy initialisations could not be run.
    #[error("preparing the process failed: {0}")]
    Prepare(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A resource limit could not be set.
    #[error("setting {resource} failed: {source}")]
    Rlimit {
        /// The limit's name.
        resource: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// `PR_SET_NO_NEW_PRIVS` failed.
    #[error("PR_SET_NO_NEW_PRIVS failed: {0}")]
    NoNewPrivs(#[source] std::io::Error),
    /// Landlock failed (not "unsupported", which is reported, but an error of a supported kernel).
    #[error("landlock failed: {0}")]
    Landlock(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The seccomp filter could not be built.
    #[error("building the seccomp filter failed: {0}")]
    SeccompBuild(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The seccomp filter could not be installed (on every thread).
    #[error("installing the seccomp filter failed: {0}")]
    SeccompInstall(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ConfineError {
    /// A short label for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            ConfineError::Unsupported => "unsupported",
            ConfineError::ParentDeathSignal(_) => "parent_death_signal",
            ConfineError::ParentGone { .. } => "parent_gone",
            ConfineError::ListFds(_) => "list_fds",
            ConfineError::Environment(_) => "environment",
            ConfineError::MissingFd(_) => "missing_fd",
            ConfineError::UnexpectedFds(_) => "unexpected_fds",
            ConfineError::Prepare(_) => "prepare",
            ConfineError::Rlimit { .. } => "rlimit",
            ConfineError::NoNewPrivs(_) => "no_new_privs",
            ConfineError::Landlock(_) => "landlock",
            ConfineError::SeccompBuild(_) => "seccomp_build",
            ConfineError::SeccompInstall(_) => "seccomp_install",
        }
    }
}

/// Applies every step (module docs) to the calling process. Call it first thing in the worker,
/// before starting any thread: Landlock below ABI 8 binds only the calling thread and the threads
/// it starts later (seccomp binds all threads regardless).
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
pub fn confine(c: &Confinement) -> Result<ConfineReport, ConfineError> {
    set_parent_death_signal(c.expected_parent)?;
    if c.require_empty_env {
        let names: Vec<String> = std::env::vars_os()
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect();
        if !names.is_empty() {
            return Err(ConfineError::Environment(names));
        }
    }
    let open_fds = open_fds()?;
    for fd in &c.keep_fds {
        if !open_fds.contains(fd) {
            return Err(ConfineError::MissingFd(*fd));
        }
    }
    let unexpected: Vec<i32> = open_fds
        .iter()
        .copied()
        .filter(|fd| !c.keep_fds.contains(fd))
        .collect();
    if c.reject_unexpected_fds && !unexpected.is_empty() {
        return Err(ConfineError::UnexpectedFds(unexpected));
    }
    prepare_process()?;
    let highest = open_fds.iter().copied().max().unwrap_or(2).max(2) as u64;
    // + 2: the socket pair tokio's signal driver keeps for the process (made just now).
    let nofile_limit = highest + 1 + 2 + c.fd_headroom;
    set_rlimits(c.data_limit_bytes, nofile_limit)?;
    set_no_new_privs()?;
    let landlock = restrict_filesystem()?;
    install_seccomp_filter()?;
    Ok(ConfineReport {
        no_new_privs: true,
        seccomp: true,
        landlock,
        data_limit_bytes: c.data_limit_bytes,
        nofile_limit,
        open_fds,
    })
}

/// Confinement is unsupported here.
#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
pub fn confine(_c: &Confinement) -> Result<ConfineReport, ConfineError> {
    Err(ConfineError::Unsupported)
}

#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
pub use linux::{
    inherit_only, install_seccomp_filter, open_fds, prepare_process, restrict_filesystem,
    set_no_new_privs, set_parent_death_signal, set_rlimits,
};

#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
mod linux {
    use super::{ConfineError, LandlockStatus};
    use seccompiler::{
        SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule, TargetArch,
    };
    use std::collections::BTreeMap;
    use std::io;
    use std::os::fd::RawFd;

    use super::CHANNEL_FD;

    /// Step 1. `PR_SET_PDEATHSIG(SIGKILL)`: when the gateway dies (even by SIGKILL, which it
    /// cannot clean up after), the kernel kills this worker, so no orphaned worker keeps running
    /// tenant code or holding memory. Then the parent is checked: if it died before the prctl
    /// took effect we were re-parented and no signal will ever come, so we must not go on.
    ///
    /// Caveat for the spawner: the signal fires when the *thread* that spawned the worker exits,
    /// not the process. Spawn workers from a thread that lives as long as the gateway (not from
    /// a tokio blocking-pool thread, which exits after being idle).
    pub fn set_parent_death_signal(expected_parent: Option<u32>) -> Result<(), ConfineError> {
        // SAFETY: prctl with integer arguments only; no memory is passed.
        let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
        if rc != 0 {
            return Err(ConfineError::ParentDeathSignal(io::Error::last_os_error()));
        }
        // SAFETY: getppid has no arguments and cannot fail.
        let actual = unsafe { libc::getppid() } as u32;
        let alive = match expected_parent {
            Some(expected) => actual == expected,
            None => actual != 1,
        };
        if alive {
            Ok(())
        } else {
            Err(ConfineError::ParentGone {
                expected: expected_parent,
                actual,
            })
        }
    }

    /// Step 2b. Runs, while files and sockets are still allowed, the once-per-process lazy
    /// initialisations that would otherwise make a forbidden syscall later and get the worker
    /// killed at a random moment:
    /// - glibc malloc reads `/proc/sys/vm/overcommit_memory` (`openat`) the first time a thread
    ///   arena's heap shrinks; a thread allocating and freeing a few MiB triggers it now.
    /// - glibc sizes its arena limit from the CPU count when the 9th arena is created (an
    ///   `openat` of `/sys/devices/system/cpu/online` before glibc 2.35); `M_ARENA_MAX` is set
    ///   now to the same default (8 per CPU) so it never asks.
    /// - glibc loads the local time zone (`openat` of `/etc/localtime`, or `$TZ`) the first time
    ///   local time is converted — any Worker's `new Date().toString()`; `tzset()` loads it now
    ///   and later conversions reuse it.
    /// - tokio's signal driver creates a process-wide Unix socket pair (`socketpair`) with the
    ///   first runtime that has I/O enabled; a throwaway runtime creates it now.
    pub fn prepare_process() -> Result<(), ConfineError> {
        #[cfg(target_env = "gnu")]
        {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            let arenas = (8 * cpus).min(i32::MAX as usize) as libc::c_int;
            // SAFETY: mallopt with an integer parameter; no memory is passed.
            unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) };
            std::thread::Builder::new()
                .name("isogate-confine-prep".into())
                .spawn(|| {
                    // 256 blocks of 16 KiB: below the mmap threshold, so they come from this
                    // thread's arena heap; freed newest first, they merge into the top chunk
                    // and the heap is trimmed (shrink_heap → the overcommit check).
                    let mut blocks: Vec<Vec<u8>> = Vec::with_capacity(256);
                    for i in 0..256 {
                        let mut b = Vec::with_capacity(16 << 10);
                        b.push(i as u8);
                        blocks.push(b);
                    }
                    while blocks.pop().is_some() {}
                })
                .and_then(|t| t.join().map_err(|_| io::Error::other("panicked")))
                .map_err(|e| ConfineError::Prepare(Box::new(e)))?;
        }
        // SAFETY: tzset has no arguments; it reads the environment (nobody modifies it) and the
        // zone file under glibc's own lock.
        unsafe { tzset() };
        tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| ConfineError::Prepare(Box::new(e)))?;
        Ok(())
    }

    extern "C" {
        /// POSIX `tzset(3)` (declared here: not every libc version of the `libc` crate has it).
        fn tzset();
    }

    /// Spawner side: makes `cmd`'s child inherit only fds 0, 1, 2 and `channels`, the i-th as
    /// fd [`CHANNEL_FD`]` + i` (3, 4, …). `std::process::Command` passes on every fd of the
    /// parent that lacks `CLOEXEC` (a gateway may have inherited some from its own parent); a
    /// worker must not get any of them, and [`confine`](super::confine) rejects one it finds.
    /// In the child, after fork and before exec: every channel below its final range is first
    /// moved above it (so that placing one never overwrites another), then `dup2`ed into place,
    /// then `CLOEXEC` goes on every fd above the range (`close_range(CLOSE_RANGE_CLOEXEC)`,
    /// with a loop as fallback before Linux 5.11).
    pub fn inherit_only(cmd: &mut std::process::Command, channels: &[RawFd]) {
        use std::os::unix::process::CommandExt;
        let mut channels = channels.to_vec();
        let first_closed = CHANNEL_FD + i32::try_from(channels.len()).unwrap_or(i32::MAX - 3);
        // SAFETY: the closure runs in the forked child before exec and only makes
        // async-signal-safe syscalls (dup2, fcntl, close_range) on integer fds; it allocates
        // nothing (the list was made before the fork) and touches no lock.
        unsafe {
            cmd.pre_exec(move || {
                for fd in channels.iter_mut() {
                    if *fd < first_closed {
                        *fd = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, first_closed);
                        if *fd == -1 {
                            return Err(io::Error::last_os_error());
                        }
                    }
                }
                for (target, fd) in (CHANNEL_FD..).zip(channels.iter()) {
                    // dup2 clears CLOEXEC on the copy; the original is above the range.
                    if libc::dup2(*fd, target) == -1 {
                        return Err(io::Error::last_os_error());
                    }
                }
                let rc = libc::syscall(
                    libc::SYS_close_range,
                    first_closed as libc::c_uint,
                    libc::c_uint::MAX,
                    libc::CLOSE_RANGE_CLOEXEC,
                );
                if rc != 0 {
                    for fd in first_closed..4096 {
                        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                    }
                }
                Ok(())
            });
        }
    }

    /// The process's open fds (from `/proc/self/fd`, so call before the filesystem is closed),
    /// sorted, without the fd used to list them.
    pub fn open_fds() -> Result<Vec<i32>, ConfineError> {
        let dir = std::fs::read_dir("/proc/self/fd").map_err(ConfineError::ListFds)?;
        let mut fds = Vec::new();
        for entry in dir {
            let entry = entry.map_err(ConfineError::ListFds)?;
            if let Some(fd) = entry.file_name().to_str().and_then(|s| s.parse().ok()) {
                fds.push(fd);
            }
        }
        // The directory's own fd was listed too and is closed now.
        // SAFETY: fcntl(F_GETFD) on an integer fd only queries its flags.
        fds.retain(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1);
        fds.sort_unstable();
        Ok(fds)
    }

    #[cfg(target_env = "gnu")]
    type Resource = libc::__rlimit_resource_t;
    #[cfg(not(target_env = "gnu"))]
    type Resource = libc::c_int;

    fn setrlimit(resource: Resource, name: &'static str, value: u64) -> Result<(), ConfineError> {
        let limit = libc::rlimit {
            rlim_cur: value,
            rlim_max: value,
        };
        // SAFETY: `limit` is a valid rlimit that outlives the call.
        let rc = unsafe { libc::setrlimit(resource, &limit) };
        if rc == 0 {
            Ok(())
        } else {
            Err(ConfineError::Rlimit {
                resource: name,
                source: io::Error::last_os_error(),
            })
        }
    }

    /// Step 3. Resource limits, soft = hard so the worker cannot raise them again:
    /// - `RLIMIT_CORE` 0: a crashing worker must not write its memory (tenant data) to a core
    ///   file.
    /// - `RLIMIT_DATA` (`data_limit`): bounds the memory of the whole process (see
    ///   [`super::Confinement::data_limit_bytes`] for why not `RLIMIT_AS`).
    /// - `RLIMIT_NOFILE` (`nofile`): a worker only uses the fds it inherited and the few its
    ///   runtime creates; seccomp already forbids opening files and sockets, this bounds what
    ///   is left (epoll/eventfd).
    /// - `RLIMIT_NPROC` is left alone: it counts every process *of the user* (the gateway and all
    ///   its workers run as the same user), so a low value would make the gateway's own spawns
    ///   fail; thread creation is bounded by seccomp (only `clone` with `CLONE_THREAD`) and by
    ///   `RLIMIT_DATA` (each thread's stack counts).
    pub fn set_rlimits(data_limit: Option<u64>, nofile: u64) -> Result<(), ConfineError> {
        setrlimit(libc::RLIMIT_CORE, "RLIMIT_CORE", 0)?;
        if let Some(bytes) = data_limit {
            setrlimit(libc::RLIMIT_DATA, "RLIMIT_DATA", bytes)?;
        }
        setrlimit(libc::RLIMIT_NOFILE, "RLIMIT_NOFILE", nofile)
    }

    /// Step 4. `PR_SET_NO_NEW_PRIVS`: no `execve` may ever grant privileges again (setuid bits,
    /// file capabilities); required for an unprivileged process to install a seccomp filter or a
    /// Landlock domain, and inherited by every thread started later.
    pub fn set_no_new_privs() -> Result<(), ConfineError> {
        // SAFETY: prctl with integer arguments only; no memory is passed.
        let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
        if rc == 0 {
            Ok(())
        } else {
            Err(ConfineError::NoNewPrivs(io::Error::last_os_error()))
        }
    }

    /// Step 5. Landlock: a ruleset that handles every filesystem right of the newest ABI this
    /// crate knows, TCP bind/connect (ABI ≥ 4), and scopes abstract Unix sockets and signals to
    /// the domain (ABI ≥ 6), with no rule: the worker may not open, create, execute, truncate
    /// anything, not connect or bind TCP, not signal a process outside its domain. Best effort:
    /// a kernel without some right (or without Landlock) enforces what it can and the returned
    /// status says what (the caller logs it). This is the second lock behind seccomp, which
    /// already kills `open*`: it covers what the filter may one day allow by mistake.
    ///
    /// Applied to all threads where the kernel can (ABI ≥ 8); below that, to this thread and the
    /// threads it starts afterwards.
    pub fn restrict_filesystem() -> Result<LandlockStatus, ConfineError> {
        use landlock::{
            Access, AccessFs, AccessNet, RestrictSelfAttr, Ruleset, RulesetAttr, RulesetStatus,
            Scope, ABI,
        };
        let err = |e: landlock::RulesetError| ConfineError::Landlock(Box::new(e));
        let best = ABI::V10;
        let status = Ruleset::default()
            .handle_access(AccessFs::from_all(best))
            .map_err(err)?
            .handle_access(AccessNet::from_all(best))
            .map_err(err)?
            .scope(Scope::from_all(best))
            .map_err(err)?
            .create()
            .map_err(err)?
            .all_threads(true)
            .map_err(err)?
            .restrict_self()
            .map_err(err)?;
        let abi = match status.landlock {
            landlock::LandlockStatus::Available {
                effective_abi,
                kernel_abi,
            } => kernel_abi.map_or(effective_abi as u32, |k| k.max(0) as u32),
            _ => 0,
        };
        let all_threads = status.all_threads;
        Ok(match status.ruleset {
            RulesetStatus::FullyEnforced => LandlockStatus::Full { abi, all_threads },
            RulesetStatus::PartiallyEnforced => LandlockStatus::Partial { abi, all_threads },
            RulesetStatus::NotEnforced => LandlockStatus::NotEnforced { abi },
        })
    }

    #[cfg(target_arch = "x86_64")]
    const ARCH: TargetArch = TargetArch::x86_64;
    #[cfg(target_arch = "aarch64")]
    const ARCH: TargetArch = TargetArch::aarch64;

    fn cond(
        arg: u8,
        len: SeccompCmpArgLen,
        op: SeccompCmpOp,
        value: u64,
    ) -> Result<SeccompCondition, ConfineError> {
        SeccompCondition::new(arg, len, op, value)
            .map_err(|e| ConfineError::SeccompBuild(Box::new(e)))
    }

    fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, ConfineError> {
        SeccompRule::new(conditions).map_err(|e| ConfineError::SeccompBuild(Box::new(e)))
    }

    /// `arg` equals one of `values` (32-bit compare: the arguments checked this way are ints).
    fn arg_in(arg: u8, values: &[u64]) -> Result<Vec<SeccompRule>, ConfineError> {
        values
            .iter()
            .map(|v| {
                rule(vec![cond(
                    arg,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::Eq,
                    *v,
                )?])
            })
            .collect()
    }

    /// `prot` argument `arg` does not ask for executable memory.
    fn no_exec(arg: u8) -> Result<Vec<SeccompRule>, ConfineError> {
        Ok(vec![rule(vec![cond(
            arg,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
            0,
        )?])?])
    }

    /// The allowlist: syscall → rules (empty: allowed with any arguments; otherwise allowed when
    /// one rule matches). Everything not here kills the process.
    pub(super) fn allowlist() -> Result<BTreeMap<i64, Vec<SeccompRule>>, ConfineError> {
        let any = Vec::new;
        let mut m: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();

        // --- memory: the allocator (malloc arenas, the pool's lazy large mappings), thread
        // stacks and their guard pages. Never executable memory: QuickJS has no JIT, so a
        // writable-then-executable mapping could only serve injected code (W^X).
        m.insert(libc::SYS_mmap, no_exec(2)?);
        m.insert(libc::SYS_mprotect, no_exec(2)?);
        m.insert(libc::SYS_munmap, any());
        m.insert(libc::SYS_mremap, any()); // realloc of large blocks
        m.insert(libc::SYS_madvise, any()); // free() giving pages back (MADV_DONTNEED)
        m.insert(libc::SYS_brk, any()); // main arena

        // --- threads: futexes (locks, condvars, channels, thread join), robust lists and
        // restartable sequences set up by glibc for every new thread.
        m.insert(libc::SYS_futex, any());
        m.insert(libc::SYS_set_robust_list, any());
        m.insert(libc::SYS_rseq, any());
        // Thread creation only: CLONE_THREAD (which implies CLONE_VM and CLONE_SIGHAND) must be
        // set and no namespace flag; fork/vfork-style clones lack CLONE_THREAD and die.
        // (`clone3` is answered ENOSYS by a second filter so glibc falls back to `clone`: its
        // flags live in memory the filter cannot read.)
        let ns = (libc::CLONE_NEWNS
            | libc::CLONE_NEWCGROUP
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUSER
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWNET) as u64;
        let thread = (libc::CLONE_THREAD | libc::CLONE_VM | libc::CLONE_SIGHAND) as u64;
        m.insert(
            libc::SYS_clone,
            vec![rule(vec![cond(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(thread | ns),
                thread,
            )?])?],
        );
        m.insert(libc::SYS_clone3, any()); // turned into ENOSYS by the first filter
        m.insert(libc::SYS_exit, any()); // a thread ends
        m.insert(libc::SYS_exit_group, any()); // the process ends
        m.insert(libc::SYS_sched_yield, any()); // spin locks, tokio's yield
                                                // std's stack-overflow guard reads each new thread's attributes (pthread_getattr_np,
                                                // which also fetches the CPU affinity).
        m.insert(libc::SYS_sched_getaffinity, any());
        m.insert(libc::SYS_getpid, any());
        m.insert(libc::SYS_gettid, any());
        // A worker may check its gateway is still there.
        m.insert(libc::SYS_getppid, any());
        // prctl: thread names (std sets a spawned thread's name from inside it), and PR_SET_VMA,
        // with which mimalloc (QuickJS's heap) names each region it maps ("mimalloc" in
        // /proc/PID/maps); nothing else.
        m.insert(
            libc::SYS_prctl,
            arg_in(
                0,
                &[
                    libc::PR_SET_NAME as u64,
                    libc::PR_GET_NAME as u64,
                    libc::PR_SET_VMA as u64,
                ],
            )?,
        );

        // --- time: timers, CPU budgets (thread CPU clock), Date.now, sleeps. The vDSO serves
        // the wall clocks without a syscall; the thread CPU clock needs the real one, and
        // gettimeofday is its fallback when no vDSO is mapped. std::thread::sleep reaches
        // clock_nanosleep through glibc's nanosleep.
        m.insert(libc::SYS_clock_gettime, any());
        m.insert(libc::SYS_gettimeofday, any());
        m.insert(libc::SYS_clock_nanosleep, any());
        m.insert(libc::SYS_restart_syscall, any()); // a sleep resumed after SIGSTOP/SIGCONT

        // --- randomness: crypto.getRandomValues/randomUUID, Math.random seeds, HashMap keys.
        m.insert(libc::SYS_getrandom, any());

        // --- I/O on fds the worker already has (stdio, its channel, epoll/eventfd). No call
        // here can name a path or an address to reach something new: sendto/sendmsg on a
        // connected stream ignore an address, and `socket`/`connect` are not allowed.
        m.insert(libc::SYS_read, any());
        m.insert(libc::SYS_write, any());
        m.insert(libc::SYS_readv, any());
        m.insert(libc::SYS_writev, any());
        m.insert(libc::SYS_recvfrom, any());
        m.insert(libc::SYS_sendto, any());
        m.insert(libc::SYS_recvmsg, any());
        m.insert(libc::SYS_sendmsg, any());
        m.insert(libc::SYS_shutdown, any()); // closing the write half of the channel
        m.insert(libc::SYS_close, any());
        // tokio's reactor (mio) and waker.
        m.insert(libc::SYS_epoll_create1, any());
        m.insert(libc::SYS_epoll_ctl, any());
        m.insert(libc::SYS_epoll_pwait, any()); // epoll_wait on aarch64 (and newer glibc)
        m.insert(libc::SYS_eventfd2, any());
        // Descriptor flags (std/tokio set O_NONBLOCK and CLOEXEC) and F_DUPFD_CLOEXEC (tokio's
        // I/O driver clones its epoll fd; a duplicate reaches nothing new and RLIMIT_NOFILE
        // bounds the count); not locks, leases, ownership or pipe sizes.
        m.insert(
            libc::SYS_fcntl,
            arg_in(
                1,
                &[
                    libc::F_GETFD as u64,
                    libc::F_SETFD as u64,
                    libc::F_GETFL as u64,
                    libc::F_SETFL as u64,
                    libc::F_DUPFD_CLOEXEC as u64,
                ],
            )?,
        );
        // std's set_nonblocking and set_cloexec; no device or terminal ioctl. (The request
        // constants' type differs between targets, hence the cast.)
        #[allow(clippy::unnecessary_cast)]
        m.insert(
            libc::SYS_ioctl,
            arg_in(1, &[libc::FIONBIO as u64, libc::FIOCLEX as u64])?,
        );

        // --- signals: handlers (std's stack-overflow handler, abort) and their alternate
        // stacks; signals only to this process's own threads (abort → tgkill(getpid(), ...)).
        m.insert(libc::SYS_rt_sigaction, any()); // abort() resets SIGABRT's handler
        m.insert(libc::SYS_rt_sigprocmask, any()); // thread start/exit, abort
        m.insert(libc::SYS_rt_sigreturn, any()); // return from any signal handler
        m.insert(libc::SYS_sigaltstack, any()); // std's per-thread stack-overflow handler stack
                                                // SAFETY: getpid has no arguments and cannot fail.
        let pid = unsafe { libc::getpid() } as u64;
        m.insert(libc::SYS_tgkill, arg_in(0, &[pid])?);

        #[cfg(target_arch = "x86_64")]
        {
            // x86_64 still has the legacy entry point that glibc's epoll_wait uses there.
            m.insert(libc::SYS_epoll_wait, any());
        }
        Ok(m)
    }

    /// Step 6. Two seccomp-bpf filters on every thread of the process (TSYNC, so threads started
    /// before this call are bound too; the kernel refuses the install rather than leave one out):
    /// 1. `clone3` → `ENOSYS`, everything else allowed by this filter (so glibc falls back to
    ///    `clone`, whose flags the second filter can check);
    /// 2. the allowlist ([`allowlist`], each entry's reason in a comment), default action
    ///    `SECCOMP_RET_KILL_PROCESS`: any other syscall (`socket`, `connect`, `open*`, `execve`,
    ///    `fork`, `ptrace`, `process_vm_*`, `kill`, `mount`, `bpf`, ...) kills the whole process
    ///    with SIGSYS — a confused engine cannot keep running after trying.
    ///
    /// The kernel applies the strictest answer of all filters. Filters can only be added, never
    /// removed, and survive nothing since `execve` is forbidden.
    pub fn install_seccomp_filter() -> Result<(), ConfineError> {
        let build = |e: seccompiler::BackendError| ConfineError::SeccompBuild(Box::new(e));
        let install = |e: seccompiler::Error| ConfineError::SeccompInstall(Box::new(e));

        let mut clone3 = BTreeMap::new();
        clone3.insert(libc::SYS_clone3, Vec::new());
        let enosys = SeccompFilter::new(
            clone3,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
            ARCH,
        )
        .map_err(build)?;
        let enosys: seccompiler::BpfProgram = enosys.try_into().map_err(build)?;

        let allow = SeccompFilter::new(
            allowlist()?,
            SeccompAction::KillProcess,
            SeccompAction::Allow,
            ARCH,
        )
        .map_err(build)?;
        let allow: seccompiler::BpfProgram = allow.try_into().map_err(build)?;

        seccompiler::apply_filter_all_threads(&enosys).map_err(install)?;
        seccompiler::apply_filter_all_threads(&allow).map_err(install)
    }
}

#[cfg(all(
    test,
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
mod tests {
    use super::*;

    #[test]
    fn the_allowlist_compiles_to_a_filter_and_leaves_out_the_forbidden_calls() {
        let list = linux::allowlist().unwrap();
        for forbidden in [
            libc::SYS_socket,
            libc::SYS_socketpair,
            libc::SYS_connect,
            libc::SYS_bind,
            libc::SYS_accept4,
            libc::SYS_openat,
            libc::SYS_openat2,
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_ptrace,
            libc::SYS_process_vm_readv,
            libc::SYS_process_vm_writev,
            libc::SYS_kill,
            libc::SYS_mount,
            libc::SYS_bpf,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_prlimit64,
            libc::SYS_memfd_create,
            libc::SYS_dup3,
            libc::SYS_pidfd_open,
        ] {
            assert!(
                !list.contains_key(&forbidden),
                "syscall {forbidden} allowed"
            );
        }
        let filter = seccompiler::SeccompFilter::new(
            list,
            seccompiler::SeccompAction::KillProcess,
            seccompiler::SeccompAction::Allow,
            if cfg!(target_arch = "x86_64") {
                seccompiler::TargetArch::x86_64
            } else {
                seccompiler::TargetArch::aarch64
            },
        )
        .unwrap();
        let program: seccompiler::BpfProgram = filter.try_into().unwrap();
        assert!(!program.is_empty());
    }

    #[test]
    fn landlock_status_reports_its_abi() {
        let s = LandlockStatus::Partial {
            abi: 3,
            all_threads: false,
        };
        assert_eq!(s.abi(), 3);
        assert!(s.is_enforced() && !s.is_full());
        assert!(!LandlockStatus::NotEnforced { abi: 0 }.is_enforced());
        assert_eq!(
            LandlockStatus::Full {
                abi: 7,
                all_threads: false
            }
            .to_string(),
            "fully enforced (ABI 7, all threads: false)"
        );
    }
}
