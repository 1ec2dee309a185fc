"""The sweep config and the scheme catalog: YAML plus ``key=value`` overrides, validated in one
place.

Every schema is strict (``extra="forbid"``) so a misspelt key fails when the file loads, not an hour
into scoring. All problems are collected and raised once as a :class:`ConfigError` whose message is
a single line naming each field, the bad value and what is allowed. Pure module: no torch, ray,
mlflow.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from orchestrator.core import yaml_input
from orchestrator.core.planning import STRATEGIES, parse_spec
from orchestrator.core.records import stable_hash

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SEARCH_SPACES = PROJECT_ROOT / "search_spaces"
DEMO_CONFIG = SEARCH_SPACES / "demo_tiny.yaml"
DEFAULT_CATALOG = SEARCH_SPACES / "schemes.yaml"

Method = Literal["gradient", "kl_div"]
Recipe = Literal["FP8_DEFAULT_CFG", "FP8_PER_CHANNEL_PER_TOKEN_CFG"]


class ConfigError(ValueError):
    """Bad input; the message is one line and says what is allowed."""


class DataError(ValueError):
    """A data source that cannot give the batches asked for; one line, names the field.

    Bad input like :class:`ConfigError`, but not one: the sweep reports it as exit 2 only while
    checking its inputs; found once the stages run, it fails the sweep (exit 1) like any error.
    """


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)
    # keys the section took once, each with why it went: refused as removed, not as unknown
    removed: ClassVar[Mapping[str, str]] = {}


class ModelConfig(_Strict):
    source: str = Field("tiny-qwen2.5-vl", min_length=1)  # preset name, local folder or hub id
    revision: str | None = None
    # the reference's and every trial's dtype. auto: bfloat16, the dtype every export is written
    # in, on every device (CPU too, where a float32 trial took 1.4-1.8x the CPU time of BF16).
    # float32: not the exported checkpoint's numerics, and labelled so (core/numerics.py)
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    trust_remote_code: bool = False
    # vllm: fused q/k/v and gate/up FP8 layers measured with the scales vLLM serves them with (the
    # largest shard's weight scale, weights requantized to it; the largest input scale);
    # per_shard: each shard its own calibrated scales, as ModelOpt writes them (vLLM requantizes
    # a fused layer to one scale). Labelled in trials.parquet and schemes.yaml
    fused_scales: Literal["vllm", "per_shard"] = "vllm"


class DataConfig(_Strict):
    # synthetic | .txt/.jsonl/.parquet path | hf:<name>[:<config>[:<split>]]
    source: str = "synthetic"
    eval_source: str | None = None  # a separate held-out file for evaluation
    text_field: str = "text"  # column/key holding text in JSONL and Parquet files
    seq_len: int = Field(64, ge=8, le=32768)
    batch_size: int = Field(2, ge=1, le=1024)
    # Batch counts stop at MAX_BATCHES: the sets are built in the driver and shipped to every
    # worker, and the shipped configs use at most 64; a count beyond is a typo, refused at once.
    MAX_BATCHES: ClassVar[int] = 100_000
    calib_batches: int = Field(  # more = steadier amax, slower calibration
        2, ge=1, le=MAX_BATCHES, description=f"calibration batches, 1 to {MAX_BATCHES}"
    )
    score_batches: int = Field(  # scoring batches for AutoQuantize
        2, ge=1, le=MAX_BATCHES, description=f"scoring batches, 1 to {MAX_BATCHES}"
    )
    eval_batches: int = Field(  # the selection set: same ids for every trial; the front is
        2, ge=1, le=MAX_BATCHES, description=f"evaluation batches, 1 to {MAX_BATCHES}"
    )  # chosen on these
    # The report set: what schemes.yaml's numbers and verdicts are measured on, never what chose
    # them. One window per document of the source (a WikiText section, a JSONL record, ...) as far
    # as the documents go, drawn across the whole source; 0: judge on the selection set (labelled).
    report_batches: int = Field(
        2, ge=0, le=MAX_BATCHES, description=f"report batches, 0 to {MAX_BATCHES}"
    )
    # Which draw of calibration, scoring and selection windows the seed gives; the report set
    # stays the same. Sweeps that differ only here show how stable the picks are
    # (scripts/stability.py).
    draw: int = Field(0, ge=0, le=1_000_000)
    # image+text records (a .jsonl/.parquet file, a folder with captions.tsv, or hf:<name>) mixed
    # into data.source's text; data.source may itself be such a file (then every row is image+text)
    image_source: str | None = None
    # share of each set's rows that are image+text; default: 1 when data.source is image+text,
    # else 0.5 with image_source. More = calibration and scores closer to image chats, fewer text
    image_fraction: float | None = Field(None, ge=0, le=1)
    # the same for the evaluation set alone; default: image_fraction. 0 beside image_fraction>0,
    # or >0 beside image_fraction=0 (text-only calibration judged on image answers), lets two
    # sweeps that calibrate differently be measured on one evaluation set
    eval_image_fraction: float | None = Field(None, ge=0, le=1)
    image_field: str = "image"  # column/key: an image path relative to the file, or its bytes
    prompt_field: str = "prompt"  # column/key: the user's question about the image
    answer_field: str = "answer"  # column/key: the answer; only its tokens are scored


class AdaptiveBudget(_Strict):
    # score this many batches at a time (at least one per scoring shard, so every worker scores);
    # after each chunk the driver re-solves every grid point's plan on the sums so far
    # (orchestrator/core/budget.py)
    chunk: int = Field(4, ge=1)
    # stop once no plan changed over this many chunks in a row; 0: score all num_score_steps
    patience: int = Field(2, ge=0)
    # a change counts when the earlier plan is more than this much worse than the new one on the
    # new sums (its relative regret in the solver's objective); 0: any change. Near-tied groups
    # swap places for a long time (docs/benchmarks.md, "adaptive scoring budget")
    tolerance: float = Field(0.01, ge=0, lt=1)


class ScoringConfig(_Strict):
    # list defaults, not factories: mypy infers a lambda's ["gradient"] as list[str], not Method;
    # pydantic copies a list default into each instance, as a factory would make a fresh one
    methods: list[Method] = Field(["gradient"], min_length=1)
    fp8_recipes: list[Recipe] = Field(["FP8_DEFAULT_CFG"], min_length=1)
    num_calib_steps: int = Field(2, ge=1)
    num_score_steps: int = Field(2, ge=1)  # the maximum; fewer = faster, noisier ranking
    adaptive: AdaptiveBudget = Field(default_factory=AdaptiveBudget)
    # Score batches split into this many shards per setup, handed to the workers in turn (each
    # calibrates the same way and scores its share; the sums are the scores). auto: one per worker,
    # i.e. per GPU (search.max_concurrent workers without GPUs).
    shards: int | Literal["auto"] = "auto"
    # kl_div: each quantized forward starts at its group's block from the recorded unquantized
    # inputs; ~2x faster, the same scores bit for bit (docs/SCHEMES.md); false: full forwards.
    reuse_prefix: bool = True

    @field_validator("shards")
    @classmethod
    def _shards(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError(f"is {v}; use a positive integer or auto")
        return v

    @field_validator("methods", "fp8_recipes")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"has duplicates {v}; list each value once")
        return v


class SearchConfig(_Strict):
    effective_bits: list[float] = Field(  # over eligible LM weights: 16 - 8 x FP8 share
        min_length=1, description="a list of bits per eligible LM weight in [8, 16], e.g. [8, 12]"
    )
    coverage: list[float] = Field(  # share of decoder blocks allowed to hold FP8
        min_length=1, description="a list of shares in (0, 1], e.g. [0.5, 1.0]"
    )
    # scored plan strategies: solve (the scores choose among all allowed blocks), ends_bf16:N
    # (first and last N blocks BF16, the scores choose the rest), mlp_only (attention BF16)
    strategies: list[str] = Field(default_factory=lambda: ["solve"], min_length=1)
    searcher: Literal["grid", "optuna"] = "grid"
    num_samples: int = Field(16, ge=1)  # optuna only: trials after the seeding grid
    max_failures: int = Field(2, ge=0)  # retries per trial before it is recorded FAILED
    max_concurrent: int | None = Field(None, ge=1)  # default: number of GPUs, or 1 on CPU
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus: Literal["auto", "required"] = "auto"  # required: refuse to run without GPUs
    reference_cache_gib: float = Field(8.0, ge=0)  # device GiB for BF16 hidden states; 0: recompute
    # GPUs of one node each worker reserves and spreads the model over; auto: the fewest that hold
    # it (orchestrator/core/memory.py). Workers per node = its GPUs // this.
    gpus_per_worker: int | Literal["auto"] = "auto"

    @field_validator("gpus_per_worker")
    @classmethod
    def _gpus_per_worker(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError(f"is {v}; use a positive integer or auto")
        return v

    @field_validator("effective_bits")
    @classmethod
    def _bits(cls, v: list[float]) -> list[float]:
        for x in v:
            if not (math.isfinite(x) and 8.0 <= x <= 16.0):
                raise ValueError(f"value {x} is outside [8, 16] (bits per eligible LM weight)")
        return v

    @field_validator("strategies")
    @classmethod
    def _strategies(cls, v: list[str]) -> list[str]:
        for spec in v:
            parse_spec(spec, STRATEGIES)
        if "solve" not in v:
            raise ValueError(f"{v} lacks 'solve', the one strategy that can reach every share")
        if len(set(v)) != len(v):
            raise ValueError(f"has duplicates {v}; list each value once")
        return v

    @field_validator("coverage")
    @classmethod
    def _coverage(cls, v: list[float]) -> list[float]:
        for x in v:
            if not (math.isfinite(x) and 0.0 < x <= 1.0):
                raise ValueError(f"value {x} is outside (0, 1] (share of decoder blocks)")
        return v


class SelectionConfig(_Strict):
    # the KL the front is built on: over every target token (text windows and image answers), or
    # over the answer tokens of image+text evaluation rows only (needs such rows)
    objective: Literal["kl_mean", "image_kl_mean"] = "kl_mean"
    max_kl: float | None = Field(None, gt=0)  # points above this (objective's) KL are not eligible
    catalog: str = str(DEFAULT_CATALOG)


class TrackingConfig(_Strict):
    experiment: str | None = None  # default: the sweep name


class ControlConfig(_Strict):
    """What a person would do without the scores, measured at each published scheme's FP8 share
    (within half a group) and compared with it on the same tokens; never published. How the
    comparisons are judged lives here too: ``margin``, the materiality margin of the verdicts."""

    enabled: bool = True
    # ModelOpt's own AutoQuantize solve at the scheme's share from the same raw scores (its
    # solver, not ours): what the scores give without this project; compared first
    modelopt: bool = True
    # random group orders, judged as one distribution (an interval over seeds and sequences);
    # one trial per seed and scheme: more = a steadier "better than random", more control trials
    random_seeds: int = Field(20, ge=0, le=100)
    inverse: bool = True  # most sensitive first: the floor any ranking must clear
    ends_fixed: list[int] = Field(default_factory=lambda: [1])  # first/last N blocks BF16
    attn_bf16: bool = True  # attention BF16, the MLP quantized in block order
    # a KL ratio within this of 1 is no difference: better/worse need the 95% interval below
    # 1/(1+m) / above 1+m, equivalent needs it inside (docs/SCHEMES.md); 0: any difference counts
    margin: float = Field(0.05, ge=0.0, le=1.0)

    @field_validator("ends_fixed")
    @classmethod
    def _ends(cls, v: list[int]) -> list[int]:
        for n in v:
            if n < 1:
                raise ValueError(f"value {n} is not a block count >= 1")
        return v

    def specs(self) -> list[str]:
        if not self.enabled:
            return []
        out = ["modelopt"] if self.modelopt else []
        out += [f"random:{s}" for s in range(self.random_seeds)]
        out += ["inverse"] if self.inverse else []
        out += [f"ends_fixed:{n}" for n in self.ends_fixed]
        return out + (["attn_bf16"] if self.attn_bf16 else [])


# The ``fault`` section as every sweep before its removal wrote it: no faults.
RETIRED_FAULT_SECTION = {
    "raise_on_bits": [],
    "nan_on_bits": [],
    "kill_on_bits": [],
    "kill_once_on_bits": [],
    "kill_worker_once_on_bits": [],
    "sleep_seconds": 0.0,
}


class SweepConfig(_Strict):
    name: str = Field("fp8-sweep", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
    seed: int = 0
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    scoring: ScoringConfig = ScoringConfig()
    search: SearchConfig = Field(
        description="a section with effective_bits and coverage lists, e.g. "
        "{effective_bits: [8, 12], coverage: [1.0]}"
    )
    selection: SelectionConfig = SelectionConfig()
    tracking: TrackingConfig = TrackingConfig()
    controls: ControlConfig = ControlConfig()

    removed = {"fault": "faults are injected by the test suite only, tests/faults.py"}

    @model_validator(mode="after")
    def _steps_fit_data(self) -> SweepConfig:
        if self.scoring.num_score_steps > self.data.score_batches:
            raise ValueError(
                f"scoring.num_score_steps={self.scoring.num_score_steps} exceeds "
                f"data.score_batches={self.data.score_batches}; raise score_batches or lower it"
            )
        shards = self.scoring.shards
        if isinstance(shards, int) and shards > self.scoring.num_score_steps:
            raise ValueError(
                f"scoring.shards={shards} exceeds scoring.num_score_steps="
                f"{self.scoring.num_score_steps}; every shard needs a score batch"
            )
        if self.scoring.num_calib_steps > self.data.score_batches:
            raise ValueError(
                f"scoring.num_calib_steps={self.scoring.num_calib_steps} exceeds "
                f"data.score_batches={self.data.score_batches}; raise score_batches or lower it"
            )
        return self

    def config_hash(self, legacy: bool = False) -> str:
        """Identity of the experiment: what decides results, not where they are tracked.

        Paths of files this checkout ships (the default catalog, ``data/``, the presets), which
        a loaded config holds absolute, are hashed relative to the checkout, so a moved or
        reinstalled checkout gives the same hash. ``legacy``: the hash as sweeps before that
        wrote it (absolute paths), which a resume of such a sweep accepts
        (``checks.check_output``). The ``fault`` section the config had until the tests' faults
        left it (for ``orchestrator.runtime.hooks``) is hashed as it always was, empty, so a
        sweep started before keeps its hash: it resumes, and its schemes.yaml names the same hash.
        """
        dump = self.model_dump(mode="json", exclude={"tracking"})
        if not legacy:
            dump = _in_checkout(dump)
        return stable_hash({**dump, "fault": RETIRED_FAULT_SECTION})

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name


def _in_checkout(value: Any) -> Any:
    """``value`` with every path under this checkout written relative to it (``<checkout>/...``)."""
    root = f"{PROJECT_ROOT}{os.sep}"
    if isinstance(value, dict):
        return {k: _in_checkout(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_in_checkout(v) for v in value]
    if isinstance(value, str) and value.startswith(root):
        return "<checkout>/" + value[len(root) :]
    return value


def _format_errors(
    err: ValidationError, source: str, schema: type[BaseModel], given: Sequence[Override] = ()
) -> str:
    """One line: each problem's field, its value and what is allowed there, blamed on where the
    value came from: the file ``source``, or the flag that set it (``given``), as the user typed it.

    A missing field has no value of its own (pydantic's ``input`` is the enclosing mapping), so it
    reads ``search.coverage: required (<what the field takes>)``; an unknown key lists the keys
    its section takes, and a key it took once says why it went (``removed``).
    """
    from_file, from_flags = [], []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            section = _section_at(schema, e["loc"][:-1])
            why = getattr(section, "removed", {}).get(str(e["loc"][-1]))
            known = f" (allowed: {', '.join(section.model_fields)})" if section else ""
            gone = f"'{loc}' was removed ({why}); delete it"
            part = gone if why else f"unknown key '{loc}'{known}"
        elif e["type"] == "missing":
            part = f"{loc}: required ({_takes(schema, e['loc'])})"
        else:
            # a check across fields has no location; its message names the fields and values
            part = f"{loc}={e.get('input')!r}: {msg}" if loc else msg
        flag = _blamed(e["loc"], part, given)
        if flag is None:
            from_file.append(part)
        elif flag.key == loc and e["type"] not in ("extra_forbidden", "missing"):
            from_flags.append(f"{flag.given}: {msg}")  # the flag as typed shows key and value
        else:
            from_flags.append(f"{flag.given}: {part}")
    parts = ([f"{source}: " + "; ".join(from_file)] if from_file else []) + from_flags
    return "; ".join(parts)


def _blamed(loc: Sequence[Any], part: str, given: Sequence[Override]) -> Override | None:
    """The override that set the value at ``loc`` (or the section holding it, or a key inside
    it); for a check across fields, the last override its message names."""
    path = [str(p) for p in loc if not isinstance(p, int)]
    hits = [
        o
        for o in given
        if (path and o.key.split(".")[: len(path)] == path[: len(o.key.split("."))])
        or (not path and f"{o.key}=" in part)
    ]
    return hits[-1] if hits else None


def _section_at(schema: type[BaseModel], loc: Sequence[Any]) -> type[BaseModel] | None:
    """The model that validates the mapping at ``loc`` (list indices step into the items)."""
    model: Any = schema
    for part in loc:
        if isinstance(part, int):
            continue
        is_model = isinstance(model, type) and issubclass(model, BaseModel)
        field = model.model_fields.get(part) if is_model else None
        if field is None:
            return None
        model = field.annotation
        while getattr(model, "__origin__", None) is list:
            model = model.__args__[0]
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _takes(schema: type[BaseModel], loc: Sequence[Any]) -> str:
    section = _section_at(schema, loc[:-1])
    field = section.model_fields.get(str(loc[-1])) if section else None
    if field is None:
        return "see the shipped configs in search_spaces/"
    if field.description:
        return field.description
    ann = field.annotation
    return f"a {getattr(ann, '__name__', None) or str(ann).replace('typing.', '')}"


@dataclass(frozen=True)
class Override:
    """One value the user set on the command line, and how they wrote it (``given``), so that a
    message about it names the flag they typed (``--set data.batch_size=two``, ``--max-kl 0``)
    rather than the YAML file it replaces."""

    key: str  # dotted: selection.max_kl
    value: Any
    given: str

    @property
    def flag(self) -> str:
        """How the key was named, without the value: ``--set selection.max_kl``, ``--max-kl``."""
        return f"--set {self.key}" if self.given.startswith("--set ") else self.given.split()[0]


def parse_overrides(pairs: Sequence[str]) -> list[Override]:
    """``--set key.sub=value`` pairs; values are YAML scalars, lists or mappings, read by the
    config files' own loader (no aliases, no repeated keys). An empty pair sets nothing (what
    MLproject passes when its ``set`` parameter is left out)."""
    out = []
    for pair in pairs:
        if not pair.strip():
            continue
        key, sep, raw = pair.partition("=")
        if not sep or not key or any(not k for k in key.split(".")):
            raise ConfigError(
                f"--set {pair!r}: expected KEY=VALUE, e.g. search.coverage=[0.5,1.0] or "
                "scoring.num_score_steps=8 (see --help)"
            )
        try:
            value = yaml_input.load(raw) if raw else ""
        except yaml_input.YamlRefused as e:
            raise ConfigError(f"--set {pair!r}: {e}") from None
        except yaml.YAMLError as e:
            raise ConfigError(
                f"--set {pair!r}: value is not valid YAML ({e.__class__.__name__}); "
                "a list is [a, b], a mapping {key: value}"
            ) from None
        out.append(Override(key, value, f"--set {pair}"))
    return out


def _tree(overrides: Sequence[Override]) -> dict[str, Any]:
    """The overrides as one nested mapping, a later value for a key replacing an earlier one."""
    tree: dict[str, Any] = {}
    for o in overrides:
        keys = o.key.split(".")
        node = tree
        for k in keys[:-1]:
            child = node.setdefault(k, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{o.given}: '{k}' is a value, not a section")
            node = child
        node[keys[-1]] = o.value
    return tree


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def read_yaml(path: Path) -> dict[str, Any]:
    """A config or catalog file's top-level mapping, read by :mod:`orchestrator.core.yaml_input`
    (size-limited; no aliases, repeated keys or deep nesting)."""
    try:
        data = yaml_input.load(yaml_input.read(path))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml_input.YamlRefused as e:
        raise ConfigError(f"{path}: {e}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.__class__.__name__})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{at} ({e.__class__.__name__})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def load_config(path: Path | None = None, overrides: Sequence[str] = ()) -> SweepConfig:
    """YAML first, then ``--set`` overrides (the command line wins); validated as one unit, a bad
    value blamed on the ``--set`` that gave it."""
    path = path or DEMO_CONFIG
    given = parse_overrides(overrides)
    return _validated(_merge(read_yaml(path), _tree(given)), str(path), given)


def override_config(cfg: SweepConfig, given: Sequence[Override], source: str) -> SweepConfig:
    """A sweep's config (read from ``source``) with a command's own overrides (``select
    --max-kl``, ``--set selection.objective=...``), validated as the sweep's were."""
    return _validated(_merge(cfg.model_dump(mode="json"), _tree(given)), source, given)


