"""Nothing derived from a file path or a manifest value leaves a site: replies, shared logs and the server's files.

Names are generated (hypothesis): folder names, file names, patient ids and labels made of letters from several
scripts and digits, joined by spaces, commas, parentheses, semicolons, " and ", quotes and other punctuation, and
reached through relative paths. Each generated site fails in one way; what it sends must hold none of them.
"""

from __future__ import annotations

import ast
import csv
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.client_app import app
from client.safe_reply import reply_with_error_on_failure, site_label
from client.site import UNNAMED_SITE_NAME, resolve_site
from common import wire
from common.config import AppConfig, load_config
from common.errors import DicomError, FedMammoError, ManifestError, public_text
from common.file_log import FILE_LOG_ENV
from common.models import build_model

pytestmark = pytest.mark.usefixtures("flower_identity")

REPO = Path(__file__).resolve().parents[1]

# Letters of several scripts (never digits alone, so no name is a bare count or line number in a reply) and digits.
_LETTERS = "abcXYZéüßøÆЖжяλΩ李王阿ñ"
_DIGITS = "0123456789"
_SEPARATORS = (" ", ", ", " (", ") ", "; ", " and ", "-", "_", ".", "'", '"', "#", "&", "[", "]", "{", "}", "%", "+")

FAILURES = ("no manifest", "corrupt images", "bad label", "unknown class", "unreadable files", "bad header")


@st.composite
def _token(draw: st.DrawFn) -> str:
    """A name fragment of 3+ characters mixing letters and digits (``MRN0012345``-like, in any script)."""
    head = draw(st.text(alphabet=_LETTERS, min_size=2, max_size=4))
    number = draw(st.text(alphabet=_DIGITS, min_size=1, max_size=5))
    tail = draw(st.text(alphabet=_LETTERS, max_size=3))
    return head + number + tail


