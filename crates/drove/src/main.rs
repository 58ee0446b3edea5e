/// jemalloc, with its background threads, gives freed memory back to the system
/// within seconds even when the threads that freed it sit idle, so a worker's resident
/// memory falls back after a job that held gigabytes. The system allocator keeps much
/// of it in per-thread arenas.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    drove::main()
}
