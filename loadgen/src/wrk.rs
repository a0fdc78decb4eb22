//! The ingest phase's load from `wrk` (4.x, with LuaJIT), a separate process: reqwest clients in
//! this process take as much CPU as ingest itself on a small machine, wrk takes a fraction of it.
//!
//! A Lua script, generated per run and removed after it, posts exactly the bodies of
//! `http::bodies(phase, bills)`: body `i` is rendered in Lua from a template cut out of
//! `http::receipt_event` at its variable places (event id, receipt id, bill id, total), so the two
//! clients send the same bytes. wrk thread `t` of `T` sends the requests `t, t + T, t + 2T, …`: each
//! thread has its exact share, and `delay()` hands out one request per call until the share is
//! spoken for, then parks the connection for longer than the run may last. Once a thread has all
//! its answers it stops itself and says so on stderr.
//!
//! wrk 4.1 sleeps its whole `-d` before collecting its threads, whether they stopped or not; a
//! SIGINT ends that sleep, so it is sent once every thread has said it is done (and again every
//! 250 ms, since a thread that has not exited yet may be the one to receive it). `done()` then
//! prints one `LOADGEN key=value …` line with the counters the threads kept. The time is the
//! threads' own (a monotonic clock through LuaJIT's FFI): first POST sent to last answer received;
//! without the FFI, wrk's run time, which includes the wait for the SIGINT.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;

use crate::http::{self, Bulk, HttpClient, Throughput};
use crate::setup::Bill;

/// wrk's threads (fewer if there are fewer connections): one per CPU of the 2-CPU machine this
/// is sized for; each drives its share of the connections with epoll.
const THREADS: usize = 2;
/// The shortest `-d`; a longer one at under 200 receipts a second. The run ends long before,
/// unless something hangs.
const MIN_DURATION_S: u64 = 60;
/// wrk's `--timeout`: an answer slower than this counts as a timeout in wrk's statistics (it is
/// still waited for; the reqwest clients give up after 30 s).
const TIMEOUT_S: u64 = 10;
const DONE_MARK: &str = "LOADGEN-THREAD-DONE";

/// `wrk` on PATH.
pub fn find() -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join("wrk"))
        .find(|p| p.is_file())
}

/// The variable places of a receipt body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    EventId,
    ReceiptId,
    BillId,
    Total,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Text(String),
    Slot(Slot),
}

// Stand-ins for the variable places, found again in the serialized sample.
const EVENT_MARK: &str = "@@loadgen-event-id@@";
const RECEIPT_MARK: &str = "@@loadgen-receipt-id@@";
const BILL_MARK: i64 = 7_319_004_517_273_611;
const TOTAL_MARK: i64 = 6_113_027_914_401_259;

/// `http::receipt_event` serialized, cut at its variable places.
fn template() -> anyhow::Result<Vec<Segment>> {
    let sample = http::receipt_event(
        EVENT_MARK,
        RECEIPT_MARK,
        Bill {
            id: BILL_MARK,
            total: TOTAL_MARK,
        },
    );
    let text = serde_json::to_string(&sample)?;
    let marks = [
        (EVENT_MARK.to_owned(), Slot::EventId),
        (RECEIPT_MARK.to_owned(), Slot::ReceiptId),
        (BILL_MARK.to_string(), Slot::BillId),
        (TOTAL_MARK.to_string(), Slot::Total),
    ];
    let mut segments = Vec::new();
    let mut rest = text.as_str();
    while let Some((at, len, slot)) = marks
        .iter()
        .filter_map(|(mark, slot)| rest.find(mark.as_str()).map(|at| (at, mark.len(), *slot)))
        .min_by_key(|(at, ..)| *at)
    {
        if at > 0 {
            segments.push(Segment::Text(rest[..at].to_owned()));
        }
        segments.push(Segment::Slot(slot));
        rest = &rest[at + len..];
    }
    if !rest.is_empty() {
        segments.push(Segment::Text(rest.to_owned()));
    }
    for (_, slot) in &marks {
        if !segments.contains(&Segment::Slot(*slot)) {
            bail!(
                "the receipt event no longer holds its {slot:?}; the wrk template needs updating"
            );
        }
    }
    Ok(segments)
}

