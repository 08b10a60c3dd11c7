"""Load tests of a QuaLA server on 127.0.0.1: closed-loop clients, an open-loop rate sweep, and scale-out.

Every mode starts ``quala serve`` subprocesses on free loopback ports (or, in ``closed`` mode, targets ``--url``),
sends real SQuAD questions, is bounded in requests and time (each request has a timeout, each run a deadline)
and writes JSON with machine info to ``benchmarks/results/``.

``closed`` (default): ``--clients`` clients send questions back to back for ``--duration`` seconds; throughput,
latency percentiles, errors, engine calls per question (micro-batching) and the server's memory.

``sweep``: latency-target mode against fixed full length (docs/serving.md). First measures what full length
sustains (``--capacity-clients`` closed-loop clients for ``--capacity-seconds``), then, for each rate in
``--rates`` (multiples of that capacity), sends the same Poisson (open-loop) arrivals and the same questions to
(a) a plain server asked for full length and (b) a server started with ``--target-p95-ms`` asked without a
budget; the arms alternate at each rate. Reports p50/p95/p99 (from the scheduled arrival time, so a late
generator cannot hide queueing), throughput, errors (503s separately) and the F1/EM of the answers actually
served, scored against the gold answers; plots p95 and served F1 against offered load; prints markdown tables.

``scale``: throughput of 1 and 2 server processes on one machine (``--setups`` as PROCESSESxTHREADS),
``--clients`` closed-loop clients spread round-robin over the processes, at full length.

    python benchmarks/load.py --model packaged:minilm --clients 8 --duration 60 --threads 1
    python benchmarks/load.py --mode sweep --model runs/squad-mini/lengthdrop --threads 1 \\
        --rates 0.5,1,1.5,2,2.5,3 --duration 30 --plot docs/img/load-adaptive.png
    python benchmarks/load.py --mode scale --model runs/squad-mini/lengthdrop --clients 8 --duration 30
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import psutil

from quala.data import Example, load_squad
from quala.io import machine_info, write_json_atomic
from quala.metric import exact_match_score, f1_score, metric_max_over_ground_truths

ROOT = Path(__file__).resolve().parents[1]
TARGET_FACTOR = 5  # sweep default: --target-p95-ms = this many median full-length engine times (rounded up)
MAX_CONNECTIONS = 512  # the open-loop client's connection pool; the server's queue (--max-queue 256) fills first
# Idle keep-alive connections are dropped before uvicorn's 5 s keep-alive timeout: reusing one that the server
# closes at the same instant is a client-side ReadError that says nothing about the server.
KEEPALIVE_S = 2.0
SETTLE_S = 1.0  # pause between two runs of the sweep
# sweep arms: fixed full length; latency-target mode; (--queue-arm) latency-target mode with the queue rule only
SWEEP_ARMS = ("full", "target", "queue")
ARM_LABELS = {"full": "full length", "target": "target", "queue": "target, queue rule only"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=("closed", "sweep", "scale"), default="closed")
    p.add_argument("--model", default="packaged:minilm", help="Model directory (or packaged:minilm) to serve.")
    p.add_argument("--url", default=None, help="closed mode: target a running server instead of starting one.")
    p.add_argument("--server-pid", type=int, default=None, help="With --url: the server pid (memory).")
    p.add_argument("--clients", type=int, default=8, help="Concurrent clients (closed and scale modes).")
    p.add_argument("--duration", type=float, default=60.0, help="Seconds of load per run (after warm-up).")
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/squad/dev-v1.1-part-a.json"))
    p.add_argument("--articles", default="32:40", help="Article range A:B of --data.")
    p.add_argument(
        "--budget", default=None, help='closed mode: JSON budget sent with every request, e.g. \'{"preset": "fast"}\'.'
    )
    p.add_argument("--micro-batch", action="store_true", help="Start the servers with --micro-batch.")
    p.add_argument("--batch-window-ms", type=float, default=2.0, help="Servers' --batch-window-ms.")
    p.add_argument("--threads", type=int, default=None, help="Servers' --threads (default: all cores).")
    p.add_argument("--backend", default="auto", help="Servers' --backend.")
    p.add_argument("--timeout", type=float, default=60.0, help="Per-request timeout (s).")
    p.add_argument(
        "--rates", default="0.5,1,1.5,2,2.5,3", help="sweep: offered loads as multiples of the full-length capacity."
    )
    p.add_argument(
        "--target-p95-ms",
        type=float,
        default=None,
        help=f"sweep: the target of arm (b) (default: {TARGET_FACTOR}x the median full-length engine "
        "time measured with the capacity).",
    )
    p.add_argument(
        "--target-load",
        type=float,
        default=None,
        help="sweep: the target arm's --target-load (default: the server's, 0.7).",
    )
    p.add_argument(
        "--queue-arm",
        action="store_true",
        help="sweep: a third arm, latency-target mode with the queue rule only (--target-load 1000), the design "
        "before the arrival-rate rule.",
    )
    p.add_argument("--capacity-seconds", type=float, default=20.0, help="sweep: length of the capacity run.")
    p.add_argument("--capacity-clients", type=int, default=2, help="sweep: closed-loop clients of that run.")
    p.add_argument("--max-requests", type=int, default=5000, help="sweep: most requests per run.")
    p.add_argument("--seed", type=int, default=0, help="sweep: arrival times and question order.")
    p.add_argument("--setups", default="1x2,1x1,2x1", help="scale: PROCESSESxTHREADS per setup.")
    p.add_argument("--plot", default=None, help="sweep: where the PNG goes (default: next to the JSON).")
    p.add_argument("--out", default=None, help="Output JSON (default: benchmarks/results/load-<mode>-<time>.json).")
    args = p.parse_args(argv)
    if min(args.clients, args.capacity_clients, args.max_requests) < 1:
        p.error("--clients, --capacity-clients and --max-requests must be >= 1")
    if min(args.duration, args.timeout, args.capacity_seconds) <= 0:
        p.error("--duration, --timeout and --capacity-seconds must be > 0")
    if args.target_p95_ms is not None and not (math.isfinite(args.target_p95_ms) and args.target_p95_ms > 0):
        p.error(f"--target-p95-ms must be a number of milliseconds > 0, got {args.target_p95_ms}")
    if args.target_load is not None and not (math.isfinite(args.target_load) and args.target_load > 0):
        p.error(f"--target-load must be a share of the engine's time > 0, got {args.target_load}")
    try:
        args.rate_list = [float(r) for r in args.rates.split(",")]
        args.setup_list = [tuple(int(x) for x in s.lower().split("x")) for s in args.setups.split(",")]
    except ValueError:
        p.error("--rates is a comma-separated list of numbers and --setups of PROCESSESxTHREADS, e.g. 1x2,2x1")
    if not all(r > 0 for r in args.rate_list) or not all(len(s) == 2 and min(s) >= 1 for s in args.setup_list):
        p.error("--rates must be > 0 and --setups PROCESSESxTHREADS with both >= 1")
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"load-{args.mode}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    with contextlib.suppress(OSError):
        out.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(out.parent, os.W_OK):
        p.error(f"cannot write {out}")  # checked before minutes of load
    args.out = out
    return args


# ------------------------------------------------------------------------------------------ servers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    args: argparse.Namespace, threads: int | None = None, extra: tuple[str, ...] = ()
) -> tuple[subprocess.Popen, str]:
    """``quala serve`` on a free loopback port; returns once /healthz answers (the model is loaded)."""
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "quala.cli",
        "serve",
        "--model",
        args.model,
        "--port",
        str(port),
        "--backend",
        args.backend,
        "--batch-window-ms",
        str(args.batch_window_ms),
        *extra,
    ]
    cmd += ["--micro-batch"] if args.micro_batch else ["--no-micro-batch"]
    threads = threads if threads is not None else args.threads
    if threads is not None:
        cmd += ["--threads", str(threads)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    # the server's log goes to a file, not an unread pipe (a full pipe would block the server mid-run)
    log_file = tempfile.NamedTemporaryFile("w+", prefix="quala-serve-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log_file, text=True)
    proc.log_path = log_file.name  # type: ignore[attr-defined]
    log_file.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}: {Path(proc.log_path).read_text()[-2000:]}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    proc.kill()
    raise SystemExit("server did not become healthy within 300 s")


@contextlib.contextmanager
def servers(args: argparse.Namespace, specs: list[tuple[int | None, tuple[str, ...]]]) -> Iterator[list]:
    """Start one server per (threads, extra flags); stop them all on the way out, whatever happens."""
    procs: list[tuple[subprocess.Popen, str]] = []
    try:
        for threads, extra in specs:
            procs.append(start_server(args, threads, extra))
        yield procs
    finally:
        for proc, _ in procs:
            proc.terminate()
        for proc, _ in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            log = Path(proc.log_path)
            text = log.read_text(errors="replace")
            if "Traceback" in text:  # a server-side error: show it, it is what a 500 in the results means
                print(f"server log ({log}), from the first traceback:\n{text[text.index('Traceback') :][-4000:]}")
            else:
                log.unlink(missing_ok=True)


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def hwm_mb(pid: int) -> float | None:
    """The kernel's peak resident set size of the process (Linux VmHWM)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def percentiles(ms: list[float]) -> dict[str, float] | None:
    if not ms:
        return None
    a = np.asarray(ms)
    return {
        "p50": round(float(np.percentile(a, 50)), 1),
        "p95": round(float(np.percentile(a, 95)), 1),
        "p99": round(float(np.percentile(a, 99)), 1),
        "mean": round(float(a.mean()), 1),
        "max": round(float(a.max()), 1),
    }


