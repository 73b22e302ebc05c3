"""Turn the measured figures into the results page (`nbs/guides/benchmarks.ipynb`) and its chart (an SVG).

The page is generated whole from the results JSON that `run.py` writes, plus
the hand-written analysis in `benchmarks/findings.md`; edit those, not the notebook.
"""
from __future__ import annotations

import json
from collections import Counter
from html import escape
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

# Targets of the benchmark, as (key, description).
CPU_RATIO_TARGET = 10.0  # 10 viewers: the baseline's server CPU over the monitor's, at least
CPU_100_TARGET = 0.10  # 100 viewers of one job: CPU seconds per second of job (one core = 1.0), at most
BYTES_RATIO_TARGET = 0.2  # The monitor's bytes per viewer over the baseline's, at most
LATENCY_P95_TARGET_S = 0.050  # Added latency, p95, at most
UPDATE_RENDER_TARGET_S = 0.001  # Render of one update payload, median, under
LOG_TAIL_RATIO_TARGET = 1.2  # Log-tail read with 1,000,000 records over the same read with 100, at most

FLOOR_SCENARIOS = {False: ("queue-only", "queue-only-end"),
                   True: ("queue-only-reused-clients", "queue-only-reused-clients-end")}  # by reuse_http_clients
REUSED = "-reused-clients"  # Name suffix of the scenarios with the plugin system's HTTP clients reused


# --- Profiles ---------------------------------------------------------------------------------

# Categories of a profile sample, tried in order on the frames of its stack; the first match wins.
PROFILE_CATEGORIES: List[Tuple[str, Tuple[str, ...]]] = [
    ("JobQueue progress and resource polling (cjm-plugin-system)", ("_poll_progress (cjm_plugin_system",)),
    ("Baseline polling route", ("baseline_poll (", "_render_baseline (")),
    ("Job monitor: SSE streams", ("_viewer_stream (",)),
    ("Job monitor: following the job (views, logs, resources)", ("cjm_fasthtml_job_monitor/",)),
    ("Other cjm-plugin-system work", ("cjm_plugin_system/",)),
    ("HTTP server (uvicorn, h11, starlette)", ("uvicorn/", "h11/", "starlette/", "fasthtml/core.py")),
    ("Event loop and threads", ("asyncio/", "threading.py", "concurrent/futures")),
]


def summarize_profile(path: Path, top: int = 12) -> Optional[Dict[str, Any]]:
    "Summarize py-spy collapsed stacks: share of samples per category and the functions with the most own samples."
    if not path.exists(): return None
    own: Counter = Counter()
    categories: Counter = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit(): continue
        samples = int(count)
        total += samples
        frames = stack.split(";")
        own[frames[-1]] += samples
        category = next((name for name, needles in PROFILE_CATEGORIES
                         if any(needle in frame for frame in frames for needle in needles)), "Other")
        categories[category] += samples
    if total == 0: return None
    return {"samples": total,
            "categories": [[name, n / total] for name, n in categories.most_common()],
            "own": [[frame, n / total] for frame, n in own.most_common(top)]}


# --- Figures and targets ----------------------------------------------------------------------

def _scenario(results: Dict[str, Any], name: str) -> Optional[Dict[str, Any]]:
    return results["scenarios"].get(name)


def queue_floor(results: Dict[str, Any], reused: bool = False) -> Optional[float]:
    "Return the app's CPU seconds per second with a job running and no monitor, averaged over the floor runs."
    values = [s["app_cpu_s_per_s"] for name in FLOOR_SCENARIOS[reused] if (s := _scenario(results, name))]
    return sum(values) / len(values) if values else None


def net_cpu(results: Dict[str, Any], name: str) -> Optional[float]:
    "Return a scenario's app CPU seconds per second above the queue-only floor of the same plugin-system setup."
    scenario = _scenario(results, name)
    if scenario is None or scenario.get("reuse_stats_client"): return None  # no floor was measured for that setup
    floor = queue_floor(results, bool(scenario.get("reuse_http_clients")))
    return None if floor is None else scenario["app_cpu_s_per_s"] - floor


