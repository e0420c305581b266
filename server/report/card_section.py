"""The report's model-card section: links to ``global_model.pt``'s card, and the weights' SHA-256 checked against it."""

from __future__ import annotations

import logging
from html import escape
from pathlib import Path

from common.errors import ModelError
from common.models import card_path, read_card
from common.models.weights_card import file_sha256

__all__ = ["GLOBAL_MODEL_FILE", "render_card_section"]

logger = logging.getLogger(__name__)

GLOBAL_MODEL_FILE = "global_model.pt"


def render_card_section(run_dir: str | Path) -> str:
    """HTML (escaped here) naming the global model's card, its Markdown and the weights' SHA-256; "" without a card.

    The hash is checked against the file in the folder as it is now, so a report rebuilt after the weights were
    replaced says so instead of vouching for other bytes. A damaged card is reported, never fatal to the report.
    """
    weights = Path(run_dir) / GLOBAL_MODEL_FILE
    try:
        card = read_card(weights)
    except ModelError as exc:
        logger.warning("model card of %s unreadable: %s", weights, exc)
        return f'<h2>Model card</h2><p class="warn">The model card could not be read: {escape(str(exc))}</p>'
    if card is None:
        return ""
    recorded = str(card["weights"]["sha256"])
    if not weights.is_file():
        check = '<span class="warn">the weights file is missing from this folder</span>'
    elif file_sha256(weights) == recorded.lower():
        check = "matches the file in this folder"
    else:
        check = '<span class="warn">does NOT match the file in this folder: it was changed after the run</span>'
    markdown = weights.with_name(weights.name + ".md")
    links = [f'<a href="{escape(p.name)}">{escape(p.name)}</a>' for p in (markdown, card_path(weights)) if p.is_file()]
    return (
        "<h2>Model card</h2>"
        f"<p>What <code>{escape(GLOBAL_MODEL_FILE)}</code> is, how and where it was trained, its limits and "
        f"intended use (research software, not a medical device): {' and '.join(links)}.</p>"
        f"<p>Weights SHA-256: <code>{escape(recorded)}</code> ({check}).</p>"
    )
