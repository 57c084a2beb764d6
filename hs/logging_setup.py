"""Logging at start-up: `log_config` (a Python `logging.config` dictConfig YAML file, as Synapse's) or,
without it, one plain line per record on stderr at `log_level`.

A Synapse admin's log config works unchanged: the Synapse classes it names (the periodically flushing
buffer, the JSON formatters, the request-context filter) are replaced by hs's counterparts here, and
`%(request)s` in a format is filled (with `-`: hs keeps no per-request logging context). Per-logger
levels are dictConfig's own `loggers:` section. For JSON lines, name `hs.logging_setup.JsonFormatter`
as a formatter's `class` (or `()`); Synapse's `synapse.logging.JsonFormatter` and `TerseJsonFormatter`
mean the same. `{instance}` in a handler's `filename` is the instance's name (`main`, a worker's), so
that the instances of a cluster sharing one config write one file each.
"""

from __future__ import annotations

import json
import logging
import logging.config
import logging.handlers
import threading
from pathlib import Path
from typing import Any

import yaml

# Synapse's class names in a log config -> hs's.
SYNAPSE_CLASSES = {
    "synapse.logging.handlers.PeriodicallyFlushingMemoryHandler":
        "hs.logging_setup.PeriodicallyFlushingMemoryHandler",
    "synapse.logging.JsonFormatter": "hs.logging_setup.JsonFormatter",
    "synapse.logging.TerseJsonFormatter": "hs.logging_setup.JsonFormatter",
    "synapse.logging.terse_json.JsonFormatter": "hs.logging_setup.JsonFormatter",
    "synapse.logging.terse_json.TerseJsonFormatter": "hs.logging_setup.JsonFormatter",
    "synapse.logging.context.LoggingContextFilter": "hs.logging_setup.RequestFilter",
    "hs.logging.JsonFormatter": "hs.logging_setup.JsonFormatter",
}

# Attributes every LogRecord has: what is not one of them was passed in `extra` and goes into JSON.
_RECORD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "request",
                                                                              "instance"}


class LogConfigError(Exception):
    """A log config that cannot be read or applied; the message names the file and the problem."""


class JsonFormatter(logging.Formatter):
    """One JSON object per line (Synapse's structured-logging keys: `log`, `namespace`, `level`, `time`),
    plus `instance`, `request` when known, `exc_info` for a traceback and any `extra` fields, so that
    a log shipper reads fields rather than parsing text."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "log": record.getMessage(),
            "namespace": record.name,
            "level": record.levelname,
            "time": round(record.created, 3),
        }
        instance = getattr(record, "instance", None)
        if instance:
            out["instance"] = instance
        request = getattr(record, "request", None)
        if request and request != "-":
            out["request"] = request
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and not key.startswith("_"):
                out[key] = value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


class RequestFilter(logging.Filter):
    """Stands in for Synapse's LoggingContextFilter: makes sure `%(request)s` can be formatted.
    Its keyword arguments (Synapse's older configs pass `request: ""`) are accepted and unused."""

    def __init__(self, name: str = "", instance: str = "", **_kwargs: Any) -> None:
        super().__init__(name)
        self._instance = instance

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request"):
            record.request = "-"
        if self._instance and not hasattr(record, "instance"):
            record.instance = self._instance
        return True


class PeriodicallyFlushingMemoryHandler(logging.handlers.MemoryHandler):
    """Synapse's buffering handler: records are written to `target` when `capacity` are buffered, at
    once for `flushLevel` and above, and at least every `period` seconds, so that a quiet server's
    last lines do not wait for the next burst."""

    def __init__(self, capacity: int, flushLevel: int = logging.ERROR, target: logging.Handler | None = None,  # noqa: N803
                 flushOnClose: bool = True, period: float = 5.0) -> None:  # noqa: N803
        super().__init__(capacity, flushLevel, target, flushOnClose)
        self._period = period
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._flush_periodically, name="log-flush", daemon=True)
        self._thread.start()

    def _flush_periodically(self) -> None:
        while not self._stopped.wait(self._period):
            self.flush()

    def close(self) -> None:
        self._stopped.set()
        super().close()


def _attach_record_defaults(instance: str) -> None:
    """Every handler the config attached gets a filter giving records `request` (for Synapse's
    `%(request)s` formats) and `instance` (the worker's name, for formats and JSON). A filter rather
    than a record factory: a factory's attributes would make `extra={"request": ...}` an error."""
    defaults = RequestFilter(instance=instance)
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in logging.root.manager.loggerDict)]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            if defaults not in handler.filters:
                handler.addFilter(defaults)


def _translate(node: Any, where: str) -> Any:
    """The dictConfig with Synapse's class names replaced by hs's; another `synapse.` class is refused
    by name (it would fail to import with a less helpful message)."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            here = f"{where}.{key}" if where else str(key)
            if key in ("class", "()") and isinstance(value, str):
                value = SYNAPSE_CLASSES.get(value, value)
                if value.startswith("synapse."):
                    raise LogConfigError(f"{here}: Synapse's `{value}` has no counterpart in hs")
            out[key] = _translate(value, here)
        return out
    if isinstance(node, list):
        return [_translate(item, f"{where}.{i}") for i, item in enumerate(node)]
    return node


def read_log_config(path: Path) -> dict[str, Any]:
    """The dictConfig in `path`, translated, without applying it (what `hs check-config` runs)."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise LogConfigError(f"log_config: cannot read {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise LogConfigError(f"log_config: {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict) or "version" not in data:
        raise LogConfigError(f"log_config: {path} is not a logging dictConfig (a mapping with `version: 1`)")
    if data.get("structured"):
        raise LogConfigError(f"log_config: {path} uses Synapse's old `structured: true` format; use a "
                             "dictConfig with hs.logging_setup.JsonFormatter")
    try:
        translated: dict[str, Any] = _translate(data, "")
    except LogConfigError as e:
        raise LogConfigError(f"log_config: {path}: {e}") from None
    return translated


def _per_instance(config: dict[str, Any], instance: str) -> dict[str, Any]:
    """`{instance}` in a handler's `filename` becomes the instance's name, so that one log config serves
    every instance of a cluster, each writing its own file (Synapse gives each worker its own
    `worker_log_config` instead)."""
    for handler in (config.get("handlers") or {}).values():
        if isinstance(handler, dict) and isinstance(handler.get("filename"), str):
            handler["filename"] = handler["filename"].replace("{instance}", instance)
    return config


def setup_logging(log_config: Path | None, level: str, instance: str) -> None:
    """Apply `log_config` when given, else the plain stderr format at `level`."""
    if log_config is None:
        logging.basicConfig(level=level, format=f"%(asctime)s {instance} %(name)s %(levelname)s %(message)s")
        return
    config = _per_instance(read_log_config(log_config), instance)
    try:
        logging.config.dictConfig(config)
    except (ValueError, TypeError, AttributeError, ImportError, OSError) as e:
        raise LogConfigError(f"log_config: {log_config}: {e}") from None
    _attach_record_defaults(instance)
    logging.getLogger(__name__).info("logging configured from %s", log_config)
