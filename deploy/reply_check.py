"""What may leave the hospital in a reply, checked by the gate before it is pushed (`deploy.policy` for tasks).

Only allowed metric names leave; arrays only in a training reply (and not at all where the hospital requires
secure aggregation); a trained model only with the epsilon and noise multiplier it was trained with, within the
policy; config records only the site's name, Flower's empty status and SecAgg+'s protocol record in a training
reply. A refusal names the record and key and the rule, never the value it would have sent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from fnmatch import fnmatchcase
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

from common import wire
from deploy.policy import EPSILON_KEY, NOISE_KEY, HospitalPolicy, PolicyRefused

__all__ = ["check_reply", "reported"]

SITE_KEYS = frozenset({wire.SITE_NAME, wire.SITE_POOLED})
"""The site record's only entries: the name the hospital chose, and the simulation's pooled flag."""
STATUS_RECORD = "fitres.status"
METRIC_CONFIG_RECORDS = frozenset({"fitres.metrics", "evaluateres.metrics"})
"""Config records that carry metrics (the legacy format SecAgg+ replies use): checked like metric records."""
SECAGG_METRICS, SECAGG_SITE = wire.SECAGG_METRICS_PREFIX, wire.SECAGG_SITE_PREFIX
FINE_TUNED_EPSILON = "ft_epsilon"
"""The site's epsilon after the final evaluation's fine-tuning (`personalization.fine_tune_epochs`); NaN when the
site declined to fine-tune, which spent nothing."""


def _metric_records(content: RecordDict) -> list[tuple[str, Mapping[str, Any]]]:
    """Every record of metrics, by record name; a SecAgg+ reply's ``metrics.<name>`` entries under their names."""
    records: list[tuple[str, Mapping[str, Any]]] = []
    for key, record in content.items():
        if isinstance(record, MetricRecord):
            records.append((key, record))
        elif isinstance(record, ConfigRecord) and key in METRIC_CONFIG_RECORDS:
            records.append((key, {n.removeprefix(SECAGG_METRICS): v for n, v in record.items()
                                  if not n.startswith(SECAGG_SITE)}))  # fmt: skip
    return records


def reported(content: RecordDict, key: str) -> float | None:
    """A number the reply reports under ``key`` in any of its metric records (epsilon, noise multiplier)."""
    for _, record in _metric_records(content):
        value = record.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def _check_config_record(key: str, record: ConfigRecord, *, trains: bool, train_message: bool) -> None:
    if key == wire.SITE_KEY:
        extra = sorted(set(record) - SITE_KEYS)
    elif key in METRIC_CONFIG_RECORDS:
        extra = sorted(n for n in record if n.startswith(SECAGG_SITE) and n.removeprefix(SECAGG_SITE) not in SITE_KEYS)
        extra += sorted(n for n in record if not n.startswith((SECAGG_SITE, SECAGG_METRICS)))
    elif key == STATUS_RECORD:  # Flower's legacy status: a code and, from our app, an empty message
        extra = sorted(set(record) - {"code", "message"}) + (["message"] if record.get("message") else [])
    elif key == RECORD_KEY_CONFIGS and train_message:  # SecAgg+'s steps are train messages; one carries the model
        extra = [Key.MASKED_PARAMETERS] if Key.MASKED_PARAMETERS in record and not trains else []
    else:
        raise PolicyRefused(f"config record {key!r} is not one the hospital's policy lets leave in this reply")
    if extra:
        raise PolicyRefused(f"config record {key!r} holds {extra}, which the hospital's policy does not let leave")


def _sends_model(content: RecordDict) -> bool:
    masked = content.get(RECORD_KEY_CONFIGS)
    return any(isinstance(r, ArrayRecord) and len(r) for r in content.values()) or (
        isinstance(masked, ConfigRecord) and Key.MASKED_PARAMETERS in masked  # SecAgg+: the model, masked
    )


def check_reply(policy: HospitalPolicy, content: RecordDict, *, trains: bool, train_message: bool = False) -> None:
    """Withhold a reply that would send what the policy does not allow.

    ``trains``: the message carried the model to train (a round's training); ``train_message``: it was a train
    message at all (SecAgg+'s key-exchange and unmask steps are train messages without a model).

    Raises
    ------
    PolicyRefused
        Naming the record and key and the rule (never the value).
    """
    for key, record in content.items():
        if isinstance(record, ArrayRecord) and len(record):
            if not trains:
                raise PolicyRefused(f"record {key!r} would send model arrays in a reply that is not a training one")
            if policy.require_secure_aggregation:
                raise PolicyRefused(f"record {key!r} would send the model unmasked; the policy requires SecAgg+")
        elif isinstance(record, ConfigRecord):
            _check_config_record(key, record, trains=trains, train_message=train_message or trains)
    for key, record in _metric_records(content):
        for name in record:
            if not any(fnmatchcase(name, pattern) for pattern in policy.allowed_metrics):
                raise PolicyRefused(f"metric {name!r} in record {key!r} is not in the hospital's allowed-metrics")
    fine_tuned = reported(content, FINE_TUNED_EPSILON)  # the final evaluation's fine-tuning spent privacy too
    declined = fine_tuned is None or math.isnan(fine_tuned)  # NaN: the site declined to fine-tune, spent nothing
    if policy.max_epsilon is not None and not declined and not fine_tuned <= policy.max_epsilon:
        raise PolicyRefused(f"the fine-tuning's epsilon is above the hospital's policy maximum {policy.max_epsilon:g}")
    if not (trains and _sends_model(content)):
        return
    epsilon, noise = reported(content, EPSILON_KEY), reported(content, NOISE_KEY)
    if policy.max_epsilon is not None or policy.min_noise_multiplier > 0:
        if epsilon is None or not math.isfinite(epsilon):
            raise PolicyRefused("a trained model would leave without the (finite) epsilon it cost")
        if policy.max_epsilon is not None and not epsilon <= policy.max_epsilon:
            raise PolicyRefused(f"the epsilon reported is above the hospital's policy maximum {policy.max_epsilon:g}")
    sat_out = bool(reported(content, wire.SAT_OUT))  # trained nothing: the received model goes back unchanged
    if policy.min_noise_multiplier > 0 and not sat_out:
        if noise is None or not math.isfinite(noise):
            raise PolicyRefused("a trained model would leave without the noise multiplier it was trained with")
        if not noise >= policy.min_noise_multiplier:
            raise PolicyRefused(
                f"the noise multiplier reported is below the hospital's policy minimum {policy.min_noise_multiplier:g}"
            )
