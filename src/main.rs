//! The `tessera` binary: flags are parsed and handed to the library.

/// jemalloc rather than the system allocator: a node allocates and frees a few
/// dozen small blocks per request on every worker thread, and glibc's malloc
/// costs more instructions and more throughput there (docs/benchmarks.md).
/// Stored payloads are allocated at their exact length, so a 1 KB ticket fits
/// jemalloc's 1,024 B size class (see `entry::owned_bytes`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    tessera::cli::main()
}
