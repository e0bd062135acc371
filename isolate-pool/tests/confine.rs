//! The worker-process confinement (`isogate_pool::confine`) against the real kernel and the real
//! engine. Seccomp kills the whole process, so every case runs in a child: the test binary
//! re-executes itself (`--exact child --nocapture`) with `ISOGATE_CONFINE_ROLE` naming what the
//! child does; `child` returns at once in a normal run. The parent asserts how the child ended.
//!
//! Debugging a SIGSYS (a syscall the allowlist lacks): run the failing parent test under
//! `strace -f -o /tmp/trace`; the killed thread's last, unfinished syscall is the one.
#![allow(unreachable_pub)] // a test crate
#![allow(unsafe_code)] // pidfds, signals and rlimits of test processes (OS APIs); each block has a `// SAFETY:` line
#![cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]

use isogate_pool::confine::{self, Confinement, LandlockStatus};
use isogate_pool::{
    DisabledEgress, ErrorKind, Hold, HttpRequest, Invoker, Limits, NoopObserver, Pool,
    PoolSettings, SealedCode, WorkerCode,
};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

const ROLE: &str = "ISOGATE_CONFINE_ROLE";
const PORT: &str = "ISOGATE_CONFINE_PORT";

// ---- parent side ---------------------------------------------------------------------------

fn child_command(role: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
    // An empty environment, as a worker gets (RUST_BACKTRACE would make a crash symbolise a
    // backtrace, which reads files).
    cmd.args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env_clear()
        .env(ROLE, role)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Only 0, 1, 2 reach the child, as for a real worker.
    confine::inherit_only(&mut cmd, &[]);
    cmd
}

/// Runs the child role to its end; returns its status and combined output.
fn run_child(role: &str) -> (ExitStatus, String) {
    run_command(child_command(role))
}

fn run_command(mut cmd: Command) -> (ExitStatus, String) {
    let out = cmd.output().expect("spawn child");
    let text = format!(
        "--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, text)
}

/// Spawns a child that confines, prints `ready` and waits for its stdin to close.
fn interactive(role: &str) -> Child {
    child_command(role)
        .stdin(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn")
}

/// Reads the child's stdout up to its `ready` line; returns what it printed before.
fn read_until_ready(child: &mut Child) -> String {
    let mut stdout = BufReader::new(child.stdout.as_mut().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "child ended early: {seen}"
        );
        // libtest prints "test child ... " without a newline before running the test.
        if line.trim_end().ends_with("ready") {
            return seen;
        }
        seen.push_str(&line);
    }
}

/// Closes the child's stdin (it ends) and waits for it.
fn finish(mut child: Child) -> (ExitStatus, String) {
    drop(child.stdin.take());
    let mut rest = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut rest)
        .unwrap();
    (child.wait().unwrap(), rest)
}

fn assert_success(role: &str) -> String {
    let (status, out) = run_child(role);
    if status.signal() == Some(libc::SIGSYS) {
        eprintln!("{}", diagnose_sigsys(role));
    }
    assert!(
        status.success(),
        "child {role} ended with {status:?} (signal {:?}; SIGSYS = {}: a syscall outside the allowlist){out}",
        status.signal(),
        libc::SIGSYS
    );
    out
}

/// SECCOMP_RET_KILL_PROCESS tells the killed syscall to the audit log only: rerun the child
/// under `strace -f` (when installed) and show what preceded the kill; strace prints the
/// killed call with its syscall number as the "return value".
fn diagnose_sigsys(role: &str) -> String {
    let trace = std::env::temp_dir().join(format!(
        "isogate-confine-{role}-{}.strace",
        std::process::id()
    ));
    let mut cmd = Command::new("strace");
    cmd.arg("-f")
        .arg("-o")
        .arg(&trace)
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env_clear()
        .env(ROLE, role)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    confine::inherit_only(&mut cmd, &[]);
    if cmd.status().is_err() {
        return "SIGSYS: install strace to see the syscall".into();
    }
    let text = std::fs::read_to_string(&trace).unwrap_or_default();
    let _ = std::fs::remove_file(&trace);
    let lines: Vec<&str> = text.lines().collect();
    match lines.iter().position(|l| l.contains("killed by SIGSYS")) {
        Some(i) => format!(
            "SIGSYS: the last calls before the kill (the killed one shows its number as result):\n{}",
            lines[i.saturating_sub(12)..i].join("\n")
        ),
        None => "SIGSYS: not reproduced under strace".into(),
    }
}