@st.composite
def _name(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A folder or file name and its fragments: tokens joined by punctuation ('Doe, Jane (MRN 12); and ...')."""
    tokens = draw(st.lists(_token(), min_size=1, max_size=3))
    separators = draw(st.lists(st.sampled_from(_SEPARATORS), min_size=len(tokens) - 1, max_size=len(tokens) - 1))
    name = tokens[0] + "".join(sep + token for sep, token in zip(separators, tokens[1:], strict=True))
    return name, tokens


_NAMES = st.tuples(*(_name() for _ in range(6)))


def _config(tmp: Path) -> AppConfig:
    return load_config(
        {
            "federation.num_sites": 2,
            "data.image_size": 32,
            "model.name": "small_cnn",
            "training.batch_size": 8,
            "privacy.mode": "local",
            "privacy.noise_multiplier": 1.0,
            "federation.data_dir": str(tmp),
        }
    )


def _query(kind: str, config: AppConfig, node: int) -> Message:
    model = build_model(config.model.name, num_classes=config.model.num_classes, in_channels=1, norm=config.model.norm)
    content = RecordDict(
        {wire.ARRAYS_KEY: ArrayRecord(model.state_dict()), wire.CONFIG_KEY: ConfigRecord({wire.SERVER_ROUND: 1})}
    )
    return Message(content=content, message_type=kind, dst_node_id=node)


def build_failing_site(root: Path, names: tuple[tuple[str, list[str]], ...], failure: str) -> tuple[Path, list[str]]:
    """A site under ``root`` whose folders, files, patient ids and labels carry ``names``, failing as ``failure``.

    Layout: ``<top>/<sub> site/manifest.csv`` lists ``../<images> scans/<file> i.dcm`` (and ``./../`` spellings).
    Returns the manifest's path (which may not exist) and every fragment a reply must not hold.
    """
    (top, _), (sub, _), (images, _) = names[:3]
    (file, _), (patient, _), (extra, _) = names[3:]
    site = root / top / f"{sub} site"
    folder = root / top / f"{images} scans"
    site.mkdir(parents=True)
    folder.mkdir(parents=True)
    columns = ["image_path", "label", "patient_id"]
    rows = []
    for index in range(4):
        image = folder / f"{file} {index}.dcm"
        if failure == "unreadable files":
            if index % 3 == 0:
                image.mkdir()
            elif index % 3 == 1:
                os.symlink(folder / f"{file} loop {index}", image)
                os.symlink(image, folder / f"{file} loop {index}")
            else:
                os.symlink(folder / f"{extra} gone", image)
        else:
            image.write_text(f"not an image: {patient} {file}", encoding="utf-8")
        label = {"bad label": extra, "unknown class": "2"}.get(failure, str(index % 2))
        spelled = ("../" if index % 2 else "./../") + f"{folder.name}/{image.name}"
        rows.append({"image_path": spelled, "label": label, "patient_id": f"{patient} {index // 2}"})
    if failure == "bad header":
        columns = ["image_path", "label", extra]
        rows = [{"image_path": row["image_path"], "label": row["label"], extra: row["patient_id"]} for row in rows]
    manifest = site / "manifest.csv"
    if failure == "no manifest":
        manifest = site / f"{extra}.csv"
    else:
        with manifest.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
    fragments = [token for _, tokens in names for token in tokens]
    return manifest, fragments


def _texts(reply: Message) -> list[str]:
    """Every text a reply carries: its error reason, or every key and value of its records."""
    texts = [reply.error.reason] if reply.has_error() else []
    if reply.has_content():
        for record in (*reply.content.config_records.values(), *reply.content.metric_records.values()):
            texts += [f"{key}={value!r}" for key, value in record.items()]
    return texts


def _leaks(texts: list[str], fragments: list[str]) -> list[tuple[str, str]]:
    return [(fragment, text) for text in texts for fragment in fragments if fragment.casefold() in text.casefold()]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@contextmanager
def shared_logs() -> Iterator[list[str]]:
    """Everything the process logs at INFO and above (with tracebacks), as a simulation's flower.log would get it."""
    handler, root = _Records(), logging.getLogger()
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield handler.lines
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=_NAMES, failure=st.sampled_from(FAILURES), named=st.booleans())
def test_a_failing_site_sends_no_fragment_of_its_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, names: tuple[tuple[str, list[str]], ...], failure: str, named: bool
) -> None:
    # Prepare: a site whose every name is generated, failing as drawn; file detail kept out of shared logs
    monkeypatch.setenv(FILE_LOG_ENV, "off")
    root = Path(tempfile.mkdtemp(dir=tmp_path))
    manifest, fragments = build_failing_site(root, names, failure)
    config = _config(root)
    node_config = {"manifest": str(manifest), "cache-dir": str(manifest.parent / ".cache")}
    if named:
        node_config["site-name"] = "hosp-a"
    context = Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config=config.to_flat())
    # Execute: a training and an evaluation round
    with shared_logs() as logged:
        replies = [app(_query(kind, config, 1), context) for kind in ("train", "evaluate")]
    # Assert: both fail, with the type and a fixed reason, and nothing sent or logged holds a fragment
    for reply in replies:
        assert reply.has_error(), failure
        label = "hosp-a: " if named else f"{UNNAMED_SITE_NAME}: "
        assert reply.error.reason.startswith((label + "ManifestError: ", label + "DicomError: ")), reply.error.reason
    assert _leaks([text for reply in replies for text in _texts(reply)], fragments) == []
    assert _leaks(logged, fragments) == []


