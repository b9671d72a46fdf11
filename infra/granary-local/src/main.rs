//! The `granary-local` binary; everything lives in the library so tests can reach the resources.

fn main() -> std::process::ExitCode {
    granary_local::main_with_args()
}