fn assert_killed_by_seccomp(role: &str) {
    let (status, out) = run_child(role);
    assert_eq!(
        status.signal(),
        Some(libc::SIGSYS),
        "child {role} must die of SIGSYS, ended with {status:?}{out}"
    );
    // It died at the forbidden call, after confining, not before.
    assert!(out.contains("confined"), "{role}{out}");
    assert!(!out.contains("survived"), "{role}{out}");
}

#[test]
fn the_engine_runs_confined_when_the_pool_starts_after_confine() {
    let out = assert_success("engine_after");
    assert!(out.contains("engine ok"), "{out}");
}

#[test]
fn confinement_binds_threads_started_before_it() {
    let mut child = interactive("engine_before");
    let (before_ready, pid) = (read_until_ready(&mut child), child.id());
    // Every thread of the child, including the pool's threads started before confine(), runs
    // under the filter (TSYNC) and with no_new_privs.
    // Both filters (clone3 → ENOSYS, then the allowlist) on every thread.
    let mut threads = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        assert!(status.contains("Seccomp:\t2"), "{status}");
        if status.contains("Seccomp_filters:") {
            assert!(status.contains("Seccomp_filters:\t2"), "{status}");
        }
        assert!(status.contains("NoNewPrivs:\t1"), "{status}");
        threads += 1;
    }
    assert!(threads >= 4, "main, harness and pool threads: {threads}");
    let (status, rest) = finish(child);
    assert!(status.success(), "{status:?}{before_ready}{rest}");
    assert!(before_ready.contains("engine ok"), "{before_ready}");
}

#[test]
fn forbidden_calls_kill_the_process() {
    for role in [
        "forbid_socket_inet",
        "forbid_socket_unix",
        "forbid_socketpair",
        "forbid_connect",
        "forbid_openat",
        "forbid_execve",
        "forbid_fork",
        "forbid_kill_parent",
        "forbid_ptrace",
        "forbid_exec_memory",
        "forbid_raise_rlimit",
        "forbid_io_uring",
        "forbid_memfd",
        "forbid_process_vm_readv",
        "forbid_unshare",
    ] {
        assert_killed_by_seccomp(role);
    }
}

#[test]
fn a_confined_child_that_does_nothing_forbidden_exits_cleanly() {
    let out = assert_success("control");
    assert!(out.contains("confined"), "{out}");
    assert!(out.contains("survived"), "{out}");
}

#[test]
fn proc_status_shows_no_new_privs_and_a_seccomp_filter() {
    let mut child = interactive("status");
    let before = read_until_ready(&mut child);
    let nofile: u64 = before
        .split("nofile ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no nofile line: {before}"));
    // 0, 1, 2 open: 3 + tokio's pair (2) + the default headroom.
    assert_eq!(nofile, 3 + 2 + 256);
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let (end, _) = finish(child);
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    assert!(status.contains("Seccomp:\t2"), "{status}");
    assert!(
        limits
            .lines()
            .any(|l| l.starts_with("Max core file size") && l.contains(" 0 ")),
        "{limits}"
    );
    assert!(
        limits
            .lines()
            .any(|l| l.starts_with("Max data size") && l.contains(&(512u64 << 20).to_string())),
        "{limits}"
    );
    assert!(
        limits
            .lines()
            .any(|l| l.starts_with("Max open files") && l.contains(&format!(" {nofile} "))),
        "{limits}"
    );
    assert!(end.success(), "{end:?}");
}

#[test]
fn landlock_denies_files_and_tcp_where_the_kernel_has_it() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut cmd = child_command("landlock_only");
    cmd.env(PORT, port.to_string());
    let (status, out) = run_command(cmd);
    assert!(status.success(), "{status:?}{out}");
    let abi = kernel_landlock_abi();
    if abi >= 1 {
        assert!(out.contains("file denied"), "landlock ABI {abi}{out}");
    } else {
        eprintln!("this kernel has no Landlock: only the report is checked");
        assert!(out.contains("landlock not enforced (ABI 0)"), "{out}");
    }
    if abi >= 4 {
        assert!(
            out.contains("tcp connect denied"),
            "landlock ABI {abi}{out}"
        );
    }
}

#[test]
fn an_allocation_beyond_the_data_limit_kills_the_process_instead_of_hanging() {
    let (status, out) = run_child("data_limit");
    assert_eq!(
        status.signal(),
        Some(libc::SIGABRT),
        "an allocation refused by RLIMIT_DATA aborts (Rust's alloc error handler): {status:?}{out}"
    );
    assert!(out.contains("confined"), "{out}");
    assert!(!out.contains("survived"), "{out}");
}