# ------------------------------------------------------------------------------------------ closed loop
async def closed_loop(
    urls: list[str], payloads: list[dict], clients: int, duration: float, timeout: float, pid: int | None = None
) -> dict:
    """``clients`` clients, client k on ``urls[k % len(urls)]``, each sending back to back for ``duration`` s."""
    attempts = 0
    latencies: list[float] = []
    engine_ms: list[float] = []
    errors: list[str] = []
    rss_samples: list[float] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients, keepalive_expiry=KEEPALIVE_S)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as http:
        for url in urls:  # warm-up, not measured
            for body in payloads[:3]:
                await http.post(url + "/v1/answer", json=body)
        t0 = time.perf_counter()
        deadline = t0 + duration

        async def client(k: int) -> None:
            nonlocal attempts
            i, url = k, urls[k % len(urls)] + "/v1/answer"
            while time.perf_counter() < deadline:
                attempts += 1
                body = payloads[i % len(payloads)]
                i += clients
                start = time.perf_counter()
                try:
                    r = await http.post(url, json=body)
                except httpx.HTTPError as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                latencies.append((time.perf_counter() - start) * 1000)
                if r.status_code != 200:
                    errors.append(f"HTTP {r.status_code}: {r.text[:200]}")
                else:
                    engine_ms.append(r.json()["latency_ms"])

        async def sample_memory() -> None:
            while time.perf_counter() < deadline:
                rss_samples.append(rss_mb(pid))
                await asyncio.sleep(0.5)  # 10 samples per 5 s: rss_timeline keeps every 10th

        tasks = [client(k) for k in range(clients)] + ([sample_memory()] if pid else [])
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=duration + timeout + 30)
        elapsed = time.perf_counter() - t0
    return {
        "requests": attempts,
        "ok": len(engine_ms),
        "errors": len(errors),
        "error_samples": errors[:5],
        "seconds": round(elapsed, 2),
        "throughput_rps": round(len(engine_ms) / elapsed, 2),
        "latency_ms": percentiles(latencies),
        "engine_latency_ms_p50": round(float(np.median(engine_ms)), 1) if engine_ms else None,
        "rss_samples": rss_samples,
    }


