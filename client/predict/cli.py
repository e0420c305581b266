"""`fedmammo predict`: the subcommand's options, and the console view of the card, each image and the outcome."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

__all__ = ["add_predict_parser", "run_predict"]


def add_predict_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register the ``predict`` subcommand on the ``fedmammo`` parser (nothing heavy is imported here)."""
    parser = commands.add_parser(
        "predict",
        help="score mammograms with a trained model: probabilities, Grad-CAM heatmap and box, overlays, DICOM results",
        description="Score DICOM (MONOCHROME1/2) or PNG/PGM/JPEG mammograms with a model file and its card "
        "(<MODEL>.json, written beside every global_model.pt): the images are preprocessed as the card says training "
        "did. Writes to --out one <name>.overlay.png per image (the heatmap of the headline class over the original "
        "image, the suspicious box and the score), <name>.sc.dcm (Secondary Capture) and <name>.gsps.dcm (the box as "
        "a presentation state) per DICOM image, and predictions.json. When the image holds no evidence for the "
        "headline class (a flat heatmap) no box is drawn anywhere and each output says so. A file that cannot be used "
        "is skipped with its reason; the exit status is 1 only when no image could be scored. Research software, not "
        "a medical device.",
    )
    parser.add_argument("model", help="the model file (global_model.pt); its card <MODEL>.json must be beside it")
    parser.add_argument("images", nargs="+", help="DICOM files (any suffix) or .png/.pgm/.jpg/.tif images")
    parser.add_argument("--out", required=True, help="folder for the overlays, DICOM results and predictions.json")
    parser.add_argument(
        "--allow-hash-mismatch",
        action="store_true",
        help="predict with a model file whose SHA-256 differs from its card's (refused otherwise)",
    )
    parser.add_argument("--no-dicom", action="store_true", help="write no DICOM results (overlays and JSON only)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    parser.set_defaults(handler=run_predict)


def _card_table(lines: list[tuple[str, str]]) -> Table:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for label, value in lines:
        table.add_row(label, escape(value))
    return table


def _show_record(console: Console, record: dict[str, Any]) -> None:
    from client.predict.records import no_evidence  # loaded by then: records are made there

    name = escape(record["file"])
    if record["status"] != "ok":
        console.print(f"[red]skipped[/] {name}: {escape(record['error'])}", highlight=False, soft_wrap=True)
        return
    headline, box, peak = record["headline"], record["box"], record["peak"]
    outputs = [record["outputs"]["overlay"], *record["outputs"]["dicom"]]
    where = (
        f"box rows {box['row0']}-{box['row1']} cols {box['col0']}-{box['col1']}, peak ({peak['row']}, {peak['col']})"
        if box is not None and peak is not None
        else escape(no_evidence(headline["class"]))
    )
    console.print(
        f"[green]scored[/] {name}: {escape(headline['class'])} {headline['score']:.3f}, {where} "
        f"-> {escape(', '.join(outputs))}",
        highlight=False,
        soft_wrap=True,
    )
    for warning in record["warnings"]:
        console.print(f"  [yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)


def _show_breasts(console: Console, records: list[dict[str, Any]], rule_name: str) -> None:
    """One line per breast (its views combined) and per exam, when some exam has two or more scored images."""
    from client.predict.exam_records import exam_section

    section = exam_section(records, rule_name)
    if not any(exam["num_images"] >= 2 for exam in section["exams"]):
        return
    rule = section["exam_rule"]
    fallback = f" (asked: {rule['requested']}; {rule['note']})" if rule["note"] else ""
    table = Table(title=f"per breast and exam, rule {rule['name']}{escape(fallback)}", title_justify="left")
    for column in ("study", "breast", "views", "score"):
        table.add_column(column)
    for breast in section["breasts"]:
        views = ", ".join(v or "?" for v in breast["views"])
        study = breast["study_id"] or "-"
        table.add_row(escape(study[-12:]), breast["laterality"] or "?", views, f"{breast['score']:.3f}")
    for exam in section["exams"]:
        table.add_row(
            escape((exam["study_id"] or "-")[-12:]), "exam", f"{exam['num_images']} image(s)", f"{exam['score']:.3f}"
        )
    console.print(table)


def run_predict(args: argparse.Namespace, console: Console) -> int:
    """Load the model (refusing one without a card or with another hash), score each image, report; exit 1 if none."""
    from client.predict.card_summary import card_lines, card_warnings
    from client.predict.model_file import load_predict_model
    from client.predict.run import predict_files

    model = load_predict_model(args.model, allow_hash_mismatch=args.allow_hash_mismatch, device=args.device)
    console.print(f"[bold]fedmammo predict[/] {escape(str(model.path))}", highlight=False, soft_wrap=True)
    console.print(_card_table(card_lines(model.card, sha256=model.sha256, hash_matches=model.hash_matches)))
    for warning in card_warnings(model.card, hash_matches=model.hash_matches):
        console.print(f"[bold red]WARNING: {escape(warning)}.[/]", highlight=False, soft_wrap=True)
    run = predict_files(
        model, args.images, args.out, dicom=not args.no_dicom, on_record=lambda r: _show_record(console, r)
    )
    _show_breasts(console, run.records, model.config.evaluation.exam_rule)
    failed = len(run.records) - run.num_ok
    console.print(
        f"{run.num_ok} of {len(run.records)} image(s) scored{f', {failed} skipped' if failed else ''}; "
        f"results: {escape(str(run.predictions_path))}",
        highlight=False,
        soft_wrap=True,
    )
    return 1 if run.all_failed else 0
