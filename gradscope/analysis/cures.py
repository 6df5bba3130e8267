"""Cure trials: every cure a run's diagnosis names, tried on the run's own configuration, and
the verdict measured from what the trial's runs recorded.

A trial (`gradscope cure RUN`, the dashboard's "Test the cures") is one batched sweep: for each
cure that is a run option (CURE_TABLE, the one place that maps a cure's text to a config
change), the patient's configuration with exactly that one setting changed; plus the unchanged
configuration as the control; each on the patient's seed and two more. Every run of the sweep
names its patient (`runs.cure_of`) and its cure's key (`runs.cure`, "control" for the control).

The verdict, per cure, once every run of the trial has finished:
- a seed is *fixed* when the cured run completed, none of the findings the cure was named for
  (the patient's findings of those kinds) appears in its own diagnosis, and its final test
  accuracy is at least CURE_MARGIN above the control's on the same seed (a control that did not
  finish, or diverged, counts as the dataset's chance level);
- the final test accuracy, control -> cure, as the median (and range) over the seeds;
- the first layer's gradient norm over the output layer's at the first epoch (log10), control
  -> cure, median over the seeds: the number the vanishing diagnosis cites.

Pure and torch-free: plain dicts, Findings and DataFrames in, frozen dataclasses out.
"""

from __future__ import annotations

import math
import statistics
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from gradscope.analysis.diagnosis import (
    _ADAM,
    _CLIP,
    _HE,
    _INIT,
    _LOWER_LR,
    _RELU,
    _RESIDUAL,
    CHANCE_MARGIN,
    Finding,
    dataset_chance,
    diagnose,
    run_facts,
)
from gradscope.vocab.config import ConfigError, RunConfig, make_config
from gradscope.vocab.custom import is_custom
from gradscope.vocab.fields import ACTIVE_STATUSES
from gradscope.vocab.grouping import plan_groups
from gradscope.vocab.records import RunSpec
from gradscope.vocab.sweep import DEFAULT_GROUP_SIZE, SweepPlan, run_name

CONTROL = "control"  # runs.cure of the unchanged configuration
# A cured seed must beat the control's accuracy on the same seed by this much: the width of
# "at chance" in the diagnosis, so a cure counts only when it moves a run out of that band.
CURE_MARGIN = CHANCE_MARGIN
EXTRA_SEEDS = 2  # seeds besides the patient's own
MAX_SEED = 2**31 - 1
LR_STEP = 10.0  # "lower"/"larger" learning rate: a factor of ten
MAX_TRIAL_SEEDS = 10


class CureRefused(ValueError):
    """A run whose cures cannot be tried here; the message says why."""


@dataclass(frozen=True)
class Change:
    """One cure as a run option: `field` set to `value` in the patient's configuration."""

    key: str  # stored as runs.cure
    label: str  # "ReLU hidden layers"
    field: str
    value: Any

    @property
    def setting(self) -> str:
        return f"{self.field}={_value_text(self.value)}"


def _value_text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _sigmoid_units(cfg: RunConfig) -> bool:
    return cfg.arch == "sigmoid" or (cfg.arch == "resnet" and cfg.block_activation == "sigmoid")


def _relu(cfg: RunConfig) -> Change | str:
    if cfg.arch == "resnet":  # keep the skips: only the blocks' activation changes
        return Change("relu", "ReLU blocks", "block_activation", "relu")
    return Change("relu", "ReLU hidden layers", "arch", "relu")


def _init(cfg: RunConfig) -> Change | str:
    if _sigmoid_units(cfg):
        return Change("xavier", "Xavier init", "init", "xavier")
    return Change("he", "He init", "init", "he")


def _adam(cfg: RunConfig) -> Change | str:
    if cfg.momentum:
        return (
            "Adam takes no momentum: switching this SGD-with-momentum run to Adam changes two "
            "settings, so it is not a one-change trial"
        )
    return Change("adam", "Adam", "optimizer", "adam")


