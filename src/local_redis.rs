//! A private `redis-server` on a free loopback port, in a directory of its own. Used by
//! `demo` and by the test harness. The server is killed when this value is dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum LocalRedisError {
    #[error(
        "redis-server was not found in PATH; install it (Debian/Ubuntu: sudo apt-get install redis-server, macOS: brew install redis)"
    )]
    NotInstalled,
    #[error("cannot start redis-server")]
    Spawn(#[source] std::io::Error),
    #[error("redis-server on port {port} did not answer PING within {waited_s} s")]
    NotReady { port: u16, waited_s: u64 },
}

pub struct LocalRedis {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
    extra_args: Vec<String>,
    /// Runs in a process group of its own; see [`Self::start_isolated`].
    isolated: bool,
}

impl LocalRedis {
    /// Starts `redis-server` in `dir` on a free port, with `extra_args` (e.g.
    /// `--appendonly yes`), and waits until it answers PING.
    pub fn start(dir: &Path, extra_args: &[&str]) -> Result<LocalRedis, LocalRedisError> {
        LocalRedis::start_with(dir, extra_args, false)
    }

    /// As [`Self::start`], with the server in a process group of its own, so that a Ctrl-C
    /// in the terminal (sent to the whole foreground group) does not kill it under its
    /// owner, which stops it in order instead. On Linux it is also killed when the thread
    /// that started it ends, so it cannot outlive an owner that exits abruptly.
    pub fn start_isolated(dir: &Path, extra_args: &[&str]) -> Result<LocalRedis, LocalRedisError> {
        LocalRedis::start_with(dir, extra_args, true)
    }

    fn start_with(dir: &Path, extra_args: &[&str], isolated: bool) -> Result<LocalRedis, LocalRedisError> {
        let port = free_loopback_port().map_err(LocalRedisError::Spawn)?;
        let extra_args: Vec<String> = extra_args.iter().map(|arg| arg.to_string()).collect();
        let child = spawn(dir, port, &extra_args, isolated)?;
        let server = LocalRedis {
            child,
            port,
            dir: dir.to_path_buf(),
            extra_args,
            isolated,
        };
        server.wait_ready()?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, as in a crash: whatever Redis had not persisted is gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same port and directory (after [`Self::kill`]).
    pub fn restart(&mut self) -> Result<(), LocalRedisError> {
        self.kill();
        self.child = spawn(&self.dir, self.port, &self.extra_args, self.isolated)?;
        self.wait_ready()
    }

    fn wait_ready(&self) -> Result<(), LocalRedisError> {
        let started = Instant::now();
        let timeout = Duration::from_secs(10);
        while started.elapsed() < timeout {
            let ping = redis::Client::open(self.url())
                .and_then(|client| client.get_connection_with_timeout(Duration::from_millis(200)))
                .and_then(|mut connection| redis::cmd("PING").query::<String>(&mut connection));
            if ping.is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(LocalRedisError::NotReady {
            port: self.port,
            waited_s: timeout.as_secs(),
        })
    }
}

impl Drop for LocalRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(dir: &Path, port: u16, extra_args: &[String], isolated: bool) -> Result<Child, LocalRedisError> {
    std::fs::create_dir_all(dir).map_err(LocalRedisError::Spawn)?;
    let mut command = Command::new("redis-server");
    if isolated {
        use std::os::unix::process::CommandExt;
        command.process_group(0);
        // SAFETY: the hook only calls async-signal-safe functions (prctl, getppid).
        unsafe {
            command.pre_exec(die_with_parent(libc::SIGKILL));
        }
    }
    command
        .arg("--port")
        .arg(port.to_string())
        .args(["--bind", "127.0.0.1", "--save", "", "--protected-mode", "no"])
        .arg("--dir")
        .arg(dir)
        .args(extra_args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|error| match error.kind() {
            std::io::ErrorKind::NotFound => LocalRedisError::NotInstalled,
            _ => LocalRedisError::Spawn(error),
        })
}

/// A `pre_exec` hook asking the kernel to send `signal` to the child when the thread that
/// spawned it ends (Linux; elsewhere it does nothing). A child in a process group of its
/// own no longer dies with a Ctrl-C in the terminal: this keeps it from outliving its
/// parent when the parent exits without stopping it (a second Ctrl-C, a crash, SIGKILL).
pub fn die_with_parent(signal: libc::c_int) -> impl FnMut() -> std::io::Result<()> + Send + Sync + 'static {
    let spawning_process = std::process::id() as libc::pid_t;
    move || {
        #[cfg(target_os = "linux")]
        {
            // SAFETY: prctl(PR_SET_PDEATHSIG) and getppid are async-signal-safe and touch no memory.
            unsafe {
                if libc::prctl(libc::PR_SET_PDEATHSIG, signal) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before the request took effect.
                if libc::getppid() != spawning_process {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = (signal, spawning_process);
        Ok(())
    }
}

/// A port that was free a moment ago (the listener is closed before returning it).
pub fn free_loopback_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
