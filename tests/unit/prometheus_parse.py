#!/usr/bin/python3
"""Checks Prometheus text exposition (format 0.0.4) read on stdin with the reference Python client.

Usage: outbox-worker's /metrics output | tests/unit/prometheus_parse.py [--json]

Exits 0 when prometheus_client.parser.text_string_to_metric_families accepts the whole text and
every histogram is consistent (buckets cumulative, ending with le="+Inf" equal to _count, and a
_sum); exits 1 with the reason on stderr otherwise, and 2 when prometheus_client is missing.
With --json, prints the parsed families on stdout as
{"<family>": {"type": ..., "help": ..., "samples": [{"name", "labels", "value"}]}}, with NaN and
infinities written as the strings "NaN", "+Inf" and "-Inf". The reference parser names a counter
family without its "_total" suffix; its samples keep the full name.

The shebang names Debian's interpreter on purpose: python3-prometheus-client installs the module
for /usr/bin/python3 only, and a python3 found first on PATH (pyenv, a venv) may lack it.
"""

import json
import math
import sys

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError as error:  # pragma: no cover - depends on the machine
    print(f"prometheus_client is not installed: {error}", file=sys.stderr)
    sys.exit(2)


def plain(value):
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return value


def parse_le(text):
    return math.inf if text == "+Inf" else float(text)


def check_histogram(family):
    series = {}
    for sample in family.samples:
        labels = {k: v for k, v in sample.labels.items() if k != "le"}
        key = tuple(sorted(labels.items()))
        entry = series.setdefault(key, {"buckets": [], "sum": None, "count": None})
        if sample.name == family.name + "_bucket":
            if "le" not in sample.labels:
                raise ValueError(f"{sample.name} without le")
            entry["buckets"].append((parse_le(sample.labels["le"]), sample.value))
        elif sample.name == family.name + "_sum":
            entry["sum"] = sample.value
        elif sample.name == family.name + "_count":
            entry["count"] = sample.value
        else:
            raise ValueError(f"unexpected sample {sample.name} in histogram {family.name}")
    for key, entry in series.items():
        where = f"{family.name}{dict(key)}"
        buckets = entry["buckets"]
        if not buckets or buckets[-1][0] != math.inf:
            raise ValueError(f"{where}: buckets do not end with +Inf")
        for (le_a, count_a), (le_b, count_b) in zip(buckets, buckets[1:]):
            if not le_a < le_b:
                raise ValueError(f"{where}: bucket bounds not increasing")
            if count_b < count_a:
                raise ValueError(f"{where}: bucket counts not cumulative")
        if entry["count"] is None or entry["sum"] is None:
            raise ValueError(f"{where}: missing _count or _sum")
        if buckets[-1][1] != entry["count"]:
            raise ValueError(f"{where}: +Inf bucket {buckets[-1][1]} != _count {entry['count']}")


def main():
    text = sys.stdin.read()
    try:
        families = list(text_string_to_metric_families(text))
        for family in families:
            if family.type == "histogram":
                check_histogram(family)
    except Exception as error:  # the parser raises ValueError, but any failure means rejection
        print(f"invalid exposition: {error}", file=sys.stderr)
        return 1
    if "--json" in sys.argv[1:]:
        out = {}
        for family in families:
            out[family.name] = {
                "type": family.type,
                "help": family.documentation,
                "samples": [
                    {"name": s.name, "labels": s.labels, "value": plain(s.value)}
                    for s in family.samples
                ],
            }
        json.dump(out, sys.stdout, sort_keys=True)
        sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
