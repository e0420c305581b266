"""Tests for server.report.study_page: study.html and its plots built from a study folder's study.json."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from server.report import StudyFolderError, build_study_report
from server.report.study_plots import (
    plot_comparisons,
    plot_loso,
    plot_reliability,
    plot_study_matrix,
    plot_study_roc,
)
from server.report.study_sections import signed
from tests.study_fixture import FIXTURE_FAILURE, write_study_fixture

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EVIL_SITE = "<b>site&1</b>"
PLOTS = ("study_matrix.png", "study_loso.png", "study_reliability.png", "study_roc.png", "study_comparisons.png")


class _Page(HTMLParser):
    """Every ``<img src>`` and every table of a page, as lists of rows of cell texts (headers first)."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images.append(dict(attrs).get("src") or "")
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "br" and self._cell is not None:
            self._cell.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def table(self, header: str) -> list[list[str]]:
        """The first table with a column headed ``header``."""
        return next(t for t in self.tables if t and header in t[0])


def _page(html_text: str) -> _Page:
    page = _Page()
    page.feed(html_text)
    return page


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    folder = tmp_path_factory.mktemp("study")
    study = json.loads(write_study_fixture(folder).read_text())
    return folder, study, build_study_report(folder).read_text()


@pytest.mark.parametrize("with_nulls", [False, True])
def test_the_page_builds_and_every_image_it_shows_is_a_png_beside_it(tmp_path: Path, with_nulls: bool) -> None:
    write_study_fixture(tmp_path, with_nulls=with_nulls)

    report = build_study_report(tmp_path)
    page = _page(report.read_text())

    assert report == tmp_path / "study.html"
    assert sorted(page.images) == sorted(PLOTS)
    for src in page.images:
        assert (tmp_path / src).read_bytes().startswith(PNG_SIGNATURE)


def test_sections_come_in_order_and_the_page_needs_nothing_from_outside(built: tuple[Path, dict, str]) -> None:
    _, _, html_text = built
    headings = re.findall(r"<h2>(.*?)</h2>", html_text)

    assert [h.split(" ")[0] for h in headings] == [
        "The", "Comparison", "Does", "Leave", "Calibration:", "Subgroups", "ROC", "How", "Failures", "Configuration",
    ]  # fmt: skip
    assert "research software, not a medical device" in html_text and "paired" in html_text
    assert "<script" not in html_text and not re.search(r"(src|href)=\"(https?:)?//", html_text)
    assert "computed from binned score histograms" in html_text
    assert FIXTURE_FAILURE.replace("'", "&#x27;") in html_text
    assert "<details><summary>Configuration of the study</summary><pre>" in html_text


def test_the_comparison_table_shows_the_studys_numbers_to_three_decimals(built: tuple[Path, dict, str]) -> None:
    _, study, html_text = built
    rows = {row[0]: row for row in _page(html_text).table("Federated − local (95% CI)")[1:]}

    for site in study["sites"]:
        federated, local = study["matrix"]["federated"][site], study["matrix"][f"local:{site}"][site]
        difference = next(c for c in study["comparisons"] if c["site"] == site and c["b"] == f"local:{site}")
        assert rows[site][4].startswith(f"{federated['auc']:.3f} ({federated['auc_ci_low']:.3f}–")
        assert rows[site][2].startswith(f"{local['auc']:.3f} (")
        assert rows[site][5] == (
            f"{signed(difference['difference'])} ({signed(difference['ci_low'])} to {signed(difference['ci_high'])})"
        )
    assert rows["pooled"][4].startswith(f"{study['matrix']['federated']['pooled']['auc']:.3f} (")
    first = study["comparisons"][0]
    assert f"Federating changed AUC at {first['site']} by <b>{signed(first['difference'])}</b>" in html_text


def test_a_too_small_subgroup_shows_no_figure(built: tuple[Path, dict, str]) -> None:
    _, _, html_text = built
    small = [row for row in _page(html_text).table("Attribute")[1:] if row[2] == "D"]

    assert small and all(row[3] == "too small (n=4)" for row in small)
    assert all(cell == "—" for row in small for cell in row[4:])


def test_site_names_are_escaped_everywhere(tmp_path: Path) -> None:
    write_study_fixture(tmp_path, sites=(EVIL_SITE, "site-1"), with_nulls=True)

    html_text = build_study_report(tmp_path).read_text()

    assert EVIL_SITE not in html_text and "<b>site" not in html_text
    assert "&lt;b&gt;site&amp;1&lt;/b&gt;" in html_text