async def run_closed(url: str, payloads: list[dict], args: argparse.Namespace, pid: int | None) -> dict:
    async with httpx.AsyncClient(base_url=url, timeout=args.timeout) as http:
        await http.post("/v1/answer", json=payloads[0])  # the model is warm before the counters are read
        before = (await http.get("/v1/model")).json()["micro_batching"]
        rss_before = rss_mb(pid) if pid else None
        result = await closed_loop([url], payloads, args.clients, args.duration, args.timeout, pid)
        after = (await http.get("/v1/model")).json()
    calls = after["micro_batching"]["engine_calls"] - before["engine_calls"]
    questions = after["micro_batching"]["questions"] - before["questions"]
    rss_samples = result.pop("rss_samples")
    return {
        **result,
        "engine_calls": calls,
        "questions_per_engine_call": round(questions / calls, 2) if calls else None,
        "server": {k: after[k] for k in ("model", "backend", "micro_batching")},
        "memory_mb": {
            "rss_before_load": round(rss_before, 1) if rss_before else None,
            "rss_peak_during_load": round(max(rss_samples), 1) if rss_samples else None,
            "rss_end": round(rss_samples[-1], 1) if rss_samples else None,
            "rss_timeline_every_5s": [round(x, 1) for x in rss_samples[::10]],
            "vmhwm_lifetime_peak": hwm_mb(pid) if pid else None,
        },
    }


