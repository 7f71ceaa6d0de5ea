"""Shared fixtures: models exported and compiled once per session; every test in a tier. Helpers
the tests share are in helpers.py (and the graphs in graphs.py, quant.py), not here."""

from __future__ import annotations

import pytest

TIERS = ("structure", "build", "rpc", "emulator", "tuning")  # pytest.ini's markers


def pytest_collection_modifyitems(config, items):
    """A test in no tier would run in no tier's command: refuse to collect it."""
    untiered = [item.nodeid for item in items if not any(item.get_closest_marker(t) for t in TIERS)]
    if untiered:
        raise pytest.UsageError(f"tests in no tier (mark them with one of {', '.join(TIERS)}): " + ", ".join(untiered))


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory):
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="session")
def exported(artifacts):
    """exported(name) -> path of the registered model's ONNX file (exported once)."""
    from mobilec.frontends import export_model

    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = export_model(name, artifacts / f"{name}.onnx")
        return cache[name].path

    return get


@pytest.fixture(scope="session")
def compiled(artifacts, exported):
    """compiled(name) -> CompileResult for the registered model on the host (compiled once)."""
    from mobilec.compiler import compile_model

    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = compile_model(exported(name), artifacts / f"{name}.so")
        return cache[name]

    return get
