//! Whether the sandbox's tests can run here: they need python3 and bubblewrap (`bwrap`) with
//! user namespaces. Where the sandbox cannot start they skip, with one line on stderr that
//! counts them and says how to run them; `ALP_REQUIRE_BWRAP=1` (CI) makes them fail instead.
//! alp-cli's python train test includes this file too (`#[path]`).

use alp_envs::tools::python::{PythonConfig, PythonSandbox};
use std::io::Write;
use std::sync::OnceLock;

/// True (after one line on stderr, once per test binary) when the sandbox cannot start here
/// and `ALP_REQUIRE_BWRAP` is unset; panics with the reason when it is set. `source` is the
/// calling file's text (`include_str!`), whose `#[test]`s the line counts.
pub fn skip_without_sandbox(source: &str) -> bool {
    static WHY: OnceLock<Option<String>> = OnceLock::new();
    let why = WHY.get_or_init(|| {
        let why = PythonSandbox::new(PythonConfig::default())
            .err()
            .map(|e| e.to_string())?;
        if std::env::var_os("ALP_REQUIRE_BWRAP").is_some() {
            panic!("ALP_REQUIRE_BWRAP is set but the python sandbox cannot start: {why}");
        }
        let n = source.matches("#[test]").count();
        let tests = if n == 1 { "test" } else { "tests" };
        // Straight to stderr: the test harness captures `eprintln!` of passing tests.
        let _ = writeln!(
            std::io::stderr(),
            "skipping {n} {tests} of the python sandbox in this binary: {why}. Install bubblewrap \
             (Debian/Ubuntu: apt-get install bubblewrap) to run them; ALP_REQUIRE_BWRAP=1 makes \
             them required"
        );
        Some(why)
    });
    why.is_some()
}
