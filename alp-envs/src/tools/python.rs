//! A sandboxed Python interpreter, the tool of tool-integrated reasoning. Each call runs the
//! model's code in a fresh interpreter process:
//!
//! - **namespaces** (`unshare`): a new user namespace, **no network** (an empty network
//!   namespace), its own PID namespace (every process it starts dies with it) and its own
//!   mount namespace in which every mount is read-only and `/tmp` (the working directory and
//!   `$HOME`), `/var/tmp`, `/dev/shm` and the caller's home are fresh size-limited tmpfs that
//!   vanish with the call: nothing is left behind on the host;
//! - **resource limits**: CPU seconds, address space, file size, open files and (running as its
//!   own uid when started by root, else counted above the caller's own tasks) processes;
//! - a **wall-clock timeout** that kills the whole process group; stdin closed; the environment
//!   cleared; output cut at a configured size (the run is stopped there).
//!
//! Every failure — syntax error, exception, timeout, limit, a sandbox that cannot start — comes
//! back as the tool's text ([`RunResult::to_tool_text`]), never as an error of the run.

use super::registry::{Tool, ToolError};
use alp_core::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::io::Read;
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
/// process limit counts its own processes only).
const SANDBOX_UID_BASE: libc::uid_t = 1_600_000;

/// Sandboxes running now (a non-root caller's process allowance grows with them).
static IN_FLIGHT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The script the namespace's first process runs: every mount read-only, fresh tmpfs over the
/// writable places, then the interpreter on the code (`$0` python, `$1` code, `$2` a home
/// directory to hide, `$3` the tmpfs size).
const SETUP: &str = r#"
awk '{print $2}' /proc/self/mounts | while read -r m; do
  mount -o remount,bind,ro "$m" 2>/dev/null || true
done
mount -t tmpfs -o "size=$3" tmpfs /tmp || { echo "sandbox: cannot mount a private /tmp" >&2; exit 125; }
for d in /var/tmp /dev/shm "$2"; do
  if [ -n "$d" ] && [ -d "$d" ]; then mount -t tmpfs -o size=1m tmpfs "$d" 2>/dev/null || true; fi
done
cd /tmp || exit 125
export HOME=/tmp
"$0" -I -B -c "$1"
rc=$?
if [ "$rc" -gt 128 ]; then printf '\n%s%d\n' "$SIGNAL_MARK" $((rc - 128)) >&2; fi
exit "$rc"
"#;

/// What the setup script writes to stderr, on a line of its own, when the interpreter dies of
/// a signal.
const SIGNAL_MARK: &str = "__alp_sandbox_signal__ ";

/// A sandboxed Python interpreter (see the module docs). Cheap to share between threads:
/// every call is its own process.
#[derive(Debug, Clone)]
pub struct PythonSandbox {
    cfg: PythonConfig,
    python: PathBuf,
    unshare: PathBuf,
}

