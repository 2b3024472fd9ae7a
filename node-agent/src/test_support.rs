//! Test-only helpers shared by the crate's unit tests: how a test that
//! needs root (or the host's cgroups) skips — with a `skipping:` line, or
//! a failure when `FLOTILLA_REQUIRE_NETNS` says CI must run it.

/// Reports that `test` cannot run because `missing` is not there: fails
/// the test when `FLOTILLA_REQUIRE_NETNS` is set, else prints a
/// `skipping:` line for the caller to return after.
pub(crate) fn skip_or_fail(test: &str, missing: impl std::fmt::Display) {
    if std::env::var_os("FLOTILLA_REQUIRE_NETNS").is_some() {
        panic!("{test} needs {missing} (FLOTILLA_REQUIRE_NETNS is set)");
    }
    eprintln!("skipping: {test} needs {missing}");
}

/// Whether this runs as root; if not, reports the skip (see
/// [`skip_or_fail`]) and the caller returns.
pub(crate) fn require_root(test: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    skip_or_fail(test, "root");
    false
}
