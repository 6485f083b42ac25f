//! The sandboxed Python tool against hostile code: every case is contained (the test checks
//! the containment itself: no file written outside, no process left, no network, no
//! environment) and reported as tool text within its time limit.

mod common;

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
            "the python sandbox needs python3 and bubblewrap (bwrap) with user namespaces on this machine",
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
    if common::skip_without_sandbox(include_str!("python_sandbox.rs")) {
        return;
    }
    let tool = PythonTool::new(sandbox());
    assert_eq!(tool.run("print(sum(range(101)))").trim(), "5050");
    let e = tool.run("def f(:\n  pass");
    assert!(e.contains("SyntaxError"), "{e}");
    let e = tool.run("x = 1\n1/0");
    assert!(e.contains("ZeroDivisionError"), "{e}");
    // The traceback is the code's own, as under `python -c`: one frame, at its line 2.
    assert_eq!(e.matches("File \"<string>\"").count(), 1, "{e}");
    assert!(e.contains("File \"<string>\", line 2, in <module>"), "{e}");
    assert_eq!(
        tool.run("print(__import__('sys').argv, __name__, [k for k in globals() if not k.startswith('__')])").trim(),
        "['-c'] __main__ []"
    );
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
    if common::skip_without_sandbox(include_str!("python_sandbox.rs")) {
        return;
    }
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
    if common::skip_without_sandbox(include_str!("python_sandbox.rs")) {
        return;
    }
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
    if common::skip_without_sandbox(include_str!("python_sandbox.rs")) {
        return;
    }
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
    if common::skip_without_sandbox(include_str!("python_sandbox.rs")) {
        return;
    }
    let host_tmp = std::env::temp_dir().join(unique("escape"));
    let _ = std::fs::remove_file(&host_tmp);
    let home = std::env::var("HOME").unwrap_or_default();
    let home_file = std::path::Path::new(&home).join(unique("escape"));
    let _ = std::fs::remove_file(&home_file);
    let here = std::env::current_dir().unwrap().join(unique("escape"));
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
    if common::skip_without_sandbox(include_str!("python_sandbox.rs")) {
        return;
    }
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
    if common::skip_without_sandbox(include_str!("python_sandbox.rs")) {
        return;
    }
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

// ---------------------------------------------------------------------------------------
// Escapes, as an attacker would try them. Each case is judged on the host side: what exists
// on the host afterwards, what a host listener received, whether a host secret appears in
// anything the code printed. The same suite runs as root and as an ordinary user
// (`scripts/sandbox-as-user.sh`, run by CI).

/// A name unique to this test process and case.
fn unique(case: &str) -> String {
    format!("alp-sandbox-{case}-{}", std::process::id())
}

/// Everything the code printed, both streams.
fn all_output(r: &alp_envs::tools::python::RunResult) -> String {
    format!("{}\n{}", r.stdout, r.stderr)
}

/// Python that tries every way to undo the sandbox's mounts and privileges; it prints what
/// worked ("MOUNTED"/"UNSHARED" would be an escape step that succeeded).
const UNDO_THE_SANDBOX: &str = r#"
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
def step(name, rc):
    e = ctypes.get_errno()
    print(name, "rc", rc, "errno", e)
    return rc == 0
MS_REMOUNT, MS_BIND, MS_RDONLY, MNT_DETACH = 32, 4096, 1, 2
for m in [b"/tmp", b"/", b"/proc", b"/dev", b"/usr"]:
    if step("umount " + m.decode(), libc.umount2(m, MNT_DETACH)):
        print("MOUNTED (umount)", m)
for m in [b"/", b"/tmp", b"/usr", b"/dev"]:
    if step("remount rw " + m.decode(), libc.mount(None, m, None, MS_REMOUNT | MS_BIND, None)):
        print("MOUNTED (remount)", m)
if step("mount tmpfs", libc.mount(b"tmpfs", b"/tmp", b"tmpfs", 0, None)):
    print("MOUNTED (tmpfs)")
CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000, 0x20000000, 0x40000000
for flags in [CLONE_NEWUSER | CLONE_NEWNS, CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET]:
    if step("unshare %#x" % flags, libc.unshare(flags)):
        print("UNSHARED", hex(flags))
        if step("mount after unshare", libc.mount(None, b"/", None, MS_REMOUNT | MS_BIND, None)):
            print("MOUNTED (after unshare)")