/// A native allocation sized by JS that passes the JS-boundary guards reaches the allocator,
/// which maps an over-budget block lazily (memory.rs). Under RLIMIT_DATA that mapping counts:
/// one larger than what the limit has left is refused and the worker aborts (the supervisor
/// replaces it) instead of answering `memory_limit` as the in-process pool does. The bound holds:
/// the process dies, it does not hang or grow.
#[test]
fn a_huge_native_allocation_costs_the_worker_process() {
    let (status, out) = run_child("huge_native_allocation");
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}{out}");
    assert!(out.contains("memory allocation of"), "{out}");
    assert!(out.contains("pool ready"), "{out}");
    assert!(!out.contains("survived"), "{out}");
}

/// The spawner hands the worker its channels from fd 3 on, in the order given, and nothing
/// else (`inherit_only`); the confined worker talks over each with tokio. The channels are
/// given in an order unlike their fd numbers, so a channel placed by position is told from one
/// that kept its number.
#[test]
fn a_worker_talks_to_its_parent_over_the_inherited_channels() {
    let pairs: Vec<_> = (0..3)
        .map(|_| std::os::unix::net::UnixStream::pair().unwrap())
        .collect();
    let order = [2, 0, 1];
    let mut cmd = child_command("channel");
    let fds: Vec<_> = order.iter().map(|&i| pairs[i].1.as_raw_fd()).collect();
    confine::inherit_only(&mut cmd, &fds);
    let child = cmd.spawn().unwrap();
    let mut ours: Vec<_> = pairs.into_iter().map(|(ours, _theirs)| ours).collect();
    let mut replies = Vec::new();
    for (i, channel) in ours.iter_mut().enumerate() {
        channel.write_all(&[b'a' + i as u8]).unwrap();
    }
    for channel in &mut ours {
        let mut reply = [0u8; 2];
        replies.push(channel.read_exact(&mut reply).map(|()| reply));
    }
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    for (i, reply) in replies.into_iter().enumerate() {
        let reply = reply
            .unwrap_or_else(|e| panic!("no reply over channel {i} ({e}): {:?}{text}", out.status));
        // Each channel answers with what it was sent and the fd it found the channel at.
        let position = order.iter().position(|&o| o == i).unwrap();
        assert_eq!(reply, [b'a' + i as u8, 3 + position as u8], "{text}");
    }
    assert!(out.status.success(), "{:?}{text}", out.status);
    assert!(text.contains("fds [0, 1, 2, 3, 4, 5]"), "{text}");
}

#[test]
fn confine_refuses_leaked_or_missing_fds_and_a_lost_parent() {
    let out = assert_success("preconditions");
    assert!(out.contains("environment rejected"), "{out}");
    assert!(out.contains("unexpected fd rejected"), "{out}");
    assert!(out.contains("missing fd rejected"), "{out}");
    assert!(out.contains("lost parent rejected"), "{out}");
}

/// PR_SET_PDEATHSIG: a confined worker whose parent ends is killed, not left running.
#[test]
fn a_worker_dies_with_its_parent() {
    let (status, out) = run_child("orphan_spawner");
    assert!(status.success(), "{status:?}{out}");
    let pid: i32 = out
        .split("grandchild ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no grandchild pid{out}"));
    // SAFETY: pidfd_open with an integer pid and no flags.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    if pidfd < 0 {
        // Already gone and reaped.
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::ESRCH)
        );
        return;
    }
    let mut pfd = libc::pollfd {
        fd: pidfd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; a pidfd becomes readable when its process ends.
    let ready = unsafe { libc::poll(&mut pfd, 1, 10_000) };
    // SAFETY: closing the pidfd we opened.
    unsafe { libc::close(pidfd) };
    assert_eq!(ready, 1, "the orphaned worker {pid} is still running");
}

/// A stack overflow in a confined worker ends as std's abort (SIGABRT), not as a seccomp kill:
/// the handler's report and abort stay inside the allowlist, so the supervisor can tell a crash
/// from a forbidden call.
#[test]
fn a_stack_overflow_aborts_rather_than_hitting_the_filter() {
    let (status, out) = run_child("stack_overflow");
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}{out}");
    assert!(out.contains("overflowed its stack"), "{out}");
}

