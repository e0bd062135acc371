//! The `isogate` binary.

fn main() -> std::process::ExitCode {
    isogate_gateway::cli::main()
}
