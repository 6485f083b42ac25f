//! The sandboxed Python tool against hostile code: every case is contained (the test checks
//! the containment itself: no file written outside, no process left, no network, no
//! environment) and reported as tool text within its time limit.

use alp_envs::tools::python::{Ending, PythonConfig, PythonSandbox, PythonTool};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

fn sandbox() -> Arc<PythonSandbox> {
    static SB: OnceLock<Arc<PythonSandbox>> = OnceLock::new();
    SB.get_or_init(|| {
        let cfg = PythonConfig {
            timeout_s: 3.0,
            cpu_seconds: 2,
            memory_mb: 512,
            ..Default::default()
        };
        Arc::new(PythonSandbox::new(cfg).expect(
            "the python sandbox needs python3 and unshare with user namespaces on this machine",
        ))
    })
    .clone()
}

/// Runs `code`, checks it ended within the timeout (plus a margin) and returns the result.
fn contained(code: &str) -> alp_envs::tools::python::RunResult {
    let sb = sandbox();
    let t = Instant::now();
    let r = sb.run(code);
    assert!(
        t.elapsed() < Duration::from_secs_f64(sb.config().timeout_s + 3.0),
        "{code}: took {:?}",
        t.elapsed()
    );
    r
}

/// Processes whose command line mentions `marker` (left behind by a sandbox).
fn processes_with(marker: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains(marker) && !c.contains("cargo") {
                out.push(c);
            }
        }
    }
    out
}

#[test]
fn ordinary_code_runs_and_errors_come_back_as_text() {
    let tool = PythonTool::new(sandbox());
    assert_eq!(tool.run("print(sum(range(101)))").trim(), "5050");
    let e = tool.run("def f(:\n  pass");
    assert!(e.contains("SyntaxError"), "{e}");
    let e = tool.run("1/0");
    assert!(e.contains("ZeroDivisionError"), "{e}");
    assert!(tool.run("   ").contains("empty"));
    assert!(tool.run("x = 1").contains("no output"));
    // Output that is not UTF-8 arrives lossily decoded.
    let r = contained("import sys; sys.stdout.buffer.write(b'ok \\xff\\xfe end')");
    assert!(
        r.stdout.starts_with("ok ") && r.stdout.ends_with(" end"),
        "{:?}",
        r.stdout
    );
}

#[test]
fn an_infinite_loop_is_stopped_and_leaves_no_process() {
    let r = contained("import time\nwhile True:\n    pass  # alp-sandbox-loop-marker");
    assert!(
        matches!(r.ending, Ending::TimedOut | Ending::Signal(_)),
        "{:?}",
        r.ending
    );
    assert!(processes_with("alp-sandbox-loop-marker").is_empty());
    let r = contained("import time\ntime.sleep(60)  # alp-sandbox-sleep-marker");
    assert_eq!(r.ending, Ending::TimedOut);
    let text = r.to_tool_text(sandbox().config());
    assert!(text.contains("TimeoutError"), "{text}");
    assert!(processes_with("alp-sandbox-sleep-marker").is_empty());
}

#[test]
fn a_fork_bomb_is_contained() {
    let r = contained(
        "import os, time  # alp-sandbox-fork-marker\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n            time.sleep(30)\n            os._exit(0)\n        n += 1\nexcept OSError as e:\n    print('forks', n, type(e).__name__)",
    );
    let text = r.to_tool_text(sandbox().config());
    // The process limit stops it long before the machine notices.
    assert!(text.contains("forks") && text.contains("Error"), "{text}");
    let forks: u64 = text
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(forks <= 64, "{forks} forks allowed");
    std::thread::sleep(Duration::from_millis(200));
    assert!(processes_with("alp-sandbox-fork-marker").is_empty());
}

#[test]
fn memory_output_and_cpu_limits_hold() {
    let r = contained("x = bytearray(10 * 1024**3)\nprint(len(x))");
    let text = r.to_tool_text(sandbox().config());
    assert!(text.contains("MemoryError"), "{text}");
    // 1 GB of output: cut at the limit and stopped.
    let r = contained("import sys\nfor _ in range(1024):\n    sys.stdout.write('x' * 1024 * 1024)");
    assert_eq!(r.ending, Ending::OutputLimit);
    assert!(r.stdout.len() <= sandbox().config().max_output_bytes);
    // CPU seconds (threads of pure Python burn them on one core).
    let r = contained("while True:\n    pass");
    assert!(
        matches!(r.ending, Ending::Signal(s) if s == libc_sigxcpu())
            || r.ending == Ending::TimedOut,
        "{:?}",
        r.ending
    );
    // ctypes to exhaust memory: stopped by the address-space limit too.
    let r = contained(
        "import ctypes\nlibc = ctypes.CDLL(None)\nlibc.malloc.restype = ctypes.c_void_p\np = libc.malloc(ctypes.c_size_t(8 * 1024**3))\nprint('null' if not p else 'got memory')",
    );
    assert!(r.stdout.contains("null"), "{:?} {:?}", r.stdout, r.stderr);
}

