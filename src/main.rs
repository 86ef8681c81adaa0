use std::process::ExitCode;

fn main() -> ExitCode {
    coax_scheduler::cli::main()
}
