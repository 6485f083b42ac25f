//! A sandboxed Python interpreter, the tool of tool-integrated reasoning. Each call runs the
//! model's code in a fresh interpreter inside a [bubblewrap](https://github.com/containers/bubblewrap)
//! (`bwrap`) sandbox, built the way Flatpak builds its own:
//!
//! - **a fresh, minimal root**, not the host's file system: an empty read-only tmpfs holding
//!   only the interpreter, the directories on its `sys.path` (standard library,
//!   `lib-dynload`, site-packages), the directories of the shared libraries it loads, its ELF
//!   loader and `/etc/ld.so.cache`, all bind-mounted **read-only** at their host paths (what
//!   [`PythonSandbox::visible_paths`] lists); a new `/proc` for its own PID namespace; a
//!   read-only `/dev` with `null`, `zero`, `full`, `random`, `urandom` and `tty`; private
//!   size-limited tmpfs at `/tmp` (the working directory and `$HOME`) and `/dev/shm` that
//!   vanish with the call. There is no shell or other program, no `/etc/passwd`, no `/sys`,
//!   no home directory, no checkout, no host socket;
//! - **new namespaces** for users, PIDs, mounts, network (loopback only: no network), IPC,
//!   UTS and cgroups, and no nested user namespaces (`--disable-userns`);
//! - **no privileges**: every capability dropped and `no_new_privs` set before the
//!   interpreter starts, so the code cannot mount, unmount, remount or make namespaces;
//!   started by root the sandbox runs as an unprivileged uid of its own; a **seccomp** filter
//!   refuses (`EPERM`) the system calls a snippet never needs (mounting, namespaces,
//!   `ptrace`, keyrings, `bpf`, `io_uring`, file handles, kernel modules and the like);
//! - **resource limits**: CPU seconds, address space, file size, open files and processes;
//!   no file descriptor of the caller's is inherited;
//! - a **wall-clock timeout** that kills the whole sandbox; stdin closed; the environment
//!   cleared (`PATH`, `LANG`, `HOME=/tmp` only); output cut at a configured size (the run
//!   is stopped there).
//!
//! Every failure — syntax error, exception, timeout, limit, a sandbox that cannot start — comes
//! back as the tool's text ([`RunResult::to_tool_text`]), never as an error of the run.
//!
//! An exit status above 128 is reported as the signal 128 less (bubblewrap's convention,
//! the shell's too): `sys.exit(137)` reads as "stopped by signal 9".

use super::registry::{Tool, ToolError};
use alp_core::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Limits of one sandboxed call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PythonConfig {
    /// The interpreter (a name on `PATH` or a path); `/usr/bin/python3` is tried after it.
    pub python: String,
    /// Bubblewrap (a name on `PATH` or a path; Debian and Ubuntu: `apt-get install bubblewrap`).
    pub bwrap: String,
    /// Wall-clock seconds before the process group is killed.
    pub timeout_s: f64,
    /// CPU seconds (`RLIMIT_CPU`).
    pub cpu_seconds: u64,
    /// Address space in MiB (`RLIMIT_AS`): a larger allocation raises `MemoryError`.
    pub memory_mb: u64,
    /// Largest file in MiB (`RLIMIT_FSIZE`), and the size of the private `/tmp`.
    pub file_size_mb: u64,
    /// Processes and threads the code may add.
    pub max_processes: u64,
    /// Open files (`RLIMIT_NOFILE`).
    pub open_files: u64,
    /// Bytes of stdout and of stderr kept; past it the run is stopped.
    pub max_output_bytes: usize,
    /// Largest program accepted, in bytes.
    pub max_code_bytes: usize,
}

impl Default for PythonConfig {
    fn default() -> Self {
        PythonConfig {
            python: "python3".into(),
            bwrap: "bwrap".into(),
            timeout_s: 5.0,
            cpu_seconds: 5,
            memory_mb: 1024,
            file_size_mb: 16,
            max_processes: 32,
            open_files: 64,
            max_output_bytes: 8192,
            max_code_bytes: 64 * 1024,
        }
    }
}