fn libc_sigxcpu() -> i32 {
    24
}

#[test]
fn files_outside_the_sandbox_are_never_written() {
    let host_tmp = std::env::temp_dir().join("alp-sandbox-escape-test");
    let _ = std::fs::remove_file(&host_tmp);
    let home = std::env::var("HOME").unwrap_or_default();
    let home_file = std::path::Path::new(&home).join("alp-sandbox-escape-test");
    let _ = std::fs::remove_file(&home_file);
    let here = std::env::current_dir()
        .unwrap()
        .join("alp-sandbox-escape-test");
    let code = format!(
        "import os\nfor p in [{:?}, {:?}, {:?}, os.path.expanduser('~/alp-x'), '/var/tmp/alp-x']:\n    try:\n        open(p, 'w').write('escaped')\n        print('wrote', p)\n    except OSError as e:\n        print('refused', p, type(e).__name__)\nopen('scratch.txt', 'w').write('fine')\nprint('cwd', os.getcwd(), os.listdir('.'))",
        host_tmp.display().to_string(),
        home_file.display().to_string(),
        here.display().to_string()
    );
    let r = contained(&code);
    assert!(r.stdout.contains("scratch.txt"), "{}", r.stdout);
    for p in [&host_tmp, &home_file, &here] {
        assert!(
            !p.exists(),
            "the sandbox wrote {}:\n{}",
            p.display(),
            r.stdout
        );
    }
    // A second call starts with an empty /tmp.
    let r = contained("import os; print(os.listdir('/tmp'))");
    assert_eq!(r.stdout.trim(), "[]");
}

#[test]
fn network_environment_and_the_parent_are_out_of_reach() {
    let r = contained(
        "import socket\ntry:\n    socket.create_connection(('1.1.1.1', 53), timeout=2)\n    print('connected')\nexcept OSError as e:\n    print('no network', e.errno)",
    );
    assert!(r.stdout.contains("no network"), "{}", r.stdout);
    std::env::set_var("ALP_SECRET_FOR_SANDBOX_TEST", "hunter2");
    let r = contained("import os; print(sorted(os.environ))");
    assert!(!r.stdout.contains("ALP_SECRET"), "{}", r.stdout);
    assert!(!r.stdout.contains("hunter2"));
    // The caller is invisible in the sandbox's PID namespace: killing its pid, or the
    // namespace's own first process, reaches nothing of ours.
    let me = std::process::id();
    let r = contained(&format!("import os, signal\ntry:\n    os.kill({me}, signal.SIGKILL)\n    print('killed')\nexcept OSError as e:\n    print('refused', type(e).__name__)\nprint('parent', os.getppid())\nos.kill(os.getppid(), signal.SIGKILL)"));
    assert!(
        r.stdout.contains("refused ProcessLookupError"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("parent 1"), "{}", r.stdout);
    // Still alive to assert.
    assert_eq!(contained("print(1)").stdout.trim(), "1");
}

#[test]
fn sixty_four_calls_run_concurrently() {
    // A generous wall clock: 64 interpreters start at once on a small machine.
    let sb = Arc::new(
        PythonSandbox::new(PythonConfig {
            timeout_s: 120.0,
            ..Default::default()
        })
        .unwrap(),
    );
    let t = Instant::now();
    let times: Vec<f64> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..64)
            .map(|i| {
                let sb = sb.clone();
                s.spawn(move || {
                    let r = sb.run(&format!("print({i} * {i})"));
                    assert_eq!(r.stdout.trim(), (i * i).to_string(), "{r:?}");
                    r.seconds
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let all = t.elapsed().as_secs_f64();
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    // One call at a time, for the cost of a call alone.
    let mut alone: Vec<f64> = (0..9).map(|_| sb.run("print(1)").seconds).collect();
    alone.sort_by(f64::total_cmp);
    eprintln!(
        "64 concurrent sandboxed calls: {all:.2} s in all, median call {:.3} s; one at a time: median {:.3} s",
        sorted[32], alone[4]
    );
}