/// The kernel's Landlock ABI, asked directly (0: none).
fn kernel_landlock_abi() -> i64 {
    // SAFETY: landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION) only returns
    // the ABI version; no memory is passed.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32,
        )
    };
    v.max(0)
}

// ---- child side ----------------------------------------------------------------------------

/// The child entry point: does nothing in a normal test run.
#[test]
fn child() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    match role.as_str() {
        "engine_after" => engine_after(),
        "engine_before" => engine_before(),
        "control" => {
            confine_now(&[]);
            println!("survived");
        }
        "status" => {
            let report = confine::confine(&Confinement {
                data_limit_bytes: Some(512 << 20),
                require_empty_env: false,
                ..Confinement::default()
            })
            .expect("confine");
            assert!(report.no_new_privs && report.seccomp);
            println!("nofile {}", report.nofile_limit);
            wait_for_parent();
        }
        "landlock_only" => landlock_only(),
        "data_limit" => data_limit(),
        "preconditions" => preconditions(),
        "channel" => channel(),
        "orphan_spawner" => {
            let mut grandchild = child_command("orphan")
                .stdin(Stdio::null())
                .spawn()
                .unwrap();
            read_until_ready(&mut grandchild);
            println!("grandchild {}", grandchild.id());
            // Returning ends this process without waiting for the grandchild.
        }
        "orphan" => {
            confine_now(&[]);
            println!("ready");
            std::io::stdout().flush().unwrap();
            loop {
                std::thread::park();
            }
        }
        "huge_native_allocation" => huge_native_allocation(),
        "stack_overflow" => stack_overflow(),
        forbidden => forbidden_call(forbidden),
    }
}

/// Confines with the default settings plus `extra` kept fds and a 1 GiB data limit.
fn confine_now(extra: &[i32]) {
    let mut keep = vec![0, 1, 2];
    keep.extend_from_slice(extra);
    let report = confine::confine(&Confinement {
        data_limit_bytes: Some(1 << 30),
        keep_fds: keep,
        // SAFETY: getppid has no arguments and cannot fail.
        expected_parent: Some(unsafe { libc::getppid() } as u32),
        // The child's role is in its environment.
        require_empty_env: false,
        ..Confinement::default()
    })
    .expect("confine");
    assert!(report.no_new_privs && report.seccomp, "{report:?}");
    println!("confined: landlock {}", report.landlock);
    std::io::stdout().flush().unwrap();
}

fn forbidden_call(role: &str) {
    let keep = match role {
        // A socket made before confining: connect() on it is what is tested.
        "forbid_connect" => {
            // SAFETY: plain socket(2) call with constant arguments.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            assert!(fd >= 0);
            vec![fd]
        }
        _ => vec![],
    };
    confine_now(&keep);
    // SAFETY (all calls below): plain syscalls with valid, NUL-terminated or stack-owned
    // arguments; each is expected to kill the process before returning.
    unsafe {
        match role {
            "forbid_socket_inet" => {
                libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            }
            "forbid_socket_unix" => {
                libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            }
            "forbid_socketpair" => {
                let mut fds = [0; 2];
                libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr());
            }
            "forbid_connect" => {
                let addr = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: 1u16.to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_be_bytes([127, 0, 0, 1]).to_be(),
                    },
                    sin_zero: [0; 8],
                };
                libc::connect(
                    keep[0],
                    (&addr as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                );
            }
            "forbid_openat" => {
                libc::openat(libc::AT_FDCWD, c"/etc/hostname".as_ptr(), libc::O_RDONLY);
            }
            "forbid_execve" => {
                let argv = [c"/bin/true".as_ptr(), std::ptr::null()];
                let envp = [std::ptr::null()];
                libc::execve(c"/bin/true".as_ptr(), argv.as_ptr(), envp.as_ptr());
            }
            "forbid_fork" => {
                if libc::fork() == 0 {
                    libc::_exit(0);
                }
            }
            "forbid_kill_parent" => {
                libc::kill(libc::getppid(), 0);
            }
            "forbid_ptrace" => {
                libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0);
            }
            "forbid_exec_memory" => {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
            }
            "forbid_raise_rlimit" => {
                let unlimited = libc::rlimit {
                    rlim_cur: libc::RLIM_INFINITY,
                    rlim_max: libc::RLIM_INFINITY,
                };
                libc::setrlimit(libc::RLIMIT_DATA, &unlimited);
            }
            // io_uring would run openat/socket/connect from the kernel, past the filter.
            "forbid_io_uring" => {
                let mut params = [0u8; 120];
                libc::syscall(libc::SYS_io_uring_setup, 8, params.as_mut_ptr());
            }
            "forbid_memfd" => {
                libc::syscall(libc::SYS_memfd_create, c"x".as_ptr(), 0);
            }
            "forbid_process_vm_readv" => {
                let mut buf = [0u8; 8];
                let local = libc::iovec {
                    iov_base: buf.as_mut_ptr().cast(),
                    iov_len: 8,
                };
                let remote = libc::iovec {
                    iov_base: buf.as_mut_ptr().cast(),
                    iov_len: 8,
                };
                libc::process_vm_readv(libc::getppid(), &local, 1, &remote, 1, 0);
            }
            "forbid_unshare" => {
                libc::unshare(libc::CLONE_NEWUSER);
            }
            other => panic!("unknown child role {other}"),
        }
    }
    println!("survived");
}

