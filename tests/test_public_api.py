"""The public API of the 0.0.12 design: every name imports from its module and takes the same parameters.

The table below is the design's API, written out here: for each public function, the parameters in order with
their defaults, and for each dataclass, the fields in order with their defaults. An implementation may add
keyword-only parameters after them (the design's callers never pass those), but it may not rename, reorder or
drop a parameter, or change a default. `NO_DEFAULT` marks a required parameter.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
from typing import Any, Dict, List, Tuple

import pytest

NO_DEFAULT = object()
Parameters = List[Tuple[str, Any]]

JOB_VIEW_ARGS: Parameters = [("status", "pending"), ("progress_value", 0.0), ("status_message", ""),
                             ("started_at", None), ("completed_at", None)]

# (module, name) -> parameters in order, with defaults
DESIGN_FUNCTIONS: Dict[Tuple[str, str], Parameters] = {
    ("routes.init", "init_job_monitor_routes"): [
        ("monitor_service", NO_DEFAULT), ("plugin_name", NO_DEFAULT), ("state_store", NO_DEFAULT),
        ("workflow_id", NO_DEFAULT), ("step_id", NO_DEFAULT), ("state_key", NO_DEFAULT), ("prefix", NO_DEFAULT),
        ("overlay_target_id", NO_DEFAULT), ("kb_system_id", None), ("on_complete", None), ("on_cancel", None),
        ("on_fail", None), ("job_args_builder", None), ("config", None), ("id_prefix", "jm"), ("icon_fn", None),
        ("restore_trigger_on_complete", True)],
    ("routes.init", "check_inflight_job"): [
        ("monitor_service", NO_DEFAULT), ("plugin_name", NO_DEFAULT), ("state_store", NO_DEFAULT),
        ("workflow_id", NO_DEFAULT), ("session_id", NO_DEFAULT), ("step_id", NO_DEFAULT), ("state_key", NO_DEFAULT),
        ("config", NO_DEFAULT), ("ids", NO_DEFAULT), ("urls", NO_DEFAULT), ("icon_fn", None)],
    ("components.tabs.logs_tab", "render_logs_tab"): [("ids", NO_DEFAULT), ("logs", "")],
    ("components.tabs.progress_tab", "render_progress_tab"): [("ids", NO_DEFAULT), *JOB_VIEW_ARGS],
    ("components.tabs.resources_tab", "render_resources_tab"): [("resources", None)],
    ("components.modal", "render_sse_connection"): [
        ("ids", NO_DEFAULT), ("urls", NO_DEFAULT), ("job_id", NO_DEFAULT), ("is_active", True)],
    ("components.modal", "render_tab_content_oob"): [
        ("ids", NO_DEFAULT), *JOB_VIEW_ARGS, ("logs", ""), ("resources", None)],
    ("components.modal", "render_footer_oob"): [("ids", NO_DEFAULT), ("urls", NO_DEFAULT), ("is_active", True)],
    ("components.modal", "render_sse_response"): [
        ("ids", NO_DEFAULT), ("urls", NO_DEFAULT), *JOB_VIEW_ARGS, ("logs", None), ("resources", None),
        ("include_footer", False), ("extra_oob", None)],
    ("components.modal", "get_sse_headers"): [],
    ("components.modal", "render_job_modal"): [
        ("config", NO_DEFAULT), ("ids", NO_DEFAULT), ("urls", NO_DEFAULT), ("job_id", ""), *JOB_VIEW_ARGS,
        ("logs", ""), ("resources", None), ("open_on_render", False)],
    ("components.overlay", "render_job_overlay"): [("ids", NO_DEFAULT), ("config", NO_DEFAULT)],
    ("components.overlay", "render_job_overlay_placeholder"): [("ids", NO_DEFAULT)],
    ("components.trigger", "render_job_trigger"): [
        ("config", NO_DEFAULT), ("ids", NO_DEFAULT), ("urls", NO_DEFAULT), ("disabled", False), ("icon_fn", None)],
    ("components.trigger", "render_job_progress_button"): [("config", NO_DEFAULT), ("ids", NO_DEFAULT)],
}

# JobMonitorService methods, without `self`
DESIGN_METHODS: Dict[str, Parameters] = {
    "__init__": [("queue", NO_DEFAULT), ("manager", NO_DEFAULT), ("sysmon_plugin_name", None)],
    "submit_job": [("plugin_name", NO_DEFAULT), ("*args", NO_DEFAULT), ("priority", 0), ("**kwargs", NO_DEFAULT)],
    "get_job": [("job_id", NO_DEFAULT)],
    "cancel_job": [("job_id", NO_DEFAULT)],
    "get_logs": [("plugin_name", NO_DEFAULT), ("lines", 50), ("current_session_only", True)],
    "get_resource_snapshot": [("plugin_name", NO_DEFAULT)],
}
ASYNC_METHODS = {"submit_job", "cancel_job"}

# (module, dataclass) -> fields in order, with defaults
DESIGN_DATACLASSES: Dict[Tuple[str, str], Parameters] = {
    ("html_ids", "JobMonitorHtmlIds"): [("prefix", NO_DEFAULT)],
    ("models", "JobMonitorUrls"): [("trigger", NO_DEFAULT), ("progress", NO_DEFAULT), ("cancel", NO_DEFAULT)],
    ("models", "JobMonitorConfig"): [
        ("modal_title", "Job Execution"), ("trigger_label", "Run"), ("trigger_icon", None),
        ("progress_label", "View Progress"), ("sse_interval_s", 0.5), ("log_lines", 50), ("overlay_z_index", 10)],
}
# Fields of ResourceSnapshot in the design's order. The design gives them no defaults.
RESOURCE_SNAPSHOT_FIELDS = ["worker_pid", "cpu_percent", "memory_rss_mb", "gpu_memory_mb", "gpu_index", "gpu_name",
                            "gpu_total_mb", "gpu_load_percent"]

HTML_ID_PROPERTIES = ["modal", "modal_content", "sse_connection", "overlay", "trigger_slot", "progress_bar", "elapsed",
                      "tabs", "tab_progress", "tab_logs", "tab_resources", "modal_footer", "log_container", "kb_script"]


def load(module: str, name: str) -> Any:
    return getattr(importlib.import_module(f"cjm_fasthtml_job_monitor.{module}"), name)


def signature_parameters(function: Any, skip_self: bool = False) -> Parameters:
    "Return the parameters of `function` in order, with NO_DEFAULT for a required one and * or ** on varargs."
    parameters = list(inspect.signature(function).parameters.values())
    if skip_self: parameters = parameters[1:]
    out = []
    for parameter in parameters:
        name = {inspect.Parameter.VAR_POSITIONAL: "*", inspect.Parameter.VAR_KEYWORD: "**"}.get(parameter.kind, "")
        default = NO_DEFAULT if parameter.default is inspect.Parameter.empty else parameter.default
        out.append((name + parameter.name, default))
    return out


def assert_design_prefix(where: str, actual: Parameters, design: Parameters) -> None:
    "Check that `actual` starts with the design's parameters and that any extra ones are keyword-only or varargs."
    names = [name for name, _ in actual]
    design_names = [name for name, _ in design]
    assert names[: len(design)] == design_names, f"{where}: parameters {names}, the design has {design_names}"
    for (name, default), (_, expected) in zip(actual, design):
        assert default is expected or default == expected, f"{where}: {name} defaults to {default!r}, not {expected!r}"


def keyword_only_extras(function: Any, count: int, skip_self: bool = False) -> List[str]:
    "Return the names of parameters after the design's that a positional caller could fill by accident."
    parameters = list(inspect.signature(function).parameters.values())[(1 if skip_self else 0) + count:]
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [parameter.name for parameter in parameters if parameter.kind in positional]


@pytest.mark.parametrize("module, name", list(DESIGN_FUNCTIONS), ids=[name for _, name in DESIGN_FUNCTIONS])
def test_function_signature(module: str, name: str):
    function = load(module, name)
    design = DESIGN_FUNCTIONS[(module, name)]
    assert_design_prefix(f"{module}.{name}", signature_parameters(function), design)
    assert keyword_only_extras(function, len(design)) == [], f"{module}.{name}: extra parameters must be keyword-only"


@pytest.mark.parametrize("method", list(DESIGN_METHODS))
def test_service_method_signature(method: str):
    service_class = load("services.monitor", "JobMonitorService")
    function = getattr(service_class, method)
    design = DESIGN_METHODS[method]
    assert_design_prefix(f"JobMonitorService.{method}", signature_parameters(function, skip_self=True), design)
    assert inspect.iscoroutinefunction(function) == (method in ASYNC_METHODS), f"{method}: sync or async changed"


@pytest.mark.parametrize("module, name", list(DESIGN_DATACLASSES), ids=[name for _, name in DESIGN_DATACLASSES])
def test_dataclass_fields(module: str, name: str):
    cls = load(module, name)
    assert dataclasses.is_dataclass(cls), f"{name} is no longer a dataclass"
    fields = [(field.name, NO_DEFAULT if field.default is dataclasses.MISSING else field.default)
              for field in dataclasses.fields(cls) if field.init]
    assert_design_prefix(name, fields, DESIGN_DATACLASSES[(module, name)])


def test_resource_snapshot_fields():
    cls = load("models", "ResourceSnapshot")
    names = [field.name for field in dataclasses.fields(cls)]
    assert names[: len(RESOURCE_SNAPSHOT_FIELDS)] == RESOURCE_SNAPSHOT_FIELDS


def test_html_ids_properties():
    ids = load("html_ids", "JobMonitorHtmlIds")("demo")
    values = {name: getattr(ids, name) for name in HTML_ID_PROPERTIES}
    assert all(isinstance(value, str) and value.startswith("demo") for value in values.values()), values
    assert len(set(values.values())) == len(values), f"two properties share an id: {values}"
