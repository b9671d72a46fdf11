//! The `granary-local` binary; everything lives in the library so tests can reach the resources.

fn main() -> std::process::ExitCode {
    limit_malloc_arenas();
    granary_local::main_with_args()
}

/// Caps glibc's malloc at two arenas, before any thread starts: it still serves SQLite (the Rust side
/// allocates through jemalloc, see the library's root). With an arena per thread, memory freed after
/// a large scan stayed with the arena that parsed it (measured, when glibc served everything: a basket
/// counting a 10,000-product dataset left the runner at 416 MiB; 113 MiB with two arenas).
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: mallopt only sets an allocator parameter; it is called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
