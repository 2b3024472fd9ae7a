//! `cargo xtask sdks` (and the first step of `cargo xtask test`): the official Python
//! SDKs of the model providers, `openai` and `anthropic`, pinned, in a virtualenv at
//! `<target>/llm-sdks`. The LLM gateway's tests drive them as real clients; they find
//! the interpreter in `FLOTILLA_SDK_PYTHON`, which `cargo xtask test` sets.

use std::path::{Path, PathBuf};

use crate::project;
use crate::python::{self, PythonError};

/// The SDK releases the tests are written against (the newest on PyPI when pinned).
pub const OPENAI: &str = "openai==3.60.0";
pub const ANTHROPIC: &str = "anthropic==2.16.0";
/// The virtualenv's folder in the target directory.
const VENV: &str = "llm-sdks";
/// The variable that hands the tests the virtualenv's interpreter.
pub const PYTHON_VAR: &str = "FLOTILLA_SDK_PYTHON";

/// The virtualenv's `python`, installed when missing or out of date.
pub fn install(target: &Path) -> Result<PathBuf, PythonError> {
    let venv = python::venv(target, VENV, &[OPENAI, ANTHROPIC])?;
    Ok(venv.join("bin").join("python"))
}

/// `cargo xtask sdks`.
pub fn run() -> Result<bool, PythonError> {
    let python = install(&project::target_dir(&project::workspace_root()))?;
    eprintln!("xtask: {OPENAI} and {ANTHROPIC} in {}", python.display());
    Ok(true)
}
