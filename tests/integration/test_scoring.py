"""Scoring on the tiny Qwen2.5-VL (real ModelOpt AutoQuantize on CPU): cache, exclusions, parity."""

import warnings

import pytest

from orchestrator.core.planning import make_plan
from orchestrator.model.scoring import cache_path, load_cached, score, state_from_json
from orchestrator.outputs.tables import read_search_state

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("method", ["gradient", "kl_div"])
def test_table_covers_exactly_the_language_model_decoder(score_tables, method):
    table, _, _ = score_tables[method]
    modules = [m for g in table.groups for m in g.modules]
    assert len(modules) == 4 * 7 and len(table.groups) == 4 * 4
    assert not any("visual" in m or "lm_head" in m or "embed" in m for m in modules)
    assert {g.kind for g in table.groups} == {"qkv", "o", "gate_up", "down"}
    assert all(g.score >= 0 for g in table.groups) and any(g.score > 0 for g in table.groups)
    # the cost denominator is the eligible LM weights only (vision and lm_head excluded)
    state = read_search_state(cache_path(score_tables[method][2], table.key))
    assert state["cost_denominator"] == table.eligible_params == 4 * 36864


def test_second_request_with_the_same_key_does_not_rescore(score_tables, tiny_data):
    table, setup, cache = score_tables["gradient"]
    # model=None: any attempt to run AutoQuantize again would fail
    again = score(None, None, tiny_data.score, setup, cache)
    assert again == table


def test_corrupt_or_foreign_cache_is_recomputed(score_tables, tiny_data, tmp_path):
    from orchestrator.model.loading import load_model

    table, setup, cache = score_tables["kl_div"]
    path = cache_path(tmp_path, setup.key())
    path.write_bytes(cache_path(cache, setup.key()).read_bytes()[:200])  # truncated
    assert load_cached(tmp_path, setup) is None
    model, profile = load_model("tiny-qwen2.5-vl")
    fresh = score(model, profile, tiny_data.score, setup, tmp_path)
    assert [g.name for g in fresh.groups] == [g.name for g in table.groups]
    other = cache_path(score_tables["gradient"][2], score_tables["gradient"][1].key())
    path.write_bytes(other.read_bytes())  # a valid file holding another key
    assert load_cached(tmp_path, setup) is None


def _modelopt_fp8_modules(state, bits):
    import modelopt.torch.quantization as mtq

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = mtq.get_auto_quantize_config(state_from_json(state), {"effective_bits": bits})
    return {
        e["quantizer_name"].rsplit(".", 1)[0]
        for e in cfg["quant_cfg"]
        if e.get("enable", True) and e["quantizer_name"].endswith(".weight_quantizer")
    }


def _rescaled(state):
    """Scores divided by their maximum: the same argmin, in a range CBC resolves."""
    top = max(max(s["scores"]) for s in state["candidate_stats"].values())
    for s in state["candidate_stats"].values():
        s["scores"] = [x / top for x in s["scores"]]
    return state


@pytest.mark.parametrize("method", ["gradient", "kl_div"])
def test_planning_matches_modelopt_resolve_at_full_coverage(score_tables, method):
    table, setup, cache = score_tables[method]
    state = read_search_state(cache_path(cache, setup.key()))
    if method == "gradient":  # see the next test for why
        state = _rescaled(state)
    for bits in (9, 10, 11, 12, 13, 14, 15):
        assert set(make_plan(table, bits, 1.0).fp8_modules) == _modelopt_fp8_modules(state, bits), (
            bits
        )


def test_exact_solver_is_never_worse_than_modelopt_on_raw_gradient_scores(score_tables):
    """Raw gradient scores here are ~1e-8: ModelOpt's CBC solve treats them as ties and returns a
    feasible but far from minimal assignment. The exact solver's summed score is never higher."""
    table, setup, cache = score_tables["gradient"]
    state = read_search_state(cache_path(cache, setup.key()))
    by_module = {m: g for g in table.groups for m in g.modules}
    for bits in (9, 11, 13, 15):
        theirs = {by_module[m].name: by_module[m] for m in _modelopt_fp8_modules(state, bits)}
        ours = make_plan(table, bits, 1.0)
        assert ours.achieved_bits <= bits + 1e-9
        assert ours.score_sum <= sum(g.score for g in theirs.values()) + 1e-15


