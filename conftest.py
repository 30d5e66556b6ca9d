"""Collection of the doctests in ``lplr_index/``: modules of an optional extra that is missing or
broken are not collected, and the reason is shown in pytest's header, so the rest of the suite
runs (``--doctest-modules`` imports every module; one failing import used to stop the whole run).
Their tests skip with the same reason (``tests/conftest.py``, ``require_extra``).
"""

from __future__ import annotations

import importlib

#: library module -> the third-party modules its extra provides
_EXTRA_MODULES = {
    "lplr_index/distributed.py": ("dask", "dask.array", "distributed"),
    "lplr_index/langchain.py": ("langchain_core.vectorstores",),
    "lplr_index/parquet.py": ("pyarrow", "pyarrow.dataset"),
}


def _import_problem(modules) -> str | None:
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # a broken install raises more than ImportError
            return f"import {name} failed: {type(exc).__name__}: {exc}"
    return None


collect_ignore = []
#: the frozen files' writers (run once, by hand) are data, not tests: --doctest-modules would import them
collect_ignore_glob = ["tests/data/*"]
_REASONS = []
for _path, _modules in _EXTRA_MODULES.items():
    _problem = _import_problem(_modules)
    if _problem is not None:
        collect_ignore.append(_path)
        _REASONS.append(f"{_path} not collected ({_problem})")


def pytest_report_header(config):
    return _REASONS
