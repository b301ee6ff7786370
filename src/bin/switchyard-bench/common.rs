//! What the benchmarks share: child processes, scratch directories, free ports, JSON calls,
//! and starting a release `switchyard serve` on a scratch directory.

use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, ensure, Context as _};
use serde_json::Value;

/// A child process, killed when dropped.
pub struct ChildGuard {
    name: &'static str,
    child: Child,
}

impl ChildGuard {
    pub fn spawn(name: &'static str, command: &mut Command) -> anyhow::Result<ChildGuard> {
        let child = command
            .spawn()
            .with_context(|| format!("cannot start the {name} process ({command:?})"))?;
        Ok(ChildGuard { name, child })
    }

    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An error if the process has ended.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait()? {
            Some(status) => bail!("the {} process exited: {status}", self.name),
            None => Ok(()),
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // Fails only when the process has already been reaped; nothing left to do then.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A scratch directory under the system's temp dir, removed when dropped.
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    pub fn create(purpose: &str) -> anyhow::Result<ScratchDir> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "switchyard-{purpose}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(ScratchDir(path))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir_all(&self.0) {
            eprintln!("cannot remove {}: {error}", self.0.display());
        }
    }
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Sends a JSON request and returns the answer's JSON, or an error naming the status.
pub async fn call(
    client: &awc::Client,
    url: &str,
    token: Option<&str>,
    body: &Value,
) -> anyhow::Result<Value> {
    let mut request = client
        .post(url)
        .insert_header(("content-type", "application/json"));
    if let Some(token) = token {
        request = request.insert_header(("authorization", format!("Bearer {token}")));
    }
    let mut response = request
        .send_body(body.to_string())
        .await
        .map_err(|error| anyhow!("POST {url}: {error}"))?;
    let status = response.status();
    let bytes = response
        .body()
        .limit(1 << 20)
        .await
        .with_context(|| format!("POST {url}: unreadable answer"))?;
    ensure!(
        status.is_success(),
        "POST {url}: {status}: {}",
        String::from_utf8_lossy(&bytes)
    );
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes).with_context(|| format!("POST {url}: answer is not JSON"))
}

pub fn string_field(value: &Value, key: &str) -> anyhow::Result<String> {
    match &value[key] {
        Value::String(text) => Ok(text.clone()),
        Value::Number(number) => Ok(number.to_string()),
        other => bail!("expected `{key}` in the answer, got {other} in {value}"),
    }
}

/// Starts `switchyard serve` (the binary `bin`) in `dir` as `name` on 127.0.0.1:`port`, with
/// `extra` TOML appended to its configuration and `env` in its environment (for the
/// `SWITCHYARD__SECTION__KEY` overrides of the sections written here), and waits for
/// `/health`.
pub async fn start_switchyard(
    bin: &Path,
    dir: &Path,
    name: &str,
    port: u16,
    extra: &str,
    env: &[(&str, &str)],
    client: &awc::Client,
) -> anyhow::Result<ChildGuard> {
    std::fs::create_dir_all(dir)?;
    let config = dir.join("switchyard.toml");
    std::fs::write(
        &config,
        format!(
            r#"[server]
name = "{name}"
bind = "127.0.0.1:{port}"
public_base_url = "http://127.0.0.1:{port}"
registration_mode = "open"
[database]
url = "sqlite://{db}?mode=rwc"
[keys]
path = "{key}"
[log]
level = "warn"
{extra}
"#,
            db = dir.join("sy.db").display(),
            key = dir.join("signing.key").display(),
        ),
    )?;
    let log_path = dir.join("switchyard.log");
    let mut guard = ChildGuard::spawn(
        "switchyard",
        Command::new(bin)
            .envs(env.iter().copied())
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path)?),
    )?;
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Err(error) = guard.ensure_running() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("{error}; its last log lines:\n{}", tail.join("\n"));
        }
        let healthy = client
            .get(format!("{base}/health"))
            .send()
            .await
            .is_ok_and(|response| response.status().is_success());
        if healthy {
            return Ok(guard);
        }
        ensure!(
            Instant::now() < deadline,
            "switchyard did not answer /health in 60 s"
        );
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
}