impl PythonConfig {
    /// Checks the limits, naming the field.
    pub fn validate(&self) -> Result<()> {
        if !(self.timeout_s.is_finite() && self.timeout_s > 0.0 && self.timeout_s <= 3600.0) {
            return Err(Error::config("python.timeout_s", "must lie in (0, 3600]"));
        }
        let positive = [
            ("python.cpu_seconds", self.cpu_seconds),
            ("python.memory_mb", self.memory_mb),
            ("python.file_size_mb", self.file_size_mb),
            ("python.max_processes", self.max_processes),
            ("python.open_files", self.open_files),
            ("python.max_output_bytes", self.max_output_bytes as u64),
            ("python.max_code_bytes", self.max_code_bytes as u64),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(Error::config(field, "must be positive"));
            }
        }
        // An argument of `execve` holds at most 128 KiB.
        if self.max_code_bytes > 120 * 1024 {
            return Err(Error::config("python.max_code_bytes", "at most 122880"));
        }
        Ok(())
    }
}

/// How a sandboxed run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The interpreter exited with this code.
    Exited(i32),
    /// The wall-clock timeout killed it.
    TimedOut,
    /// Its output passed the limit and it was stopped.
    OutputLimit,
    /// A signal ended it (e.g. `SIGXCPU` at the CPU limit).
    Signal(i32),
}

/// What one sandboxed run produced.
#[derive(Debug, Clone, PartialEq)]
pub struct RunResult {
    /// Standard output (at most `max_output_bytes`, lossily decoded).
    pub stdout: String,
    /// Standard error (at most `max_output_bytes`, lossily decoded).
    pub stderr: String,
    /// How it ended.
    pub ending: Ending,
    /// Wall-clock seconds.
    pub seconds: f64,
}

impl RunResult {
    /// The text the model sees: the output, the error output, and what stopped the run.
    pub fn to_tool_text(&self, cfg: &PythonConfig) -> String {
        let mut out = self.stdout.clone();
        let err = self.stderr.trim_end();
        if !err.is_empty() {
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(err);
        }
        let note = match self.ending {
            Ending::Exited(_) => None,
            Ending::TimedOut => Some(format!(
                "TimeoutError: the code ran past {} s and was stopped",
                cfg.timeout_s
            )),
            Ending::OutputLimit => Some(format!(
                "the output passed {} bytes and the code was stopped",
                cfg.max_output_bytes
            )),
            Ending::Signal(s) if s == libc::SIGXCPU => Some(format!(
                "the code used its {} s of CPU time and was stopped",
                cfg.cpu_seconds
            )),
            Ending::Signal(s) if s == libc::SIGXFSZ => Some(format!(
                "a file passed {} MiB and the code was stopped",
                cfg.file_size_mb
            )),
            Ending::Signal(s) => Some(format!("the code was stopped by signal {s}")),
        };
        if let Some(n) = note {
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(&n);
        }
        if out.trim().is_empty() {
            out = "(no output; print what you want to see)".into();
        }
        out
    }
}

/// Started by root, each sandbox runs as a uid of its own from this range (so that its
/// process limit counts its own processes only, and nothing it does acts as root).
const SANDBOX_UID_BASE: libc::uid_t = 1_600_000;

/// The file descriptor on which bubblewrap reads the seccomp program.
const SECCOMP_FD: libc::c_int = 3;

/// What the interpreter runs first, inside the sandbox (`sys.argv[1]` the process limit,
/// `sys.argv[2]` the code): it sets `RLIMIT_NPROC`, which the kernel counts per user
/// namespace, so the limit counts the sandbox's own processes whoever the caller is (set on
/// the host it would count all of a non-root caller's processes); then it runs the code as
/// `python -c` would, as `__main__` from `<string>`, its own two frames hidden from
/// tracebacks.
const LAUNCHER: &str = r#"def _alp_sandbox(sys=__import__("sys")):
    import resource
    n, code = int(sys.argv[1]), sys.argv[2]
    del sys.argv[1:]
    resource.setrlimit(resource.RLIMIT_NPROC, (n, n))
    main = sys.modules["__main__"].__dict__
    del main["_alp_sandbox"]
    def hook(t, v, tb, show=sys.__excepthook__):
        for _ in range(2):
            tb = tb.tb_next if tb is not None else None
        show(t, v.with_traceback(tb), tb)
    sys.excepthook = hook
    exec(compile(code, "<string>", "exec"), main)
