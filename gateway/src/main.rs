//! The `isogate` binary.

fn main() -> std::process::ExitCode {
    // The supervisor starts confined worker processes as `isogate __worker` (internal).
    if std::env::args_os().nth(1).is_some_and(|a| a == "__worker") {
        return isogate_gateway::cli::worker_main();
    }
    isogate_gateway::cli::main()
}
