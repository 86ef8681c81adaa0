use std::process::ExitCode;

// mimalloc instead of glibc's malloc for Rust's allocations. Requests are
// allocated on the socket tasks' threads and freed on the store thread, and
// answers the other way round; under load glibc's per-thread arenas then
// contend on their locks, which made enqueue throughput swing by a quarter
// from one daemon process to the next (README, Performance). SQLite keeps
// using glibc's malloc, from the store thread alone.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    coax_scheduler::cli::main()
}