/// Body `i` of `http::bodies(phase, …)` from the template, as the Lua script renders it.
#[cfg(test)]
fn render(segments: &[Segment], phase: &str, i: usize, bill: Bill) -> String {
    segments
        .iter()
        .map(|segment| match segment {
            Segment::Text(text) => text.clone(),
            Segment::Slot(Slot::EventId) => format!("{phase}-{i}"),
            Segment::Slot(Slot::ReceiptId) => format!("{phase}-rc-{i}"),
            Segment::Slot(Slot::BillId) => bill.id.to_string(),
            Segment::Slot(Slot::Total) => bill.total.to_string(),
        })
        .collect()
}

/// A Lua string literal holding `s` byte for byte.
fn lua_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for byte in s.bytes() {
        match byte {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(char::from(byte)),
            // Three digits always, so a digit after it is not taken into the escape.
            _ => {
                let _ = write!(out, "\\{byte:03}");
            }
        }
    }
    out.push('"');
    out
}

/// The Lua script posting one receipt per bill, body `i` paying `bills[i]`.
fn script(
    phase: &str,
    bills: &[Bill],
    token: &str,
    threads: usize,
    idle_ms: u64,
    pace_us: u64,
) -> anyhow::Result<String> {
    if phase.is_empty()
        || !phase
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        bail!("phase {phase:?} cannot go into an event id unescaped");
    }
    let body = template()?
        .iter()
        .map(|segment| match segment {
            Segment::Text(text) => lua_string(text),
            Segment::Slot(Slot::EventId) => format!("{} .. i", lua_string(&format!("{phase}-"))),
            Segment::Slot(Slot::ReceiptId) => {
                format!("{} .. i", lua_string(&format!("{phase}-rc-")))
            }
            Segment::Slot(Slot::BillId) => "bill".to_owned(),
            Segment::Slot(Slot::Total) => "total".to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" .. ");
    let mut data = String::with_capacity(bills.len() * 16);
    for bill in bills {
        let _ = writeln!(data, "{} {}", bill.id, bill.total);
    }
    let count = bills.len();
    let authorization = lua_string(&format!("Bearer {token}"));
    let data = lua_string(&data);
    Ok(format!(
        r#"-- loadgen's ingest load: {count} receipts over {threads} threads. Generated for one run.
local THREADS = {threads}
local IDLE_MS = {idle_ms}
-- Microseconds between two requests of one thread (0: at once, as fast as answers come).
local PACE_US = {pace_us}
local AUTHORIZATION = {authorization}
-- "<bill id> <total>" of request i on line i (from 0).
local BILLS = {data}

-- Request i's body: the `{phase}` receipt i, paying the bill `bill` (its id and total as text).
local function receipt(i, bill, total)
  return {body}
end

-- Setup and done run in wrk's main Lua state, the rest in each thread's own.
local threads = {{}}

function setup(thread)
  thread:set("lg_thread", #threads)
  table.insert(threads, thread)
end

local numbers, bills, totals = {{}}, {{}}, {{}}
local headers = nil
local reserved, finished = 0, false
local clock = nil

function init(args)
  -- The counters done() reads are globals (thread:get reads globals only).
  lg_share, lg_sent, lg_answered, lg_ok, lg_shed, lg_extra = 0, 0, 0, 0, 0, 0
  headers = {{ ["Authorization"] = AUTHORIZATION, ["Content-Type"] = "application/json" }}
  local i = 0
  for bill, total in string.gmatch(BILLS, "(%-?%d+) (%-?%d+)") do
    if i % THREADS == lg_thread then
      lg_share = lg_share + 1
      numbers[lg_share], bills[lg_share], totals[lg_share] = i, bill, total
    end
    i = i + 1
  end
  local has_ffi, ffi = pcall(require, "ffi")
  if has_ffi and pcall(ffi.cdef, [[
      typedef struct {{ long tv_sec; long tv_nsec; }} loadgen_timespec;
      int clock_gettime(int clock_id, loadgen_timespec *tp);
    ]]) then
    local ts = ffi.new("loadgen_timespec")
    clock = function()
      ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
      return tonumber(ts.tv_sec) * 1000000 + math.floor(tonumber(ts.tv_nsec) / 1000)
    end
  end
end

local function finish()
  if finished or lg_answered < lg_share then return end
  finished = true
  io.stderr:write("{DONE_MARK} " .. lg_thread .. "\n")
  io.stderr:flush()
  wrk.thread:stop()
end

-- Called before each request of a connection: the next request of the share while any is left,
-- at once or, paced, when its slot on the thread's schedule comes (at once if the slot is past:
-- a slow answer does not push the schedule back while connections are free); else the connection
-- waits past the end of the run.
function delay()
  if reserved < lg_share then
    reserved = reserved + 1
    if PACE_US > 0 and clock then
      local now = clock()
      lg_paced_from = lg_paced_from or now
      local due = lg_paced_from + (reserved - 1) * PACE_US
      if due > now then return math.floor((due - now) / 1000) end
    end
    return 0
  end
  finish()
  return IDLE_MS
end

function request()
  if reserved == 0 then
    -- wrk's own call before the run, to see how many requests one holds: not sent.
    return wrk.format("GET", "/healthz")
  end
  if lg_sent >= lg_share then
    -- Only if a connection was re-established mid-request; the run then fails on lg_extra.
    lg_extra = lg_extra + 1
    return wrk.format("GET", "/healthz")
  end
  lg_sent = lg_sent + 1
  local k = lg_sent
  if k == 1 and clock then lg_first_us = clock() end
  return wrk.format("POST", "/api/v2/receipts", headers, receipt(numbers[k], bills[k], totals[k]))
end

function response(status, response_headers, response_body)
  lg_answered = lg_answered + 1
  if status == 200 then
    lg_ok = lg_ok + 1
  elseif status == 503 then
    lg_shed = lg_shed + 1
  end
  if status ~= 200 and not lg_first_error then
    lg_first_error = status .. " " .. string.sub(response_body or "", 1, 300)
  end
  -- The last answer so far: all of them once the share is answered, or when the run was cut.
  if clock then lg_last_us = clock() end
  finish()
end

function done(summary, latency, requests)
  local total = {{ share = 0, sent = 0, answered = 0, ok = 0, shed = 0, extra = 0 }}
  local first, last, err = nil, nil, nil
  for _, t in ipairs(threads) do
    for name, sum in pairs(total) do total[name] = sum + (t:get("lg_" .. name) or 0) end
    local f, l = t:get("lg_first_us"), t:get("lg_last_us")
    if f and (first == nil or f < first) then first = f end
    if l and (last == nil or l > last) then last = l end
    err = err or t:get("lg_first_error")
  end
  local span = -1
  if first and last then span = last - first end
  local e = summary.errors
  io.write(string.format(
    "LOADGEN threads=%d share=%d sent=%d answered=%d ok=%d shed=%d extra=%d requests=%d "
      .. "status_errors=%d connect_errors=%d read_errors=%d write_errors=%d timeouts=%d "
      .. "duration_us=%.0f span_us=%.0f p50_us=%.0f p99_us=%.0f max_us=%.0f\n",
    #threads, total.share, total.sent, total.answered, total.ok, total.shed, total.extra,
    summary.requests,
    e.status, e.connect, e.read, e.write, e.timeout,
    summary.duration, span, latency:percentile(50), latency:percentile(99), latency.max))
  if err then io.write("LOADGEN-ERROR " .. (string.gsub(err, "%c", " ")) .. "\n") end
  io.flush()
end
"#
    ))
}

