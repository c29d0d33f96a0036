"""Which models a router can hold at once (pure): each model's planned footprint per device against what each
device can give (its capacity at plan time less the plan's margin), never the sum of more than fits.

llama-server's router bounds residency by a count (--models-max, default 4: common/common.h models_max; at the
limit it unloads the least recently used idle model, server-models.cpp unload_lru). gpcrun turns memory into that
count: the largest N such that ANY N of the models fit together, i.e. the N largest do. When models differ in
size that count is too strict for the small ones: the count then follows the smaller models (the N smallest
fit) and gpcrun's admission (launch/router_admit.py, to_unload below) unloads, before a load that would not
fit beside what is resident, the least recently loaded models until it does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

LLAMA_MODELS_MAX_DEFAULT = 4  # common/common.h: int32_t models_max = 4


@dataclass(frozen=True)
class Footprint:
    name: str
    bytes_by_device: Mapping[str, int]  # planned total per device ("CPU", "CUDA0", ...)

    def on(self, device: str) -> int:
        return int(self.bytes_by_device.get(device, 0))


@dataclass(frozen=True)
class Admission:
    models_max: int  # the largest N whose N largest models fit together (>= 1 when any model fits alone)
    budget_bytes: Mapping[str, int]  # per device: capacity less margin
    all_fit: bool  # every model resident at once fits
    reason: str
    most: int = 0  # the largest N whose N smallest models fit together: above models_max, memory decides


def footprint_of(name: str, memory: Sequence[dict]) -> Footprint:
    """From plan.json's chosen memory rows ({device, total_bytes, ...})."""
    return Footprint(name, {m["device"]: int(m.get("total_bytes") or 0) for m in memory})


def budgets(memory_rows: Sequence[Sequence[dict]]) -> dict[str, int]:
    """Per device, the smallest (capacity - margin) any plan saw: the room a set of resident models shares."""
    out: dict[str, int] = {}
    for rows in memory_rows:
        for m in rows:
            cap = m.get("capacity_bytes")
            if cap is None:
                continue
            room = int(cap) - int(m.get("margin_bytes") or 0)
            out[m["device"]] = min(out.get(m["device"], room), room)
    return out


def _fits(group: Sequence[Footprint], budget: Mapping[str, int]) -> bool:
    return all(sum(f.on(dev) for f in group) <= room for dev, room in budget.items())


def _count(footprints: Sequence[Footprint], budget: Mapping[str, int], largest: bool) -> int:
    """The largest N whose N largest (or smallest) models, taken together on each device, fit on it."""
    best = 0
    for n in range(1, len(footprints) + 1):
        if not all(sum(sorted((f.on(dev) for f in footprints), reverse=largest)[:n]) <= room
                   for dev, room in budget.items()):
            break
        best = n
    return best


def admit(footprints: Sequence[Footprint], budget: Mapping[str, int]) -> Admission:
    """The count the router may hold: for each N, the N largest on each device taken together must fit on it."""
    n_models = len(footprints)
    best = _count(footprints, budget, largest=True)
    all_fit = _fits(footprints, budget)
    if n_models == 0:
        return Admission(0, dict(budget), True, "no models")
    if all_fit:
        reason = f"all {n_models} models fit in memory together"
    elif best == 0:
        reason = "not even the largest model fits alone"
    else:
        tight = min(budget, key=lambda d: budget[d] - sum(sorted((f.on(d) for f in footprints), reverse=True)[:best]))
        some = "only one model at a time fits" if best == 1 else f"any {best} of the {n_models} models fit together"
        reason = (f"{some}, the {best + 1} largest together do not"
                  f" ({tight}: {budget[tight] / 2**30:.2f} GiB after the margin)")
    return Admission(best, dict(budget), all_fit, reason, _count(footprints, budget, largest=False))


def to_unload(loading: str, resident: Sequence[str], footprints: Mapping[str, Footprint],
              budget: Mapping[str, int]) -> list[str]:
    """Which resident models (oldest first in `resident`) to unload so that `loading` fits beside the rest: none
    when it fits; the oldest first until it does (a model without a footprint counts as nothing)."""
    group = [footprints[n] for n in (loading, *resident) if n in footprints]
    out: list[str] = []
    for name in resident:
        if _fits(group, budget):
            break
        if name in footprints:
            group.remove(footprints[name])
            out.append(name)
    return out


def models_max_change(adm: Admission, user_value: int | None, n_models: int) -> tuple[int | None, str | None]:
    """(the --models-max gpcrun writes or None, a warning or None). The user's value is never overridden: a value
    that lets more models in than are sure to fit is said as a warning (gpcrun's admission unloads before a load
    that would not fit). Without one: the count of models that fit together (of the smaller ones, when sizes
    differ: memory then decides each load), written only when below llama-server's default (4)."""
    if user_value is not None:
        limit = user_value if user_value > 0 else n_models  # 0 = unlimited
        if limit > adm.models_max and not adm.all_fit:
            return None, (f"--models-max {user_value} lets {min(limit, n_models)} models load together but only "
                          f"{adm.models_max} {'is' if adm.models_max == 1 else 'are'} sure to fit ({adm.reason});"
                          " gpcrun keeps your value and unloads the least recently loaded models before a load"
                          " that would not fit")
        return None, None
    default = min(LLAMA_MODELS_MAX_DEFAULT, n_models)
    if adm.all_fit or adm.models_max >= default:
        return None, None
    # models of different sizes: up to `most` of the smaller ones fit together, so the count follows them and
    # gpcrun's admission unloads before a load that would not fit (launch/router_admit.py)
    target = min(max(adm.most, adm.models_max), default)
    return (None if target >= default else max(1, target)), None
