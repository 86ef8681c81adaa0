use std::process::ExitCode;

// mimalloc instead of glibc's malloc for Rust's allocations. Requests are
// allocated on the socket tasks' threads and freed on the store thread, and
// answers the other way round; under load glibc's per-thread arenas then
// contend on their locks, which made enqueue throughput swing by a quarter
// from one daemon process to the next (README, Performance). SQLite keeps
// using glibc's malloc, from the store thread alone.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

// mimalloc keeps freed pages for reuse; after a burst of large requests the
// server asks for them to be returned (mi_collect(true) purges them).
unsafe extern "C" {
    fn mi_collect(force: bool);
}

fn main() -> ExitCode {
    coax_scheduler::server::give_memory_back_with(|| {
        // SAFETY: mi_collect only walks mimalloc's own heaps and arenas.
        unsafe { mi_collect(true) }
    });
    coax_scheduler::cli::main()
}