def _lr(factor: float, key: str, label: str) -> Callable[[RunConfig], Change | str]:
    def change(cfg: RunConfig) -> Change | str:
        lr = float(f"{cfg.lr * factor:.6g}")  # 1e-3 / 10 is 1e-4, not 0.00010000000000000002
        if not 0 < lr <= 100:
            return f"a learning rate of {lr:g} is outside what a run accepts"
        return Change(key, label, "lr", lr)

    return change


def _more_epochs(cfg: RunConfig) -> Change | str:
    if cfg.epochs * 2 > 100_000:
        return "the run already trains for the most epochs a run accepts"
    return Change("more_epochs", "more epochs", "epochs", cfg.epochs * 2)


def _fewer_layers(cfg: RunConfig) -> Change | str:
    if cfg.depth < 2:
        return "the run has one hidden layer already"
    return Change("fewer_layers", "fewer layers", "depth", cfg.depth // 2)


def _not_an_option(why: str) -> Callable[[RunConfig], Change | str]:
    return lambda cfg: why


# The one table from a cure's text (as the diagnosis words it) to the one setting that tries it
# on a built-in run, or why it cannot be tried by changing a setting.
CURE_TABLE: dict[str, Callable[[RunConfig], Change | str]] = {
    _RELU: _relu,
    _RESIDUAL: lambda cfg: Change("resnet", "residual blocks", "arch", "resnet"),
    _INIT: _init,
    _HE: lambda cfg: Change("he", "He init", "init", "he"),
    _ADAM: _adam,
    _LOWER_LR: _lr(1 / LR_STEP, "lower_lr", "lower learning rate"),
    "Try a larger learning rate.": _lr(LR_STEP, "higher_lr", "larger learning rate"),
    "Train for more epochs.": _more_epochs,
    "Use fewer layers.": _fewer_layers,
    _CLIP: _not_an_option("gradient clipping is not a run option; try it in your own loop"),
    "Rebalance the classes (weights in the loss, or resampling).": _not_an_option(
        "class weights are not a run option"
    ),
    "Use a leaky ReLU or residual connections to keep a gradient path.": _not_an_option(
        "leaky ReLU is not a built-in architecture (residual blocks are tried where named)"
    ),
}


@dataclass(frozen=True)
class Untested:
    """A cure the trial cannot try by changing one setting, and why."""

    cure: str
    why: str


@dataclass(frozen=True)
class TrialDesign:
    """What a trial tries: each change once (with every cure text it stands for and the kinds
    of finding it was named for), and the cures that stay text."""

    changes: tuple[Change, ...]
    cures_of: Mapping[str, tuple[str, ...]]  # change key -> cure texts
    targets: Mapping[str, tuple[str, ...]]  # change key -> finding kinds it should remove
    untested: tuple[Untested, ...]


def treated(findings: Sequence[Finding]) -> list[Finding]:
    """The findings a trial treats: what is wrong (bad or warn) and names a cure."""
    return [f for f in findings if f.severity in ("bad", "warn") and f.cures]


def design(config: Mapping[str, Any], findings: Sequence[Finding]) -> TrialDesign:
    """Each cure of the treated findings mapped through CURE_TABLE, changes deduplicated (Xavier
    /He init and He init may be one change), changes that would leave the config as it is
    dropped (the diagnosis's fit_cures already drops cures the run applies)."""
    cfg = make_config(dict(config))
    changes: dict[tuple[str, str], Change] = {}
    cures_of: dict[str, list[str]] = {}
    targets: dict[str, list[str]] = {}
    untested: dict[str, Untested] = {}
    for finding in treated(findings):
        for cure in finding.cures:
            how = CURE_TABLE.get(cure)
            outcome = how(cfg) if how else "not a run option; change it in code"
            if isinstance(outcome, str):
                untested.setdefault(cure, Untested(cure, outcome))
                continue
            if getattr(cfg, outcome.field) == outcome.value:
                continue  # the run already does it
            change = changes.setdefault((outcome.field, repr(outcome.value)), outcome)
            cures_of.setdefault(change.key, [])
            if cure not in cures_of[change.key]:
                cures_of[change.key].append(cure)
            kinds = targets.setdefault(change.key, [])
            if finding.kind not in kinds:
                kinds.append(finding.kind)
    return TrialDesign(
        tuple(changes.values()),
        {k: tuple(v) for k, v in cures_of.items()},
        {k: tuple(v) for k, v in targets.items()},
        tuple(untested.values()),
    )


def default_seeds(seed: int) -> tuple[int, ...]:
    """The patient's seed and the next EXTRA_SEEDS (counting down near the largest seed)."""
    up = [seed + i for i in range(1, EXTRA_SEEDS + 1) if seed + i <= MAX_SEED]
    down = [seed - i for i in range(1, EXTRA_SEEDS + 1)]
    return (seed, *(up + down)[:EXTRA_SEEDS])


def check_seeds(seeds: Sequence[int]) -> tuple[int, ...]:
    kept = tuple(dict.fromkeys(int(s) for s in seeds))
    if not kept:
        raise CureRefused("give at least one seed")
    if len(kept) > MAX_TRIAL_SEEDS:
        raise CureRefused(f"at most {MAX_TRIAL_SEEDS} seeds (got {len(kept)})")
    bad = [s for s in kept if not 0 <= s <= MAX_SEED]
    if bad:
        raise CureRefused(f"seeds must be within 0..{MAX_SEED} (got {bad[0]})")
    return kept


def plan_cures(
    patient: Mapping[str, Any],
    findings: Sequence[Finding],
    *,
    seeds: Sequence[int] | None = None,
    group_size: int = DEFAULT_GROUP_SIZE,
) -> tuple[SweepPlan, TrialDesign]:
    """The trial of one patient as a sweep ready to queue (nothing is written): per change and
    seed the patient's config with that one setting (and the seed) changed, then the control;
    runs of one shape share a group, so a worker trains them as one batched model.

    `patient`: id, name, status, config (a run's stored fields). Raises CureRefused when the
    run is a custom model's, still training, or has nothing a setting could cure."""
    config = patient.get("config")
    if not isinstance(config, dict) or is_custom(config):
        raise CureRefused(
            "this run was recorded from your own model through the gradscope API: its cures are "
            "changes to your code (activations, skip connections, initialisation, optimizer), "
            "which gradscope cannot make for you; try them in your script and compare the runs"
        )
    if patient.get("status") in ACTIVE_STATUSES:
        raise CureRefused(
            f"the run is still {patient.get('status')}: its diagnosis is not final; try its "
            "cures once it has finished"
        )
    plan = design(config, findings)
    if not plan.changes:
        wrong = treated(findings)
        if not wrong:
            raise CureRefused("the diagnosis names nothing to cure (the run looks healthy)")
        why = "; ".join(f"{u.cure} ({u.why})" for u in plan.untested) or "it applies them all"
        raise CureRefused(f"no cure of this run's diagnosis is a run setting to change: {why}")
    base = make_config(dict(config))
    seeds = check_seeds(seeds if seeds is not None else default_seeds(base.seed))
    label = patient.get("name") or str(patient["id"])[:8]
    sweep_name = make_config({"name": f"cure of {label}"}).name or "cure"
    sweep_id = str(uuid.uuid4())
    specs: list[RunSpec] = []
    configs: list[RunConfig] = []
    for change in (*plan.changes, None):
        for seed in seeds:
            values = base.model_dump()
            values["seed"] = seed
            if change is not None:
                values[change.field] = change.value
            try:
                cfg = make_config(values)
            except ConfigError as exc:  # e.g. a change that conflicts with another setting
                raise CureRefused(f"{change.label if change else CONTROL}: {exc}") from None
            what = f"{change.label} ({change.setting})" if change else "control (unchanged)"
            key = change.key if change else CONTROL
            configs.append(cfg)
            specs.append(
                RunSpec(
                    cfg.model_dump(),
                    name=run_name(sweep_name, f"{what} seed={seed}"),
                    sweep_id=sweep_id,
                    sweep_name=sweep_name,
                    extra={"cure_of": str(patient["id"]), "cure": key},
                )
            )
    for members in plan_groups(configs, group_size):
        if len(members) < 2:
            continue
        group_id = str(uuid.uuid4())
        for position, index in enumerate(members):
            specs[index].group_id = group_id
            specs[index].group_index = position
    return SweepPlan(sweep_id, sweep_name, tuple(specs)), plan


# -- the verdict ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunOutcome:
    """What one run of a trial shows: its status, final test accuracy, first/output gradient
    ratio at the first epoch (log10), and the kinds of its own non-healthy findings."""

    run_id: str
    cure: str
    seed: int
    status: str
    test_acc: float
    ratio_log10: float
    kinds: frozenset[str]
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.status not in ACTIVE_STATUSES


@dataclass(frozen=True)
class Spread:
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread | None:
        kept = sorted(v for v in values if not math.isnan(v))
        if not kept:
            return None
        return cls(statistics.median(kept), kept[0], kept[-1])

    def to_json(self) -> dict[str, float]:
        return {"median": self.median, "min": self.low, "max": self.high}


@dataclass(frozen=True)
class CureVerdict:
    key: str
    label: str
    setting: str
    cures: tuple[str, ...]
    targets: tuple[str, ...]
    seeds: tuple[int, ...]
    fixed: int
    gone: int
    acc: Spread | None
    control_acc: Spread | None
    ratio_log10: float | None
    control_ratio_log10: float | None
    statuses: Mapping[int, str]
    problems: tuple[str, ...]

    def text(self) -> str:
        n = len(self.seeds)
        parts = [f"{self.fixed}/{n} seeds fixed"]
        if self.gone != self.fixed:
            parts[0] += f" (finding gone in {self.gone}/{n})"
        parts.append(f"accuracy {_acc_text(self.control_acc)} → {_acc_text(self.acc)}")
        parts.append(
            f"first-layer gradient {_ratio_text(self.control_ratio_log10)} → "
            f"{_ratio_text(self.ratio_log10)}"
        )
        text = f"{self.label} ({self.setting}): " + ", ".join(parts)
        if self.problems:
            text += "; " + "; ".join(self.problems)
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "cure": self.key,
            "label": self.label,
            "setting": self.setting,
            "cures": list(self.cures),
            "for_findings": list(self.targets),
            "seeds": list(self.seeds),
            "seeds_fixed": self.fixed,
            "finding_gone": self.gone,
            "test_acc": self.acc.to_json() if self.acc else None,
            "control_test_acc": self.control_acc.to_json() if self.control_acc else None,
            "ratio_log10": _finite_or_none(self.ratio_log10),
            "control_ratio_log10": _finite_or_none(self.control_ratio_log10),
            "statuses": {str(k): v for k, v in self.statuses.items()},
            "problems": list(self.problems),
            "text": self.text(),
        }


