"""Load test: N concurrent clients against a QuaLA server on 127.0.0.1 for T seconds.

Starts ``quala serve`` as a subprocess (or targets ``--url``), warms it up, then runs ``--clients``
asyncio/httpx clients that each send real SQuAD questions back to back until ``--duration`` seconds have
passed (a request in flight at the deadline is still counted; every request has a timeout, so the run always
ends). Reports
throughput, client-side latency percentiles, the error count, the server's engine calls (how much
micro-batching merged), and the server's memory: RSS before the load, the peak sampled during it, and the
kernel's lifetime high-water mark (VmHWM). Writes JSON with machine info.

    python benchmarks/load.py --model packaged:minilm --clients 8 --duration 60 \\
        --data ../shared/data/squad/dev-v1.1-part-a.json --articles 32:40 [--micro-batch]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

from quala.data import load_squad
from quala.io import machine_info, write_json_atomic

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="packaged:minilm", help="Model to serve (ignored with --url).")
    p.add_argument("--url", default=None, help="Target a running server instead of starting one.")
    p.add_argument("--server-pid", type=int, default=None, help="With --url: the server pid (memory).")
    p.add_argument("--clients", type=int, default=8, help="Concurrent clients.")
    p.add_argument("--duration", type=float, default=60.0, help="Seconds of load (after warm-up).")
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/squad/dev-v1.1-part-a.json"))
    p.add_argument("--articles", default="32:40", help="Article range A:B of --data.")
    p.add_argument("--budget", default=None,
                   help="JSON budget sent with every request, e.g. '{\"preset\": \"fast\"}' (default: none).")
    p.add_argument("--micro-batch", action="store_true", help="Start the server with --micro-batch.")
    p.add_argument("--batch-window-ms", type=float, default=2.0, help="Server's --batch-window-ms.")
    p.add_argument("--threads", type=int, default=None, help="Server's --threads (default: all cores).")
    p.add_argument("--backend", default="auto", help="Server's --backend.")
    p.add_argument("--timeout", type=float, default=60.0, help="Per-request timeout (s).")
    p.add_argument("--out", default=None, help="Output JSON (default: benchmarks/results/load-<time>.json).")
    args = p.parse_args(argv)
    if args.clients < 1 or args.duration <= 0 or args.timeout <= 0:
        p.error("--clients must be >= 1 and --duration, --timeout > 0")
    return args


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "quala.cli", "serve", "--model", args.model, "--port", str(port),
           "--backend", args.backend, "--batch-window-ms", str(args.batch_window_ms)]
    cmd += ["--micro-batch"] if args.micro_batch else ["--no-micro-batch"]
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    proc.kill()
    raise SystemExit("server did not become healthy within 300 s")


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


async def run_load(url: str, payloads: list[dict], args: argparse.Namespace, pid: int | None) -> dict:
    attempts = 0
    latencies: list[float] = []
    engine_ms: list[float] = []
    errors: list[str] = []
    rss_samples: list[float] = []
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(base_url=url, timeout=args.timeout, limits=limits) as http:
        for body in payloads[:3]:  # warm-up, not measured
            await http.post("/v1/answer", json=body)
        before = (await http.get("/v1/model")).json()["micro_batching"]
        rss_before = rss_mb(pid) if pid else None
        t0 = time.perf_counter()
        deadline = t0 + args.duration

        async def client(k: int) -> None:
            nonlocal attempts
            i = k
            while time.perf_counter() < deadline:
                attempts += 1
                body = payloads[i % len(payloads)]
                i += args.clients
                start = time.perf_counter()
                try:
                    r = await http.post("/v1/answer", json=body)
                except httpx.HTTPError as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                latencies.append(time.perf_counter() - start)
                if r.status_code != 200:
                    errors.append(f"HTTP {r.status_code}: {r.text[:200]}")
                else:
                    engine_ms.append(r.json()["latency_ms"])

        async def sample_memory() -> None:
            while time.perf_counter() < deadline:
                rss_samples.append(rss_mb(pid))
                await asyncio.sleep(0.5)  # 10 samples per 5 s: rss_timeline keeps every 10th

        tasks = [client(k) for k in range(args.clients)] + ([sample_memory()] if pid else [])
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=args.duration + args.timeout + 30)
        elapsed = time.perf_counter() - t0
        after = (await http.get("/v1/model")).json()
    calls = after["micro_batching"]["engine_calls"] - before["engine_calls"]
    questions = after["micro_batching"]["questions"] - before["questions"]
    lat = np.array(latencies) * 1000
    return {
        "requests": attempts,
        "ok": len(engine_ms),
        "errors": len(errors),
        "error_samples": errors[:5],
        "seconds": round(elapsed, 2),
        "throughput_rps": round(len(engine_ms) / elapsed, 2),
        "latency_ms": {
            "p50": round(float(np.percentile(lat, 50)), 1), "p90": round(float(np.percentile(lat, 90)), 1),
            "p99": round(float(np.percentile(lat, 99)), 1), "mean": round(float(lat.mean()), 1),
            "max": round(float(lat.max()), 1),
        } if len(lat) else None,
        "engine_latency_ms_p50": round(float(np.median(engine_ms)), 1) if engine_ms else None,
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


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    squad = load_squad(args.data, args.articles)
    budget = json.loads(args.budget) if args.budget else None
    payloads = [{"question": ex.question, "context": ex.context} | ({"budget": budget} if budget else {})
                for ex in squad.examples]
    proc = None
    if args.url:
        url, pid = args.url.rstrip("/"), args.server_pid
    else:
        proc, url = start_server(args)
        pid = proc.pid
    try:
        result = asyncio.run(run_load(url, payloads, args, pid))
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    result = {
        "benchmark": "load",
        "config": {"clients": args.clients, "duration_s": args.duration, "budget": budget,
                   "micro_batch": args.micro_batch, "batch_window_ms": args.batch_window_ms,
                   "threads": args.threads, "data": args.data, "articles": args.articles,
                   "questions": len(payloads)},
        **result,
        "machine": machine_info(),
    }
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"load-{time.strftime('%Y%m%d-%H%M%S')}.json")
    write_json_atomic(out, result)
    print(json.dumps({k: result[k] for k in ("config", "throughput_rps", "latency_ms", "errors",
                                              "questions_per_engine_call", "memory_mb")}, indent=1))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