def closed_mode(args: argparse.Namespace, examples: list[Example]) -> dict:
    budget = json.loads(args.budget) if args.budget else None
    payloads = [
        {"question": ex.question, "context": ex.context} | ({"budget": budget} if budget else {}) for ex in examples
    ]
    if args.url:
        result = asyncio.run(run_closed(args.url.rstrip("/"), payloads, args, args.server_pid))
    else:
        with servers(args, [(None, ())]) as [(proc, url)]:
            result = asyncio.run(run_closed(url, payloads, args, proc.pid))
    print(
        json.dumps(
            {
                k: result[k]
                for k in ("throughput_rps", "latency_ms", "errors", "questions_per_engine_call", "memory_mb")
            },
            indent=1,
        )
    )
    return {"config": {"clients": args.clients, "duration_s": args.duration, "budget": budget}, **result}


# ------------------------------------------------------------------------------------------ open loop
def poisson_arrivals(rate: float, duration: float, max_requests: int, seed: int) -> np.ndarray:
    """Arrival times (s) of a Poisson process of ``rate`` per second over ``duration`` s, at most ``max_requests``."""
    rng = np.random.default_rng(seed)
    times = np.cumsum(rng.exponential(1 / rate, size=max_requests + 1))
    return times[times < duration]


async def open_loop(url: str, arrivals: np.ndarray, payloads: list[dict], timeout: float) -> list[dict]:
    """Send ``payloads[k]`` at ``arrivals[k]`` whatever the server's state; latency counts from that instant."""
    limits = httpx.Limits(
        max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS, keepalive_expiry=KEEPALIVE_S
    )
    out: list[dict] = [{} for _ in arrivals]
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as http:
        t0 = time.perf_counter()

        async def one(k: int) -> None:
            scheduled = t0 + float(arrivals[k])
            await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
            lag_ms = (time.perf_counter() - scheduled) * 1000  # > a few ms: the generator fell behind
            try:
                r = await http.post("/v1/answer", json=payloads[k])
                out[k] = {"status": r.status_code, "body": r.json() if r.status_code == 200 else r.text[:200]}
            except httpx.HTTPError as exc:
                out[k] = {"status": None, "body": f"{type(exc).__name__}: {exc}"}
            out[k]["latency_ms"] = (time.perf_counter() - scheduled) * 1000
            out[k]["send_lag_ms"] = lag_ms
            out[k]["done_s"] = time.perf_counter() - t0

        duration = float(arrivals[-1]) if len(arrivals) else 0.0
        await asyncio.wait_for(asyncio.gather(*(one(k) for k in range(len(arrivals)))), timeout=duration + timeout + 30)
    return out


def summarize(results: list[dict], examples: list[Example], duration: float) -> dict:
    """Latency of the served answers, throughput, errors, and the F1/EM of what was served."""
    ok = [(r, ex) for r, ex in zip(results, examples, strict=True) if r["status"] == 200]
    f1 = [metric_max_over_ground_truths(f1_score, r["body"]["answer"], ex.answers) for r, ex in ok]
    em = [metric_max_over_ground_truths(exact_match_score, r["body"]["answer"], ex.answers) for r, ex in ok]
    configs = Counter(
        "full" if r["body"]["length_config"] is None else ",".join(map(str, r["body"]["length_config"])) for r, _ in ok
    )
    elapsed = max([duration] + [r["done_s"] for r in results])
    return {
        "requests": len(results),
        "ok": len(ok),
        "errors": len(results) - len(ok),
        "errors_503": sum(r["status"] == 503 for r in results),
        "error_samples": [r["body"] for r in results if r["status"] != 200][:3],
        "offered_rps": round(len(results) / duration, 2),
        "throughput_rps": round(len(ok) / elapsed, 2),
        "latency_ms": percentiles([r["latency_ms"] for r, _ in ok]),
        "queue_ms": percentiles([r["body"]["queue_ms"] for r, _ in ok]),
        "engine_ms": percentiles([r["body"]["latency_ms"] for r, _ in ok]),
        "server_ms": percentiles([r["body"]["queue_ms"] + r["body"]["latency_ms"] for r, _ in ok]),
        "send_lag_ms": percentiles([r["send_lag_ms"] for r in results]),
        "served_f1": round(100 * float(np.mean(f1)), 2) if f1 else None,
        "served_em": round(100 * float(np.mean(em)), 2) if em else None,
        "f1_all_requests": round(100 * float(np.sum(f1)) / len(results), 2) if results else None,
        "mean_macs_fraction": round(float(np.mean([r["body"]["macs_fraction"] for r, _ in ok])), 4) if ok else None,
        "configs": dict(configs.most_common()),
    }