def _finite_or_none(value: float | None) -> float | str | None:
    if value is None:
        return None
    return "-inf" if value == -math.inf else value


def _acc_text(spread: Spread | None) -> str:
    if spread is None:
        return "none"
    if spread.high - spread.low < 0.005:
        return f"{spread.median:.2f}"
    return f"{spread.median:.2f} ({spread.low:.2f}–{spread.high:.2f})"


def _ratio_text(log10: float | None) -> str:
    if log10 is None:
        return "not measured"
    if log10 == -math.inf:
        return "0 (underflow)"
    return f"10^{log10:.1f}"


@dataclass(frozen=True)
class Trial:
    """A patient's cure trial: its sweep, how far it is, and (once finished) a verdict per cure."""

    patient_id: str
    sweep_id: str
    sweep_name: str
    seeds: tuple[int, ...]
    total: int
    finished: int
    verdicts: tuple[CureVerdict, ...]
    untested: tuple[Untested, ...]
    margin: float = CURE_MARGIN
    control_problems: tuple[str, ...] = ()  # the unchanged configuration failed or diverged

    @property
    def done(self) -> bool:
        return self.total > 0 and self.finished == self.total

    def progress_text(self) -> str:
        if self.done:
            seeds = ", ".join(str(s) for s in self.seeds)
            return (
                f"Cure trial '{self.sweep_name}': {self.total} runs finished, measured on seeds "
                f"{seeds}. Fixed: the finding gone and test accuracy at least {self.margin:.2f} "
                "above the control's on the same seed."
                + (
                    f" Control: {'; '.join(self.control_problems)}."
                    if self.control_problems
                    else ""
                )
            )
        return (
            f"Cure trial '{self.sweep_name}' is running: {self.finished}/{self.total} runs "
            "finished; the verdict comes when all have."
        )

    def treats(self, finding: Finding) -> bool:
        """Whether the trial tried (or could not try) any of the finding's cures."""
        tried = {c for v in self.verdicts for c in v.cures}
        if not self.done:
            return finding.severity in ("bad", "warn") and bool(finding.cures)
        return bool(tried & set(finding.cures) or self.untested_for(finding))

    def for_finding(self, finding: Finding) -> list[CureVerdict]:
        return [v for v in self.verdicts if set(v.cures) & set(finding.cures)]

    def untested_for(self, finding: Finding) -> list[Untested]:
        return [u for u in self.untested if u.cure in finding.cures]

    def to_json(self, finding: Finding | None = None) -> dict[str, Any]:
        verdicts = self.verdicts if finding is None else self.for_finding(finding)
        untested = self.untested if finding is None else self.untested_for(finding)
        return {
            "sweep_id": self.sweep_id,
            "sweep_name": self.sweep_name,
            "seeds": list(self.seeds),
            "runs": self.total,
            "runs_finished": self.finished,
            "done": self.done,
            "margin": self.margin,
            "verdicts": [v.to_json() for v in verdicts] if self.done else [],
            "untested": [{"cure": u.cure, "why": u.why} for u in untested],
            "control_problems": list(self.control_problems),
            "text": self.progress_text(),
        }