def test_nulls_read_as_could_not_be_measured_and_na(tmp_path: Path) -> None:
    study = json.loads(write_study_fixture(tmp_path, with_nulls=True).read_text())

    html_text = build_study_report(tmp_path).read_text()
    rows = {row[0]: row for row in _page(html_text).table("Federated − local (95% CI)")[1:]}

    assert f"At {study['sites'][-1]}, the effect of federating on AUC <b>could not be measured</b>" in html_text
    assert rows[study["sites"][-1]][4:] == ["n/a (CI n/a)", "n/a", "n/a"]
    assert "local site-1 (untrained: every round failed)" in html_text


def test_a_single_site_study_has_no_loso_and_still_builds(tmp_path: Path) -> None:
    write_study_fixture(tmp_path, sites=("only",))

    html_text = build_study_report(tmp_path).read_text()

    assert "No leave-one-site-out models" in html_text and not (tmp_path / "study_loso.png").exists()
    assert (tmp_path / "study_matrix.png").read_bytes().startswith(PNG_SIGNATURE)


@pytest.mark.parametrize("draw", [plot_study_matrix, plot_loso, plot_reliability, plot_study_roc, plot_comparisons])
def test_every_plot_draws_nothing_from_an_empty_study(tmp_path: Path, draw) -> None:
    assert draw({"sites": ["a"], "models": {}, "matrix": {}}, tmp_path / "x.png") is None
    assert not (tmp_path / "x.png").exists()


def test_a_missing_folder_or_study_json_is_named(tmp_path: Path) -> None:
    with pytest.raises(StudyFolderError, match="does not exist"):
        build_study_report(tmp_path / "typo")
    with pytest.raises(StudyFolderError, match=re.escape(str(tmp_path / "study.json")) + " does not exist"):
        build_study_report(tmp_path)


def test_broken_json_is_named_with_where_it_breaks(tmp_path: Path) -> None:
    (tmp_path / "study.json").write_text('{"schema": 1, "sites": [', encoding="utf-8")

    with pytest.raises(StudyFolderError, match=re.escape(str(tmp_path / "study.json")) + r" is not valid JSON.*line 1"):
        build_study_report(tmp_path)


@pytest.mark.parametrize("schema", [2, "1", None])
def test_an_unsupported_schema_is_refused_with_the_file_and_the_rule(tmp_path: Path, schema: object) -> None:
    path = write_study_fixture(tmp_path)
    study = json.loads(path.read_text())
    study["schema"] = schema
    path.write_text(json.dumps(study), encoding="utf-8")

    with pytest.raises(StudyFolderError, match=re.escape(str(path)) + r": 'schema' = .* reads study.json schema 1"):
        build_study_report(tmp_path)
    assert not (tmp_path / "study.html").exists()


def test_wrongly_typed_parts_are_all_listed_at_once(tmp_path: Path) -> None:
    (tmp_path / "study.json").write_text(json.dumps({"schema": 1, "sites": "site-0", "models": []}))

    with pytest.raises(StudyFolderError, match=r"'sites' must be a list.*'models' must be an object.*'matrix'"):
        build_study_report(tmp_path)


def test_the_loso_table_has_each_sites_drop_and_the_pooled_held_out_auc(built: tuple[Path, dict, str]) -> None:
    _, study, html_text = built
    rows = {row[0]: row for row in _page(html_text).table("Held-out site")[1:]}

    for site in study["sites"]:
        drop = next(c for c in study["comparisons"] if c["site"] == site and c["b"] == f"loso:{site}")
        assert rows[site][2].startswith(f"{study['matrix'][f'loso:{site}'][site]['auc']:.3f} (")
        assert rows[site][3].startswith(f"{signed(drop['difference'])} (")
    pooled = next(row for name, row in rows.items() if name.startswith("pooled"))
    assert pooled[2].startswith(f"{study['held_out_pooled']['auc']:.3f} (")


def test_failures_without_a_model_or_round_read_as_a_dash(tmp_path: Path) -> None:
    path = write_study_fixture(tmp_path)
    study = json.loads(path.read_text())
    study["failures"].append({"stage": "discover", "model": None, "site": None, "round": None, "error": "timed out",
                              "declined": False})  # fmt: skip
    path.write_text(json.dumps(study), encoding="utf-8")

    rows = _page(build_study_report(tmp_path).read_text()).table("Outcome")[1:]

    assert rows[-1] == ["discover", "—", "—", "—", "failed", "timed out"]
    assert rows[0][1:4] == ["local site-1", "site-1", "3"]
