//! The `tessera` binary: flags are parsed and handed to the library.

fn main() -> std::process::ExitCode {
    tessera::cli::main()
}