def _validated(raw: dict[str, Any], source: str, given: Sequence[Override]) -> SweepConfig:
    try:
        return SweepConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source, SweepConfig, given)) from None


def read_written_config(path: Path) -> SweepConfig:
    """A sweep's own ``config.yaml``, as ``select`` and ``export`` read it back. Sweeps started
    while the config still had a ``fault`` section wrote it there; it is dropped (faults never
    decide what is selected or exported)."""
    raw = read_yaml(path)
    raw.pop("fault", None)
    return SweepConfig.model_validate(raw)


class ShareBand(_Strict):
    """What a name promises: an FP8 share of the eligible LM weights, give or take ``tolerance``."""

    nominal: float = Field(gt=0.0, le=1.0, description="a share of eligible LM weights in (0, 1]")
    tolerance: float = Field(0.05, ge=0.0, le=0.5)

    def contains(self, share: float) -> bool:
        return abs(share - self.nominal) <= self.tolerance + 1e-9

    def __str__(self) -> str:
        return f"{self.nominal:.0%} +- {self.tolerance:.0%} FP8"


class SchemeKnobs(_Strict):
    effective_bits: float = Field(ge=8.0, le=16.0, description="bits per weight in [8, 16]")
    method: Method = "kl_div"
    num_score_steps: int = Field(ge=1, description="an integer >= 1")
    num_calib_steps: int = Field(ge=1, description="an integer >= 1")
    fp8_recipe: Recipe = "FP8_DEFAULT_CFG"