@pytest.mark.parametrize("method", ["gradient", "kl_div"])
def test_score_shards_add_up_to_one_unsharded_run(score_tables, tiny_data, method):
    """Each shard calibrates on the same batches and scores its own; the sums are the scores."""
    from orchestrator.model.loading import load_model
    from orchestrator.model.scoring import merge_shards, score_shard, shard_indices

    table, setup, _ = score_tables[method]
    pieces = shard_indices(setup.num_score_steps, 2)
    assert pieces == [[0], [1]]
    parts = []
    for idx in pieces:
        model, profile = load_model("tiny-qwen2.5-vl")
        parts.append(score_shard(model, profile, tiny_data.score, setup, idx))
    merged, state = merge_shards(parts)
    assert merged.meta["shards"] == 2 and merged.meta["shard_batches"] == [[0], [1]]
    assert [g.name for g in merged.groups] == [g.name for g in table.groups]
    whole = [g.score for g in table.groups]
    assert [g.score for g in merged.groups] == pytest.approx(whole, rel=1e-4, abs=1e-12)
    # each shard alone is a different (partial) measurement, so the sum is not trivially equal
    assert [g.score for g in parts[0][0].groups] != pytest.approx(whole, rel=1e-3)
    for bits in (9.0, 12.0, 15.0):  # the merged table plans exactly like the unsharded one
        assert make_plan(merged, bits, 1.0).fp8_modules == make_plan(table, bits, 1.0).fp8_modules
    fp8 = [s["scores"][0] for s in state["candidate_stats"].values() if s["formats"][0] != "NONE"]
    assert sum(fp8) == pytest.approx(sum(whole), rel=1e-4)


def test_shard_indices_cover_every_score_batch_once():
    from orchestrator.model.scoring import shard_indices

    assert shard_indices(10, 3) == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert shard_indices(2, 8) == [[0], [1]]  # never an empty shard
    assert shard_indices(5, 1) == [[0, 1, 2, 3, 4]]


@pytest.mark.parametrize("method", ["gradient", "kl_div"])
def test_modelopt_control_is_modelopts_own_solve_at_each_share(score_tables, method):
    """The ``modelopt`` control's groups are the weight quantizers ModelOpt's own re-solve enables
    on the raw scores (no rescaling), at the shares schemes can hold; on these states ModelOpt's
    effective bits are the project's (the denominator is the eligible weights)."""
    from orchestrator.model.modelopt_plan import modelopt_groups

    table, setup, cache = score_tables[method]
    state = read_search_state(cache_path(cache, setup.key()))
    by_module = {m: g.name for g in table.groups for m in g.modules}
    for asked in (9, 11, 12, 13, 14, 15):
        bits = make_plan(table, asked, 1.0).achieved_bits  # a share made of whole groups
        groups, given = modelopt_groups(state, table, bits)
        assert given == pytest.approx(bits, abs=1e-12)
        theirs = {by_module[m] for m in _modelopt_fp8_modules(state, given)}
        assert set(groups) == theirs, bits


def test_modelopt_budget_is_read_on_modelopts_own_scale(score_tables):
    """With a module outside the eligible weights in ModelOpt's cost (BF16, as large as all of them:
    twice the denominator), the same share is another effective_bits for ModelOpt, and ModelOpt's
    plan is the same."""
    from orchestrator.model.modelopt_plan import modelopt_groups

    table, setup, cache = score_tables["kl_div"]
    state = read_search_state(cache_path(cache, setup.key()))
    size = float(table.eligible_params)
    extra = {
        "formats": ["NONE"],
        "scores": [0.0],
        "costs": [size],
        "module_names": ["model.visual.extra"],
        "quantizer_attrs": {},
        "cost_weight": 1.0,
        "uncompressed_cost": size,
        "allow_no_quant": True,
        "is_fixed": False,
    }
    wide = {
        **state,
        "cost_denominator": 2 * size,
        "candidate_stats": {**state["candidate_stats"], "model.visual.extra.quant_recipe": extra},
    }
    for asked in (10, 12, 14):
        bits = make_plan(table, asked, 1.0).achieved_bits
        share = (16 - bits) / 8
        groups, given = modelopt_groups(state, table, bits)
        groups_wide, given_wide = modelopt_groups(wide, table, bits)
        assert given_wide == pytest.approx(16 - 4 * share) and given == pytest.approx(bits)
        assert groups_wide == groups == sorted(make_plan(table, bits, 1.0).fp8_groups)
