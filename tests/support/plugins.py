"""Small plugins for tests that need a real cjm-plugin-system worker.

Each plugin runs a list of steps passed to `execute`, so one worker serves many
tests. A step is a JSON list whose first item names the action:

- `["progress", fraction, message]`: call `report_progress`.
- `["print", text]`: write a line to stdout (flushed).
- `["log", level, text]`: emit a `logging` record at `level` ("INFO", "ERROR", ...).
- `["sleep", seconds]`: sleep without checking for a cancel.
- `["spin", seconds]`: keep one core busy.
- `["child", seconds]`: start a child process that sleeps `seconds`; it is killed when the job ends.
- `["fail", message]`: raise `RuntimeError(message)`.
- `["wait_cancel", seconds, on_cancel]`: wait up to `seconds` for a cancel request. `on_cancel` is
  "raise" (unwind through `check_cancel()`), "return" (return early on the request)
  or "ignore" (sleep through it, so the queue must kill the worker).
- `["report", value, message]`: call `report_progress` with `value` as given, without
  converting it; the strings "nan", "inf" and "-inf" become those floats, because JSON
  arguments cannot carry them.
- `["write_bytes", text]`: write `text` encoded as Latin-1 to the raw stdout, so any byte
  sequence (invalid UTF-8 included) can be written.
- `["print_many", prefix, count]`: print `count` lines "<prefix> <n>" as fast as possible.
- `["log_many", level, prefix, count]`: emit `count` logging records "<prefix> <n>".
- `["print_long", char, length]`: print one line of `length` copies of `char`.
- `["escaped", action, *args]`: run `[action, *args]` with each string argument decoded
  from Python escapes ("\\ud800" becomes a lone surrogate), to pass text that JSON
  arguments cannot carry through the host.

`execute` returns `{"steps": n}`, or `{"steps": n, "stopped": True}` when a
"return" step saw a cancel request.
"""
from __future__ import annotations

import codecs
import logging
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from cjm_plugin_system.core.capability import ToolCapability

logger = logging.getLogger("jm_test_plugin")

CANCEL_POLL_S = 0.02  # Seconds between two cancel checks in a "wait_cancel" step
_SPECIAL_FLOATS = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}


class StepsPlugin(ToolCapability):
    "Run a scripted list of steps: progress, output, logging, sleeps, failures and cancel handling."

    plugin_name = "jm-test-steps"

    @property
    def name(self) -> str: return self.plugin_name

    @property
    def version(self) -> str: return "0.0.1"

    def initialize(self, config: Optional[Dict[str, Any]] = None) -> None: pass

    def get_config_schema(self) -> Dict[str, Any]: return {"type": "object", "properties": {}}

    def get_current_config(self) -> Dict[str, Any]: return {}

    def execute(self, steps: Sequence[Sequence[Any]] = ()) -> Dict[str, Any]:
        "Run `steps` in order and return how many ran."
        children: List[subprocess.Popen] = []
        try:
            for index, step in enumerate(steps):
                if self._run_step(step, children) == "stopped":
                    return {"steps": index + 1, "stopped": True}
            return {"steps": len(steps)}
        finally:
            for child in children:
                child.kill()
                child.wait()

    def _run_step(self, step: Sequence[Any], children: List[subprocess.Popen]) -> Optional[str]:
        action, *args = step
        if action == "progress":
            self.report_progress(float(args[0]), str(args[1]))
        elif action == "print":
            print(args[0], flush=True)
        elif action == "log":
            logger.log(logging.getLevelName(args[0]), args[1])
        elif action == "sleep":
            time.sleep(float(args[0]))
        elif action == "spin":
            end = time.monotonic() + float(args[0])
            while time.monotonic() < end: pass
        elif action == "child":
            code = f"import time; time.sleep({float(args[0])})"
            children.append(subprocess.Popen([sys.executable, "-c", code]))
        elif action == "fail":
            raise RuntimeError(args[0])
        elif action == "wait_cancel":
            return self._wait_cancel(float(args[0]), args[1])
        elif action == "report":
            value = _SPECIAL_FLOATS.get(args[0], args[0]) if isinstance(args[0], str) else args[0]
            self.report_progress(value, args[1])
        elif action == "write_bytes":
            sys.stdout.buffer.write(str(args[0]).encode("latin-1"))
            sys.stdout.buffer.flush()
        elif action == "print_many":
            for number in range(int(args[1])):
                print(f"{args[0]} {number}")
            sys.stdout.flush()
        elif action == "log_many":
            level = logging.getLevelName(args[0])
            for number in range(int(args[2])):
                logger.log(level, "%s %d", args[1], number)
        elif action == "print_long":
            print(str(args[0]) * int(args[1]), flush=True)
        elif action == "escaped":
            decoded = [codecs.decode(arg, "unicode_escape") if isinstance(arg, str) else arg for arg in args[1:]]
            return self._run_step([args[0], *decoded], children)
        else:
            raise ValueError(f"Unknown step {action!r}: expected one of the actions in the module docstring.")
        return None

    def _wait_cancel(self, seconds: float, on_cancel: str) -> Optional[str]:
        end = time.monotonic() + seconds
        if on_cancel == "ignore":
            time.sleep(seconds)
            return None
        while time.monotonic() < end:
            if on_cancel == "raise":
                self.check_cancel()
            elif self._cancel_requested:
                return "stopped"
            time.sleep(CANCEL_POLL_S)
        return None


class KillableStepsPlugin(StepsPlugin):
    "The same steps under another name, for tests that get their worker killed and respawned."

    plugin_name = "jm-test-steps-killable"