def baseline_counterpart(results: Dict[str, Any], name: str) -> Optional[Dict[str, Any]]:
    "Return the baseline scenario with the same viewers, log and setup as a monitor scenario, or None."
    scenario = _scenario(results, name)
    if scenario is None or scenario["mode"] != "monitor": return None
    idle = "-idle" if scenario["log_interval_s"] == 0 else ""
    reused = REUSED if scenario.get("reuse_http_clients") else ""
    return _scenario(results, f"baseline-{scenario['viewers']}{idle}{reused}")


def _ratio(numerator: Optional[float], denominator: Optional[float]) -> Optional[float]:
    if numerator is None or denominator is None or denominator <= 0: return None
    return numerator / denominator


def _latency(results: Dict[str, Any], name: str, kind: str = "delivered") -> Optional[Dict[str, float]]:
    scenario = _scenario(results, name)
    return (scenario.get("latency") or {}).get(kind) if scenario else None


def evaluate_targets(results: Dict[str, Any]) -> List[Dict[str, Any]]:
    "Check each target; return rows with the figure, the baseline's figure, their ratio and whether it is met."
    rows = []
    viewer_counts = results["meta"]["settings"]["viewers"]

    # Judged with the reused HTTP clients, whose floor is steady enough to show the monitor's own cost.
    monitor10, baseline10 = net_cpu(results, "monitor-10" + REUSED), net_cpu(results, "baseline-10" + REUSED)
    stock10, stock_base10 = net_cpu(results, "monitor-10"), net_cpu(results, "baseline-10")
    ratio = _ratio(baseline10, monitor10)
    if baseline10 is None or monitor10 is None:
        met, ratio_text = None, "n/a"
    elif monitor10 <= 0:  # within the noise of the floor
        met, ratio_text = True, "monitor at the floor"
    else:
        met, ratio_text = ratio >= CPU_RATIO_TARGET, f"{ratio:.2f}× less"
    rows.append({"target": "10 viewers: at least 10 times less server CPU than the baseline (above the queue floor, "
                           "reused clients)",
                 "figure": f"{_cpu(monitor10)} (stock: {_cpu(stock10)})",
                 "baseline": f"{_cpu(baseline10)} (stock: {_cpu(stock_base10)})", "ratio": ratio_text, "met": met})

    monitor100 = net_cpu(results, "monitor-100" + REUSED)
    stock100 = net_cpu(results, "monitor-100")
    raw100 = (_scenario(results, "monitor-100") or {}).get("app_cpu_s_per_s")
    rows.append({"target": "100 viewers of one job: under 10 % of one core (above the queue floor, reused clients)",
                 "figure": f"{_cpu(monitor100)} (stock: {_cpu(stock100)}, {_cpu(raw100)} with the floor)",
                 "baseline": f"stock: {_cpu(net_cpu(results, 'baseline-100'))}",
                 "ratio": _fmt_ratio(_ratio(stock100, net_cpu(results, "baseline-100"))),
                 "met": None if monitor100 is None else monitor100 < CPU_100_TARGET})

    for suffix, label in (("", "while the job logs"), ("-idle", "with an idle log")):
        mine = (_scenario(results, f"monitor-10{suffix}") or {}).get("bytes_per_viewer_per_min")
        theirs = (_scenario(results, f"baseline-10{suffix}") or {}).get("bytes_per_viewer_per_min")
        r = _ratio(mine, theirs)
        rows.append({"target": f"Bytes per viewer, 10 viewers, {label}: at most a fifth of the baseline's",
                     "figure": _kb_min(mine), "baseline": _kb_min(theirs), "ratio": _fmt_ratio(r),
                     "met": None if r is None else r <= BYTES_RATIO_TARGET})

    p95s = {n: (_latency(results, f"monitor-{n}") or {}).get("p95") for n in viewer_counts}  # stock plugin system
    worst = max((v for v in p95s.values() if v is not None), default=None)
    base95 = max(((_latency(results, f"baseline-{n}") or {}).get("p95") or 0 for n in viewer_counts), default=None)
    rows.append({"target": "Added latency, p95, at most 50 ms (worst of " +
                           ", ".join(f"{n}" for n in viewer_counts) + " viewers)",
                 "figure": _ms(worst), "baseline": _ms(base95 or None), "ratio": _fmt_ratio(_ratio(worst, base95)),
                 "met": None if worst is None else worst <= LATENCY_P95_TARGET_S})

    render = results.get("render") or {}
    update, baseline_render = (render.get("update") or {}).get("p50"), (render.get("baseline_response") or {}).get("p50")
    rows.append({"target": "One update payload renders in under 1 ms (median)", "figure": _ms(update, 3),
                 "baseline": _ms(baseline_render, 3) + " (one poll response)",
                 "ratio": _fmt_ratio(_ratio(update, baseline_render)),
                 "met": None if update is None else update < UPDATE_RENDER_TARGET_S})

    mine, theirs = _scenario(results, "monitor-100"), _scenario(results, "baseline-100")
    if mine and theirs:
        rows.append({"target": "Peak memory of the app with 100 viewers (no target)", "figure": _mib(mine["peak_rss_bytes"]),
                     "baseline": _mib(theirs["peak_rss_bytes"]),
                     "ratio": _fmt_ratio(_ratio(mine["peak_rss_bytes"], theirs["peak_rss_bytes"])), "met": "info"})

    tail = results.get("log_tail") or {}
    sizes = sorted(tail, key=int)
    small = (tail.get(sizes[0], {}).get("tail_read_one_line") or {}).get("p50") if sizes else None
    large = (tail.get(sizes[-1], {}).get("tail_read_one_line") or {}).get("p50") if sizes else None
    r = _ratio(large, small)
    rows.append({"target": f"Log-tail update with {int(sizes[-1]):,} records at most 1.2 times the cost with "
                           f"{int(sizes[0]):,}" if sizes else "Log-tail update cost",
                 "figure": f"{_ms(large, 3)} vs {_ms(small, 3)}", "baseline": "", "ratio": _fmt_ratio(r),
                 "met": None if r is None else r <= LOG_TAIL_RATIO_TARGET})
    return rows


