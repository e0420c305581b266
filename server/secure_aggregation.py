"""SecAgg+ for the federation: a Grid that runs each round's training through Flower's SecAgg+ workflow."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.common import FitIns, FitRes, NDArrays, Parameters, Scalar, parameters_to_ndarrays
from flwr.common.constant import ErrorCode
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.compat.common import recorddict_compat as compat
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy as LegacyStrategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState
from flwr.serverapp import Grid

from common import wire
from common.config import AppConfig
from common.config.schema import SECAGG_MODULUS
from server.delegating_grid import DelegatingGrid

__all__ = ["SecureAggregationGrid"]

logger = logging.getLogger(__name__)


class _ProtocolGrid(DelegatingGrid):
    """The grid Flower's SecAgg+ workflow talks through: each step's timeout, and why each lost node was lost.

    The workflow keeps only the nodes that answered; the error a node sent (a declined round's reason) or the step
    it fell silent in is kept here, by node, so its row in ``metrics.jsonl`` says why. A masked-vector reply that
    still carries arrays (only a client without Flower's mod would send them) has them dropped unread.
    """

    def __init__(self, grid: Grid, *, key_timeout_s: float, train_timeout_s: float | None) -> None:
        super().__init__(grid)
        self._key_timeout_s = key_timeout_s
        self._train_timeout_s = train_timeout_s
        self.lost: dict[int, Error] = {}

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Send one SecAgg+ step with its own timeout; remember who failed or stayed silent."""
        messages = list(messages)
        if not messages:
            return []
        stage = str(messages[0].content.config_records[RECORD_KEY_CONFIGS][Key.STAGE])
        wait = self._train_timeout_s if stage == Stage.COLLECT_MASKED_VECTORS else self._key_timeout_s
        replies = list(self._grid.send_and_receive(messages, timeout=wait))
        # The SuperLink answers for an unavailable node under its own id: match replies to what was sent.
        sent_to = {m.metadata.message_id: m.metadata.dst_node_id for m in messages if m.metadata.message_id}
        answered = set()
        for reply in replies:
            node = sent_to.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
            answered.add(node)
            if reply.has_error():
                self.lost.setdefault(node, reply.error)
                continue
            for record in reply.content.array_records.values():
                if len(record):
                    logger.warning("node %d sent arrays with its masked update; dropped unread", node)
                    record.clear()
        for node in {m.metadata.dst_node_id for m in messages} - answered:
            reason = f"no reply to the secure-aggregation step '{stage}' within {wait:g} s; left out of the sum"
            self.lost.setdefault(node, Error(code=ErrorCode.REPLY_MESSAGE_UNAVAILABLE, reason=reason))
        return replies


class _RoundCapture(LegacyStrategy):
    """The legacy strategy the workflow asks: our train requests as its FitIns, and the secure aggregate back.

    Flower's workflow puts the unmasked aggregate into every result's parameters before it calls
    ``aggregate_fit``, so no result here holds one site's update.
    """

    def __init__(self, requests: dict[int, FitIns], proxies: dict[int, ClientProxy]) -> None:
        self._requests = requests
        self._proxies = proxies
        self.results: dict[int, FitRes] = {}
        self.aggregate: NDArrays | None = None

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        """Not used: the global model is the new-API strategy's."""
        return None

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """The round's train requests, one FitIns per node."""
        return [(self._proxies[node], ins) for node, ins in self._requests.items()]

    def aggregate_fit(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures: list[object]
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Keep each site's plaintext metrics and the one secure aggregate."""
        self.results = {int(proxy.cid): res for proxy, res in results}
        if results:
            self.aggregate = parameters_to_ndarrays(results[0][1].parameters)
        return None, {}

    def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: ClientManager) -> list:
        """No evaluation here: the new-API strategy evaluates."""
        return []

    def aggregate_evaluate(self, server_round: int, results: list, failures: list) -> tuple[float | None, dict]:
        """No evaluation here."""
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        """No server-side evaluation here."""
        return None


class _SecAggPlus(SecAggPlusWorkflow):
    """Flower's SecAgg+ workflow, in which a site lost before the masking step is as if it had not been sampled.

    Flower 1.41 keeps such a site among the sampled ones, so its unmask step counts it as dropped and asks the
    others for key shares it never gave them (a ``KeyError`` on every site: the round is lost for all). Nobody
    masks with a site that has not finished the key exchange, so after each key-exchange step the sites that did
    not answer leave the sampled set and every neighbourhood; a site lost while training is still unmasked as
    the protocol intends. Only this bookkeeping changes; the cryptography is Flower's.
    """

    def setup_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        """Flower's setup step; sites without public keys are then forgotten."""
        return _forget_absent(state, super().setup_stage(grid, context, state))

    def share_keys_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        """Flower's key-sharing step; sites that shared no keys are then forgotten."""
        return _forget_absent(state, super().share_keys_stage(grid, context, state))


def _forget_absent(state: WorkflowState, proceed: bool) -> bool:
    absent = state.sampled_node_ids - state.active_node_ids
    state.sampled_node_ids = set(state.active_node_ids)
    for neighbours in state.nid_to_neighbours.values():
        neighbours -= absent
    return proceed


_HALTED = (
    "secure aggregation halted before the masks could be removed (too few sites answered, or a step failed: the "
    "server's log says which); this round's updates were not used"
)


def _count(value: float) -> int | float:
    """Flower reads a float in (0, 1] as a fraction and an int as a count."""
    return int(value) if value > 1 else float(value)


def _one_global_model(requests: list[Message]) -> ArrayRecord:
    """The arrays every train request carries: the aggregated update is added back to them."""
    first = requests[0].content[wire.ARRAYS_KEY]
    for request in requests[1:]:
        other = request.content[wire.ARRAYS_KEY]
        if other is not first and (
            list(other.keys()) != list(first.keys()) or any(other[k].data != first[k].data for k in first)
        ):
            raise ValueError("secure aggregation needs one global model per round: the train requests differ")
    return first


def _fit_ins(request: Message) -> FitIns:
    arrays = request.content[wire.ARRAYS_KEY]
    config = {**request.content[wire.CONFIG_KEY], wire.SECAGG_ARRAY_NAMES: ",".join(arrays.keys())}
    return FitIns(compat.arrayrecord_to_parameters(arrays, keep_input=True), config)  # type: ignore[arg-type]


def _updated(start: ArrayRecord, update: NDArrays) -> ArrayRecord:
    """``start`` plus the aggregated update, each array in its own dtype (integer buffers rounded)."""
    arrays = {}
    for (name, array), delta in zip(start.items(), update, strict=True):
        base = array.numpy()
        value = base.astype(np.float64) + np.asarray(delta, dtype=np.float64).reshape(base.shape)
        arrays[name] = Array(np.asarray(np.rint(value) if np.issubdtype(base.dtype, np.integer) else value, base.dtype))
    return ArrayRecord(arrays)


def _reply_content(arrays: ArrayRecord, flat: dict[str, Scalar]) -> RecordDict:
    """A site's train reply as the strategy knows it: the aggregate, and the site's own metrics and site record."""
    metrics = {
        key.removeprefix(wire.SECAGG_METRICS_PREFIX): value
        for key, value in flat.items()
        if key.startswith(wire.SECAGG_METRICS_PREFIX) and isinstance(value, int | float) and not isinstance(value, bool)
    }
    prefix = wire.SECAGG_SITE_PREFIX
    site = {key.removeprefix(prefix): value for key, value in flat.items() if key.startswith(prefix)}
    return RecordDict(
        {
            wire.ARRAYS_KEY: ArrayRecord(dict(arrays.items())),
            wire.METRICS_KEY: MetricRecord(metrics),
            wire.SITE_KEY: ConfigRecord(site),  # type: ignore[arg-type]
        }
    )


class SecureAggregationGrid(DelegatingGrid):
    """The run's grid, with each round's training sent through Flower's SecAgg+ workflow instead of in clear.

    Flower 1.41 has SecAgg+ only in its legacy workflow, so the new-API strategy's ``start`` loop stays as it is
    and this grid stands between it and the sites: train requests become the workflow's FitIns (through a legacy
    strategy that only hands them over and takes the aggregate back), the sites mask their updates (local minus
    global weights; `client.secure_aggregation`), and the strategy receives one reply per site that took part,
    each carrying the same arrays: the global model plus the securely aggregated update, with that site's own
    metrics and site record. FedAvg's weighted mean of identical arrays is the aggregate itself, so the strategy,
    its recording and central DP's noise and accountant run unchanged, and nothing on the server ever holds one
    site's update. A site that failed, declined or fell silent gets an error reply saying why. Evaluation and
    every other message pass through unchanged.
    """

    def __init__(self, grid: Grid, config: AppConfig) -> None:
        super().__init__(grid)
        secure = config.secure_aggregation
        self._key_timeout_s = secure.timeout_s
        self._workflow = _SecAggPlus(
            _count(secure.num_shares),
            _count(secure.reconstruction_threshold),
            max_weight=secure.max_weight_under(config.privacy.central),
            clipping_range=secure.clipping_range,
            quantization_range=secure.quantization_range,
            modulus_range=SECAGG_MODULUS,
            timeout=None,  # each step's timeout is set by `_ProtocolGrid`
        )

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """A round's train requests through SecAgg+; anything else through the wrapped grid."""
        messages = list(messages)
        if not messages or any(m.metadata.message_type != MessageType.TRAIN for m in messages):
            return self._grid.send_and_receive(messages, timeout=timeout)
        return self._secure_round(messages, timeout)

    def _secure_round(self, requests: list[Message], timeout: float | None) -> list[Message]:
        start = _one_global_model(requests)
        server_round = int(requests[0].content[wire.CONFIG_KEY].get(wire.SERVER_ROUND, 0))
        protocol = _ProtocolGrid(self._grid, key_timeout_s=self._key_timeout_s, train_timeout_s=timeout)
        nodes = [request.metadata.dst_node_id for request in requests]
        proxies = {node: GridClientProxy(node, protocol, self.run.run_id) for node in nodes}
        capture = _RoundCapture({node: _fit_ins(r) for node, r in zip(nodes, requests, strict=True)}, proxies)
        context = LegacyContext(Context(self.run.run_id, 0, {}, RecordDict(), {}), strategy=capture)
        for proxy in proxies.values():
            context.client_manager.register(proxy)
        context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: server_round})
        context.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord()  # the FitIns carry the model
        try:
            self._workflow(protocol, context)
        except Exception:  # one site's malformed step must not end the federation: the round is lost, and logged
            logger.exception("round %d: the secure-aggregation protocol failed", server_round)
            capture.aggregate = None
        aggregate = None
        if capture.aggregate is not None:
            # Every site sat out (weight 0): nothing to add, and Flower's division by the summed weights is void.
            trained = sum(result.num_examples for result in capture.results.values()) > 0
            aggregate = _updated(start, capture.aggregate) if trained else ArrayRecord(dict(start.items()))
        logger.info("round %d: secure aggregation summed %d of %d site update(s)", server_round,
                    len(capture.results) if aggregate is not None else 0, len(requests))  # fmt: skip
        return [self._reply(request, aggregate, capture, protocol) for request in requests]

    @staticmethod
    def _reply(
        request: Message, aggregate: ArrayRecord | None, capture: _RoundCapture, protocol: _ProtocolGrid
    ) -> Message:
        """The aggregate with the site's own records, or an error saying why the site is not in it."""
        node = request.metadata.dst_node_id
        if aggregate is not None and node in capture.results:
            return Message(_reply_content(aggregate, capture.results[node].metrics), reply_to=request)
        halted = Error(code=ErrorCode.UNKNOWN, reason=_HALTED)
        return Message(protocol.lost.get(node, halted), reply_to=request)