if step("chroot", libc.chroot(b"/tmp")):
    print("CHROOTED")
step("setuid 0", libc.setuid(0))
"#;

#[test]
fn undoing_the_mounts_then_writing_to_the_host_leaves_the_host_untouched() {
    if common::skip_without_sandbox(include_str!("python_sandbox.rs")) {
        return;
    }
    let home = std::path::PathBuf::from(std::env::var("HOME").expect("HOME"));
    let name = unique("write");
    let targets: Vec<std::path::PathBuf> = ["/tmp", "/var/tmp", "/run/lock", "/dev/shm"]
        .iter()
        .map(|d| std::path::Path::new(d).join(&name))
        .chain([std::env::temp_dir().join(&name), home.join(&name)])
        .chain(std::env::current_dir().ok().map(|d| d.join(&name)))
        .collect();
    for t in &targets {
        let _ = std::fs::remove_file(t);
    }
    // A file of the caller's home that the code tries to append to (as to ~/.bashrc).
    let rc = home.join(format!(".{name}-rc"));
    std::fs::write(&rc, b"# the caller's own line\n").unwrap();
    let bashrc = home.join(".bashrc");
    let bashrc_before = std::fs::read(&bashrc).ok();
    let paths: Vec<String> = targets
        .iter()
        .chain([&rc, &bashrc])
        .map(|p| p.display().to_string())
        .collect();
    let code = format!(
        "{UNDO_THE_SANDBOX}\nfor p in {paths:?}:\n    try:\n        with open(p, 'a') as f:\n            f.write('echo escaped\\n')\n        print('appended', p)\n    except OSError as e:\n        print('refused', p, type(e).__name__)\nprint('done')"
    );
    let r = contained(&code);
    let out = all_output(&r);
    assert!(
        r.stdout.contains("done"),
        "the code did not run to its end:\n{out}"
    );
    for t in &targets {
        assert!(
            !t.exists(),
            "the sandbox wrote {} on the host:\n{out}",
            t.display()
        );
    }
    assert_eq!(
        std::fs::read(&rc).unwrap(),
        b"# the caller's own line\n",
        "the sandbox changed {}:\n{out}",
        rc.display()
    );
    assert_eq!(
        std::fs::read(&bashrc).ok(),
        bashrc_before,
        "~/.bashrc changed"
    );
    std::fs::remove_file(&rc).unwrap();
    for escape in ["MOUNTED", "UNSHARED", "CHROOTED", "setuid 0 rc 0 "] {
        assert!(
            !out.contains(escape),
            "an escape step worked ({escape}):\n{out}"
        );
    }
}

#[test]
fn host_processes_their_command_lines_and_environments_are_invisible() {
    if common::skip_without_sandbox(include_str!("python_sandbox.rs")) {
        return;
    }
    let marker = unique("cmdline-marker");
    let secret = unique("environ-secret");
    let mut host = std::process::Command::new("sleep")
        .arg("30")
        .env("ALP_HOST_SECRET", &secret)
        .spawn()
        .unwrap();
    // A second host process whose command line carries the marker.
    let mut host2 = std::process::Command::new("sh")
        .args(["-c", "sleep 30", &marker])
        .spawn()
        .unwrap();
    let me = std::process::id();
    let code = format!(
        r#"
import os
pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())
print('pids', pids)
for p in pids + [{me}, {h1}, {h2}, 1]:
    for what in ('cmdline', 'environ', 'status'):
        try:
            print(p, what, open('/proc/%d/%s' % (p, what), 'rb').read()[:4000])
        except OSError as e:
            print(p, what, 'unreadable', type(e).__name__)
print('done')
"#,
        h1 = host.id(),
        h2 = host2.id()
    );
    let r = contained(&code);
    host.kill().ok();
    host2.kill().ok();
    host.wait().ok();
    host2.wait().ok();
    let out = all_output(&r);
    assert!(r.stdout.contains("done"), "{out}");
    assert!(
        !out.contains(&marker),
        "a host command line is visible:\n{out}"
    );
    assert!(
        !out.contains(&secret),
        "a host environment is visible:\n{out}"
    );
    let exe = std::env::current_exe().unwrap();
    let exe_name = exe.file_name().unwrap().to_string_lossy();
    assert!(
        !out.contains(&*exe_name),
        "the test process is visible:\n{out}"
    );
    // /proc lists the sandbox's own processes only: its init and the interpreter.
    let pids: Vec<u32> = r
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("pids "))
        .unwrap()
        .trim_matches(|c| c == '[' || c == ']')
        .split(", ")
        .map(|p| p.parse().unwrap())
        .collect();
    assert!(pids.len() <= 3 && pids.iter().all(|&p| p < 10), "{pids:?}");
}