/// The script's file, removed when dropped.
struct ScriptFile(PathBuf);

impl ScriptFile {
    fn write(text: &str) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "loadgen-{}-{:08x}.lua",
            std::process::id(),
            rand::random::<u32>()
        ));
        // It holds the (scratch) POS token: readable by this user only.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("create {}", path.display()))?;
        let written = Self(path);
        file.write_all(text.as_bytes())?;
        Ok(written)
    }
}

impl Drop for ScriptFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Sends SIGINT to `pid` (through `kill(1)`: this crate has no unsafe code and no signal crate).
async fn interrupt(pid: u32) {
    let sent = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
    if let Err(err) = sent {
        tracing::warn!(error = %err, "could not run kill(1); wrk runs to the end of its -d");
    }
}

/// The `key=value` fields of the `LOADGEN` line.
fn parse_summary(stdout: &str) -> Option<HashMap<&str, f64>> {
    let line = stdout.lines().find_map(|l| l.strip_prefix("LOADGEN "))?;
    line.split_whitespace()
        .map(|field| {
            let (key, value) = field.split_once('=')?;
            Some((key, value.parse().ok()?))
        })
        .collect()
}

/// Posts receipts for `bills` at `rate` a second (as fast as answers come without one) over
/// `concurrency` connections for at most `duration_s` (less once every one is answered), and
/// reports what was reached; answers other than 200 are counted, not failures (a flood is meant
/// to meet the limits).
pub async fn drive(
    wrk: &Path,
    base: &str,
    token: &str,
    phase: &str,
    bills: &[Bill],
    concurrency: usize,
    (rate, duration_s): (Option<f64>, u64),
) -> anyhow::Result<Driven> {
    let threads = THREADS.min(concurrency).max(1);
    // wrk gives each thread `connections / threads`.
    let connections = concurrency / threads * threads;
    let idle_ms = (duration_s + 60) * 1000;
    let pace_us = rate.map_or(0, |rate| (1e6 * threads as f64 / rate).round() as u64);
    let script = ScriptFile::write(&script(phase, bills, token, threads, idle_ms, pace_us)?)?;
    let mut child = Command::new(wrk)
        .args([
            "-t",
            &threads.to_string(),
            "-c",
            &connections.to_string(),
            "-d",
            &format!("{duration_s}s"),
            "--timeout",
            &format!("{TIMEOUT_S}s"),
            "--latency",
            "-s",
        ])
        .arg(&script.0)
        .arg(base)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("run {}", wrk.display()))?;
    let pid = child.id().context("wrk's pid")?;
    let mut stdout = child.stdout.take().context("wrk's stdout")?;
    let stderr = child.stderr.take().context("wrk's stderr")?;
    let stdout = tokio::spawn(async move {
        let mut text = String::new();
        stdout.read_to_string(&mut text).await.map(|_| text)
    });
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let stderr = tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        let mut other = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            if line.starts_with(DONE_MARK) {
                let _ = done_tx.send(());
            } else {
                other.push(line);
            }
        }
        other.join("\n")
    });

    let limit = Duration::from_secs(duration_s + 30);
    let deadline = tokio::time::sleep(limit);
    tokio::pin!(deadline);
    let mut resend = tokio::time::interval(Duration::from_millis(250));
    let mut finished = 0;
    let status = loop {
        tokio::select! {
            status = child.wait() => break Some(status.context("wait for wrk")?),
            Some(()) = done_rx.recv(), if finished < threads => {
                finished += 1;
                if finished == threads {
                    interrupt(pid).await;
                    resend.reset();
                }
            }
            _ = resend.tick(), if finished == threads => interrupt(pid).await,
            () = &mut deadline => break None,
        }
    };
    let Some(status) = status else {
        let _ = child.kill().await;
        bail!(
            "wrk did not end within {limit:?} ({finished} of {threads} threads had all their answers)"
        );
    };
    let stdout = stdout.await?.context("read wrk's stdout")?;
    let stderr = stderr.await?;
    let output = format!("{}\n{}", stdout.trim(), stderr.trim());
    if !status.success() {
        bail!("wrk failed ({status}):\n{output}");
    }
    let summary = parse_summary(&stdout)
        .with_context(|| format!("no LOADGEN line in wrk's output:\n{output}"))?;
    let field = |key: &str| {
        summary
            .get(key)
            .copied()
            .with_context(|| format!("no {key} in wrk's LOADGEN line:\n{output}"))
    };
    let count = |key: &str| field(key).map(|v| v as usize);
    let span_us = field("span_us")?;
    // First POST sent to last answer received; wrk's run time without the FFI.
    let seconds = if span_us > 0.0 {
        span_us
    } else {
        field("duration_us")?
    } / 1e6;
    let answered = count("answered")?;
    let ok = count("ok")?;
    let socket_errors = ["connect_errors", "read_errors", "write_errors", "timeouts"]
        .iter()
        .map(|k| count(k))
        .sum::<anyhow::Result<usize>>()?;
    let first_error = stdout
        .lines()
        .find_map(|l| l.strip_prefix("LOADGEN-ERROR "))
        .map(str::to_owned);
    Ok(Driven {
        threads,
        connections,
        sent: count("sent")?,
        answered,
        ok,
        shed: count("shed")?,
        extra: count("extra")?,
        socket_errors,
        seconds,
        answered_per_second: answered as f64 / seconds.max(f64::EPSILON),
        ok_per_second: ok as f64 / seconds.max(f64::EPSILON),
        answer_p50_ms: field("p50_us")? / 1000.0,
        answer_p99_ms: field("p99_us")? / 1000.0,
        first_error,
        output,
    })
}

