//! A stand-alone `proc-receive` hook: what `flotilla git-hook proc-receive` does,
//! without the rest of flotilla. The crate's tests install it as the hook program
//! (`CARGO_BIN_EXE_flotilla-git-hook`); it takes the socket and push id from the
//! environment receive-pack inherited from the server.

use std::process::ExitCode;

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() != Some("proc-receive") {
        eprintln!("usage: flotilla-git-hook proc-receive (run by git as the proc-receive hook)");
        return ExitCode::from(2);
    }
    let stdin = std::io::stdin().lock();
    let stdout = std::io::stdout().lock();
    match flotilla_git::run_proc_receive_hook_from_env(stdin, stdout) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("flotilla proc-receive hook: {error}");
            ExitCode::FAILURE
        }
    }
}
