"""FedBN at the site: its normalization layers live in a file of its own, and a train reply carries the others only."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from flwr.common import NDArrays

from client.site import SiteSpec
from common.config import AppConfig
from common.errors import ModelError
from common.file_names import file_safe
from common.models.norm_layers import model_norm_state_names

__all__ = ["LOCAL_LAYERS_DIR", "LocalLayers", "secure_sum_arrays"]

logger = logging.getLogger(__name__)

LOCAL_LAYERS_DIR = "fedbn_layers"
"""Folder beside the site's privacy ledger holding each run's local normalization layers (one small file a run)."""

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class LocalLayers:
    """One site's normalization layers for one run under ``personalization.fedbn``, kept on the site's own disk.

    Files, not Flower's ``context.state``: a real SuperNode that restarts mid-run loses its node state, and a site
    that lost its layers would fall back to the server's (never-trained) ones without a word. They sit beside the
    privacy ledger (the folder the site already keeps its state in and must be able to write), named after the site,
    the run and the round that trained them, so two runs never share layers and a restarted SuperNode or a resumed
    run finds them again. A round trains from the layers of the site's last round before it, never its own: a round
    sent again after a resume starts where it started the first time, so its update is the one released before
    (which the ledger recognizes and does not charge twice). Only that previous round's file is kept besides the
    latest one.
    """

    names: frozenset[str]
    """State-dict keys of the model's normalization layers (`common.models.norm_layers`)."""
    folder: Path
    stem: str
    """``<site>.run-<run>``: each round's file is ``<stem>.round-<n>.pt`` in ``folder``."""

    @classmethod
    def for_site(cls, site: SiteSpec, config: AppConfig, run_key: str, run_id: int) -> LocalLayers | None:
        """The site's local layers for the run; None without ``personalization.fedbn``.

        The run is named by the server's run key (`common.wire.RUN_KEY`, sent with every train and evaluate request
        and kept when the run resumes under a new Flower run id), else by Flower's run id.
        """
        if not config.personalization.fedbn:
            return None
        names = model_norm_state_names(config.model.name, norm=config.model.norm, num_classes=config.model.num_classes)
        run = file_safe(run_key) if run_key else f"flwr-{run_id}"
        return cls(names, site.ledger.expanduser().parent / LOCAL_LAYERS_DIR, f"{file_safe(site.name)}.run-{run}")

    def personalized(self, received: Mapping[str, torch.Tensor], *, through_round: int) -> State:
        """The received global weights with this site's own normalization layers (those of its latest round up to
        ``through_round``) in place of the server's.

        Training round ``n`` passes ``n - 1``, evaluating it ``n``. Until the site has trained in this run (its
        first round, or an evaluation before it ever trained) it has no layers of its own, and the received ones are
        used: the model it then trains starts from the global one.

        Raises
        ------
        ModelError
            If the saved layers do not fit the received model (other keys or shapes): the file is not this
            run's model's, and training on a mix would fail later with an opaque error.
        """
        rounds = [n for n in self._rounds() if n <= through_round]
        if not rounds:
            return dict(received)
        path = self._path(max(rounds))
        saved = torch.load(path, map_location="cpu", weights_only=True)
        expected = self.names & set(received)
        if set(saved) != expected or any(saved[k].shape != received[k].shape for k in expected):
            raise ModelError(
                f"the local normalization layers in {path} do not fit this run's model "
                f"({len(saved)} saved, {len(expected)} expected): delete the file to start them from the global model",
                public="the site's local normalization layers (personalization.fedbn) do not fit this run's model",
            )
        return {key: saved.get(key, value) for key, value in received.items()}

    def keep(self, trained: Mapping[str, torch.Tensor], server_round: int) -> State:
        """Save round ``server_round``'s trained normalization layers on the site's disk; return the rest, the only
        part that may leave. Files older than the latest one before this round are removed."""
        self._save({key: value for key, value in trained.items() if key in self.names}, self._path(server_round))
        earlier = [n for n in self._rounds() if n < server_round]
        for n in earlier:
            if n != max(earlier):
                self._path(n).unlink(missing_ok=True)
        return {key: value for key, value in trained.items() if key not in self.names}

    def _path(self, server_round: int) -> Path:
        return self.folder / f"{self.stem}.round-{server_round}.pt"

    def _rounds(self) -> list[int]:
        """The rounds whose layers are on disk (the stem holds only letters, digits, ``-``, ``_`` and ``.``)."""
        prefix = f"{self.stem}.round-"
        names = (path.name for path in self.folder.glob(f"{prefix}*.pt"))
        return [int(digits) for name in names if (digits := name[len(prefix) : -len(".pt")]).isdigit()]

    @staticmethod
    def _save(layers: State, path: Path) -> None:
        """Write atomically (a temporary file renamed into place): a crash mid-write leaves the earlier files."""
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=".layers-", suffix=".tmp", dir=path.parent)
        os.close(handle)
        try:
            torch.save({key: value.detach().cpu().clone() for key, value in layers.items()}, temporary)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


def secure_sum_arrays(trained: ArrayRecord, names: list[str], received: NDArrays, config: AppConfig) -> ArrayRecord:
    """The arrays a site puts into a SecAgg+ sum under FedBN: its trained shared layers, and the received
    normalization layers in place of its own (a zero update: the server's copy stays as it was, as without SecAgg+).

    SecAgg+ masks one vector over every array the server sent (``names``, in order), so a site cannot leave its
    local layers out of it; sending the received values there adds nothing to the sum and reveals nothing.
    Without ``personalization.fedbn``, or when nothing is missing, ``trained`` is returned as it is.
    """
    if not config.personalization.fedbn or list(trained.keys()) == names:
        return trained
    local = model_norm_state_names(config.model.name, norm=config.model.norm, num_classes=config.model.num_classes)
    arrays = {}
    for name, start in zip(names, received, strict=True):
        if name in trained:
            arrays[name] = trained[name]
        elif name in local:
            arrays[name] = Array(np.asarray(start))
    return ArrayRecord(arrays)  # a key missing for another reason stays missing: `secure_update` refuses it