fn landlock_only() {
    confine::set_no_new_privs().expect("no_new_privs");
    let status = confine::restrict_filesystem().expect("landlock");
    println!("landlock {status}");
    match status {
        LandlockStatus::NotEnforced { .. } => {}
        _ => {
            match std::fs::File::open("/etc/hostname") {
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    println!("file denied")
                }
                other => panic!("opening a file under Landlock: {other:?}"),
            }
            match std::fs::read_dir("/") {
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {}
                other => panic!("listing / under Landlock: {:?}", other.map(|_| ())),
            }
            let port: u16 = std::env::var(PORT).unwrap().parse().unwrap();
            match std::net::TcpStream::connect(("127.0.0.1", port)) {
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    println!("tcp connect denied")
                }
                other if status.abi() < 4 => println!("tcp connect (ABI < 4): {other:?}"),
                other => panic!("TCP connect under Landlock ABI {}: {other:?}", status.abi()),
            }
        }
    }
}

fn channel() {
    use std::os::fd::FromRawFd;
    let fds = confine::CHANNEL_FD..confine::CHANNEL_FD + 3;
    // SAFETY: the spawner put our ends of the channels from CHANNEL_FD on (inherit_only);
    // nothing else owns those fds, each is taken once.
    let channels: Vec<_> = fds
        .clone()
        .map(|fd| unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) })
        .collect();
    // SAFETY: getppid has no arguments.
    let parent = unsafe { libc::getppid() } as u32;
    let report = confine::confine(&Confinement {
        // The child's role is in its environment.
        require_empty_env: false,
        ..Confinement::worker(Some(1 << 30), parent, 3)
    })
    .expect("confine");
    println!("fds {:?}", report.open_fds);
    runtime().block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        for (fd, channel) in fds.zip(channels) {
            channel.set_nonblocking(true).unwrap();
            let mut channel = tokio::net::UnixStream::from_std(channel).unwrap();
            let mut buf = [0u8; 1];
            channel.read_exact(&mut buf).await.unwrap();
            channel.write_all(&[buf[0], fd as u8]).await.unwrap();
        }
    });
}

fn preconditions() {
    // Spawned with only the role variable: refused, naming it (never a value).
    match confine::confine(&Confinement::default()) {
        Err(confine::ConfineError::Environment(names)) if names == vec![ROLE.to_string()] => {
            println!("environment rejected")
        }
        other => panic!("a non-empty environment must be refused: {other:?}"),
    }
    let lenient = Confinement {
        require_empty_env: false,
        ..Confinement::default()
    };
    let leaked = std::fs::File::open("/dev/null").unwrap();
    match confine::confine(&lenient) {
        Err(confine::ConfineError::UnexpectedFds(fds)) if fds == vec![leaked.as_raw_fd()] => {
            println!("unexpected fd rejected")
        }
        other => panic!("a leaked fd must be refused: {other:?}"),
    }
    drop(leaked);
    match confine::confine(&Confinement {
        keep_fds: vec![0, 1, 2, 42],
        ..lenient.clone()
    }) {
        Err(confine::ConfineError::MissingFd(42)) => println!("missing fd rejected"),
        other => panic!("a missing fd must be refused: {other:?}"),
    }
    // SAFETY: getppid has no arguments.
    let wrong = unsafe { libc::getppid() } as u32 + 1;
    match confine::confine(&Confinement {
        expected_parent: Some(wrong),
        ..lenient
    }) {
        Err(e @ confine::ConfineError::ParentGone { .. }) => {
            assert_eq!(e.as_str(), "parent_gone");
            println!("lost parent rejected")
        }
        other => panic!("another parent must be refused: {other:?}"),
    }
}

