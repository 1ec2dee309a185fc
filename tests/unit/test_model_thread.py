"""Every call of ``on_model_thread`` runs on one long-lived thread of the process (issue 5).

Ray Tune runs each trial on a new thread; on an H100 the first fake-quant evaluation a thread makes
cost 0.7-0.9 s more than later ones inside a trial actor, so the resident model is built and
evaluated on one thread (docs/benchmarks.md).
"""

from __future__ import annotations

import threading

import pytest

from orchestrator.model.device import on_model_thread

pytestmark = pytest.mark.unit


def _ident() -> int:
    return threading.get_ident()


def test_calls_from_different_threads_run_on_the_same_model_thread() -> None:
    seen: list[int] = []

    def caller() -> None:
        seen.append(on_model_thread(_ident))

    threads = [threading.Thread(target=caller) for _ in range(3)]
    for t in threads:
        t.start()
        t.join()
    seen.append(on_model_thread(_ident))
    assert len(set(seen)) == 1
    assert seen[0] not in {t.ident for t in threads} | {threading.get_ident()}


def test_results_and_errors_come_back_to_the_caller() -> None:
    assert on_model_thread(lambda a, b=0: a + b, 2, b=3) == 5

    def boom() -> None:
        raise ValueError("plan names an unknown module")

    with pytest.raises(ValueError, match="unknown module"):
        on_model_thread(boom)
