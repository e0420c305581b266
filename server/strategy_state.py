"""What a strategy carries from round to round (server optimizer moments, clip norm, accountant), saved and put back.

Every strategy class is described by name (`KNOWN`): the attributes rounds change (saved and restored), those the
config sets or each round rebuilds (left as the new process builds them), and the parts it wraps (walked in turn).
A class not described, or an object holding an attribute its description does not name, makes the saved state
unresumable, with the reason: resuming without part of the state would continue a different run without a word.
A subclass is described by its nearest described base, as long as it adds no attribute of its own.

Flower 1.41's classes, read from their source: FedAvgM keeps ``current_arrays`` (set once, then its own) and
``momentum_vector``; FedAdam, FedYogi and FedAdagrad keep ``m_t`` and ``v_t`` (and ``current_arrays``, reset each
round); the server-side DP wrappers keep the clipping norm (adaptive) or an accountant (fixed).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from common.errors import ConfigError

__all__ = ["KNOWN", "StateSpec", "capture_state", "restore_state"]

SavedState = dict[str, Any]
"""``{"parts": {path: {"class": name, "values": {attribute: (kind, value)}}}, "problems": [str]}``: plain data."""


@dataclass(frozen=True)
class StateSpec:
    """How one strategy class keeps its state: by attribute name."""

    state: tuple[str, ...] = ()
    """Changed by rounds: saved and restored."""
    fixed: tuple[str, ...] = ()
    """Set from the config when built, or rebuilt within each round: the resumed process builds them again."""
    parts: tuple[str, ...] = ()
    """Wrapped strategies (or parts of one), each described in turn."""


_FEDAVG = (
    "fraction_train",
    "fraction_evaluate",
    "min_train_nodes",
    "min_evaluate_nodes",
    "min_available_nodes",
    "weighted_by_key",
    "arrayrecord_key",
    "configrecord_key",
    "train_metrics_aggr_fn",
    "evaluate_metrics_aggr_fn",
)
_FEDOPT = StateSpec(("current_arrays", "m_t", "v_t"), (*_FEDAVG, "eta", "eta_l", "tau", "beta_1", "beta_2"))
_ADAPTIVE = (
    "noise_multiplier",
    "num_sampled_clients",
    "target_clipped_quantile",
    "clip_norm_lr",
    "clipped_count_stddev",
)
_FLWR = "flwr.serverapp.strategy"

KNOWN: dict[str, StateSpec] = {
    f"{_FLWR}.fedavg.FedAvg": StateSpec(fixed=_FEDAVG),
    f"{_FLWR}.fedprox.FedProx": StateSpec(fixed=(*_FEDAVG, "proximal_mu")),
    f"{_FLWR}.fedavgm.FedAvgM": StateSpec(
        ("current_arrays", "momentum_vector"), (*_FEDAVG, "server_learning_rate", "server_momentum", "server_opt")
    ),
    f"{_FLWR}.fedadam.FedAdam": _FEDOPT,
    f"{_FLWR}.fedyogi.FedYogi": _FEDOPT,
    f"{_FLWR}.fedadagrad.FedAdagrad": _FEDOPT,
    f"{_FLWR}.dp_fixed_clipping.DifferentialPrivacyServerSideFixedClipping": StateSpec(
        ("current_arrays", "accountant", "_pending_events"),
        ("noise_multiplier", "clipping_norm", "num_sampled_clients"),
        ("strategy",),
    ),
    f"{_FLWR}.dp_adaptive_clipping.DifferentialPrivacyServerSideAdaptiveClipping": StateSpec(
        ("current_arrays", "clipping_norm"), _ADAPTIVE, ("strategy",)
    ),
    "server.central_dp._ServerSideAdaptiveClipping": StateSpec(
        ("current_arrays", "clipping_norm", "_next_clipping_norm"), _ADAPTIVE, ("strategy",)
    ),
    "server.central_dp.ExactSampleFedAvg": StateSpec(fixed=(*_FEDAVG, "sample_size")),
    "server.strategies.ExactSampleFedProx": StateSpec(fixed=(*_FEDAVG, "sample_size", "proximal_mu")),
    "server.central_dp.CentralDP": StateSpec(
        ("accountant",), ("noise_multiplier", "num_sampled", "composes_itself"), ("strategy",)
    ),
    "server.personalization.SharedLayers": StateSpec(fixed=("names", "_sent")),
    # The sites' names are learnt again from their next replies: node ids change when a simulation restarts.
    "server.strategy.RecordingStrategy": StateSpec(
        ("latest_histograms", "latest_class_histograms", "latest_round"),
        (
            "run_dir",
            "save_checkpoints",
            "round_timeout_s",
            "min_nodes",
            "_skipped",
            "_site_names",
            "_sent",
            "_recipients",
        ),
        ("inner", "central", "shared_layers"),
    ),
}
"""Each strategy class's `StateSpec`, by ``module.qualified_name``."""


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _spec(cls: type) -> tuple[str, StateSpec] | None:
    """The class's own description, else its nearest described base's."""
    for base in cls.__mro__:
        if _name(base) in KNOWN:
            return _name(base), KNOWN[_name(base)]
    return None