def test_a_site_that_trains_despite_bad_rows_sends_no_fragment_of_its_names(
    tiny_federation: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: phantom images copied into a folder named after a patient, one corrupt, one listed twice;
    # the SuperNode names no site-name (so no folder name may stand in for one)
    monkeypatch.setenv(FILE_LOG_ENV, "off")
    fragments = ["MRN0012345", "Jäne7", "Dœ42"]
    folder = tmp_path / "MRN0012345 Dœ42, Jäne7 (1962); and" / "scans of Jäne7"
    folder.mkdir(parents=True)
    with (tiny_federation / "site_0" / "manifest.csv").open(newline="") as handle:
        source = list(csv.DictReader(handle))[:16]
    rows = []
    for index, row in enumerate(source):
        image = folder / f"Dœ42 Jäne7 {index}.dcm"
        image.write_bytes((tiny_federation / "site_0" / row["image_path"]).read_bytes())
        rows.append({**row, "image_path": f"./{image.name}", "patient_id": f"MRN0012345-{index // 2}"})
    (folder / f"Dœ42 Jäne7 {0}.dcm").write_text("corrupt MRN0012345")
    rows.append({**rows[1], "image_path": f"../{folder.name}/{Path(rows[1]['image_path']).name}"})
    with (folder / "manifest.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    config = _config(tmp_path)
    context = Context(
        run_id=1,
        node_id=1,
        node_config={"manifest": str(folder / "manifest.csv")},
        state=RecordDict(),
        run_config=config.to_flat(),
    )
    # Execute
    with shared_logs() as logged:
        replies = [app(_query(kind, config, 1), context) for kind in ("train", "evaluate")]
    # Assert: both rounds ran, under the placeholder name; no fragment in the replies or the shared log
    for reply in replies:
        assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
        assert reply.content[wire.SITE_KEY][wire.SITE_NAME] == "unnamed-site"
    assert _leaks([text for reply in replies for text in _texts(reply)], fragments) == []
    assert _leaks(logged, fragments) == []
    assert any("manifest line 2 skipped: DicomError: not a DICOM file" in line for line in logged)
    assert any("manifest line 18 lists the same image as line 3" in line for line in logged)


def test_the_servers_files_of_failed_sites_hold_no_fragment(tmp_path: Path) -> None:
    # Prepare: one generated site per kind of failure, as the sites of one round, each its own node
    from hypothesis import find

    from server.report import RunDirectory, build_report
    from server.strategy import build_strategy
    from server.summary import build_summary

    names = find(_NAMES, lambda drawn: all(" and " in name or ", " in name for name, _ in drawn[:2]))
    config = _config(tmp_path)
    replies: dict[str, list[Message]] = {"train": [], "evaluate": []}
    fragments: list[str] = []
    for node, failure in enumerate(FAILURES, start=1):
        manifest, tokens = build_failing_site(tmp_path / failure, names, failure)
        fragments += tokens
        context = Context(
            run_id=1, node_id=node, node_config={"manifest": str(manifest)}, state=RecordDict(), run_config={}
        )
        context.run_config = config.to_flat()
        for kind in replies:
            replies[kind].append(app(_query(kind, config, node), context))
    run_dir = RunDirectory(tmp_path / "run")
    strategy = build_strategy(config, run_dir)
    # Execute: the server records the round, writes the summary and the report
    strategy.aggregate_train(1, replies["train"])
    strategy.aggregate_evaluate(1, replies["evaluate"])
    run_dir.write_summary(build_summary(config, run_dir.read_metrics(), duration_s=1.0))
    build_report(run_dir.path)
    # Assert: every failure recorded, by type, and no written file holds a fragment
    written = {path.name: path.read_text(encoding="utf-8") for path in run_dir.path.glob("*.*") if path.is_file()}
    assert {"metrics.jsonl", "summary.json", "report.html"} <= set(written)
    assert _leaks(list(written.values()), fragments) == []
    assert written["metrics.jsonl"].count("ManifestError") + written["metrics.jsonl"].count("DicomError") == 12


def test_an_error_reply_holds_the_type_and_the_fixed_reason_never_the_message() -> None:
    # Prepare: fedmammo's own error whose message names a file with a patient's name, and a library's error
    failures = [
        DicomError("/data/Doe, Jane (MRN 12); and/x.dcm is not a DICOM file", public="not a DICOM file", lines=[4]),
        FileExistsError(17, "File exists", "/tmp/site/MRN0012345_DOE_JANE"),
    ]
    context = Context(run_id=1, node_id=1, node_config={"site-name": "hosp-a"}, state=RecordDict(), run_config={})
    message = Message(content=RecordDict(), dst_node_id=1, message_type="train")
    reasons = []
    for failure in failures:

        def handler(msg: Message, ctx: Context, failure: Exception = failure) -> Message:
            raise failure

        # Execute
        reasons.append(reply_with_error_on_failure(handler)(message, context).error.reason)
    # Assert
    assert reasons == [
        "hosp-a: DicomError: not a DICOM file (manifest line 4)",
        "hosp-a: unexpected FileExistsError (details in the site's own log; nothing more is sent)",
    ]


def test_public_reasons_take_only_numbers_and_line_numbers() -> None:
    with pytest.raises(TypeError, match="must be numbers"):
        ManifestError("m", public="the manifest at {} is missing", figures=("/data/MRN12/m.csv",))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be integers"):
        ManifestError("m", public="bad rows", lines=["MRN12"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="must be numbers"):
        ManifestError("m").extended("[{}]", "MRN12")  # type: ignore[arg-type]
    error = ManifestError("m /data/x.csv", public="{} invalid row(s)", figures=(30,), lines=range(2, 32))
    assert public_text(error) == (
        "ManifestError: 30 invalid row(s) (manifest lines 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, "
        "19, 20, 21 and 10 more)"
    )


def _module_literals() -> dict[str, set[str]]:
    """Module-level ``NAME = "literal"`` assignments of the code base: name -> the modules that define it."""
    found: dict[str, set[str]] = {}
    for path in _sources():
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            if _is_literal(value, {}):
                for target in targets:
                    if isinstance(target, ast.Name):
                        found.setdefault(target.id, set()).add(str(path))
    return found


def _sources() -> list[Path]:
    return [path for folder in ("client", "common", "server", "simulations") for path in (REPO / folder).rglob("*.py")]


def _is_literal(node: ast.AST | None, names: dict[str, set[str]]) -> bool:
    """A string literal, a conditional between such, or the name of a module-level string literal."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, ast.IfExp):
        return _is_literal(node.body, names) and _is_literal(node.orelse, names)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _is_literal(node.left, names) and _is_literal(node.right, names)
    return isinstance(node, ast.Name) and node.id in names


def test_every_public_reason_in_the_code_is_a_fixed_text() -> None:
    """By construction: a public reason is written in the source, never built from a path, a value or a message."""
    names = _module_literals()
    offenders = []
    for path in _sources():
        if path == REPO / "common" / "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            given = [keyword.value for keyword in node.keywords if keyword.arg == "public"]
            if isinstance(node.func, ast.Attribute) and node.func.attr == "extended" and node.args:
                given.append(node.args[0])
            loose = [value for value in given if not _is_literal(value, names)]
            offenders += [f"{path.relative_to(REPO)}:{value.lineno}" for value in loose]
    assert offenders == []


def test_an_unnamed_site_has_one_name_in_its_replies_and_its_error_replies() -> None:
    # The server must not see an unnamed SuperNode's failures under another site than its results
    node_config = {"manifest": "/data/site.csv"}

    assert site_label(node_config) == resolve_site(node_config, load_config({})).name == UNNAMED_SITE_NAME


def test_an_error_class_without_a_fixed_reason_still_sends_its_class_default() -> None:
    class Custom(FedMammoError):
        pass

    assert public_text(Custom("/data/MRN12/x.csv is broken")) == (
        "Custom: failed on this site (the reason is in the site's own log)"
    )


def test_the_simulation_keeps_file_detail_out_of_flower_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: stop the launcher where it starts the SuperLink, keeping the environment it gives the sites
    import simulations.launcher as launcher

    given: dict[str, str] = {}

    class Stop(Exception):
        pass

    def superlink(_home: Path, _log: Path, env: dict[str, str], *_rest: object) -> int:
        given.update(env)
        raise Stop

    monkeypatch.setattr(launcher, "_local_superlink", superlink)
    # Execute
    with pytest.raises(Stop):
        launcher.run_simulation(load_config({}), tmp_path / "run")
    # Assert
    assert given[FILE_LOG_ENV] == "off"


def test_file_detail_reaches_the_sites_own_log_unless_turned_off(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from common.file_log import file_log

    with caplog.at_level(logging.WARNING):
        file_log().warning("kept on a SuperNode: /data/MRN12/x.dcm")
        monkeypatch.setenv(FILE_LOG_ENV, "off")
        file_log().warning("dropped in a simulation: /data/MRN34/y.dcm")

    assert "MRN12" in caplog.text and "MRN34" not in caplog.text
