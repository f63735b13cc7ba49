"""Shared fixtures and the test layout.

Tests sit in folders by what they need, and each folder's tests get its marker:
- pure/      no sockets, no processes (`-m pure`)
- loopback/  real UDP on loopback, probe subprocesses (`-m loopback`)
- servers/   real metrics servers started by the test (`-m servers`; also `influx`, `prometheus`)
- netns/     network namespaces, veth, nftables; root (`-m netns`)
Helpers that several folders use live in support/, which is put on sys.path here.
Tests marked `early("NAME")` have their slow preparation (a server's start-up, a compiler)
started in the background once collection ends (support/early.py).
"""

import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "support"))

import early  # noqa: E402
from link import Link  # noqa: E402

GROUPS = ("pure", "loopback", "servers", "netns")


def pytest_collection_modifyitems(config, items):
    for item in items:
        group = os.path.relpath(str(item.fspath), HERE).split(os.sep)[0]
        if group in GROUPS:
            item.add_marker(getattr(pytest.mark, group))


def pytest_collection_finish(session):
    for item in session.items:
        for mark in item.iter_markers("early"):
            early.begin(mark.args[0])


def pytest_sessionfinish(session):
    early.finish()


@pytest.fixture
def link():
    made = []

    def make(**kw):
        lk = Link(**kw)
        made.append(lk)
        return lk

    yield make
    for lk in made:
        lk.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI (CI=true) every check must run: a skip is a failure that names its reason."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("CI") == "true" and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        where = report.longrepr
        why = where[2] if isinstance(where, tuple) else where
        report.longrepr = f"skipped in CI, where every check must run: {why}"