# --- Formatting -------------------------------------------------------------------------------

def _cpu(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def _kb_min(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value / 1000:,.1f} kB/min"


def _ms(value: Optional[float], digits: int = 1) -> str:
    return "n/a" if value is None else f"{1000 * value:.{digits}f} ms"


def _mib(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value / 2**20:.1f} MiB"


def _fmt_ratio(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _met(value: Any) -> str:
    return {True: "met", False: "**missed**", None: "not measured", "info": ""}[value]


def _table(header: List[str], rows: List[List[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# --- The chart --------------------------------------------------------------------------------

MONITOR_COLOR, BASELINE_COLOR, FLOOR_COLOR = "#2563eb", "#d97706", "#6b7280"


def _bar_panel(x0: float, title: str, unit: str, groups: List[Tuple[str, List[Optional[float]]]],
               floor: Optional[float] = None, width: float = 290, height: float = 260) -> List[str]:
    "Draw one bar panel: groups of (label, [monitor, baseline]) values in `unit`, with an optional dashed line at `floor`."
    top, bottom = 40.0, height - 40.0
    values = [v for _, pair in groups for v in pair if v is not None] + ([floor] if floor else [])
    high = max(values, default=1.0) * 1.15 or 1.0
    out = [f'<text x="{x0 + width / 2:.0f}" y="18" text-anchor="middle" font-weight="600">{escape(title)}</text>',
           f'<text x="{x0 + width / 2:.0f}" y="32" text-anchor="middle" font-size="10" fill="#555">{escape(unit)}</text>',
           f'<line x1="{x0 + 10}" y1="{bottom}" x2="{x0 + width - 10}" y2="{bottom}" stroke="#999"/>']
    slot = (width - 20) / max(1, len(groups))
    bar = min(28.0, slot / 2.6)
    for index, (label, pair) in enumerate(groups):
        centre = x0 + 10 + slot * (index + 0.5)
        for k, (value, color) in enumerate(zip(pair, (MONITOR_COLOR, BASELINE_COLOR))):
            x = centre - bar + k * bar
            if value is None: continue
            h = (bottom - top) * value / high
            out.append(f'<rect x="{x:.1f}" y="{bottom - h:.1f}" width="{bar - 2:.1f}" height="{max(h, 0.5):.1f}" '
                       f'fill="{color}"/>')
            text = f"{value:.3g}" if value < 100 else f"{value:,.0f}"
            out.append(f'<text x="{x + bar / 2 - 1:.1f}" y="{bottom - h - 3:.1f}" text-anchor="middle" '
                       f'font-size="9">{text}</text>')
        out.append(f'<text x="{centre:.1f}" y="{bottom + 14}" text-anchor="middle" font-size="10">{escape(label)}</text>')
    if floor:
        y = bottom - (bottom - top) * floor / high
        out.append(f'<line x1="{x0 + 10}" y1="{y:.1f}" x2="{x0 + width - 10}" y2="{y:.1f}" stroke="{FLOOR_COLOR}" '
                   f'stroke-dasharray="4 3"/>')
    return out


def build_svg(results: Dict[str, Any]) -> str:
    "Draw the chart: app CPU by viewers, bytes per viewer, and p95 latency, for the monitor and the baseline."
    counts = results["meta"]["settings"]["viewers"]

    def cpu(name: str) -> Optional[float]:
        value = (_scenario(results, name) or {}).get("app_cpu_s_per_s")
        return None if value is None else 100 * value

    def kb(name: str) -> Optional[float]:
        value = (_scenario(results, name) or {}).get("bytes_per_viewer_per_min")
        return None if value is None else value / 1000

    def p95(name: str) -> Optional[float]:
        value = (_latency(results, name) or {}).get("p95")
        return None if value is None else 1000 * value

    floor = queue_floor(results)
    panels = [
        _bar_panel(0, "App process CPU", "% of one core, by viewers", [(f"{n}", [cpu(f"monitor-{n}"), cpu(f"baseline-{n}")])
                                                                   for n in counts],
                   floor=None if floor is None else 100 * floor),
        _bar_panel(300, "Bytes per viewer", "kB per minute, 10 viewers",
                   [("logging", [kb("monitor-10"), kb("baseline-10")]),
                    ("idle log", [kb("monitor-10-idle"), kb("baseline-10-idle")])]),
        _bar_panel(600, "Added latency, p95", "ms, by viewers", [(f"{n}", [p95(f"monitor-{n}"), p95(f"baseline-{n}")])
                                                                for n in counts],
                   floor=1000 * LATENCY_P95_TARGET_S),
    ]
    legend = [f'<rect x="10" y="276" width="10" height="10" fill="{MONITOR_COLOR}"/>',
              '<text x="24" y="285" font-size="11">job monitor (SSE)</text>',
              f'<rect x="150" y="276" width="10" height="10" fill="{BASELINE_COLOR}"/>',
              '<text x="164" y="285" font-size="11">baseline (polling every 0.5 s)</text>',
              f'<line x1="360" y1="281" x2="384" y2="281" stroke="{FLOOR_COLOR}" stroke-dasharray="4 3"/>',
              f'<text x="390" y="285" font-size="11">app CPU with the queue alone ({100 * floor:.1f} %); '
              f'latency target ({1000 * LATENCY_P95_TARGET_S:.0f} ms)</text>' if floor is not None else ""]
    body = "\n".join(line for panel in panels for line in panel) + "\n" + "\n".join(legend)
    return ('<svg xmlns="http://www.w3.org/2000/svg" width="900" height="295" viewBox="0 0 900 295" '
            'font-family="system-ui, sans-serif" font-size="12" role="img" '
            'aria-label="Job monitor benchmark: server CPU, bytes per viewer and latency against a polling baseline">\n'
            '<rect width="900" height="295" fill="#ffffff"/>\n' + body + "\n</svg>\n")


# --- The page ---------------------------------------------------------------------------------

def _md_run(results: Dict[str, Any]) -> str:
    meta = results["meta"]
    settings = meta["settings"]
    versions = ", ".join(f"{name} {version}" for name, version in meta["versions"].items())
    load = lambda values: " / ".join(f"{v:.2f}" for v in values)
    quick = ("\n\n> **Note:** this is a quick smoke run (`--quick`): short jobs and fewer repeats, so the figures "
             "are rough. The full run is `python benchmarks/run.py`.") if settings.get("quick") else ""
    return f"""## The run

- Command: `{meta['command']}`, from the repository root.
- Started {meta['started_at']}, took {meta['elapsed_s'] / 60:.1f} min.
- Machine: {meta['cpu_count']} logical CPUs ({meta['cpu_model']}), {meta['memory_gib']:.1f} GiB of memory, {meta['platform']}.
- Load average (1 / 5 / 15 min) at the start: {load(meta['load_start'])}; at the end: {load(meta['load_end'])}.
- Versions: Python {meta['python']}; {versions}; the library at commit {meta['git_commit']}.
- Server: uvicorn, one process per scenario, with the event loop `{meta['server_info']['event_loop']}` and the
  {meta['server_info']['http_parser']} HTTP parser.
- Job: {settings['duration_s']:.0f} s, a progress report every {settings['progress_interval_s']} s and a log line every
  {settings['log_interval_s']} s (the idle-log job logs {settings['idle_log_burst']} lines at its start, then none).
- `JobQueue(progress_poll_interval={settings['progress_poll_interval_s']})`: the queue reads the worker's progress this
  often, so a report waits up to that long before the queue has it. The latency below starts when the queue has it.
- Monitor settings: `JobMonitorConfig()` defaults (`sse_interval_s={settings['monitor_defaults']['sse_interval_s']}`,
  `log_lines={settings['monitor_defaults']['log_lines']}`, `resources_interval_s={settings['monitor_defaults']['resources_interval_s']}`).
- Baseline viewers poll every {settings['poll_interval_s']} s. Figures are taken over a window that opens
  {settings['warmup_s']} s after the job started and the last viewer connected, and closes {settings['tail_s']} s before
  the job ends.{quick}"""


METHOD = """## What is measured, and how

Each scenario starts a fresh app process (`benchmarks/app.py`, served by uvicorn on 127.0.0.1), which loads the
benchmark plugin (`benchmarks/plugin.py`) in a real cjm-plugin-system worker and runs one job of it:

- **monitor-N**: the job is started through the monitor's trigger route, and N viewers that share the page's session
  read `/jobs/progress` as Server-Sent Events. This is the library as an app mounts it.
- **baseline-N**: the job is submitted to the queue directly, and N viewers poll `/baseline/poll` every 0.5 s. Each
  poll gets a fresh render of the progress tab and of the logs tab with the plugin's last `log_lines` log lines
  (`JobMonitorService.get_logs`), the way earlier job monitors worked. The route is a plain `def`, which FastHTML
  runs in a worker thread.
- **queue-only**: the job is submitted to the queue and nobody watches it. This is the app's floor: what the
  plugin system's `JobQueue` spends in the app process to run the job, with no monitor. It runs at the start and at
  the end of the run; the floor is their mean.
- **…-idle**: the same with a job that logs a burst of lines at its start and nothing after, so the log is idle
  while the figures are taken.
- **monitor-10-fast**: the monitor with `sse_interval_s=0.1`, so it reads the job's log ten times a second
  instead of twice. Progress goes out at once whatever the setting; the interval sets how often new log lines
  are read and sent.
- **monitor-10-stats-client-reused**: the stock app with only `RemotePluginProxy.get_stats` patched to reuse
  one client (see below). The queue calls it synchronously right after every fourth progress event, so this
  run shows how much of the stock latency that call adds. No floor was measured for this setup, so its CPU is
  not compared.
- **…-reused-clients**: the same scenarios with one change outside this library. The app process patches
  cjm-plugin-system's `RemotePluginProxy` so that its progress and stats requests to the worker reuse one HTTP
  client, instead of building a new one, with a new SSL context, in the event loop on every poll
  (`reuse_worker_http_clients` in `benchmarks/app.py`). The monitor's code is the same. These runs have their own
  queue-only floor.

The viewers (`benchmarks/clients.py`) run in the driver process on raw sockets. They count every byte the server
sends, including HTTP headers and chunk framing, and stamp each receipt with `time.time()`.

- **Server CPU** is the app process's user plus system time over the window, divided by the window's length
  (1.0 = one core busy). The worker is a child process and is not included; neither are the viewers. Because the
  queue's own polling shows up in every scenario, the targets are judged on the CPU **above the queue-only floor**.
  With the stock plugin system that floor is about a third of a core, and it moves by a few points from run to
  run. That is more than the monitor's own cost. So the CPU targets are judged on the reused-clients runs, whose
  floor is a few percent and steady, and the stock figures are shown beside them.
- **Bytes per viewer per minute** is what each viewer read from its socket during the window, scaled to a minute
  and averaged over the viewers.
- **Added latency** uses three clocks on one machine, all `time.time()`. The plugin writes a tick number and its
  send time into each progress message. The app records when the queue held each tick: the `timestamp` of the
  queue's `PROGRESS_CHANGED` event, which the queue builds right after it assigns `job.progress`. The viewer
  records when the message arrived. *Delivered* latency is, for each tick a viewer received, the receipt time
  minus the time the queue held it. *Freshness* is, for each tick the queue held, the time until the viewer had
  that tick or a newer one. It also counts ticks that the stream skipped because a newer one replaced them before
  the next push. The target is judged on delivered latency. *Queue pickup* is how long the queue took to hold a
  report after the plugin sent it, which is bounded by its poll interval and is not part of the monitor's latency.
- **Render times** are in-process, `time.perf_counter()` around each call (`benchmarks/micro.py`). While the
  status stays the same, the monitor sends only the changed parts of the progress tab. One update payload is
  the largest such push of the logging job: the bar, the message and the estimate as out-of-band swaps, and
  two new log lines as an out-of-band append, framed by `format_sse` and encoded. A status change sends the
  whole progress tab, timed as well. The full modal is `render_job_modal` with a resource snapshot and 30 s of
  history, serialised with `to_xml`. The monitor's streams and the baseline's responses are serialised
  without indentation.
- **Log-tail cost** runs two jobs at once, one per log size, and fills the diagnostics store with their records
  (inserted straight into its SQLite table, then checkpointed). It times `JobMonitorService.read_job_log` with a
  cursor at the tail of each job: once with nothing new, and once after one record was added, so the read returns
  that one line. The reads of the two jobs alternate, so that changes in the machine's load hit both alike.
- **Memory** is the app process's resident set size: before the job started, and its peak (`VmHWM` from
  `/proc`) by the end of the scenario."""


def _md_cpu(results: Dict[str, Any]) -> str:
    floor = queue_floor(results)
    rows = []
    for name, s in results["scenarios"].items():
        if s.get("profile"): continue
        net = net_cpu(results, name)
        per_viewer = net / s["viewers"] if net is not None and s["viewers"] else None
        counterpart = baseline_counterpart(results, name)
        ratio = _ratio(net, net_cpu(results, counterpart["name"])) if counterpart else None
        rows.append([name, s["viewers"], _cpu(s["app_cpu_s_per_s"]),
                     "" if s["mode"] == "queue-only" else _cpu(net),
                     "" if per_viewer is None else _cpu(per_viewer), "" if ratio is None else f"{ratio:.2f}",
                     _cpu(s["worker_cpu_s_per_s"]), _cpu(s["client_cpu_s_per_s"])])
    table = _table(["scenario", "viewers", "app CPU", "above the floor", "above the floor ÷ viewers",
                    "ratio to the baseline (above the floor)", "worker CPU", "viewers' CPU (driver)"], rows)
    floors = ", ".join(_cpu((_scenario(results, n) or {}).get("app_cpu_s_per_s")) for n in FLOOR_SCENARIOS[False])
    reused_floors = ", ".join(_cpu((_scenario(results, n) or {}).get("app_cpu_s_per_s")) for n in FLOOR_SCENARIOS[True])
    return (f"## Server CPU\n\nCPU time of the app process per second of job, as a percentage of one core. The queue-only "
            f"floor is {_cpu(floor)} (runs: {floors}); with reused HTTP clients it is "
            f"{_cpu(queue_floor(results, True))} (runs: {reused_floors}).\n\n{table}")


def _md_bytes(results: Dict[str, Any]) -> str:
    rows = []
    for name, s in results["scenarios"].items():
        if s.get("bytes_per_viewer_per_min") is None or s.get("profile"): continue
        counterpart = baseline_counterpart(results, name)
        ratio = _ratio(s["bytes_per_viewer_per_min"], counterpart["bytes_per_viewer_per_min"]) if counterpart else None
        low, high = s["bytes_per_viewer_per_min_range"]
        rows.append([name, s["viewers"], _kb_min(s["bytes_per_viewer_per_min"]),
                     f"{low / 1000:,.1f} to {high / 1000:,.1f}", f"{s['updates_per_viewer_per_s']:.2f}",
                     "" if ratio is None else f"{ratio:.2f}"])
    table = _table(["scenario", "viewers", "per viewer", "range over viewers (kB/min)", "updates per second",
                    "ratio to the baseline"], rows)
    return ("## Bytes on the wire\n\nBytes each viewer read per minute of job (1 kB = 1000 bytes), with HTTP headers "
            "and chunk framing. Updates per second counts the messages that carried a progress tick.\n\n" + table)


def _md_latency(results: Dict[str, Any]) -> str:
    rows = []
    for name, s in results["scenarios"].items():
        latency = s.get("latency")
        if not latency or s.get("profile"): continue
        d, f, q = latency["delivered"] or {}, latency["freshness"] or {}, latency["queue_pickup"] or {}
        counterpart = baseline_counterpart(results, name)
        ratio = _ratio(d.get("p95"), ((counterpart or {}).get("latency") or {}).get("delivered", {}).get("p95"))
        rows.append([name, s["viewers"], f"{_ms(d.get('p50'))} / {_ms(d.get('p95'))} / {_ms(d.get('max'))}",
                     "" if ratio is None else f"{ratio:.2f}",
                     f"{_ms(f.get('p50'))} / {_ms(f.get('p95'))} / {_ms(f.get('max'))}",
                     f"{_ms(q.get('p50'))} / {_ms(q.get('p95'))}", latency["ticks_in_window"],
                     f"{latency['skipped_per_viewer']:.0f}" if latency["skipped_per_viewer"] is not None else ""])
    table = _table(["scenario", "viewers", "delivered p50 / p95 / max", "p95, ratio to the baseline",
                    "freshness p50 / p95 / max",
                    "queue pickup p50 / p95", "ticks the queue held", "ticks skipped per viewer"], rows)
    return "## Update latency\n\nFrom the moment the queue held a progress value to its receipt by a viewer.\n\n" + table


def _md_render(results: Dict[str, Any]) -> str:
    render = results.get("render") or {}
    labels = {"update": "one update payload (bar, message and estimate + 2 log lines, SSE-framed)",
              "status_update": "a status change (the whole progress tab, SSE-framed)",
              "progress_parts": "bar, message and estimate as out-of-band swaps", "log_line": "one log line",
              "resources_update": "CPU and RAM rows with 30 s of history, as out-of-band swaps (sent every 2 s)",
              "resources_fragment": "the whole resources tab with 30 s of history (sent on connect)",
              "modal": "full modal", "baseline_response": "one baseline poll response (progress + 50-line logs tab)"}
    rows = [[labels.get(name, name), _ms(t.get("p50"), 3), _ms(t.get("p95"), 3), t.get("count"),
             f"{t['bytes']:,}" if "bytes" in t else ""] for name, t in render.items()]
    return "## Rendering\n\nIn-process, one call at a time.\n\n" + _table(["what", "median", "p95", "calls", "bytes"], rows)


def _md_log_tail(results: Dict[str, Any]) -> str:
    tail = results.get("log_tail") or {}
    rows = []
    for size in sorted(tail, key=int):
        t = tail[size]
        rows.append([f"{int(size):,}", _ms(t["tail_read_nothing_new"]["p50"], 3), _ms(t["tail_read_nothing_new"]["p95"], 3),
                     _ms(t["tail_read_one_line"]["p50"], 3), _ms(t["tail_read_one_line"]["p95"], 3),
                     _ms(t["baseline_get_logs"]["p50"], 3), f"{t['fill_s']:.1f} s"])
    table = _table(["records of the job", "nothing new, median", "p95", "one new line, median", "p95",
                    "baseline `get_logs(50)`, median", "time to fill"], rows)
    return ("## Log-tail cost\n\n`JobMonitorService.read_job_log` with a cursor at the tail of a running job's log. Both "
            "jobs share one store. The last column is the baseline's read of the plugin's last 50 lines, for "
            "comparison.\n\n" + table)


def _md_memory(results: Dict[str, Any]) -> str:
    rows = []
    for name, s in results["scenarios"].items():
        if s.get("profile"): continue
        counterpart = baseline_counterpart(results, name)
        ratio = _ratio(s["peak_rss_bytes"], counterpart["peak_rss_bytes"]) if counterpart else None
        rows.append([name, s["viewers"], _mib(s["idle_rss_bytes"]), _mib(s["peak_rss_bytes"]),
                     _mib(s["peak_rss_bytes"] - s["idle_rss_bytes"]), "" if ratio is None else f"{ratio:.2f}"])
    return ("## Memory\n\nResident set size of the app process.\n\n"
            + _table(["scenario", "viewers", "before the job", "peak", "added", "peak, ratio to the baseline"], rows))


def _md_profiles(results: Dict[str, Any]) -> str:
    profiles = results.get("profiles") or {}
    if not profiles: return ""
    parts = ["## Profiles\n\npy-spy samples of the app process over the window of a repeated scenario, at 200 Hz "
             "(`--nonblocking`). Each sample is put in the first category whose frames it contains, in the order "
             "listed in `benchmarks/report.py`. py-spy drops the samples it recognises as idle, but "
             "`EpollSelector.select` still shows up, so part of the \"Event loop and threads\" share may be the "
             "loop waiting for I/O rather than working."]
    for name, profile in profiles.items():
        rows = [[category, f"{share:.0%}"] for category, share in profile["categories"]]
        own = [[f"`{frame}`", f"{share:.1%}"] for frame, share in profile["own"][:8]]
        parts.append(f"### {name} ({profile['samples']:,} samples)\n\n" + _table(["category", "share"], rows)
                     + "\n\nFunctions with the most samples of their own:\n\n" + _table(["function", "share"], own))
    return "\n\n".join(parts)


def _cell(kind: str, source: str, index: int) -> Dict[str, Any]:
    lines = source.splitlines(keepends=True)
    cell = {"cell_type": kind, "id": f"bench{index:03d}", "metadata": {}, "source": lines}
    if kind == "code": cell = {"cell_type": "code", "execution_count": None, "id": f"bench{index:03d}",
                               "metadata": {}, "outputs": [], "source": lines}
    return cell


def build_notebook(results: Dict[str, Any], findings: str, chart_path: str) -> Dict[str, Any]:
    "Build the results page as a clean notebook dict."
    targets = evaluate_targets(results)
    met = sum(1 for row in targets if row["met"] is True)
    judged = sum(1 for row in targets if row["met"] != "info")
    summary_rows = [[row["target"], row["figure"], row["baseline"], row["ratio"], _met(row["met"])] for row in targets]
    summary = ("## Targets\n\n" + f"{met} of {judged} targets met in this run.\n\n"
               + _table(["target", "job monitor", "baseline", "ratio", "result"], summary_rows)
               + f"\n\n![Server CPU, bytes per viewer and p95 latency of the monitor and the baseline]({chart_path})")
    sections = [
        "# Benchmarks\n\n> What watching a job costs the server, per viewer, next to a monitor that polls: "
        "CPU, bytes on the wire, update latency, render time, log-tail cost and memory.",
        "The figures come from one run of `benchmarks/run.py`, which rewrites this page. "
        "To measure your own machine, run `python benchmarks/run.py` from the repository root with the `bench` "
        "extra installed. It takes about 22 minutes, 25 with `--profile`, and `--quick` makes a smoke run of about "
        "6 minutes. Numbers from a "
        "two-core machine that runs other work are noisy, so the load average is recorded with each run.",
        summary,
        _md_run(results),
        METHOD,
        _md_cpu(results),
        _md_bytes(results),
        _md_latency(results),
        _md_render(results),
        _md_log_tail(results),
        _md_memory(results),
        _md_profiles(results),
        findings.strip(),
        "To rebuild this page and the chart from the saved figures without measuring again:\n\n"
        "```sh\npython benchmarks/run.py --render-only\n```",
    ]
    cells = [_cell("markdown", text, i) for i, text in enumerate(s for s in sections if s)]
    return {"cells": cells,
            "metadata": {"kernelspec": {"display_name": "python3", "language": "python", "name": "python3"}},
            "nbformat": 4, "nbformat_minor": 5}


def write_page(results: Dict[str, Any], findings_path: Path, notebook_path: Path, svg_path: Path) -> None:
    "Write the results page and its chart."
    findings = findings_path.read_text() if findings_path.exists() else ""
    svg_path.parent.mkdir(parents=True, exist_ok=True)
    svg_path.write_text(build_svg(results))
    chart = Path("..") / svg_path.relative_to(notebook_path.parent.parent)
    notebook = build_notebook(results, findings, chart.as_posix())
    notebook_path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False, sort_keys=True) + "\n")