_alp_sandbox()
"#;

/// Run on the host by the caller (not in the sandbox) to learn what the interpreter needs:
/// its executable, the directories on its path and the files it maps once the usual
/// extension modules are loaded (the shared libraries and their loader).
const PROBE: &str = r#"
import json, os, sys
for m in ("array", "binascii", "bz2", "cmath", "collections", "ctypes", "datetime", "decimal",
          "fractions", "hashlib", "heapq", "itertools", "json", "lzma", "math", "random", "re",
          "select", "socket", "sqlite3", "statistics", "struct", "unicodedata", "zlib"):
    try:
        __import__(m)
    except Exception:
        pass
maps = set()
with open("/proc/self/maps") as f:
    for line in f:
        parts = line.split(None, 5)
        if len(parts) == 6 and parts[5].startswith("/"):
            maps.add(parts[5].rstrip("\n"))
print(json.dumps({
    "executable": os.path.realpath(sys.executable),
    "path": [p for p in sys.path if p and os.path.isdir(p)],
    "maps": sorted(maps),
}))
"#;

/// System calls that a Python snippet never needs and that reach past the sandbox's own
/// processes and files: they fail with `EPERM`. Namespaces and privileges already forbid
/// most of them; the filter is a second wall (e.g. for a kernel bug in one of them).
#[cfg(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64"
))]
const REFUSED_SYSCALLS: &[i64] = &[
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_open_tree,
    libc::SYS_move_mount,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
    libc::SYS_name_to_handle_at,
    libc::SYS_open_by_handle_at,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_kcmp,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_fanotify_init,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_kexec_load,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_syslog,
    libc::SYS_personality,
    libc::SYS_setdomainname,
    libc::SYS_sethostname,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_pidfd_getfd,
];

/// The seccomp program (raw `sock_filter`s, as bubblewrap's `--seccomp` reads them): the
/// calls in [`REFUSED_SYSCALLS`] and `clone` with `CLONE_NEWUSER` fail with `EPERM`, `clone3`
/// with `ENOSYS`, a call
/// of another architecture's ABI kills the process, and on x86-64 the x32 ABI's numbers are
/// refused too.
#[cfg(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64"
))]
fn seccomp_program() -> Result<Vec<u8>> {
    use seccompiler::{
        SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    };
    use std::collections::BTreeMap;
    let bad = |e: seccompiler::BackendError| Error::invalid(format!("seccomp filter: {e}"));
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        REFUSED_SYSCALLS.iter().map(|&nr| (nr, vec![])).collect();
    let new_user = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(libc::CLONE_NEWUSER as u64),
        libc::CLONE_NEWUSER as u64,
    )
    .map_err(bad)?;
    rules.insert(
        libc::SYS_clone,
        vec![SeccompRule::new(vec![new_user]).map_err(bad)?],
    );
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e: seccompiler::BackendError| bad(e))?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(bad)?;
    let program: seccompiler::BpfProgram = filter.try_into().map_err(bad)?;
    let mut insns: Vec<(u16, u8, u8, u32)> = Vec::new();
    // `clone3` passes its flags in memory, out of a filter's sight: it answers ENOSYS, and
    // the C library falls back to `clone`, whose flags the filter reads (as Flatpak does).
    // BPF_LD|BPF_W|BPF_ABS the syscall number; BPF_JMP|BPF_JEQ|BPF_K; BPF_RET|BPF_K.
    insns.push((0x20, 0, 0, 0));
    insns.push((0x15, 0, 1, libc::SYS_clone3 as u32));
    insns.push((0x06, 0, 0, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32));
    #[cfg(target_arch = "x86_64")]
    {
        // BPF_LD|BPF_W|BPF_ABS the syscall number; BPF_JMP|BPF_JGE|BPF_K past x32's base
        // (0x4000_0000) to BPF_RET|BPF_K EPERM. The program that follows checks the
        // architecture itself.
        let errno = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
        insns.push((0x20, 0, 0, 0));
        insns.push((0x35, 0, 1, 0x4000_0000));
        insns.push((0x06, 0, 0, errno));
    }
    insns.extend(program.iter().map(|f| (f.code, f.jt, f.jf, f.k)));
    let mut bytes = Vec::with_capacity(insns.len() * 8);
    for (code, jt, jf, k) in insns {
        bytes.extend_from_slice(&code.to_ne_bytes());
        bytes.push(jt);
        bytes.push(jf);
        bytes.extend_from_slice(&k.to_ne_bytes());
    }
    Ok(bytes)
}

