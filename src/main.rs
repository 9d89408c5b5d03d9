//! The `kasho` binary: a thin shell around [`kasho::cli`].

fn main() -> std::process::ExitCode {
    kasho::cli::main()
}