def _walk(obj: object, path: str, problems: list[str], seen: set[int]) -> Iterator[tuple[str, object, StateSpec]]:
    """Every described part under ``obj`` once, with its path (``strategy.inner.strategy``); problems noted."""
    if id(obj) in seen:
        return
    seen.add(id(obj))
    found = _spec(type(obj))
    if found is None:
        problems.append(f"{path} is a {_name(type(obj))}, whose state server.strategy_state does not know")
        return
    described, spec = found
    unknown = sorted(set(vars(obj)) - {*spec.state, *spec.fixed, *spec.parts})
    if unknown:
        problems.append(
            f"{path} ({_name(type(obj))}, described as {described}) has attribute(s) {unknown} that "
            "server.strategy_state names neither as state nor as settings"
        )
        return
    yield path, obj, spec
    for part in spec.parts:
        value = getattr(obj, part, None)
        if value is not None:
            yield from _walk(value, f"{path}.{part}", problems, seen)


def _saved(value: object) -> tuple[str, Any]:
    """An attribute as plain data: objects with ``state_dict`` (Flower's accountant) by their state dict."""
    if callable(getattr(value, "state_dict", None)) and callable(getattr(value, "load_state_dict", None)):
        return "state_dict", value.state_dict()  # type: ignore[attr-defined]
    return "value", value


def capture_state(strategy: object) -> SavedState:
    """The state of ``strategy`` and every part it wraps, with the reasons it cannot be resumed (if any).

    The values are the live objects (not copies): write them out (`torch.save`) before the next round changes them.
    """
    problems: list[str] = []
    parts = {
        path: {"class": _name(type(obj)), "values": {a: _saved(getattr(obj, a)) for a in spec.state if hasattr(obj, a)}}
        for path, obj, spec in _walk(strategy, "strategy", problems, set())
    }
    return {"parts": parts, "problems": problems}


def restore_state(strategy: object, saved: SavedState, *, source: str) -> None:
    """Put ``saved`` (from `capture_state`) back into ``strategy``, built anew from the same config.

    Objects with a state dict are loaded in place, so parts that share one (the central-DP accountant, held by
    Flower's wrapper and by `CentralDP`) keep sharing it.

    Raises
    ------
    ConfigError
        If the saved state was not complete (it names why), or ``strategy`` is not built like the saved one (another
        strategy, other privacy settings), naming ``source`` (the checkpoint file).
    """
    if saved["problems"]:
        raise ConfigError(
            f"{source} cannot be resumed: {'; '.join(saved['problems'])}; describe the class in "
            "server.strategy_state.KNOWN, or start a new run"
        )
    problems: list[str] = []
    current = {path: obj for path, obj, _ in _walk(strategy, "strategy", problems, set())}
    built = {path: _name(type(obj)) for path, obj in current.items()}
    wanted = {path: part["class"] for path, part in saved["parts"].items()}
    if problems or built != wanted:
        raise ConfigError(
            f"{source} holds a strategy built as {wanted}, but this config builds {built}"
            + (f" ({'; '.join(problems)})" if problems else "")
            + ": resume with the run's own config (strategy.name, privacy.mode and their settings)"
        )
    for path, part in saved["parts"].items():
        obj = current[path]
        for attribute, (kind, value) in part["values"].items():
            if kind == "state_dict":
                getattr(obj, attribute).load_state_dict(value)
            else:
                setattr(obj, attribute, value)