#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64"
)))]
fn seccomp_program() -> Result<Vec<u8>> {
    Err(Error::invalid(format!(
        "the python sandbox has no seccomp filter for {}",
        std::env::consts::ARCH
    )))
}

/// A sandboxed Python interpreter (see the module docs). Cheap to share between threads:
/// every call is its own process.
#[derive(Debug, Clone)]
pub struct PythonSandbox {
    cfg: PythonConfig,
    python: PathBuf,
    bwrap: PathBuf,
    /// Host paths bind-mounted read-only at the same place (files and directories).
    visible: Arc<Vec<PathBuf>>,
    seccomp: Arc<Vec<u8>>,
}

impl PythonSandbox {
    /// Finds an interpreter that runs inside the sandbox (probing with one call); an error
    /// says why no sandbox can be made on this machine (no `bwrap`, user namespaces off, no
    /// interpreter the sandbox user can run).
    pub fn new(cfg: PythonConfig) -> Result<Self> {
        cfg.validate()?;
        let bwrap =
            find_program(&cfg.bwrap, &["/usr/bin/bwrap", "/bin/bwrap"]).ok_or_else(|| {
                Error::invalid(format!(
                    "the python tool needs bubblewrap for its sandbox: `{}` is not on PATH \
                 (Debian/Ubuntu: apt-get install bubblewrap; or set python.bwrap)",
                    cfg.bwrap
                ))
            })?;
        let seccomp = Arc::new(seccomp_program()?);
        let mut candidates = Vec::new();
        if let Some(p) = find_program(&cfg.python, &[]) {
            candidates.push(p);
        }
        candidates.push(PathBuf::from("/usr/bin/python3"));
        let mut why = Vec::new();
        for python in candidates {
            let (python, visible) = match interpreter_view(&python) {
                Ok(v) => v,
                Err(e) => {
                    why.push(format!("{}: {e}", python.display()));
                    continue;
                }
            };
            let sb = PythonSandbox {
                cfg: cfg.clone(),
                python: python.clone(),
                bwrap: bwrap.clone(),
                visible: Arc::new(visible),
                seccomp: seccomp.clone(),
            };
            let r = sb.run("print(6 * 7)");
            if r.stdout.trim() == "42" {
                return Ok(sb);
            }
            why.push(format!(
                "{}: {}",
                python.display(),
                r.to_tool_text(&cfg).lines().last().unwrap_or("")
            ));
        }
        Err(Error::invalid(format!(
            "no Python interpreter runs in the sandbox (bubblewrap needs user namespaces, and \
             started by root the interpreter must be readable by every user): {}",
            why.join("; ")
        )))
    }

    /// The limits.
    pub fn config(&self) -> &PythonConfig {
        &self.cfg
    }

    /// The interpreter in use.
    pub fn python(&self) -> &Path {
        &self.python
    }

    /// The host paths the sandbox shows, read-only and at the same place (besides its own
    /// `/proc`, `/dev`, `/dev/shm` and `/tmp`).
    pub fn visible_paths(&self) -> &[PathBuf] {
        &self.visible
    }