def first_epoch_ratio_log10(layers: pd.DataFrame) -> float:
    """log10(first layer's grad norm / output layer's) at the first recorded epoch; NaN where
    it means nothing (fewer than two layers, non-finite norms), -inf for an exact 0."""
    if layers.empty:
        return math.nan
    first = layers[layers["epoch"] == layers["epoch"].min()].sort_values("layer")
    norms = first["grad_norm"].astype(float).tolist()
    if len(norms) < 2:
        return math.nan
    top, out = norms[0], norms[-1]
    if not (math.isfinite(top) and math.isfinite(out)) or out <= 0 or top < 0:
        return math.nan
    return -math.inf if top == 0 else math.log10(top / out)


def run_outcomes(
    runs: pd.DataFrame,
    epochs: pd.DataFrame,
    layers: pd.DataFrame,
    warnings: pd.DataFrame | None = None,
) -> list[RunOutcome]:
    """Each trial run diagnosed as `gradscope show` diagnoses it. `runs`: id, status, seed,
    cure, config, error; `epochs`/`layers`: run_id and the recorded columns."""
    by_e = dict(tuple(epochs.groupby("run_id", sort=False))) if not epochs.empty else {}
    by_l = dict(tuple(layers.groupby("run_id", sort=False))) if not layers.empty else {}
    by_w = (
        dict(tuple(warnings.groupby("run_id", sort=False)))
        if warnings is not None and not warnings.empty
        else {}
    )
    outcomes = []
    for run in runs.itertuples():
        cfg = run.config if isinstance(run.config, dict) else {}
        e = by_e.get(run.id, epochs.iloc[:0])
        la = by_l.get(run.id, layers.iloc[:0])
        error = run.error if isinstance(run.error, str) and run.error else None
        found = diagnose(
            e,
            la,
            arch=str(cfg.get("arch", "")),
            status=str(run.status),
            depth=int(cfg.get("depth", 0) or 0),
            dataset=str(cfg.get("dataset", "")),
            facts=run_facts(cfg),
            warnings=by_w.get(run.id),
            error=error,
        )
        acc = math.nan
        if not e.empty:
            acc = float(e.loc[e["epoch"].idxmax(), "test_acc"])
        outcomes.append(
            RunOutcome(
                str(run.id),
                str(run.cure),
                int(run.seed),
                str(run.status),
                acc,
                first_epoch_ratio_log10(la),
                frozenset(f.kind for f in found if f.severity != "ok"),
                error,
            )
        )
    return outcomes


