//! The `granary-local` binary; everything lives in the library so tests can reach the resources.

/// jemalloc's options for the runner, read when it starts (`_RJEM_MALLOC_CONF` in the environment
/// adds to them or overrides them). Dirty pages go back to the system after 1 s instead of 10: over a
/// 30-minute soak the default let the resident memory creep (41.7 -> 42.7 MiB between its second and
/// third ten minutes, memory in use level) and 1 s held it (38.0 -> 38.4 MiB). A C string: jemalloc
/// reads the pointer this static holds.
#[cfg(not(target_env = "msvc"))]
#[allow(unsafe_code, non_upper_case_globals)]
// SAFETY: the one definition of this symbol (jemalloc's own is weak), a NUL-terminated static string.
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8; 20] = b"dirty_decay_ms:1000\0";

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