fn data_limit() {
    let report = confine::confine(&Confinement {
        data_limit_bytes: Some(256 << 20),
        require_empty_env: false,
        ..Confinement::default()
    })
    .expect("confine");
    assert_eq!(report.data_limit_bytes, Some(256 << 20));
    println!("confined");
    std::io::stdout().flush().unwrap();
    // 16 MiB at a time, touched, kept: RLIMIT_DATA refuses one before 1 GiB.
    let mut kept: Vec<Vec<u8>> = Vec::new();
    for i in 0..64 {
        let mut chunk = vec![0u8; 16 << 20];
        chunk[i] = 1;
        kept.push(chunk);
    }
    println!("survived with {} MiB", kept.len() * 16);
}

// ---- the engine under confinement ----------------------------------------------------------

const LIMITS: Limits = Limits {
    cpu_ms: 200,
    memory_mb: 32,
    wall_ms: 5_000,
    subrequests: 3,
    worker_concurrency: 32,
};

fn settings() -> PoolSettings {
    PoolSettings {
        threads: 2,
        warm_isolates: 4,
        max_cached_workers: 16,
        idle_ttl: Duration::from_secs(3600),
        queue_capacity: 64,
    }
}

fn start_pool() -> Pool {
    Pool::start(settings(), Arc::new(DisabledEgress), Arc::new(NoopObserver)).expect("pool")
}

fn code(src: &str) -> WorkerCode {
    serde_json::from_value(serde_json::json!({"mainModule": "w.js", "modules": {"w.js": src}}))
        .expect("code")
}

fn request() -> HttpRequest {
    HttpRequest {
        method: "GET".into(),
        url: "http://confined/".into(),
        headers: vec![],
        body: vec![],
    }
}

fn invoker(worker_id: Option<&str>) -> Invoker {
    Invoker {
        tenant: "t".into(),
        worker_id: worker_id.map(str::to_string),
        invocation: 1,
        apis: Vec::new(),
        trace: 0,
        tools: Vec::new(),
    }
}

const EVERYTHING: &str = r#"
let background = 0;
export default {
  async fetch(request, env, ctx) {
    const out = { seenBackground: background };
    console.log("hello from a confined worker", request.url);
    out.timer = await new Promise((r) => setTimeout(() => r("fired"), 5));
    out.async = await (async () => 41 + 1)();
    const a = new Uint8Array(32); crypto.getRandomValues(a);
    out.random = a.some((b) => b !== 0);
    out.uuid = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/.test(crypto.randomUUID());
    const m = Math.random(); out.math = m >= 0 && m < 1;
    out.date = Date.now() > 1.6e12 && !isNaN(new Date().getTime());
    out.text = new TextDecoder().decode(new TextEncoder().encode("héllo"));
    out.blob = await new Blob(["ab", new Uint8Array([99, 100])]).text();
    out.buffer = Buffer.from("hi").toString("base64");
    out.b64 = atob(btoa("confined"));
    out.json = JSON.parse(JSON.stringify({ a: [1, 2] }));
    try { null.x; } catch (e) { out.caught = e instanceof TypeError; }
    // Local time (glibc reads the zone once, before confinement), performance, URL, Headers,
    // AbortController, intervals, microtasks, structured console output, a refused fetch.
    const d = new Date(0);
    out.local = typeof d.toString() === "string" && typeof d.getTimezoneOffset() === "number"
      && typeof d.toLocaleString() === "string" && d.getFullYear() >= 1969;
    const t0 = performance.now(); out.perf = performance.now() >= t0;
    out.url = new URL("https://example.com/a?b=1").searchParams.get("b");
    const h = new Headers({ "X-A": "1" }); out.headers = h.get("x-a");
    const ac = new AbortController(); ac.abort(); out.aborted = ac.signal.aborted;
    out.ticks = await new Promise((r) => { let n = 0; const i = setInterval(() => { if (++n === 3) { clearInterval(i); r(n); } }, 1); });
    out.micro = await new Promise((r) => queueMicrotask(() => r(true)));
    console.log({ nested: { a: [1, 2, 3] }, err: new Error("shown") }, 1.5, null, undefined);
    console.error(new RangeError("logged error"));
    out.fetch = await fetch("http://127.0.0.1:9/").then(() => "fetched", (e) => "refused");
    out.json2 = await Response.json({ z: 1 }).json();
    out.req = new Request("http://x/", { method: "POST", body: "b" }).method;
    ctx.waitUntil(new Promise((r) => setTimeout(() => { background++; console.log("background done"); r(); }, 10)));
    return new Response(JSON.stringify(out), { headers: { "content-type": "application/json" } });
  }
};
"#;

