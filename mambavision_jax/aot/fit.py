"""`--fit`: search, by compiling, the largest per-device batch that fits the target's memory, or
the smallest fsdp, or whether remat is needed. Each probe is one full compile (minutes for the
large variants), so the searches are binary and say how many compiles they took."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from mambavision_jax.aot import planner
from mambavision_jax.aot import targets as tg

FIT_WHAT = ("batch", "fsdp", "remat")
MAX_BATCH_PER_DEVICE = 65536  # a bound for the doubling phase


class _Prober:
    """plan() with a memo and a compile counter; `log(text)` reports each probe."""

    def __init__(self, req: planner.Request, devices, log: Callable[[str], None]):
        self.req, self.devices, self.log = req, devices, log
        self.compiles, self.reports = 0, {}

    def __call__(self, **changes) -> dict[str, Any]:
        key = tuple(sorted(changes.items()))
        if key not in self.reports:
            req = dataclasses.replace(self.req, **changes)
            r = planner.plan(req, compile_only_devices=self.devices)
            self.compiles += 1
            verdict = "fits" if r["fits"] else "too big"
            peak = r["memory_per_device"]["peak"] / 2**30
            self.log(
                f"probe {self.compiles}: {dict(changes)} -> {peak:.2f} GiB per device at peak, {verdict}"
            )
            self.reports[key] = r
        return self.reports[key]


def fit(req: planner.Request, what: str, log: Callable[[str], None] = print) -> dict[str, Any]:
    """{"fit": what, "value": the answer (None: nothing fits), "compiles": n, "report": the plan of
    the answer (or of the last probe)}."""
    target = tg.parse_target(req.target)
    devices = tg.compile_only_devices(target)
    n = len(devices)
    probe = _Prober(req, devices, log)
    if what == "batch":
        value, last = _largest_batch(probe, max(1, req.batch // n), n)
    elif what == "fsdp":
        divisors = [d for d in range(1, n + 1) if n % d == 0]
        value, last = _first_fitting(probe, "fsdp", divisors)
    elif what == "remat":
        value, last = _first_fitting(probe, "remat", [False, True])
    else:
        raise ValueError(f"--fit {what!r}: valid: {', '.join(FIT_WHAT)}")
    return {"fit": what, "value": value, "compiles": probe.compiles, "report": last}


def _largest_batch(probe: _Prober, start: int, n: int):
    """Double (or halve) the per-device batch from `start` until the fit flips, then bisect."""
    fits = lambda b: probe(batch=b * n)["fits"]
    lo, hi = 0, None  # lo fits (0: none yet), hi does not
    b = start
    if fits(b):
        lo = b
        while lo * 2 <= MAX_BATCH_PER_DEVICE:
            if not fits(lo * 2):
                hi = lo * 2
                break
            lo *= 2
        else:
            return lo, probe(batch=lo * n)
    else:
        hi = b
        while hi > 1:
            b = hi // 2
            if fits(b):
                lo = b
                break
            hi = b
        if lo == 0:
            return None, probe(batch=n)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo, probe(batch=lo * n)


def _first_fitting(probe: _Prober, field: str, candidates: list):
    """The first of `candidates` (ordered from cheapest to most memory-saving; fitting is monotone
    along them) that fits, by bisection."""
    lo, hi = 0, len(candidates) - 1
    if not probe(**{field: candidates[hi]})["fits"]:
        return None, probe(**{field: candidates[hi]})
    while lo < hi:
        mid = (lo + hi) // 2
        if probe(**{field: candidates[mid]})["fits"]:
            hi = mid
        else:
            lo = mid + 1
    return candidates[lo], probe(**{field: candidates[lo]})