class CatalogScheme(_Strict):
    name: str = Field(pattern=r"^[a-z0-9_]+$", description="lowercase letters, digits and _")
    role: Literal["conservative", "balanced", "aggressive"] = Field(
        description="conservative, balanced or aggressive"
    )
    description: str = Field(description="a sentence on what the scheme is for")
    # what the name promises; a pick outside it is never published
    fp8_share: ShareBand = Field(description="a band {nominal: share, tolerance: share}")
    # the knobs a user would pass to AutoQuantize for this scheme
    knobs: SchemeKnobs = Field(
        description="a mapping with effective_bits, num_score_steps, num_calib_steps"
    )

    removed = {
        k: "it never had an effect; docs/SCHEMES.md has the selection rules"
        for k in ("coverage_rule", "post_filters")
    }


class Catalog(_Strict):
    version: int = Field(ge=1, description="an integer >= 1, bumped when a name changes meaning")
    schemes: list[CatalogScheme] = Field(
        min_length=3, max_length=3, description="a list of three schemes, one per role"
    )

    @model_validator(mode="after")
    def _distinct(self) -> Catalog:
        names = [s.name for s in self.schemes]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate scheme names {dupes}; each name must appear once")
        roles = sorted(s.role for s in self.schemes)
        if roles != ["aggressive", "balanced", "conservative"]:
            raise ValueError(f"roles {roles} must be conservative, balanced, aggressive once each")
        return self


def load_catalog(path: Path | str = DEFAULT_CATALOG) -> Catalog:
    path = Path(path)
    raw = read_yaml(path)
    try:
        return Catalog.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, str(path), Catalog)) from None