async fn exercise(pool: &Pool) {
    // load(): a module Worker with a fetch handler using the common Web APIs.
    let inv = pool
        .load(
            invoker(None),
            Arc::new(code(EVERYTHING)),
            request(),
            LIMITS,
            Hold::none(),
        )
        .await
        .expect("load");
    let resp = inv.outcome.expect("worker outcome");
    assert_eq!(resp.status, 200);
    let out: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(
        out,
        serde_json::json!({
            "seenBackground": 0, "timer": "fired", "async": 42, "random": true, "uuid": true,
            "math": true, "date": true, "text": "héllo", "blob": "abcd", "buffer": "aGk=",
            "b64": "confined", "json": {"a": [1, 2]}, "caught": true, "local": true,
            "perf": true, "url": "1", "headers": "1", "aborted": true, "ticks": 3, "micro": true,
            "fetch": "refused", "json2": {"z": 1}, "req": "POST"
        })
    );
    assert!(inv
        .logs
        .iter()
        .any(|l| l.message.contains("hello from a confined worker")));

    // get(): a cached Worker; ctx.waitUntil work of the first call (it has ended once the
    // call's hold is released) is seen by the second.
    let sealed = SealedCode::new(code(EVERYTHING));
    for expected in [0, 1] {
        let (held, released) = tokio::sync::oneshot::channel::<()>();
        let inv = pool
            .get(
                invoker(Some("w1")),
                sealed.clone(),
                request(),
                LIMITS,
                8,
                Hold::new(held),
            )
            .await
            .expect("get");
        let out: serde_json::Value = serde_json::from_slice(&inv.outcome.unwrap().body).unwrap();
        assert_eq!(out["seenBackground"], expected);
        assert!(released.await.is_err(), "the hold is dropped, never used");
    }

    // execute(): Code Mode.
    let inv = pool
        .execute(
            invoker(None),
            "async (env) => ({ sum: [1, 2, 3].reduce((a, b) => a + b), name: env.name })".into(),
            serde_json::json!({"name": "isogate"}),
            LIMITS,
            Hold::none(),
        )
        .await
        .expect("execute");
    assert_eq!(
        inv.outcome.unwrap(),
        serde_json::json!({"sum": 6, "name": "isogate"})
    );

    // A thrown error.
    let inv = pool
        .load(
            invoker(None),
            Arc::new(code(
                "export default { async fetch() { throw new Error('tenant bug'); } }",
            )),
            request(),
            LIMITS,
            Hold::none(),
        )
        .await
        .unwrap();
    let e = inv.outcome.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Exception, "{e:?}");
    assert!(e.message.contains("tenant bug"), "{e:?}");

    // A CPU limit breach.
    let inv = pool
        .load(
            invoker(None),
            Arc::new(code("export default { async fetch() { while (true) {} } }")),
            request(),
            LIMITS,
            Hold::none(),
        )
        .await
        .unwrap();
    assert_eq!(inv.outcome.unwrap_err().kind, ErrorKind::CpuLimit);

    // Memory limit breaches: the JS heap, and native allocations sized by JS (checked before
    // allocating). See `huge_native_allocation` for one that reaches the allocator.
    let hog = r#"export default { async fetch() { const hog = []; while (true) hog.push("x".repeat(1 << 16) + Math.random()); } }"#;
    for case in [
        hog.to_string(),
        "export default { async fetch() { return new Response(Buffer.alloc(2**40)); } }".into(),
        "export default { async fetch() { return new Response(new TextEncoder().encode('x'.repeat(40 << 20))); } }".into(),
    ] {
        let inv = pool
            .load(
                invoker(None),
                Arc::new(code(&case)),
                request(),
                Limits {
                    cpu_ms: 5_000,
                    ..LIMITS
                },
                Hold::none(),
            )
            .await
            .unwrap();
        let e = inv.outcome.unwrap_err();
        assert_eq!(e.kind, ErrorKind::MemoryLimit, "{case}: {e:?}");
    }

    // And the pool still serves after all of that.
    let inv = pool
        .load(
            invoker(None),
            Arc::new(code(
                "export default { async fetch() { return new Response('still here'); } }",
            )),
            request(),
            LIMITS,
            Hold::none(),
        )
        .await
        .unwrap();
    assert_eq!(inv.outcome.unwrap().body, b"still here");
}

