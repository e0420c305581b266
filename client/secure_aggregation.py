"""SecAgg+ on the site: Flower's ``secaggplus_mod`` around the ClientApp's own train handler (one training path)."""

from __future__ import annotations

import copy
import functools
import logging

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, NDArrays, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.compat.common import recorddict_compat as compat
from flwr.supercore.differential_privacy import clip_inputs_inplace, get_norm

from client.local_layers import secure_sum_arrays
from client.safe_reply import reply_with_error_on_failure
from common import wire
from common.config import AppConfig, load_config
from common.errors import ConfigError, ModelError

__all__ = ["secure_aggregation_mod", "secure_update"]

logger = logging.getLogger(__name__)


class _TrainingFailed(Exception):
    """The train handler replied with an error: that reply, not a masked vector, goes back to the server."""

    def __init__(self, error: Error) -> None:
        super().__init__(error.reason)
        self.error = error


def secure_update(
    received: NDArrays, local: ArrayRecord, names: list[str], metrics: MetricRecord, config: AppConfig
) -> tuple[NDArrays, int]:
    """The update this site puts into the secure sum (local minus received weights, float64) and its weight.

    The weight is what plain FedAvg would weigh the site by: its training examples, or 1 under central DP (where
    each site's update is first clipped to ``privacy.update_clip_norm`` here, since the server never sees it to clip
    it); 0 when the site sat the round out. A non-finite update is refused: in the sum it would spoil every site's
    aggregate unseen, where a plain server would have left it out.

    Raises
    ------
    ModelError
        If the trained arrays do not match the received ones, or hold NaN or inf.
    """
    if list(local.keys()) != names:
        raise ModelError(f"trained arrays {list(local.keys())} differ from the received {names}")
    pairs = zip(names, received, strict=True)
    # At least 1-d: Flower's unmasking shifts and scales each array in place, which a 0-d array (a scalar buffer
    # such as BatchNorm's step count) silently escapes; the server restores each array's own shape.
    update = [
        np.atleast_1d(local[name].numpy().astype(np.float64) - np.asarray(start, np.float64)) for name, start in pairs
    ]
    if not all(np.isfinite(array).all() for array in update):
        raise ModelError(
            "the trained weights hold NaN or inf", public="non-finite weights (NaN or inf) in its update; not sent"
        )
    examples = int(metrics.get(wire.NUM_EXAMPLES, 0))
    weight = 0 if examples == 0 else 1 if config.privacy.central else examples
    if config.privacy.central and get_norm(update) > config.privacy.update_clip_norm:
        clip_inputs_inplace(update, config.privacy.update_clip_norm)
    secure = config.secure_aggregation
    scale = weight / secure.max_weight_under(config.privacy.central)
    clipped = sum(int(np.count_nonzero(np.abs(array * scale) > secure.clipping_range)) for array in update)
    if clipped:  # Flower clips them silently; the site's own log says so, and which keys to change
        logger.warning(
            "%d update value(s) x weight %.3g exceed secure_aggregation.clipping_range = %g and are clipped: raise "
            "it (or secure_aggregation.max_weight, for a weight above 1)",
            clipped,
            scale,
            secure.clipping_range,
        )
    return update, weight


def _train_for_secure_sum(fit: Message, context: Context, *, config: AppConfig, train: ClientAppCallable) -> Message:
    """Flower's FitIns as our train request, our train reply as Flower's FitRes: the update and the site's records."""
    fitins = compat.recorddict_to_fitins(fit.content, keep_input=True)
    names = str(fitins.config.pop(wire.SECAGG_ARRAY_NAMES)).split(",")
    received = parameters_to_ndarrays(fitins.parameters)
    request = copy.copy(fit)  # same metadata, our own records: the train handler cannot tell the difference
    request.content = RecordDict(
        {
            wire.ARRAYS_KEY: ArrayRecord({name: Array(array) for name, array in zip(names, received, strict=True)}),
            wire.CONFIG_KEY: ConfigRecord(dict(fitins.config)),
        }
    )
    reply = train(request, context)
    if reply.has_error():
        raise _TrainingFailed(reply.error)
    metrics = reply.content[wire.METRICS_KEY]
    trained = secure_sum_arrays(reply.content[wire.ARRAYS_KEY], names, received, config)  # FedBN: zero update there
    update, weight = secure_update(received, trained, names, metrics, config)
    flat = {f"{wire.SECAGG_METRICS_PREFIX}{key}": value for key, value in metrics.items()}
    flat |= {f"{wire.SECAGG_SITE_PREFIX}{key}": value for key, value in reply.content[wire.SITE_KEY].items()}
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(update), weight, flat)  # type: ignore[arg-type]
    return Message(compat.fitres_to_recorddict(fitres, keep_input=False), reply_to=fit)


def _check_unmask_request(msg: Message) -> None:
    """Refuse an unmask request that would reveal this site's update on its own.

    Flower's mod sends, for each neighbour the server calls active, a share of that neighbour's mask seed, and for
    each it calls dead, a share of its key. A server that names one node both ways, or this node dead while it is
    answering, collects both secrets for one site and can unmask its update alone: the protocol assumes a server
    that follows it, and this set check (no cryptography) keeps a hostile one from skipping it.
    """
    configs = msg.content.config_records[RECORD_KEY_CONFIGS]
    if configs.get(Key.STAGE) != Stage.UNMASK:
        return
    active = set(configs.get(Key.ACTIVE_NODE_ID_LIST, []))
    dead = set(configs.get(Key.DEAD_NODE_ID_LIST, []))
    if active & dead or msg.metadata.dst_node_id in dead:
        raise ConfigError(
            "the server's unmask request names a node both active and dead, or this node dead",
            public="refused an unmask request that names a node both active and dead (it would expose one update)",
        )


def _secure_step(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    config = load_config(context.run_config)
    if RECORD_KEY_CONFIGS not in msg.content.config_records:
        if config.secure_aggregation.enabled:
            raise ConfigError(
                "secure_aggregation.enabled is true but the server sent a plain train request",
                public="refused a plain train request: this run uses secure aggregation, so no update is sent in clear",
            )
        return call_next(msg, context)
    _check_unmask_request(msg)
    try:
        return secaggplus_mod(msg, context, functools.partial(_train_for_secure_sum, config=config, train=call_next))
    except _TrainingFailed as failed:  # a declined or failed round: the server records its reason as it is
        return Message(failed.error, reply_to=msg)


def secure_aggregation_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """A ClientApp mod: SecAgg+ steps go through Flower's ``secaggplus_mod``, which calls the train handler
    (``call_next``) through `_train_for_secure_sum` in its masking step; every other message passes unchanged.

    Under ``secure_aggregation.enabled`` a plain train request is refused: a misconfigured server would otherwise
    receive this site's update in clear. A failure on the site becomes an error reply in fixed words
    (`reply_with_error_on_failure`), a failed training its own error reply.
    """
    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, context)

    @reply_with_error_on_failure
    def train(message: Message, ctx: Context) -> Message:
        return _secure_step(message, ctx, call_next)

    return train(msg, context)