    /// The bubblewrap arguments of one call, up to the interpreter's.
    fn bwrap_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::with_capacity(64);
        let push = |a: &mut Vec<OsString>, xs: &[&str]| a.extend(xs.iter().map(OsString::from));
        push(
            &mut a,
            &[
                "--unshare-all",
                "--unshare-user",
                "--disable-userns",
                "--die-with-parent",
                "--new-session",
                "--hostname",
                "sandbox",
                "--clearenv",
                "--setenv",
                "PATH",
                "/usr/local/bin:/usr/bin:/bin",
                "--setenv",
                "LANG",
                "C.UTF-8",
                "--setenv",
                "HOME",
                "/tmp",
                "--proc",
                "/proc",
                "--dev",
                "/dev",
                "--size",
                "1048576",
                "--tmpfs",
                "/dev/shm",
                "--remount-ro",
                "/dev",
            ],
        );
        let tmp_bytes = (self.cfg.file_size_mb << 20).to_string();
        push(&mut a, &["--size", &tmp_bytes, "--tmpfs", "/tmp"]);
        for p in self.visible.iter() {
            a.push("--ro-bind".into());
            a.push(p.into());
            a.push(p.into());
        }
        push(
            &mut a,
            &[
                "--ro-bind-try",
                "/etc/ld.so.cache",
                "/etc/ld.so.cache",
                "--remount-ro",
                "/",
                "--chdir",
                "/tmp",
                "--seccomp",
                &SECCOMP_FD.to_string(),
                "--",
            ],
        );
        a
    }

    /// Runs `code` in a fresh sandbox and returns what it produced (never an error: a sandbox
    /// that fails to start says so in `stderr`).
    pub fn run(&self, code: &str) -> RunResult {
        let t0 = Instant::now();
        let fail = |msg: String| RunResult {
            stdout: String::new(),
            stderr: msg,
            ending: Ending::Exited(125),
            seconds: t0.elapsed().as_secs_f64(),
        };
        if code.len() > self.cfg.max_code_bytes {
            return fail(format!(
                "the code has {} bytes, more than the {} this tool accepts",
                code.len(),
                self.cfg.max_code_bytes
            ));
        }
        if code.contains('\0') {
            return fail("the code contains a NUL byte".into());
        }
        let seccomp = match seccomp_pipe(&self.seccomp) {
            Ok(fd) => fd,
            Err(e) => return fail(format!("sandbox: cannot pass the seccomp filter: {e}")),
        };
        let mut cmd = Command::new(&self.bwrap);
        cmd.args(self.bwrap_args())
            .arg(&self.python)
            .args(["-I", "-B", "-c", LAUNCHER])
            // Bubblewrap's init and the interpreter count too.
            .arg((self.cfg.max_processes + 2).to_string())
            .arg(code)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("LANG", "C.UTF-8")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let limits = Limits::of(&self.cfg);
        let seccomp_fd = seccomp.as_raw_fd();
        // SAFETY: the closure runs in the forked child before exec and only calls
        // async-signal-safe functions (dup2, fcntl, close_range, setsid, setrlimit,
        // setgroups, setgid, setuid).
        unsafe {
            cmd.pre_exec(move || {
                pass_only_fd(seccomp_fd, SECCOMP_FD)?;
                limits.apply()
            });
        }
        let spawned = cmd.spawn();
        drop(seccomp);
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                return fail(format!(
                    "sandbox: cannot start {}: {e}",
                    self.bwrap.display()
                ))
            }
        };
        let pgid = child.id() as libc::pid_t;
        let overflow = Arc::new(AtomicBool::new(false));
        let cap = self.cfg.max_output_bytes;
        let (stdout_pipe, stderr_pipe) = (child.stdout.take(), child.stderr.take());
        let (o1, o2) = (overflow.clone(), overflow.clone());
        let out = std::thread::spawn(move || read_capped(stdout_pipe, cap, pgid, &o1));
        let err = std::thread::spawn(move || read_capped(stderr_pipe, cap, pgid, &o2));
        let deadline = t0 + Duration::from_secs_f64(self.cfg.timeout_s);
        let mut timed_out = false;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if Instant::now() >= deadline => {
                    timed_out = true;
                    kill_group(pgid);
                    break child.wait().ok();
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(2)),
                Err(_) => {
                    kill_group(pgid);
                    break child.wait().ok();
                }
            }
        };
        // bubblewrap's own process group; the sandbox's processes die with its PID 1, which
        // dies with bubblewrap (`--die-with-parent`).
        kill_group(pgid);
        let stdout = out.join().unwrap_or_default();
        let stderr = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
        use std::os::unix::process::ExitStatusExt;
        let ending = if timed_out {
            Ending::TimedOut
        } else if overflow.load(Ordering::SeqCst) {
            Ending::OutputLimit
        } else {
            match status {
                Some(s) => match (s.code(), s.signal()) {
                    (Some(c), _) if c > 128 && c <= 128 + 64 => Ending::Signal(c - 128),
                    (Some(c), _) => Ending::Exited(c),
                    (None, Some(sig)) => Ending::Signal(sig),
                    _ => Ending::Exited(-1),
                },
                None => Ending::Exited(-1),
            }
        };
        RunResult {
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr,
            ending,
            seconds: t0.elapsed().as_secs_f64(),
        }
    }
}