def capacity(url: str, examples: list[Example], args: argparse.Namespace) -> dict:
    """What full length sustains: closed-loop clients sending full-length questions back to back."""
    payloads = [{"question": ex.question, "context": ex.context, "length_config": "full"} for ex in examples]
    result = asyncio.run(closed_loop([url], payloads, args.capacity_clients, args.capacity_seconds, args.timeout))
    result.pop("rss_samples")
    if not result["ok"]:
        raise SystemExit(f"the capacity run got no answers: {result['error_samples']}")
    return result


def sweep_mode(args: argparse.Namespace, examples: list[Example]) -> dict:
    order = np.random.default_rng(args.seed).permutation(len(examples))
    examples = [examples[i] for i in order]
    with servers(args, [(None, ())]) as [(_, plain)]:
        cap = capacity(plain, examples, args)
    mu = cap["throughput_rps"]
    target = args.target_p95_ms or math.ceil(TARGET_FACTOR * cap["engine_latency_ms_p50"] / 10) * 10
    print(
        f"full length sustains {mu} req/s (engine p50 {cap['engine_latency_ms_p50']} ms); target {target} ms",
        flush=True,
    )
    adaptive = ("--target-p95-ms", str(target))
    specs = {
        "full": (),
        "target": adaptive + (("--target-load", str(args.target_load)) if args.target_load is not None else ()),
        "queue": adaptive + ("--target-load", "1000"),
    }
    names = ["full", "target"] + (["queue"] if args.queue_arm else [])
    runs = []
    with servers(args, [(None, specs[name]) for name in names]) as procs:
        urls = {name: url for name, (_, url) in zip(names, procs, strict=True)}
        model = httpx.get(urls["target"] + "/v1/model", timeout=args.timeout).json()
        for n, factor in enumerate(args.rate_list):
            arrivals = poisson_arrivals(factor * mu, args.duration, args.max_requests, args.seed + n)
            asked = [examples[k % len(examples)] for k in range(len(arrivals))]
            for arm, url in urls.items():  # same arrivals, same questions
                payloads = [{"question": ex.question, "context": ex.context} for ex in asked]
                if arm == "full":  # the other arms send no budget: the latency target chooses
                    payloads = [p | {"length_config": "full"} for p in payloads]
                results = asyncio.run(open_loop(url, arrivals, payloads, args.timeout))
                row = {"arm": arm, "load_factor": factor, **summarize(results, asked, args.duration)}
                runs.append(row)
                lat = row["latency_ms"] or {}
                print(
                    f"{factor:>4}x {arm:>6}: {row['offered_rps']} req/s offered, p95 {lat.get('p95')} ms, "
                    f"errors {row['errors']}, served F1 {row['served_f1']}",
                    flush=True,
                )
                time.sleep(SETTLE_S)
    return {
        "config": {
            "rates": args.rate_list,
            "duration_s": args.duration,
            "seed": args.seed,
            "capacity_clients": args.capacity_clients,
            "capacity_seconds": args.capacity_seconds,
            "max_requests": args.max_requests,
            "arms": names,
            "target_load": args.target_load,
        },
        "capacity": cap,
        "full_length_capacity_rps": mu,
        "target_p95_ms": target,
        "latency_target": model["latency_target"],
        "front": model["front"],
        "runs": runs,
    }


