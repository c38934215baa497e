"""Logging: structlog, pretty on a terminal, one JSON object per line otherwise."""

from __future__ import annotations

import logging
import sys

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _bytes_as_text(
    _logger: object, _name: str, event: structlog.types.EventDict
) -> structlog.types.EventDict:
    """Kafka keys and values are bytes: log them as the text they are (``test-match-9``), not as
    Python's ``b'test-match-9'``; bytes that are not UTF-8 keep a visible replacement character."""
    for name, value in event.items():
        if isinstance(value, bytes | bytearray | memoryview):
            event[name] = bytes(value).decode("utf-8", "replace")
    return event


def configure(log_format: str = "auto", level: str = "info") -> None:
    """Set up structlog (and route stdlib logging, e.g. aiokafka's, through it)."""
    pretty = log_format == "pretty" or (log_format == "auto" and sys.stderr.isatty())
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _bytes_as_text,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer(colors=True)
        if pretty
        else structlog.processors.JSONRenderer(sort_keys=False)
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer]
        if not pretty
        else [*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        # One write per line (message and newline together): processes sharing a log file or
        # pipe (--workers) must not interleave halves of lines, as print()'s two writes can.
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Third-party libraries log through stdlib logging; keep them quiet unless they matter.
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("aiokafka", "kafka", "hypercorn.access", "amqtt", "transitions"):
        logging.getLogger(noisy).setLevel(logging.ERROR if level != "debug" else logging.INFO)
