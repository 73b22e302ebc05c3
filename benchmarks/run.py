"""Measure what the job monitor costs per viewer next to a polling baseline, and write the results page and chart.

Usage, from the repository root with the `bench` extra installed:

    python benchmarks/run.py            # the full run, about 22 minutes (25 with --profile)
    python benchmarks/run.py --quick    # a smoke run of about 6 minutes
    python benchmarks/run.py --render-only   # rebuild the page from benchmarks/results.json

The run writes its figures to a JSON file, then regenerates
`nbs/guides/benchmarks.ipynb` and `nbs/images/benchmarks.svg` from them.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.metadata
import json
import logging
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path: sys.path.insert(0, str(REPO_ROOT))  # run as a script: import `benchmarks.*`

import psutil  # noqa: E402

from benchmarks import report  # noqa: E402
from benchmarks.micro import log_tail_timings, render_timings  # noqa: E402
from benchmarks.scenarios import Scenario, Settings, run_scenario  # noqa: E402
from cjm_fasthtml_job_monitor.models import JobMonitorConfig  # noqa: E402

logger = logging.getLogger("benchmarks")

RESULTS_PATH = REPO_ROOT / "benchmarks" / "results.json"
FINDINGS_PATH = REPO_ROOT / "benchmarks" / "findings.md"
NOTEBOOK_PATH = REPO_ROOT / "nbs" / "guides" / "benchmarks.ipynb"
SVG_PATH = REPO_ROOT / "nbs" / "images" / "benchmarks.svg"
VERSIONED_PACKAGES = ("cjm-fasthtml-job-monitor", "python-fasthtml", "cjm-plugin-system", "uvicorn", "starlette",
                      "h11", "httpx")
IDLE_LOG_BURST = 60  # Lines the idle-log job logs at its start: more than `log_lines`, so the baseline's tail is full
DEFAULT_PROFILES = "monitor-100,monitor-100-reused-clients,baseline-10-reused-clients"
LOAD_POLL_S = 30.0  # Seconds between two load checks while waiting for a quiet machine


def parse_args(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python benchmarks/run.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 10 s jobs and fewer repeats, results to a temporary folder")
    parser.add_argument("--duration", type=float, help="seconds each job runs (default 60, 10 with --quick)")
    parser.add_argument("--warmup", type=float, help="seconds after the start before figures are taken (default 3, 2 with --quick)")
    parser.add_argument("--viewers", default="1,10,100", help="comma-separated viewer counts of the monitor-N and baseline-N scenarios (default 1,10,100)")
    parser.add_argument("--poll-interval", type=float, default=0.1,
                        help="the JobQueue's progress_poll_interval in seconds (default 0.1)")
    parser.add_argument("--log-records", default="100,1000000",
                        help="comma-separated log sizes for the log-tail timing, at most two (default 100,1000000)")
    parser.add_argument("--profile", nargs="?", const=DEFAULT_PROFILES, default="",
                        help=f"repeat these scenarios under py-spy (default when given without a value: {DEFAULT_PROFILES})")
    parser.add_argument("--only", default="", help="comma-separated scenario names to run, for development")
    parser.add_argument("--results", type=Path,
                        help=f"results JSON to write (default {RESULTS_PATH.relative_to(REPO_ROOT)}; a temporary file with --quick)")
    parser.add_argument("--no-page", action="store_true", help="write the results JSON only, not the page and chart")
    parser.add_argument("--render-only", action="store_true", help="rebuild the page and chart from the results JSON")
    parser.add_argument("--wait-for-load", type=float, metavar="LOAD",
                        help="wait (up to 30 min) until the 1-minute load average is below LOAD before starting")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (server logs, raw profiles)")
    return parser.parse_args(argv)


def build_scenarios(viewer_counts: List[int]) -> List[Scenario]:
    "List the scenarios of a run, alternating monitor and baseline so that drift in the machine's load hits both."
    scenarios = [Scenario("queue-only", "queue-only", 0), Scenario("monitor-0", "monitor", 0)]
    for n in viewer_counts:
        scenarios += [Scenario(f"monitor-{n}", "monitor", n), Scenario(f"baseline-{n}", "baseline", n)]
    idle = dict(log_interval_s=0.0, log_burst=IDLE_LOG_BURST)
    fast = dict(monitor_config={"sse_interval_s": 0.1})
    scenarios += [Scenario("monitor-10-idle", "monitor", 10, **idle), Scenario("baseline-10-idle", "baseline", 10, **idle),
                  Scenario("monitor-10-fast", "monitor", 10, **fast),
                  # Only the resource sampling's blocking client reused: how much of the latency it adds.
                  Scenario("monitor-10-stats-client-reused", "monitor", 10, reuse_stats_client=True),
                  Scenario("queue-only-end", "queue-only", 0)]

    # The same app with the plugin system's per-poll HTTP clients replaced by reused ones: a floor small and
    # steady enough to tell the monitor's own CPU time apart from the noise.
    reused = dict(reuse_http_clients=True)
    scenarios += [Scenario("queue-only-reused-clients", "queue-only", 0, **reused),
                  Scenario("monitor-0-reused-clients", "monitor", 0, **reused),
                  Scenario("monitor-10-reused-clients", "monitor", 10, **reused),
                  Scenario("baseline-10-reused-clients", "baseline", 10, **reused),
                  Scenario("monitor-100-reused-clients", "monitor", 100, **reused),
                  Scenario("monitor-10-fast-reused-clients", "monitor", 10, **fast, **reused),
                  Scenario("queue-only-reused-clients-end", "queue-only", 0, **reused)]
    return scenarios


def _git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "cjm_fasthtml_job_monitor"], cwd=REPO_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{commit} with uncommitted changes to the library" if dirty else commit


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"): return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def collect_meta(args: argparse.Namespace, settings: Dict[str, Any]) -> Dict[str, Any]:
    "Describe the machine, the versions and the command of this run."
    versions = {}
    for name in VERSIONED_PACKAGES:
        try: versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError: versions[name] = "not installed"
    return {
        "command": "python benchmarks/run.py" + "".join(" " + shlex.quote(a) for a in sys.argv[1:]),
        "started_at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu_count": os.cpu_count(), "cpu_model": _cpu_model(),
        "memory_gib": psutil.virtual_memory().total / 2**30, "platform": platform.platform(),
        "python": platform.python_version(), "versions": versions, "git_commit": _git_commit(),
        "load_start": list(os.getloadavg()), "settings": settings,
    }


def wait_for_load(limit: float, timeout_s: float = 1800.0) -> None:
    "Wait until the 1-minute load average is below `limit`; raise TimeoutError after `timeout_s`."
    deadline = time.monotonic() + timeout_s
    while (load := os.getloadavg()[0]) >= limit:
        if time.monotonic() > deadline:
            raise TimeoutError(f"The 1-minute load average stayed at or above {limit} for {timeout_s / 60:.0f} min "
                               f"(now {load:.2f}); run later or raise --wait-for-load.")
        logger.info("Load average %.2f is not below %.2f yet; checking again in %.0f s", load, limit, LOAD_POLL_S)
        time.sleep(LOAD_POLL_S)


def _log_scenario(result: Dict[str, Any]) -> None:
    latency = (result.get("latency") or {}).get("delivered") or {}
    logger.info("%s: app CPU %.1f %% of a core, %s kB per viewer per minute, delivered latency p95 %s ms, peak RSS %.0f MiB",
                result["name"], 100 * result["app_cpu_s_per_s"],
                "n/a" if result["bytes_per_viewer_per_min"] is None else f"{result['bytes_per_viewer_per_min'] / 1000:.1f}",
                "n/a" if not latency else f"{1000 * latency['p95']:.1f}", result["peak_rss_bytes"] / 2**20)


def run(args: argparse.Namespace) -> Dict[str, Any]:
    "Run every scenario and the in-process timings; return the results."
    viewer_counts = [int(v) for v in args.viewers.split(",") if v.strip()]
    duration = args.duration or (10.0 if args.quick else 60.0)
    warmup = args.warmup
    if warmup is None: warmup = 2.0 if args.quick else 3.0
    defaults = JobMonitorConfig()
    settings_dict = {
        "quick": args.quick, "duration_s": duration, "warmup_s": warmup, "tail_s": 1.0,
        "progress_interval_s": 0.1, "log_interval_s": 0.2, "idle_log_burst": IDLE_LOG_BURST,
        "progress_poll_interval_s": args.poll_interval, "poll_interval_s": 0.5, "viewers": viewer_counts,
        "monitor_defaults": {"sse_interval_s": defaults.sse_interval_s, "log_lines": defaults.log_lines,
                             "resources_interval_s": defaults.resources_interval_s},
    }
    meta = collect_meta(args, settings_dict)
    started = time.monotonic()
    work_dir = Path(tempfile.mkdtemp(prefix="jm-bench-"))
    settings = Settings(duration_s=duration, warmup_s=warmup, tail_s=1.0, progress_interval_s=0.1,
                        progress_poll_interval_s=args.poll_interval, poll_interval_s=0.5, work_dir=work_dir)

    scenarios = build_scenarios(viewer_counts)
    if args.only: scenarios = [s for s in scenarios if s.name in args.only.split(",")]
    for name in filter(None, args.profile.split(",")):
        match = next((s for s in build_scenarios(viewer_counts) if s.name == name), None)
        if match is None: raise SystemExit(f"--profile {name}: no scenario of that name in this run.")
        scenarios.append(Scenario(**{**asdict(match), "name": f"{name}+profile", "profile": True}))

    results: Dict[str, Any] = {"meta": meta, "scenarios": {}, "profiles": {}}
    try:
        for index, scenario in enumerate(scenarios, start=1):
            logger.info("Scenario %d of %d: %s", index, len(scenarios), scenario.name)
            result = run_scenario(scenario, settings)
            _log_scenario(result)
            meta.setdefault("server_info", result["server_info"])
            results["scenarios"][scenario.name] = result
            if scenario.profile and result["profile_path"]:
                results["profiles"][scenario.name] = report.summarize_profile(Path(result["profile_path"]))

        logger.info("Timing renders in this process")
        results["render"] = render_timings(repeat=300 if args.quick else 2000)
        sizes = [int(s) for s in args.log_records.split(",")]
        logger.info("Timing log-tail reads with %s stored records", " and ".join(f"{s:,}" for s in sizes))
        results["log_tail"] = asyncio.run(log_tail_timings(sizes, repeat=100 if args.quick else 1000,
                                                           progress_poll_interval=args.poll_interval))
    finally:
        if args.keep: logger.info("Work folder kept: %s", work_dir)
        else: shutil.rmtree(work_dir, ignore_errors=True)
    meta["load_end"] = list(os.getloadavg())
    meta["elapsed_s"] = time.monotonic() - started
    return results


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    # SystemExit unwinds through the `finally` blocks that stop the scenario's server and its worker.
    raise SystemExit(f"Stopped by signal {signum}.")


def main(argv: List[str]) -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = parse_args(argv)
    results_path = args.results or (Path(tempfile.gettempdir()) / "jm-bench-results-quick.json" if args.quick
                                    else RESULTS_PATH)
    if args.render_only:
        if not results_path.exists():
            raise SystemExit(f"{results_path} does not exist: run the benchmark first, or pass --results PATH.")
        results = json.loads(results_path.read_text())
    else:
        if args.wait_for_load is not None: wait_for_load(args.wait_for_load)
        results = run(args)
        results_path.write_text(json.dumps(results, indent=1) + "\n")
        logger.info("Results written to %s", results_path)
    if not args.no_page:
        report.write_page(results, FINDINGS_PATH, NOTEBOOK_PATH, SVG_PATH)
        logger.info("Page written to %s and chart to %s", NOTEBOOK_PATH.relative_to(REPO_ROOT),
                    SVG_PATH.relative_to(REPO_ROOT))
    verdicts = {True: "met", False: "MISSED", None: "n/a", "info": "info"}
    for row in report.evaluate_targets(results):
        logger.info("%-8s %s: %s (baseline %s)", verdicts[row["met"]], row["target"], row["figure"],
                    row["baseline"] or "n/a")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