/// CPU time of a process, all its threads, from `/proc/<pid>/task/*/schedstat`.
pub fn cpu_time(pid: u32) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    let nanos = tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(nanos)
}

/// CPU time a process has used, all its threads, those that ended too: `utime + stime` of
/// `/proc/<pid>/stat`, in clock ticks of 10 ms (Linux's USER_HZ).
pub fn process_cpu(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // The command name may hold spaces; the fields after its closing parenthesis do not.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    // After the name: state is field 3, utime field 14, stime field 15 (1-based).
    let ticks = |n: usize| {
        fields
            .get(n - 3)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_millis((ticks(14) + ticks(15)) * 10)
}

/// Latencies of one phase and its wall time.
pub struct Timing {
    pub latencies: Vec<Duration>,
    pub wall: Duration,
    pub failures: usize,
}

impl Timing {
    pub fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    pub fn percentile(&mut self, p: f64) -> Duration {
        self.latencies.sort_unstable();
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let index =
            ((self.latencies.len() as f64 * p).ceil() as usize).clamp(1, self.latencies.len());
        self.latencies[index - 1]
    }

    pub fn line(&mut self, what: &str, unit: &str) -> String {
        format!(
            "{what:<44} {:>9.0} {unit}/s   p50 {:>7.2} ms   p99 {:>7.2} ms   ({} in {:.1} s, {} failed)",
            self.rate(),
            self.percentile(0.50).as_secs_f64() * 1e3,
            self.percentile(0.99).as_secs_f64() * 1e3,
            self.latencies.len(),
            self.wall.as_secs_f64(),
            self.failures,
        )
    }
}

/// Keep-alive GETs over `connections` connections for `duration`, each of the path `path()`
/// gives (called once per request), with the least client there is: one request written, the
/// answer (200, at most 64 KiB) read by its Content-Length.
pub async fn hammer(
    port: u16,
    path: &dyn Fn() -> String,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<Timing> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let started = Instant::now();
    let until = started + duration;
    let tasks = (0..connections).map(|_| async move {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        let mut buffer = vec![0u8; 64 * 1024];
        let mut request = Vec::with_capacity(256);
        let mut latencies = Vec::new();
        while Instant::now() < until {
            request.clear();
            write!(
                request,
                "GET {} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n",
                path()
            )?;
            let at = Instant::now();
            stream.write_all(&request).await?;
            let mut filled = 0;
            let (head_end, length) = loop {
                let n = stream.read(&mut buffer[filled..]).await?;
                ensure!(n > 0, "the server closed the connection");
                filled += n;
                if let Some(end) = buffer[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = std::str::from_utf8(&buffer[..end])?;
                    ensure!(
                        head.starts_with("HTTP/1.1 200"),
                        "answer: {}",
                        head.lines().next().unwrap_or("")
                    );
                    let length = head
                        .lines()
                        .find_map(|l| {
                            let (name, value) = l.split_once(':')?;
                            name.eq_ignore_ascii_case("content-length")
                                .then(|| value.trim().parse::<usize>().ok())?
                        })
                        .context("no Content-Length")?;
                    break (end + 4, length);
                }
                ensure!(filled < buffer.len(), "an answer's head is over 64 KiB");
            };
            while filled < head_end + length {
                ensure!(
                    head_end + length <= buffer.len(),
                    "an answer is over 64 KiB"
                );
                let n = stream.read(&mut buffer[filled..]).await?;
                ensure!(n > 0, "the server closed the connection");
                filled += n;
            }
            latencies.push(at.elapsed());
        }
        anyhow::Ok(latencies)
    });
    let mut timing = Timing {
        latencies: Vec::new(),
        wall: Duration::ZERO,
        failures: 0,
    };
    for result in futures_util::future::join_all(tasks).await {
        match result {
            Ok(latencies) => timing.latencies.extend(latencies),
            Err(error) => {
                timing.failures += 1;
                eprintln!("hammer: a connection failed: {error:#}");
            }
        }
    }
    timing.wall = started.elapsed();
    Ok(timing)
}
