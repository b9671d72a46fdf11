//! The `granary` command line; it lives in the library (`granary_local::cli`).

fn main() -> std::process::ExitCode {
    granary_local::cli::main_with_args()
}
