"""The label that says which numerics a number assumes (``orchestrator/core/numerics.py``)."""

import pytest

from orchestrator.core.config import load_config
from orchestrator.core.numerics import UNRECORDED, numerics_label, resolved_dtype, sweep_numerics

pytestmark = pytest.mark.unit

SERVED = "bfloat16, vLLM fused scales"


def test_the_default_config_measures_what_vllm_serves_from_the_export():
    """auto means the export's dtype on every device; fused layers get vLLM's scales."""
    model = load_config(None).model
    assert (model.dtype, model.fused_scales) == ("auto", "vllm")
    assert numerics_label(resolved_dtype(model.dtype), model.fused_scales) == SERVED


@pytest.mark.parametrize(
    ("dtype", "fused", "says"),
    [
        ("float32", "vllm", "float32 (not the exported checkpoint's numerics), vLLM fused scales"),
        ("bfloat16", "per_shard", "per-shard scales (not how vLLM serves fused q/k/v and gate/up)"),
    ],
)
def test_numerics_other_than_the_served_ones_say_so(dtype, fused, says):
    assert says in numerics_label(resolved_dtype(dtype), fused)


def test_a_sweep_is_labelled_by_what_its_trials_ran_in():
    assert sweep_numerics([SERVED, SERVED, ""]) == SERVED
    assert sweep_numerics(["", ""]) == UNRECORDED  # trials from before the label
    mixed = sweep_numerics([SERVED, numerics_label("float32", "vllm")])
    assert mixed.startswith("mixed: ") and SERVED in mixed
