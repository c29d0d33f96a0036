"""Behaviour kept: inspect and plan documents equal the golden files recorded before the refactor (tests/golden.py)."""
from __future__ import annotations

import json

import pytest

from tests.golden import GOLDEN_DIR, documents

NAMES = sorted(p.stem for p in GOLDEN_DIR.glob("*.json"))


@pytest.fixture(scope="module")
def all_models(tiny_models, smollm2):
    return {**{k: v for k, v in tiny_models.items()}, "smollm2": smollm2}


def test_golden_files_exist():
    assert len(NAMES) >= 15, NAMES


@pytest.mark.parametrize("name", NAMES)
def test_documents_match_golden(name, all_models):
    want = json.loads((GOLDEN_DIR / f"{name}.json").read_text())
    got = json.loads(json.dumps(documents(all_models[name])))
    assert got["inspect"] == want["inspect"]
    for tname, plans in want["plans"].items():
        for rname, doc in plans.items():
            assert got["plans"][tname][rname] == doc, f"{name}: plan {tname}/{rname} differs"