/// A round trip over a Unix socket pair made before confining: the worker's channel.
async fn channel_round_trip(a: std::os::unix::net::UnixStream, b: std::os::unix::net::UnixStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    a.set_nonblocking(true).unwrap();
    b.set_nonblocking(true).unwrap();
    let mut a = tokio::net::UnixStream::from_std(a).unwrap();
    let mut b = tokio::net::UnixStream::from_std(b).unwrap();
    a.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    b.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    b.write_all(b"pong").await.unwrap();
    a.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pong");
    a.shutdown().await.unwrap();
    assert_eq!(b.read(&mut buf).await.unwrap(), 0);
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn wait_ready(pool: &Pool) {
    while !pool.is_ready() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn memory_line(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn stack_overflow() {
    confine_now(&[]);
    fn deep(n: u64) -> u64 {
        let pad = std::hint::black_box([n; 64]);
        if n == 0 {
            0
        } else {
            deep(n - 1) + pad[(n % 64) as usize]
        }
    }
    let t = std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(|| deep(u64::MAX))
        .unwrap();
    println!("survived: {:?}", t.join());
}

fn huge_native_allocation() {
    confine_now(&[]);
    let rt = runtime();
    rt.block_on(async {
        let pool = start_pool();
        wait_ready(&pool).await;
        println!("pool ready");
        let src = "export default { async fetch() { const a = []; a.length = 2**31 - 1; return new Response(a); } }";
        let inv = pool
            .load(invoker(None), Arc::new(code(src)), request(), LIMITS, Hold::none())
            .await;
        println!("survived: {inv:?}");
    });
}

fn engine_after() {
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    confine_now(&[a.as_raw_fd(), b.as_raw_fd()]);
    // Everything below starts after confine(): threads, runtimes, isolates.
    let rt = runtime();
    rt.block_on(async {
        channel_round_trip(a, b).await;
        let pool = start_pool();
        wait_ready(&pool).await;
        exercise(&pool).await;
        drop(pool);
        // Many isolate threads (more than glibc's default arena test, each with its runtime's
        // fds) start and serve under the limits too.
        let wide = Pool::start(
            PoolSettings {
                threads: 24,
                warm_isolates: 24,
                ..settings()
            },
            Arc::new(DisabledEgress),
            Arc::new(NoopObserver),
        )
        .expect("24-thread pool");
        wait_ready(&wide).await;
        for _ in 0..24 {
            let inv = wide
                .load(
                    invoker(None),
                    Arc::new(code(
                        "export default { async fetch() { return new Response('wide'); } }",
                    )),
                    request(),
                    LIMITS,
                    Hold::none(),
                )
                .await
                .unwrap();
            assert_eq!(inv.outcome.unwrap().body, b"wide");
        }
    });
    println!("engine ok");
}

fn engine_before() {
    let rt = runtime();
    let pool = start_pool();
    rt.block_on(wait_ready(&pool));
    // Address space vs data (why RLIMIT_DATA and not RLIMIT_AS), measured on a warm pool.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    println!(
        "warm pool: VmSize {} kB, VmData {} kB, VmRSS {} kB",
        memory_line(&status, "VmSize:"),
        memory_line(&status, "VmData:"),
        memory_line(&status, "VmRSS:")
    );
    // SAFETY: getpid has no arguments.
    let pid = unsafe { libc::getpid() };
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count();
    assert!(
        tasks >= 4,
        "the pool's threads exist before confining: {tasks}"
    );
    // Threads (and their epoll/eventfd fds) exist already: extra fds are expected here.
    let report = confine::confine(&Confinement {
        data_limit_bytes: Some(1 << 30),
        reject_unexpected_fds: false,
        require_empty_env: false,
        ..Confinement::default()
    })
    .expect("confine");
    println!("confined: landlock {}", report.landlock);
    rt.block_on(exercise(&pool));
    println!("engine ok");
    wait_for_parent();
}

/// Tells the parent we are ready and blocks until it closes our stdin.
fn wait_for_parent() {
    println!("ready");
    std::io::stdout().flush().unwrap();
    let mut rest = Vec::new();
    std::io::stdin().read_to_end(&mut rest).unwrap();
}
