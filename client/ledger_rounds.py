"""Which run and round each spending in a site's ledger is for, and the rule for a round trained a second time.

A stopped run resumes from its last checkpoint, so the round it was in when it stopped is sent again, and the site
may already have trained that round and charged its ledger. Charging it twice would overstate the spending; not
charging a second, different release would understate it. The rule follows what the site itself can check:

* Same run, same round, and the update about to leave is byte for byte the one recorded before (same release
  digest, computed here on the site): nothing new leaves the site (the second copy is a function of the first),
  so the round keeps its one entry and nothing is added. With seeded DP-SGD noise (``privacy.secure_mode=false``,
  the default: the noise is seeded by the run's seed, the site and the round) a re-run of a round from the same
  global weights on the same data, code and hardware reproduces exactly that update.
* Seeded noise and a different update (other data, code or hardware): the same noise would sit on two different
  updates, and their difference would carry no noise at all. No accountant covers that, so the site declines the
  round (`PrivacyBudgetExceeded`) and records nothing.
* ``privacy.secure_mode=true`` (noise from a cryptographic generator): a re-run is a fresh release under fresh
  noise, and the first one may have reached the server; it is charged as one more entry for the same round, and the
  round's budget check counts the first one too.

The digest is the site's own, so a server cannot make two different releases pass as one, whatever run key or round
number it sends: the rule never charges less than what left the site.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from client.ledger_steps import added_steps
from common.errors import PrivacyBudgetExceeded
from common.privacy import History, history_from_lists, history_to_lists

__all__ = [
    "RoundEntry",
    "RoundRelease",
    "entries_from_json",
    "entries_to_json",
    "history_for_round",
    "release_digest",
    "settle",
]


@dataclass(frozen=True)
class RoundEntry:
    """The steps one round of one run charged, and the digest of the update that round released."""

    run: str
    round: int
    release: str
    history: History


@dataclass(frozen=True)
class RoundRelease:
    """A trained round about to be recorded: its run key (from the server), round, noise kind and update digest."""

    run: str
    round: int
    seeded: bool
    """Whether the DP noise was seeded (``privacy.secure_mode=false``), so a re-run reproduces the same update."""
    release: str = ""


def release_digest(state_dict: Mapping[str, torch.Tensor], *figures: float) -> str:
    """A SHA-256 of the update a round releases: every tensor's name, dtype, shape and bytes, plus ``figures``
    (the example count and training loss that leave with it)."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    digest.update("|".join(repr(float(figure)) for figure in figures).encode())
    return "sha256:" + digest.hexdigest()


def _same_round(entry: RoundEntry, run: str, server_round: int) -> bool:
    return entry.run == run and entry.round == server_round


def history_for_round(
    history: Sequence[tuple[float, float, int]],
    entries: Sequence[RoundEntry],
    run: str,
    server_round: int,
    *,
    seeded: bool,
) -> History:
    """The history a round trains from (and checks its budget against).

    With seeded noise an earlier attempt of the same run and round is left out: the attempt either reproduces
    it (and replaces it, costing nothing) or is declined (`settle`). With fresh noise it stays in, as the new
    release adds to it.
    """
    if not seeded or not run:
        return list(history)
    earlier = [step for entry in entries if _same_round(entry, run, server_round) for step in entry.history]
    return added_steps(history, earlier)


def settle(entries: Sequence[RoundEntry], release: RoundRelease, added: History) -> tuple[list[RoundEntry], History]:
    """The ledger's round entries once ``release`` (which spent ``added``) is recorded, and the steps to charge.

    Raises
    ------
    PrivacyBudgetExceeded
        With seeded noise, when this run's round was released before with a different update (see the module).
    """
    earlier = [entry for entry in entries if _same_round(entry, release.run, release.round)]
    if any(entry.release == release.release for entry in earlier):
        return list(entries), []  # the identical update is already charged: one entry for the round
    if earlier and release.seeded:
        raise PrivacyBudgetExceeded(
            f"declined: round {release.round} of run {release.run} was trained on this site before and released a "
            "different update; with seeded DP noise (privacy.secure_mode=false) the two would share their noise, "
            "and their difference would leave without any, so the site sits this round out (other data, code or "
            "hardware since the first attempt change the update)",
            public="declined: round {} of this run was trained on this site before and released a different "
            "update; with seeded DP noise the two would share their noise and their difference would leave without "
            "any, so the site sits this round out",
            figures=(release.round,),
        )
    if not added:
        return list(entries), []
    return [*entries, RoundEntry(release.run, release.round, release.release, list(added))], list(added)


def entries_to_json(entries: Sequence[RoundEntry]) -> list[dict[str, object]]:
    """Round entries as JSON-ready dicts (the ledger file's ``rounds``)."""
    return [
        {"run": e.run, "round": e.round, "release": e.release, "history": history_to_lists(e.history)} for e in entries
    ]


def entries_from_json(value: object) -> list[RoundEntry]:
    """Inverse of `entries_to_json`.

    Raises
    ------
    ValueError
        If ``value`` is not a list of such entries (the ledger reading it reports the file as unreadable).
    """
    if not isinstance(value, list):
        raise ValueError(f"'rounds' must be a list, got {type(value).__name__}")
    entries = []
    for index, item in enumerate(value):
        if not isinstance(item, dict) or not all(isinstance(item.get(key), str) for key in ("run", "release")):
            raise ValueError(f"'rounds' entry {index} must hold a str 'run' and 'release'")
        if not isinstance(item.get("round"), int) or isinstance(item.get("round"), bool):
            raise ValueError(f"'rounds' entry {index} must hold an int 'round'")
        entries.append(RoundEntry(item["run"], item["round"], item["release"], history_from_lists(item["history"])))
    return entries