impl PythonSandbox {
    /// Finds an interpreter that runs inside the sandbox (probing with one call); an error
    /// says why no sandbox can be made on this machine (no `unshare`, user namespaces off, no
    /// interpreter the sandbox user can run).
    pub fn new(cfg: PythonConfig) -> Result<Self> {
        cfg.validate()?;
        let unshare = ["/usr/bin/unshare", "/bin/unshare"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .ok_or_else(|| {
                Error::invalid("the python tool needs `unshare` (util-linux) for its sandbox")
            })?;
        let mut candidates = Vec::new();
        if let Ok(o) = Command::new(&cfg.python)
            .args(["-c", "import sys; print(sys.executable)"])
            .stdin(Stdio::null())
            .output()
        {
            let p = String::from_utf8_lossy(&o.stdout).trim().to_string();
            if o.status.success() && !p.is_empty() {
                candidates.push(PathBuf::from(p));
            }
        }
        candidates.push(PathBuf::from("/usr/bin/python3"));
        let mut why = Vec::new();
        for python in candidates {
            let sb = PythonSandbox {
                cfg: cfg.clone(),
                python: python.clone(),
                unshare: unshare.clone(),
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
            "no Python interpreter runs in the sandbox (user namespaces must be enabled): {}",
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
        let home = std::env::var("HOME").unwrap_or_default();
        let mut cmd = Command::new(&self.unshare);
        cmd.args([
            "--user",
            "--map-root-user",
            "--net",
            "--pid",
            "--fork",
            "--kill-child",
            "--mount",
            "--propagation",
            "private",
            "/bin/sh",
            "-c",
            SETUP,
        ])
        .arg(&self.python)
        .arg(code)
        .arg(&home)
        .arg(format!("{}m", self.cfg.file_size_mb))
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("LANG", "C.UTF-8")
        .env("SIGNAL_MARK", SIGNAL_MARK)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let limits = Limits::of(&self.cfg);
        let _flight = InFlight::enter();
        // SAFETY: the closure runs in the forked child before exec and only calls
        // async-signal-safe functions (setsid, setrlimit, setgroups, setgid, setuid).
        unsafe {
            cmd.pre_exec(move || limits.apply());
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                return fail(format!(
                    "sandbox: cannot start {}: {e}",
                    self.unshare.display()
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
        // Whatever the code left running in the group goes too (the PID namespace is gone).
        kill_group(pgid);
        let stdout = out.join().unwrap_or_default();
        let mut stderr = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
        let mut signal = None;
        if let Some(at) = stderr.rfind(SIGNAL_MARK) {
            signal = stderr[at + SIGNAL_MARK.len()..].trim().parse::<i32>().ok();
            stderr.truncate(at);
        }
        use std::os::unix::process::ExitStatusExt;
        let ending = if timed_out {
            Ending::TimedOut
        } else if overflow.load(Ordering::SeqCst) {
            Ending::OutputLimit
        } else if let Some(sig) = signal {
            Ending::Signal(sig)
        } else {
            match status {
                Some(s) => match (s.code(), s.signal()) {
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

/// Counts a sandbox in [`IN_FLIGHT`] while it runs.
struct InFlight;

impl InFlight {
    fn enter() -> Self {
        IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The resource limits applied in the child before exec.
#[derive(Clone, Copy)]
struct Limits {
    cpu: u64,
    memory: u64,
    file_size: u64,
    open_files: u64,
    nproc: u64,
    /// The uid to run as (started by root), else None.
    uid: Option<libc::uid_t>,
}

impl Limits {
    fn of(cfg: &PythonConfig) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        // SAFETY: geteuid has no preconditions.
        let as_root = unsafe { libc::geteuid() } == 0;
        // Processes count per real uid. Started by root, the sandbox has a uid of its own and
        // exactly `max_processes`; otherwise the caller's tasks (and every sandbox running)
        // are added to the allowance.
        let (uid, nproc) = if as_root {
            let slot = NEXT.fetch_add(1, Ordering::SeqCst) % 1_000_000;
            (Some(SANDBOX_UID_BASE + slot), cfg.max_processes)
        } else {
            // SAFETY: getuid has no preconditions.
            let base = tasks_of_uid(unsafe { libc::getuid() });
            let others = IN_FLIGHT.load(Ordering::SeqCst) * 4;
            (None, base + others + cfg.max_processes)
        };
        Limits {
            cpu: cfg.cpu_seconds,
            memory: cfg.memory_mb << 20,
            file_size: cfg.file_size_mb << 20,
            open_files: cfg.open_files,
            nproc,
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
        set(libc::RLIMIT_NPROC, self.nproc)?;
        set(libc::RLIMIT_CORE, 0)?;
        if let Some(uid) = self.uid {
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

/// Tasks (threads) of processes whose real uid is `uid`, from `/proc`.
fn tasks_of_uid(uid: libc::uid_t) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut n = 0;
    for e in dir.flatten() {
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        };
        if field("Uid:") == Some(uid as u64) {
            n += field("Threads:").unwrap_or(1);
        }
    }
    n
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

/// The `python` tool of a machine where no sandbox can start (no `unshare`, user namespaces
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