/// Posts `http::bodies(phase, bills)` to `base`'s `/api/v2/receipts` with `wrk` over `concurrency`
/// keep-alive connections; fails unless every one was answered 200.
pub async fn post_all(
    wrk: &Path,
    base: &str,
    token: &str,
    phase: &str,
    bills: &[Bill],
    concurrency: usize,
) -> anyhow::Result<Bulk> {
    let count = bills.len();
    let duration_s = MIN_DURATION_S.max(u64::try_from(count)?.div_ceil(200));
    let ran = drive(
        wrk,
        base,
        token,
        phase,
        bills,
        concurrency,
        (None, duration_s),
    )
    .await?;
    if ran.sent != count || ran.answered != count || ran.extra != 0 {
        bail!(
            "wrk sent {} of {count} receipts and had {} answered ({} requests beyond them); \
             {} socket errors\n{}",
            ran.sent,
            ran.answered,
            ran.extra,
            ran.socket_errors,
            ran.output
        );
    }
    if ran.ok != count {
        bail!(
            "{} of {count} receipts were not answered 200; the first: {}",
            count - ran.ok,
            ran.first_error.as_deref().unwrap_or("?")
        );
    }
    Ok(Bulk {
        throughput: Throughput {
            count: ran.ok,
            elapsed: Duration::from_secs_f64(ran.seconds),
        },
        client: HttpClient::Wrk,
        threads: Some(ran.threads),
        connections: ran.connections,
        answer_p50_ms: ran.answer_p50_ms,
        answer_p99_ms: ran.answer_p99_ms,
    })
}

