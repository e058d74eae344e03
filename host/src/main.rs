//! `escrow`: run WebAssembly plugins with their side effects held in escrow.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