/// `name` as given when it holds a `/`, else the first match on `PATH`, else the first of
/// `fallbacks` that exists.
fn find_program(name: &str, fallbacks: &[&str]) -> Option<PathBuf> {
    let is_exec = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return is_exec(&p).then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .chain(fallbacks.iter().map(PathBuf::from))
        .find(|p| is_exec(p))
}

/// What the sandbox of `python` shows: the interpreter's real path and the host paths to
/// bind read-only (the directories on its path and of the libraries it maps, its ELF loader).
/// Directories that would show more of the host (`/`, the home, the working directory, the
/// places of temporary files and configuration) are never shown whole: a library found
/// directly in one of them is shown alone.
fn interpreter_view(python: &Path) -> std::result::Result<(PathBuf, Vec<PathBuf>), String> {
    let out = Command::new(python)
        .args(["-I", "-B", "-c", PROBE])
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("LANG", "C.UTF-8")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run it: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "its probe failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    #[derive(Deserialize)]
    struct Probe {
        executable: PathBuf,
        path: Vec<PathBuf>,
        maps: Vec<PathBuf>,
    }
    let probe: Probe = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("unreadable probe output ({e})"))?;
    let exe = probe
        .executable
        .canonicalize()
        .map_err(|e| format!("{}: {e}", probe.executable.display()))?;
    let mut too_wide: Vec<PathBuf> = [
        "/",
        "/bin",
        "/boot",
        "/dev",
        "/etc",
        "/home",
        "/media",
        "/mnt",
        "/opt",
        "/proc",
        "/root",
        "/run",
        "/sbin",
        "/srv",
        "/sys",
        "/tmp",
        "/usr",
        "/usr/bin",
        "/usr/local",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/share",
        "/var",
        "/var/tmp",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    too_wide.extend(std::env::var_os("HOME").map(PathBuf::from));
    too_wide.extend(std::env::current_dir().ok());
    too_wide.push(std::env::temp_dir());
    let shows_too_much = |d: &Path| {
        too_wide
            .iter()
            .any(|w| w.starts_with(d) || w.canonicalize().is_ok_and(|w| w.starts_with(d)))
    };
    let mut shown: Vec<PathBuf> = Vec::new();
    let mut add = |p: PathBuf| {
        if p.exists() && !shown.contains(&p) {
            shown.push(p);
        }
    };
    add(exe.clone());
    if let Some(interp) = elf_interpreter(&exe) {
        add(interp);
    }
    for d in probe.path {
        match d.canonicalize() {
            Ok(d) if d.is_dir() && !shows_too_much(&d) => add(d),
            _ => {}
        }
    }
    for f in probe.maps {
        let Ok(f) = f.canonicalize() else { continue };
        if !f.is_file() || f == exe || f.starts_with("/dev") || f.starts_with("/proc") {
            continue;
        }
        match f.parent() {
            Some(d) if !shows_too_much(d) => add(d.to_path_buf()),
            _ => add(f),
        }
    }
    // A path inside another shown directory needs no mount of its own.
    let all = shown.clone();
    shown.retain(|p| !all.iter().any(|q| q != p && q.is_dir() && p.starts_with(q)));
    shown.sort();
    Ok((exe, shown))
}

