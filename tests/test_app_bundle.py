"""The app staged for `flwr run` holds exactly the files Flower would bundle from the clone, without walking ignores."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.cli.utils import collect_files, filter_paths_for_publish

from simulations.app_bundle import app_files, stage_app


def _write(root: Path, relative: str, text: str = "x = 1\n") -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """An app folder with code, config, ignored folders (a venv, past runs), Flower's own exclusions and a link."""
    root = tmp_path / "clone"
    _write(root, ".gitignore", "# outputs\n.venv/\nruns/\n*.egg-info/\n/build/\nsecret.py\n")
    _write(root, "pyproject.toml", "[project]\nname = 'app'\n")
    for relative in ("common/a.py", "server/report/b.py", "conf/x.yaml", "README.md", "data/table.json", "LICENSE"):
        _write(root, relative)
    _write(root, "image.png", "not bundled")
    _write(root, "secret.py")  # ignored file at the top
    _write(root, "common/build/kept.py")  # /build/ is anchored: this one stays
    for relative in (".venv/lib/site.py", "runs/2026/metrics.jsonl", "app.egg-info/PKG.json", "build/out.py",
                     "common/__pycache__/a.py", ".flwr/config.toml"):  # fmt: skip
        _write(root, relative)
    (root / "linked.py").symlink_to(root / "common" / "a.py")
    return root


def test_app_files_are_the_files_flower_bundles(clone: Path) -> None:
    # Execute
    ours = app_files(clone)
    # Assert
    assert ours == sorted(filter_paths_for_publish(collect_files(clone)))
    assert "common/a.py" in ours and "common/build/kept.py" in ours and "pyproject.toml" in ours
    assert not any(p.startswith((".venv/", "runs/", "build/")) or p in ("secret.py", "linked.py") for p in ours)


def test_a_negated_gitignore_pattern_walks_every_folder_and_still_matches_flower(clone: Path) -> None:
    # Prepare: "!" could re-include a file under an ignored folder, so no folder may be skipped whole
    (clone / ".gitignore").write_text(".venv/\nruns/*\n!runs/keep.py\n", encoding="utf-8")
    _write(clone, "runs/keep.py")
    # Execute / Assert
    assert app_files(clone) == sorted(filter_paths_for_publish(collect_files(clone)))


def test_stage_app_copies_the_bundled_files_with_their_content(clone: Path, tmp_path: Path) -> None:
    # Execute
    staged = stage_app(clone, tmp_path / "staged")
    # Assert
    copied = sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file())
    assert copied == app_files(clone)
    assert (staged / "pyproject.toml").read_bytes() == (clone / "pyproject.toml").read_bytes()