/// What [`drive`] reached.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Driven {
    pub threads: usize,
    pub connections: usize,
    pub sent: usize,
    pub answered: usize,
    /// Answered 200: accepted.
    pub ok: usize,
    /// Answered 503 (shed by ingest's in-flight limit, or the broker away).
    pub shed: usize,
    /// Requests beyond the receipts (a connection re-established mid-request).
    pub extra: usize,
    /// Sockets wrk saw fail (connect, read, write) and answers slower than its timeout.
    pub socket_errors: usize,
    pub seconds: f64,
    /// Requests answered a second, whatever the answer.
    pub answered_per_second: f64,
    /// Receipts accepted a second.
    pub ok_per_second: f64,
    pub answer_p50_ms: f64,
    pub answer_p99_ms: f64,
    /// The first answer other than 200, if any.
    pub first_error: Option<String>,
    /// wrk's whole output, for error messages.
    #[serde(skip)]
    pub output: String,
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::post;

    use super::*;

    fn bills(n: usize) -> Vec<Bill> {
        (0..n)
            .map(|i| Bill {
                id: 1000 + i64::try_from(i * 3).unwrap_or(0),
                total: 500 + i64::try_from(i * 37 % 100).unwrap_or(0) * 50,
            })
            .collect()
    }

    #[test]
    fn the_template_renders_the_reqwest_bodies() {
        let segments = template().expect("template");
        let bills = bills(12);
        let expected = http::bodies("bulk", &bills).expect("bodies");
        for (i, bill) in bills.iter().enumerate() {
            assert_eq!(
                render(&segments, "bulk", i, *bill).as_bytes(),
                expected[i].as_slice()
            );
        }
    }

    #[test]
    fn lua_strings_escape_everything_but_printable_ascii() {
        assert_eq!(lua_string(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(lua_string("é1\n"), r#""\195\1691\010""#);
    }

    #[test]
    fn reads_the_summary_line() {
        let out = "Running 1m test\nLOADGEN sent=3 ok=2 span_us=12.5\nLOADGEN-ERROR 503 x\n";
        let summary = parse_summary(out).expect("summary");
        assert_eq!(summary["sent"], 3.0);
        assert_eq!(summary["span_us"], 12.5);
        assert!(parse_summary("nothing").is_none());
    }

    type Seen = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

    /// A stand-in for ingest's receipts endpoint that keeps what it is sent; answers 503 to the
    /// bodies holding `fail` (if any).
    async fn serve(seen: Seen, fail: Option<&'static str>) -> String {
        let app = Router::new()
            .route(
                "/api/v2/receipts",
                post(
                    move |State(seen): State<Seen>, headers: HeaderMap, body: Bytes| async move {
                        let header = |name: &str| {
                            headers
                                .get(name)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_owned()
                        };
                        let failed = fail.is_some_and(|f| {
                            String::from_utf8_lossy(&body).contains(&format!("\"{f}\""))
                        });
                        seen.lock().expect("lock").push((
                            header("authorization"),
                            header("content-type"),
                            body.to_vec(),
                        ));
                        if failed {
                            StatusCode::SERVICE_UNAVAILABLE
                        } else {
                            StatusCode::OK
                        }
                    },
                ),
            )
            .with_state(seen);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        base
    }

    /// wrk, or None after saying the test is skipped (wrk is not installed).
    fn wrk_or_skip() -> Option<PathBuf> {
        let wrk = find();
        if wrk.is_none() {
            eprintln!("wrk is not on PATH; skipped");
        }
        wrk
    }

    #[tokio::test]
    async fn wrk_posts_every_body_once() {
        let Some(wrk) = wrk_or_skip() else {
            return;
        };
        let seen = Seen::default();
        let base = serve(seen.clone(), None).await;
        let bills = bills(101);
        let started = std::time::Instant::now();
        let bulk = post_all(&wrk, &base, "tok-1", "bulk", &bills, 8)
            .await
            .expect("post_all");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "wrk ran its whole -d"
        );
        assert_eq!(bulk.throughput.count, 101);
        assert_eq!((bulk.threads, bulk.connections), (Some(2), 8));
        let mut seen = seen.lock().expect("lock").clone();
        assert!(
            seen.iter()
                .all(|(auth, ct, _)| auth == "Bearer tok-1" && ct == "application/json")
        );
        let mut got: Vec<Vec<u8>> = seen.drain(..).map(|(_, _, body)| body).collect();
        let mut expected = http::bodies("bulk", &bills).expect("bodies");
        got.sort();
        expected.sort();
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "wrk's bodies differ from reqwest's");
    }

    #[tokio::test]
    async fn wrk_reports_answers_other_than_200() {
        let Some(wrk) = wrk_or_skip() else {
            return;
        };
        let base = serve(Seen::default(), Some("bulk-7")).await;
        let err = post_all(&wrk, &base, "tok", "bulk", &bills(20), 3)
            .await
            .expect_err("a 503 must fail the run");
        let text = format!("{err:#}");
        assert!(
            text.contains("1 of 20 receipts were not answered 200") && text.contains("503"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_paced_drive_counts_503s_instead_of_failing() {
        let Some(wrk) = wrk_or_skip() else {
            return;
        };
        let seen = Seen::default();
        let base = serve(seen.clone(), Some("flood-3")).await;
        let driven = drive(
            &wrk,
            &base,
            "tok",
            "flood",
            &bills(20),
            4,
            (Some(2000.0), 10),
        )
        .await
        .expect("drive");
        assert_eq!(
            (driven.sent, driven.answered, driven.ok, driven.shed),
            (20, 20, 19, 1)
        );
        assert!(
            driven
                .first_error
                .as_deref()
                .is_some_and(|e| e.starts_with("503")),
            "{:?}",
            driven.first_error
        );
        assert_eq!(seen.lock().expect("lock").len(), 20);
    }

    #[tokio::test]
    async fn wrk_copes_with_fewer_receipts_than_threads() {
        let Some(wrk) = wrk_or_skip() else {
            return;
        };
        let seen = Seen::default();
        let base = serve(seen.clone(), None).await;
        let bulk = post_all(&wrk, &base, "tok", "bulk", &bills(1), 4)
            .await
            .expect("post_all");
        assert_eq!(bulk.throughput.count, 1);
        assert_eq!(seen.lock().expect("lock").len(), 1);
    }
}