/// The program interpreter (`PT_INTERP`, the dynamic loader) named by a 64-bit ELF file.
fn elf_interpreter(exe: &Path) -> Option<PathBuf> {
    let mut head = vec![0u8; 64];
    let mut f = std::fs::File::open(exe).ok()?;
    f.read_exact(&mut head).ok()?;
    if &head[..4] != b"\x7fELF" || head[4] != 2 {
        return None;
    }
    let le = head[5] == 1;
    let u = |b: &[u8]| -> u64 {
        let mut v = [0u8; 8];
        v[..b.len()].copy_from_slice(b);
        if le {
            u64::from_le_bytes(v)
        } else {
            let mut r = [0u8; 8];
            r[8 - b.len()..].copy_from_slice(b);
            u64::from_be_bytes(r)
        }
    };
    let (phoff, phentsize, phnum) = (
        u(&head[32..40]),
        u(&head[54..56]) as usize,
        u(&head[56..58]) as usize,
    );
    let bytes = std::fs::read(exe).ok()?;
    for i in 0..phnum {
        let at = phoff as usize + i * phentsize;
        let ph = bytes.get(at..at + 56)?;
        if u(&ph[0..4]) == 3 {
            let (off, size) = (u(&ph[8..16]) as usize, u(&ph[32..40]) as usize);
            let s = bytes.get(off..off + size)?;
            let s = s.split(|&b| b == 0).next()?;
            return Some(PathBuf::from(String::from_utf8(s.to_vec()).ok()?));
        }
    }
    None
}

/// A pipe whose read end holds the seccomp program (it fits the pipe's buffer); bubblewrap
/// reads it from [`SECCOMP_FD`].
fn seccomp_pipe(program: &[u8]) -> std::io::Result<OwnedFd> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned here alone.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    std::fs::File::from(write).write_all(program)?;
    Ok(read)
}

/// In the child before exec: `fd` becomes `target` (inherited), and every other descriptor
/// above stderr is closed at exec, so that nothing of the caller's reaches the sandbox.
fn pass_only_fd(fd: libc::c_int, target: libc::c_int) -> std::io::Result<()> {
    // SAFETY: dup2, fcntl and close_range act on descriptors only (async-signal-safe).
    unsafe {
        if fd == target {
            if libc::fcntl(target, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        } else if libc::dup2(fd, target) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let first = (target + 1) as libc::c_uint;
        const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
        if libc::syscall(
            libc::SYS_close_range,
            first,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        ) != 0
        {
            // Kernels before 5.11: mark each one.
            let mut lim: libc::rlimit = std::mem::zeroed();
            let top = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
                lim.rlim_cur.min(1 << 20) as libc::c_int
            } else {
                1 << 16
            };
            for f in first as libc::c_int..top {
                libc::fcntl(f, libc::F_SETFD, libc::FD_CLOEXEC);
            }
        }
    }
    Ok(())
}

/// Reads `pipe` keeping at most `cap` bytes; past it, flags `overflow` and stops the group.
fn read_capped(
    pipe: Option<impl Read>,
    cap: usize,
    pgid: libc::pid_t,
    overflow: &AtomicBool,
) -> Vec<u8> {
    let Some(mut pipe) = pipe else {
        return Vec::new();
    };
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                if n > room {
                    overflow.store(true, Ordering::SeqCst);
                    kill_group(pgid);
                    break;
                }
            }
        }
    }
    kept
}

