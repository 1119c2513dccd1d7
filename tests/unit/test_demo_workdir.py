"""``python -m devtools.demo --workdir DIR`` deletes only what a demo left there."""

from __future__ import annotations

from pathlib import Path

import pytest

from devtools import demo

ROOT = Path(__file__).resolve().parents[2]


def test_a_new_directory_is_made_and_marked(tmp_path: Path) -> None:
    workdir = tmp_path / "a" / "b"
    assert demo.prepare_workdir(workdir) is None
    assert [p.name for p in workdir.iterdir()] == [demo.MARKER]


def test_an_empty_directory_is_used(tmp_path: Path) -> None:
    assert demo.prepare_workdir(tmp_path) is None
    assert [p.name for p in tmp_path.iterdir()] == [demo.MARKER]


def test_a_demo_directory_is_emptied_for_the_next_run(tmp_path: Path) -> None:
    assert demo.prepare_workdir(tmp_path) is None
    (tmp_path / "kafka" / "data").mkdir(parents=True)
    (tmp_path / "kafka" / "data" / "segment").write_text("x")
    (tmp_path / "bridge.log").write_text("x")
    assert demo.prepare_workdir(tmp_path) is None
    assert [p.name for p in tmp_path.iterdir()] == [demo.MARKER]


def test_what_an_older_demo_left_is_recognised(tmp_path: Path) -> None:
    (tmp_path / "kafka").mkdir()
    (tmp_path / "simulator.log").write_text("x")
    (tmp_path / "bridge.log").write_text("x")
    assert demo.prepare_workdir(tmp_path) is None
    assert [p.name for p in tmp_path.iterdir()] == [demo.MARKER]


@pytest.mark.parametrize(
    "entries",
    [
        ["notes.txt"],
        ["kafka"],  # a Kafka installation, say, and no simulator.log
        ["simulator.log", "kafka", "thesis.tex"],  # demo-like, with something else in it
    ],
)
def test_a_directory_the_demo_did_not_make_is_refused_untouched(
    tmp_path: Path, entries: list[str]
) -> None:
    for name in entries:
        (tmp_path / name).write_text("keep me")
    problem = demo.prepare_workdir(tmp_path)
    assert problem is not None
    assert f"--workdir {tmp_path} is not empty and was not made by the demo" in problem
    assert demo.MARKER in problem and "nothing was deleted" in problem
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(entries)
    assert all((tmp_path / name).read_text() == "keep me" for name in entries)


def test_a_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("keep me")
    assert demo.prepare_workdir(target) == f"--workdir {target} is not a directory"
    assert target.read_text() == "keep me"


def test_a_symlinked_demo_directory_stays_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    assert demo.prepare_workdir(real) is None
    (real / "bridge.log").write_text("x")
    link = tmp_path / "link"
    link.symlink_to(real)
    assert demo.prepare_workdir(link) is None
    assert link.is_symlink() and [p.name for p in real.iterdir()] == [demo.MARKER]


def test_the_demo_exits_2_with_the_reason_before_starting_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(ROOT)  # the demo's configs are relative to the project folder
    (tmp_path / "precious.txt").write_text("keep me")

    def no_broker(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a broker was started")

    monkeypatch.setattr(demo, "kafka_target", no_broker)
    assert demo.main(["--workdir", str(tmp_path), "--messages", "10"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"demo: --workdir {tmp_path} is not empty and was not made by")
    assert (tmp_path / "precious.txt").read_text() == "keep me"