def sweep_tables(result: dict) -> str:
    rows = {(r["load_factor"], r["arm"]): r for r in result["runs"]}
    lines = [
        f"Target p95: {result['target_p95_ms']} ms; full length sustains {result['full_length_capacity_rps']} req/s.",
        "",
        "| offered load | offered req/s | mode | p50 / p95 / p99 (ms) | throughput (req/s) | errors (503) "
        "| served F1 | mean MACs fraction |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for factor in result["config"]["rates"]:
        for arm in [a for a in SWEEP_ARMS if (factor, a) in rows]:
            r = rows[(factor, arm)]
            lat = r["latency_ms"] or {}
            lines.append(
                f"| {factor}x | {r['offered_rps']} | {ARM_LABELS[arm]} | "
                f"{lat.get('p50')} / {lat.get('p95')} / {lat.get('p99')} | {r['throughput_rps']} | "
                f"{r['errors']} ({r['errors_503']}) | {r['served_f1']} | {r['mean_macs_fraction']} |"
            )
    return "\n".join(lines)


def plot_sweep(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_p95, ax_f1) = plt.subplots(1, 2, figsize=(10, 4))
    for arm, label, marker in (
        ("full", "fixed full length", "o"),
        ("target", "latency-target mode", "s"),
        ("queue", "latency-target mode, queue rule only", "^"),
    ):
        runs = [r for r in result["runs"] if r["arm"] == arm]
        if not runs:
            continue
        x = [r["load_factor"] for r in runs]
        ax_p95.plot(x, [(r["latency_ms"] or {}).get("p95", np.nan) for r in runs], marker=marker, label=label)
        ax_f1.plot(
            x, [r["served_f1"] if r["served_f1"] is not None else np.nan for r in runs], marker=marker, label=label
        )
    ax_p95.axhline(result["target_p95_ms"], color="grey", linestyle="--", label="target")
    ax_p95.set(yscale="log", xlabel="offered load (x what full length sustains)", ylabel="p95 latency (ms)")
    ax_f1.set(xlabel="offered load (x what full length sustains)", ylabel="F1 of the served answers")
    for ax in (ax_p95, ax_f1):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------------ scale-out
def scale_mode(args: argparse.Namespace, examples: list[Example]) -> dict:
    payloads = [{"question": ex.question, "context": ex.context, "length_config": "full"} for ex in examples]
    rows = []
    for processes, threads in args.setup_list:
        with servers(args, [(threads, ())] * processes) as procs:
            urls = [url for _, url in procs]
            result = asyncio.run(closed_loop(urls, payloads, args.clients, args.duration, args.timeout))
            rss = sum(rss_mb(proc.pid) for proc, _ in procs)
        result.pop("rss_samples")
        rows.append({"processes": processes, "threads": threads, **result, "rss_mb_total": round(rss, 1)})
        lat = result["latency_ms"] or {}
        print(f"{processes} x {threads} threads: {result['throughput_rps']} req/s, p95 {lat.get('p95')} ms", flush=True)
    return {"config": {"clients": args.clients, "duration_s": args.duration, "setups": args.setups}, "runs": rows}


def scale_table(result: dict) -> str:
    lines = [
        "| processes x threads | throughput (req/s) | p50 / p95 (ms) | errors | server RSS, all processes (MB) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in result["runs"]:
        lat = r["latency_ms"] or {}
        lines.append(
            f"| {r['processes']} x {r['threads']} | {r['throughput_rps']} | {lat.get('p50')} / "
            f"{lat.get('p95')} | {r['errors']} | {r['rss_mb_total']} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    examples = load_squad(args.data, args.articles).examples
    t0 = time.perf_counter()
    run = {"closed": closed_mode, "sweep": sweep_mode, "scale": scale_mode}[args.mode]
    result = {"benchmark": f"load-{args.mode}", "model": args.model, **run(args, examples)}
    result["config"] |= {
        "micro_batch": args.micro_batch,
        "batch_window_ms": args.batch_window_ms,
        "threads": args.threads,
        "backend": args.backend,
        "data": args.data,
        "articles": args.articles,
        "questions": len(examples),
    }
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    result["machine"] = machine_info()
    write_json_atomic(args.out, result)
    if args.mode == "sweep":
        plot = Path(args.plot) if args.plot else args.out.with_suffix(".png")
        plot_sweep(result, plot)
        print(f"\n{sweep_tables(result)}\n\nwrote {plot}")
    elif args.mode == "scale":
        print(f"\n{scale_table(result)}")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
