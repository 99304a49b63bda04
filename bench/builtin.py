"""The core's implementation of ``bench_run_case``, registered by :mod:`bench.plugins` as a built-in
plugin.

The runner (and with it torch) is imported only when a case runs, so loading the plugins for
``bench validate`` or ``bench run --dry-run`` does not pay for it. Plugins may wrap this hook
(``@hookimpl(wrapper=True)``) or replace it with their own ``bench_run_case``.
"""
from __future__ import annotations

from .hookspecs import hookimpl


@hookimpl
def bench_run_case(case, context):
    """Run one case with :class:`bench.runner.CaseRunner` and return its record."""
    from .runner import CaseRunner

    return CaseRunner(case, context).run()
