//! `cargo xtask`: Flotilla's project tasks (`dev`, `test`, `tidy`) as a Rust program in the
//! workspace (and `contract`, the API against its OpenAPI document; `sdks`, the model
//! providers' Python SDKs for the tests), the way rust-analyzer keeps its own, so that a
//! developer's machine and CI run the same steps and need nothing but cargo to start them.
//!
//! The crate uses std only and depends on no other workspace crate. That is the point of
//! it: it has to build on a bare Debian with just a Rust toolchain, because its first job
//! is to install the system libraries (libxkbcommon, a C++ compiler, ...) the rest of the
//! workspace needs in order to build. For the same reason the arguments are parsed by hand
//! (`flags.rs`): three subcommands and two options do not justify pulling in an argument
//! parser and its dependency tree.

mod contract;
mod dev;
mod flags;
mod packages;
mod project;
mod python;
mod sdks;
mod test_suite;
mod tidy;

use std::error::Error;
use std::process::ExitCode;

use flags::Task;

fn main() -> ExitCode {
    let task = match flags::parse(std::env::args().skip(1)) {
        Ok(task) => task,
        Err(flags_error) => {
            eprintln!("xtask: {flags_error}\n\n{}", flags::USAGE);
            return ExitCode::from(2);
        }
    };
    let outcome = match task {
        Task::Help => {
            print!("{}", flags::USAGE);
            return ExitCode::SUCCESS;
        }
        // `dev` only comes back when it could not replace itself with flotilla.
        Task::Dev { flotilla_args } => Err(Box::new(dev::run(&flotilla_args)) as Box<dyn Error>),
        Task::Test(test_options) => test_suite::run(&test_options).map_err(Box::from),
        Task::Contract => contract::run().map_err(Box::from),
        Task::Sdks => sdks::run().map_err(Box::from),
        Task::Tidy => tidy::run_command(&project::workspace_root()).map_err(Box::from),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("xtask: {error}");
            let mut source = error.source();
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::FAILURE
        }
    }
}
