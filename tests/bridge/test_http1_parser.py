"""The sans-io HTTP/1.1 request parser (bridge/web/http1.py) on its own: bytes in, events out."""

from __future__ import annotations

from bridge.web.http1 import Data, End, Head, Refused, RequestParser


def heads(events: list[object]) -> list[str]:
    return [e.path for e in events if isinstance(e, Head)]


def test_requests_split_anywhere_between_and_within_feeds_parse_in_order() -> None:
    """The parser is dropped between requests (an idle event stream holds none) and made again
    when bytes come: a request split across feeds at any byte still parses, in order."""
    wire = (
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    for cut in range(1, len(wire)):
        parser = RequestParser()
        events = parser.feed(wire[:cut]) + parser.feed(wire[cut:])
        assert heads(events) == ["/a", "/b", "/c"], cut
        assert b"".join(e.data for e in events if isinstance(e, Data)) == b"abc", cut
        assert sum(isinstance(e, End) for e in events) == 3, cut
        assert parser._parser is None  # between requests: nothing held


def test_a_request_in_progress_keeps_its_parser() -> None:
    parser = RequestParser()
    parser.feed(b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nab")
    assert parser._parser is not None
    events = parser.feed(b"cde")
    assert [e.data for e in events if isinstance(e, Data)] == [b"cde"]
    assert parser._parser is None


def test_smuggling_is_still_refused_after_a_dropped_parser() -> None:
    parser = RequestParser()
    parser.feed(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    events = parser.feed(
        b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc"
    )
    assert [e.status for e in events if isinstance(e, Refused)] == [400]