def _problems(runs: Sequence[RunOutcome]) -> list[str]:
    """Runs that did not complete, by status, with their seeds."""
    problems = []
    for status in ("failed", "diverged", "cancelled", "interrupted"):
        hit = [o.seed for o in runs if o.status == status]
        if hit:
            on = ", ".join(map(str, hit))
            problems.append(f"{len(hit)}/{len(runs)} run(s) {status} (seed {on})")
    return problems


def _median(values: Sequence[float]) -> float | None:
    kept = [v for v in values if not math.isnan(v)]
    return statistics.median(sorted(kept)) if kept else None


def verdict(
    *,
    patient_id: str,
    patient_config: Mapping[str, Any],
    findings: Sequence[Finding],
    sweep_id: str,
    sweep_name: str,
    outcomes: Sequence[RunOutcome],
) -> Trial:
    """The trial's verdict from its runs' outcomes (see the module's docstring for the rule).
    Before every run has finished, the Trial only says how far it is."""
    plan = design(patient_config, findings)
    chance = dataset_chance(str(patient_config.get("dataset", "")))
    seeds = tuple(sorted({o.seed for o in outcomes}))
    finished = sum(o.finished for o in outcomes)
    done = bool(outcomes) and finished == len(outcomes)
    control = {o.seed: o for o in outcomes if o.cure == CONTROL}
    changes = {c.key: c for c in plan.changes}
    verdicts: list[CureVerdict] = []
    tried = list(dict.fromkeys(o.cure for o in outcomes if o.cure != CONTROL))
    for key in tried if done else ():
        runs = sorted((o for o in outcomes if o.cure == key), key=lambda o: o.seed)
        change = changes.get(key)
        targets = plan.targets.get(key, ())
        fixed = gone = 0
        for o in runs:
            base = control.get(o.seed)
            base_acc = base.test_acc if base is not None and base.status == "completed" else chance
            base_acc = chance if math.isnan(base_acc) else base_acc
            if o.status != "completed":
                continue
            if not o.kinds & set(targets):
                gone += 1
                fixed += int(not math.isnan(o.test_acc) and o.test_acc >= base_acc + CURE_MARGIN)
        problems = _problems(runs)
        base_runs = [control[o.seed] for o in runs if o.seed in control]
        verdicts.append(
            CureVerdict(
                key=key,
                label=change.label if change else key,
                setting=change.setting if change else "",
                cures=plan.cures_of.get(key, ()),
                targets=targets,
                seeds=tuple(o.seed for o in runs),
                fixed=fixed,
                gone=gone,
                acc=Spread.of([o.test_acc for o in runs]),
                control_acc=Spread.of([o.test_acc for o in base_runs]),
                ratio_log10=_median([o.ratio_log10 for o in runs]),
                control_ratio_log10=_median([o.ratio_log10 for o in base_runs]),
                statuses={o.seed: o.status for o in runs},
                problems=tuple(problems),
            )
        )
    return Trial(
        patient_id=patient_id,
        sweep_id=sweep_id,
        sweep_name=sweep_name,
        seeds=seeds,
        total=len(outcomes),
        finished=finished,
        verdicts=tuple(verdicts),
        untested=plan.untested,
        control_problems=tuple(_problems(sorted(control.values(), key=lambda o: o.seed))),
    )


def trial_from(
    recorded: Any,
    *,
    patient_id: str,
    patient_config: Mapping[str, Any],
    findings: Sequence[Finding],
) -> Trial:
    """The verdict of a trial read by gradscope.db.trials.trial_frames (runs, epochs, layers,
    warnings, sweep_id, sweep_name)."""
    outcomes = run_outcomes(recorded.runs, recorded.epochs, recorded.layers, recorded.warnings)
    return verdict(
        patient_id=patient_id,
        patient_config=patient_config,
        findings=findings,
        sweep_id=recorded.sweep_id,
        sweep_name=recorded.sweep_name,
        outcomes=outcomes,
    )
