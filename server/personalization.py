"""FedBN on the server: train replies lack the sites' normalization layers; each gets the ones the server sent."""

from __future__ import annotations

import logging

from flwr.app import ArrayRecord, Message

from common import wire
from common.config import AppConfig
from common.models.norm_layers import model_norm_state_names

__all__ = ["SharedLayers"]

logger = logging.getLogger(__name__)


class SharedLayers:
    """Under ``personalization.fedbn``, makes every train reply a whole model before any strategy aggregates it.

    A site's reply holds its shared layers only (`client.local_layers`), but Flower's strategies (FedAvg, FedAdam,
    the DP wrappers) expect every reply to carry the keys of the global model. Each reply's normalization entries
    are set to the arrays the server sent that round, in the global model's key order: their update is then zero,
    so every strategy works unchanged, the global model's normalization layers stay as initialized, and the shared
    layers aggregate exactly as plain FedAvg would over them. An entry a reply did carry (a SecAgg+ aggregate, whose
    zero update comes back up to quantization, or a site that sent what it should have kept) is replaced as well:
    under FedBN no site's normalization layers enter the global model.
    """

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names
        self._sent: ArrayRecord | None = None

    @classmethod
    def from_config(cls, config: AppConfig) -> SharedLayers | None:
        """The filler for the run's model; None without ``personalization.fedbn``."""
        if not config.personalization.fedbn:
            return None
        model = config.model
        names = model_norm_state_names(model.name, norm=model.norm, num_classes=model.num_classes)
        if not names:
            logger.warning("personalization.fedbn: model %s has no normalization layers; FedBN is plain FedAvg",
                           model.name)  # fmt: skip
        elif model.norm == "frozen_bn":
            logger.warning(
                "personalization.fedbn with model.norm = frozen_bn: frozen BatchNorm never trains, so each site keeps "
                "the layers it started from; use model.norm = groupnorm for layers that adapt to each site"
            )
        return cls(names)

    def remember(self, arrays: ArrayRecord) -> None:
        """Keep the global model of the round being configured (a reference: the strategy keeps it anyway)."""
        self._sent = arrays

    def restore(self, aggregate: ArrayRecord | None) -> ArrayRecord | None:
        """The aggregate with the sent normalization entries: exact even where a strategy moved them anyway (central
        DP noises every array it releases; putting back public values is post-processing, which keeps the guarantee).
        """
        if aggregate is None or self._sent is None:
            return aggregate
        sent = self._sent
        pinned = {key for key in self.names if key in sent}
        return ArrayRecord({key: sent[key] if key in pinned else aggregate[key] for key in aggregate})

    def complete(self, server_round: int, replies: list[Message]) -> None:
        """Give every successful train reply the sent normalization entries, in place.

        Raises
        ------
        RuntimeError
            If no round was configured through `remember` (a wiring error: nothing to complete the replies with).
        """
        sent = self._sent
        if sent is None:
            raise RuntimeError(f"round {server_round}: FedBN replies to complete, but no global model was remembered")
        for reply in replies:
            if reply.has_error() or not reply.has_content() or wire.ARRAYS_KEY not in reply.content:
                continue
            trained = reply.content[wire.ARRAYS_KEY]
            carried = sum(1 for key in trained if key in self.names)
            if carried:
                logger.debug("round %d: %d normalization entries in a reply replaced by the sent ones (FedBN)",
                             server_round, carried)  # fmt: skip
            arrays = {key: sent[key] if key in self.names else trained[key] for key in sent
                      if key in self.names or key in trained}  # fmt: skip
            # A shared key missing, or one the global model lacks, is left to the strategy's own consistency check.
            arrays |= {key: trained[key] for key in trained if key not in arrays}
            reply.content[wire.ARRAYS_KEY] = ArrayRecord(arrays)