#[test]
fn host_files_are_unreadable_even_when_every_user_may_read_them() {
    if common::skip_without_sandbox(include_str!("python_sandbox.rs")) {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let secret = unique("file-secret");
    let home = std::path::PathBuf::from(std::env::var("HOME").expect("HOME"));
    // Removed when the test ends, passing or failing.
    struct Planted(Vec<std::path::PathBuf>);
    impl Drop for Planted {
        fn drop(&mut self) {
            for p in &self.0 {
                let _ = std::fs::remove_file(p);
            }
        }
    }
    let mut planted = Planted(Vec::new());
    for dir in [
        std::env::temp_dir(),
        "/var/tmp".into(),
        home.clone(),
        std::env::current_dir().unwrap(),
    ] {
        let p = dir.join(format!("{}.answers", unique("planted")));
        // The working directory may not be writable by an ordinary user (or be the home).
        if !planted.0.contains(&p)
            && std::fs::write(&p, format!("the answer is {secret}\n")).is_ok()
        {
            planted.0.push(p.clone());
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    assert!(planted.0.len() >= 3, "{:?}", planted.0);
    let mut reads: Vec<String> = planted.0.iter().map(|p| p.display().to_string()).collect();
    reads.extend(
        [
            "/etc/passwd",
            "/etc/hostname",
            "/etc/os-release",
            "/etc/shadow",
            concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
        ]
        .map(String::from),
    );
    reads.push(std::env::current_exe().unwrap().display().to_string());
    let code = format!(
        r#"
import os
for p in {reads:?}:
    try:
        print('READ', p, open(p, 'rb').read(200))
    except OSError as e:
        print('unreadable', p, type(e).__name__)
for top, dirs, files in os.walk('/'):
    if top.startswith(('/proc', '/usr/lib', '/sys')):
        dirs[:] = []
        continue
    print('tree', top, sorted(files))
print('root', sorted(os.listdir('/')))
print('done')
"#
    );
    let r = contained(&code);
    drop(planted);
    let out = all_output(&r);
    assert!(r.stdout.contains("done"), "{out}");
    assert!(!out.contains(&secret), "a host file was readable:\n{out}");
    assert!(!out.contains("READ"), "a host file was readable:\n{out}");
    // The root holds only the sandbox's own places and the interpreter's read-only paths.
    let sb = sandbox();
    let allowed: Vec<String> = sb
        .visible_paths()
        .iter()
        .filter_map(|p| p.components().nth(1))
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .chain(["tmp", "dev", "proc", "etc"].map(String::from))
        .collect();
    let root = r
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("root "))
        .unwrap();
    for entry in root.trim_matches(|c| c == '[' || c == ']').split(", ") {
        let entry = entry.trim_matches('\'');
        assert!(
            allowed.iter().any(|a| a == entry),
            "/{entry} is visible: {root}"
        );
    }
}

#[test]
fn host_sockets_unix_abstract_and_loopback_are_unreachable() {
    if common::skip_without_sandbox(include_str!("python_sandbox.rs")) {
        return;
    }
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::{SocketAddr, UnixListener};
    let path = std::env::temp_dir().join(unique("socket"));
    let _ = std::fs::remove_file(&path);
    let on_disk = UnixListener::bind(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
    let abstract_name = unique("abstract");
    let abstract_l =
        UnixListener::bind_addr(&SocketAddr::from_abstract_name(&abstract_name).unwrap()).unwrap();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = tcp.local_addr().unwrap().port();
    for l in [&on_disk, &abstract_l] {
        l.set_nonblocking(true).unwrap();
    }
    tcp.set_nonblocking(true).unwrap();
    let code = format!(
        r#"
import socket
def attempt(name, family, addr):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect(addr)
        s.sendall(b'hello host')
        print('CONNECTED', name)
    except OSError as e:
        print('refused', name, type(e).__name__)
attempt('unix', socket.AF_UNIX, {path:?})
attempt('abstract', socket.AF_UNIX, '\0' + {abstract_name:?})
attempt('tcp', socket.AF_INET, ('127.0.0.1', {port}))
attempt('dbus', socket.AF_UNIX, '/run/dbus/system_bus_socket')
print('done')
"#,
        path = path.display().to_string()
    );
    let r = contained(&code);
    let out = all_output(&r);
    let nothing = |res: std::io::Result<()>, what: &str| match res {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the host's {what} listener got a connection ({other:?}):\n{out}"),
    };
    nothing(on_disk.accept().map(|_| ()), "Unix socket");
    nothing(abstract_l.accept().map(|_| ()), "abstract socket");
    nothing(tcp.accept().map(|_| ()), "loopback TCP");
    std::fs::remove_file(&path).unwrap();
    assert!(r.stdout.contains("done"), "{out}");
    assert!(!out.contains("CONNECTED"), "{out}");
}

#[test]
fn the_code_holds_no_privilege_and_the_filter_refuses_what_it_never_needs() {
    if common::skip_without_sandbox(include_str!("python_sandbox.rs")) {
        return;
    }
    let r = contained(
        r#"
import ctypes, os
status = dict(l.split(':\t', 1) for l in open('/proc/self/status').read().splitlines() if ':\t' in l)
for k in ('CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb', 'NoNewPrivs', 'Seccomp'):
    print(k, status[k].strip())
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
for name, nr, args in [('ptrace', 101, (0, 1, 0, 0)), ('keyctl', 250, (0, -3, 0, 0)),
                       ('bpf', 321, (0, 0, 0, 0)), ('perf_event_open', 298, (0, 0, -1, -1)),
                       ('open_by_handle_at', 304, (0, 0, 0, 0)), ('io_uring_setup', 425, (1, 0, 0, 0)),
                       ('x32 getpid', 0x40000000 + 39, (0, 0, 0, 0))]:
    rc = libc.syscall(nr, *[ctypes.c_long(a) for a in args])
    print('call', name, rc, ctypes.get_errno())
print('uid', os.getuid(), os.geteuid(), 'gid', os.getgid())
print('clone3', libc.syscall(435, 0, 0), ctypes.get_errno())
import resource, threading
for lim in ('RLIMIT_NPROC', 'RLIMIT_AS', 'RLIMIT_CPU', 'RLIMIT_NOFILE', 'RLIMIT_FSIZE'):
    r = getattr(resource, lim)
    try:
        resource.setrlimit(r, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        print('RAISED', lim)
    except (ValueError, OSError) as e:
        print('kept', lim, type(e).__name__)
t = threading.Thread(target=lambda: print('thread ran'))
t.start(); t.join()
print('done')
"#,
    );
    let out = all_output(&r);
    assert!(r.stdout.contains("done"), "{out}");
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert!(
            r.stdout.contains(&format!("{cap} 0000000000000000")),
            "{cap} is not empty:\n{out}"
        );
    }
    assert!(r.stdout.contains("NoNewPrivs 1"), "{out}");
    assert!(r.stdout.contains("Seccomp 2"), "no seccomp filter:\n{out}");
    if cfg!(target_arch = "x86_64") {
        for call in [
            "ptrace",
            "keyctl",
            "bpf",
            "perf_event_open",
            "open_by_handle_at",
            "io_uring_setup",
            "x32 getpid",
        ] {
            assert!(
                r.stdout.contains(&format!("call {call} -1 1\n")),
                "{call} was not refused with EPERM:\n{out}"
            );
        }
    }
    assert!(
        !r.stdout.contains("uid 0 "),
        "the code runs as root:\n{out}"
    );
    assert!(!r.stdout.contains("RAISED"), "a limit was raised:\n{out}");
    // Threads still start (the C library falls back from clone3 to clone).
    assert!(r.stdout.contains("thread ran"), "{out}");
    if cfg!(target_arch = "x86_64") {
        assert!(
            r.stdout.contains("clone3 -1 38\n"),
            "clone3 not refused with ENOSYS:\n{out}"
        );
    }
}

#[test]
fn descriptors_the_caller_holds_open_do_not_reach_the_sandbox() {
    if common::skip_without_sandbox(include_str!("python_sandbox.rs")) {
        return;
    }
    let dir = std::env::temp_dir().join(unique("fd-dir"));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = unique("fd-secret");
    std::fs::write(dir.join(&secret), &secret).unwrap();
    let cpath = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    let fpath = std::ffi::CString::new(dir.join(&secret).as_os_str().as_encoded_bytes()).unwrap();
    // Opened without O_CLOEXEC, as a careless library would.
    // SAFETY: open(2) on valid C strings.
    let (dfd, ffd) = unsafe {
        (
            libc::open(cpath.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY),
            libc::open(fpath.as_ptr(), libc::O_RDONLY),
        )
    };
    assert!(dfd >= 0 && ffd >= 0);
    let r = contained(
        r#"
import os
print('fds', sorted(os.listdir('/proc/self/fd')))
for fd in range(3, 256):
    try:
        print('listed', fd, os.listdir(fd))
    except OSError:
        pass
    try:
        print('read', fd, os.pread(fd, 200, 0))
    except OSError:
        pass
print('done')
"#,
    );
    // SAFETY: closing the descriptors opened above.
    unsafe {
        libc::close(dfd);
        libc::close(ffd);
    }
    std::fs::remove_dir_all(&dir).unwrap();
    let out = all_output(&r);
    assert!(r.stdout.contains("done"), "{out}");
    assert!(
        !out.contains(&secret),
        "a caller's descriptor reached the sandbox:\n{out}"
    );
    assert!(!out.contains("listed") && !out.contains("read "), "{out}");
}

#[test]
fn the_sandbox_s_own_writable_places_are_bounded() {
    if common::skip_without_sandbox(include_str!("python_sandbox.rs")) {
        return;
    }
    let sb = sandbox();
    let mb = sb.config().file_size_mb;
    let r = contained(&format!(
        r#"
import os
def fill(d, files):
    n = 0
    try:
        for i in range(files):
            with open(os.path.join(d, 'f%d' % i), 'wb') as f:
                f.write(b'x' * (1 << 20))
            n += 1
        print(d, 'took all', n)
    except OSError as e:
        print(d, 'full after', n, type(e).__name__)
fill('/tmp', {files})
fill('/dev/shm', 8)
for p in ['/dev/new', '/new', '/usr/new', '/proc/new']:
    try:
        open(p, 'w')
        print('WROTE', p)
    except OSError as e:
        print('refused', p, type(e).__name__)
print('done')
"#,
        files = mb + 4
    ));
    let out = all_output(&r);
    assert!(r.stdout.contains("done"), "{out}");
    assert!(
        r.stdout.contains("/tmp full after"),
        "/tmp has no size limit:\n{out}"
    );
    assert!(
        r.stdout.contains("/dev/shm full after"),
        "/dev/shm has no size limit:\n{out}"
    );
    assert!(!r.stdout.contains("WROTE"), "{out}");
}

#[test]
fn the_host_s_system_v_ipc_is_out_of_reach() {
    if common::skip_without_sandbox(include_str!("python_sandbox.rs")) {
        return;
    }
    // A segment every user may attach, made on the host with a key the code is told.
    let key = 0x4a1b_0000 | (std::process::id() as libc::key_t & 0xffff);
    // SAFETY: shmget/shmctl on a key of this test's own; the segment is removed below.
    let id = unsafe { libc::shmget(key, 4096, libc::IPC_CREAT | libc::IPC_EXCL | 0o666) };
    assert!(id >= 0, "{}", std::io::Error::last_os_error());
    let r = contained(&format!(
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nprint('shmget', libc.shmget({key}, 4096, 0o666), ctypes.get_errno())\nprint('done')"
    ));
    // SAFETY: removes the segment made above.
    unsafe {
        libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
    }
    let out = all_output(&r);
    assert!(r.stdout.contains("done"), "{out}");
    // ENOENT: no segment of that key exists in the sandbox's IPC namespace.
    assert!(
        r.stdout.contains("shmget -1 2\n"),
        "the host's segment is reachable:\n{out}"
    );
}
