"""Which expression library for route transforms (issue 16, item 1): cost per record, same run.

Run: ``.venv/bin/python bench/transform_engines.py [--records 20000]`` (needs the ``bench``
extra: ``pip install -e '.[bench]'``).

The typical inbound transform of the issue, from a second odds provider's shape to the route's
canonical one: rename two fields, compute one, drop one::

    {"fixture": "m1", "home_odds": 2.5, "away_odds": 1.6, "feed_seq": 88172}
 -> {"matchId": "m1", "home": 2.5, "away": 1.6, "overround": 1.025}

Each engine compiles its expression once, then turns the record's bytes into the canonical
record's bytes (the bridge has the payload as bytes and produces bytes): ``json.loads`` and
``json.dumps`` are counted where an engine needs a Python value, not where it reads text itself.
The baseline is the same transform written as a Python function (what a hand-written transform
would cost). Prints microseconds per record for each, the ratio to the baseline, and checks
every engine gives the same canonical record.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

RECORD = b'{"fixture": "m1", "home_odds": 2.5, "away_odds": 1.6, "feed_seq": 88172}'
EXPECTED = {"matchId": "m1", "home": 2.5, "away": 1.6, "overround": 1 / 2.5 + 1 / 1.6}

JQ = "{matchId: .fixture, home: .home_odds, away: .away_odds, overround: (1 / .home_odds + 1 / .away_odds)}"
JSONATA = '{"matchId": fixture, "home": home_odds, "away": away_odds, "overround": 1 / home_odds + 1 / away_odds}'
CEL = '{"matchId": fixture, "home": home_odds, "away": away_odds, "overround": 1.0 / home_odds + 1.0 / away_odds}'


def python_baseline() -> Callable[[bytes], bytes]:
    def transform(raw: bytes) -> bytes:
        doc = json.loads(raw)
        out = {
            "matchId": doc["fixture"],
            "home": doc["home_odds"],
            "away": doc["away_odds"],
            "overround": 1 / doc["home_odds"] + 1 / doc["away_odds"],
        }
        return json.dumps(out).encode()

    return transform


def jq_engine() -> Callable[[bytes], bytes]:
    import jq

    program = jq.compile(JQ)
    return lambda raw: program.input_text(raw.decode()).text().encode()


def jsonata_engine() -> Callable[[bytes], bytes]:
    import jsonata

    expression = jsonata.Jsonata(JSONATA)
    return lambda raw: json.dumps(expression.evaluate(json.loads(raw))).encode()


def cel_engine() -> Callable[[bytes], bytes]:
    import cel  # common-expression-language: Rust (cel-interpreter) bindings

    program = cel.compile(CEL)
    return lambda raw: json.dumps(program.execute(json.loads(raw))).encode()


def celpy_engine() -> Callable[[bytes], bytes]:
    import celpy  # cel-python: pure Python

    environment = celpy.Environment()
    program = environment.program(environment.compile(CEL))

    def transform(raw: bytes) -> bytes:
        result = program.evaluate(celpy.json_to_cel(json.loads(raw)))
        return json.dumps({str(k): _plain(v) for k, v in result.items()}).encode()

    return transform


def _plain(value: object) -> object:
    if isinstance(value, float):
        return float(value)
    return str(value)


ENGINES: dict[str, Callable[[], Callable[[bytes], bytes]]] = {
    "python (baseline)": python_baseline,
    "jq (jq 1.x, C)": jq_engine,
    "CEL (common-expression-language, Rust)": cel_engine,
    "JSONata (jsonata-python, pure Python)": jsonata_engine,
    "CEL (cel-python, pure Python)": celpy_engine,
}


def per_record_us(transform: Callable[[bytes], bytes], records: int) -> float:
    for _ in range(200):
        transform(RECORD)  # warm up
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(records):
            transform(RECORD)
        best = min(best, (time.perf_counter() - started) / records * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=20_000)
    args = parser.parse_args()
    baseline = 0.0
    for name, make in ENGINES.items():
        try:
            transform = make()
        except ImportError as exc:
            print(f"{name}: not installed ({exc.name})")
            continue
        result = json.loads(transform(RECORD))
        same = result.keys() == EXPECTED.keys() and all(
            result[k] == EXPECTED[k] or abs(float(result[k]) - float(EXPECTED[k])) < 1e-9
            for k in EXPECTED
        )
        records = args.records if "pure Python" not in name else max(1, args.records // 10)
        cost = per_record_us(transform, records)
        baseline = baseline or cost
        print(
            f"{name}: {cost:.2f} us per record, {cost / baseline:.1f}x the baseline"
            + ("" if same else f"  (DIFFERENT RESULT: {result})")
        )


if __name__ == "__main__":
    main()
