"""A plugin that runs a steady job for the benchmarks: progress at a fixed rate and, optionally, a log line at a fixed rate.

Each progress report carries its own number and the worker's send time in the
status message, as `tick 12 sent 1718000000.123456`, so that a viewer that
receives the message can tell which report it is.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Dict, Optional

from cjm_plugin_system.core.capability import ToolCapability

logger = logging.getLogger("jm_bench_steady")

PLUGIN_NAME = "jm-bench-steady"
TICK_FORMAT = "tick {tick} sent {sent:.6f}"  # Status message of each progress report; time.time() of the worker


class SteadyJobPlugin(ToolCapability):
    "Report progress every `progress_interval_s` and log a line every `log_interval_s` for `duration_s` seconds."

    plugin_name = PLUGIN_NAME

    @property
    def name(self) -> str: return self.plugin_name

    @property
    def version(self) -> str: return "0.0.1"

    def initialize(self, config: Optional[Dict[str, Any]] = None) -> None: pass

    def get_config_schema(self) -> Dict[str, Any]: return {"type": "object", "properties": {}}

    def get_current_config(self) -> Dict[str, Any]: return {}

    def execute(
        self,
        duration_s: float = 60.0,  # Seconds the job runs
        progress_interval_s: float = 0.1,  # Seconds between two progress reports
        log_interval_s: float = 0.2,  # Seconds between two log lines; 0 logs no more lines after the burst
        log_burst: int = 0,  # Lines logged at once when the job starts, so that the log has a tail when it goes idle
    ) -> Dict[str, Any]:  # Counts of the reports and lines made
        "Run a steady job and return how many progress reports and log lines it made."
        start = time.monotonic()
        end = start + float(duration_s)
        for number in range(1, log_burst + 1):
            logger.info("line %d: processed item %d of the batch (burst at the start)", number, number)
        next_tick, next_line = start, start if log_interval_s > 0 else float("inf")
        ticks, lines = 0, log_burst
        while True:
            now = time.monotonic()
            if now >= end: break
            self.check_cancel()
            if now >= next_tick:
                ticks += 1
                fraction = min((now - start) / duration_s, 1.0)
                self.report_progress(fraction, TICK_FORMAT.format(tick=ticks, sent=time.time()))
                next_tick += progress_interval_s
            if now >= next_line:
                lines += 1
                logger.info("line %d: processed item %d of the batch (%.1f s into the job)", lines, lines, now - start)
                next_line += log_interval_s
            time.sleep(max(0.0, min(next_tick, next_line, end) - time.monotonic()))
        return {"ticks": ticks, "lines": lines}


class SecondSteadyJobPlugin(SteadyJobPlugin):
    "The same plugin under another name, so that a second job can run at the same time in its own worker."

    plugin_name = PLUGIN_NAME + "-2"