fn kill_group(pgid: libc::pid_t) {
    // SAFETY: kill(2) with a negative pid signals the process group; no memory is involved.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

/// The resource limits applied in the child before exec.
#[derive(Clone, Copy)]
struct Limits {
    cpu: u64,
    memory: u64,
    file_size: u64,
    open_files: u64,
    /// Started by root: the sandbox's own uid and its process limit on the host (bubblewrap's
    /// two processes, the interpreter and what the code may add). Started by anyone else the
    /// host limit stays the caller's; inside, [`LAUNCHER`] sets `max_processes` either way.
    uid: Option<(libc::uid_t, u64)>,
}

impl Limits {
    fn of(cfg: &PythonConfig) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        // SAFETY: geteuid has no preconditions.
        let as_root = unsafe { libc::geteuid() } == 0;
        let uid = as_root.then(|| {
            let slot = NEXT.fetch_add(1, Ordering::SeqCst) % 1_000_000;
            (SANDBOX_UID_BASE + slot, cfg.max_processes + 4)
        });
        Limits {
            cpu: cfg.cpu_seconds,
            memory: cfg.memory_mb << 20,
            file_size: cfg.file_size_mb << 20,
            open_files: cfg.open_files,
            uid,
        }
    }

    /// In the child: a process group of its own, the limits, and the sandbox uid when root.
    fn apply(&self) -> std::io::Result<()> {
        let set = |res, v: u64| {
            // The CPU limit's hard value is one second later: SIGXCPU first (reported as the
            // CPU limit), SIGKILL only for code that catches it.
            let hard = if res == libc::RLIMIT_CPU { v + 1 } else { v };
            let l = libc::rlimit {
                rlim_cur: v as libc::rlim_t,
                rlim_max: hard as libc::rlim_t,
            };
            // SAFETY: setrlimit reads the struct it is given.
            if unsafe { libc::setrlimit(res, &l) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        };
        // SAFETY: setsid, setgroups, setgid and setuid are async-signal-safe system calls.
        unsafe {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        set(libc::RLIMIT_CPU, self.cpu)?;
        set(libc::RLIMIT_AS, self.memory)?;
        set(libc::RLIMIT_FSIZE, self.file_size)?;
        set(libc::RLIMIT_NOFILE, self.open_files)?;
        set(libc::RLIMIT_CORE, 0)?;
        if let Some((uid, nproc)) = self.uid {
            set(libc::RLIMIT_NPROC, nproc)?;
            // SAFETY: async-signal-safe system calls on plain integers.
            unsafe {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(uid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
        }
        Ok(())
    }
}

/// The `python` tool: `{"code": "..."}` runs in a [`PythonSandbox`]; the response is the
/// output (errors, timeouts and limits included, as text).
#[derive(Debug, Clone)]
pub struct PythonTool {
    sandbox: Arc<PythonSandbox>,
}

impl PythonTool {
    /// The tool over a sandbox.
    pub fn new(sandbox: Arc<PythonSandbox>) -> Self {
        PythonTool { sandbox }
    }

    /// The function description of the `python` tool.
    pub fn schema_value() -> Value {
        json!({
            "name": "python",
            "description": "Runs Python 3 code in a sandbox (no network, limited time and memory) and returns what it prints.",
            "parameters": {
                "type": "object",
                "properties": {"code": {"type": "string", "description": "The program; print the values you need."}},
                "required": ["code"]
            }
        })
    }

    /// Runs code and returns the tool text.
    pub fn run(&self, code: &str) -> String {
        if code.trim().is_empty() {
            return "Error: the code block is empty".into();
        }
        self.sandbox.run(code).to_tool_text(self.sandbox.config())
    }
}

impl Tool for PythonTool {
    fn name(&self) -> &str {
        "python"
    }

    fn schema(&self) -> Value {
        Self::schema_value()
    }

    fn call(&self, arguments: &Value) -> std::result::Result<String, ToolError> {
        let code = arguments
            .get("code")
            .and_then(|c| c.as_str())
            .ok_or_else(|| ToolError::BadArguments("expected {\"code\": \"...\"}".into()))?;
        Ok(self.run(code))
    }
}

/// The `python` tool of a machine where no sandbox can start (no `bwrap`, user namespaces
/// off): every call answers, as a tool error, why — the run goes on and the
/// `tool/errors_per_episode` metric shows it.
#[derive(Debug, Clone)]
pub struct UnavailablePython {
    why: String,
}

impl UnavailablePython {
    /// The tool, with the reason the sandbox could not start.
    pub fn new(why: impl Into<String>) -> Self {
        UnavailablePython { why: why.into() }
    }
}

impl Tool for UnavailablePython {
    fn name(&self) -> &str {
        "python"
    }

    fn schema(&self) -> Value {
        PythonTool::schema_value()
    }

    fn call(&self, _arguments: &Value) -> std::result::Result<String, ToolError> {
        Err(ToolError::Failed(format!(
            "the Python sandbox is unavailable on this machine: {}",
            self.why
        )))
    }
}
