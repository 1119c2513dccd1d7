"""The Maven download helper: progress counted against the jars of ``dependency:tree``, and
mvn's output pipe closed before it returns (left to the garbage collector, the pipe raised
a ResourceWarning in whichever test's setup the collection ran: a CI failure)."""

from __future__ import annotations

import gc
import sys
import warnings
from pathlib import Path

import pytest

from devtools.brokers import processes


def test_download_counts_our_jars_and_closes_the_pipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ours = ["org/example/a/1.0/a-1.0.jar", "org/example/b/2.0/b-2.0.jar"]
    repo = tmp_path / "repo"
    monkeypatch.setenv("MAVEN_OPTS", f"-Dmaven.repo.local={repo}")
    monkeypatch.setattr(processes, "_jar_paths", lambda *_: ours)
    # A stand-in for mvn: it "downloads" our two jars and a plugin's, from some mirror.
    script = "\n".join(
        [
            "import pathlib, sys",
            f"repo = pathlib.Path({str(repo)!r})",
            *(
                f"p = repo / {path!r}; p.parent.mkdir(parents=True, exist_ok=True); "
                f"p.write_bytes(b'x' * {size}); "
                f"print('Downloaded from mirror: https://m.example/any/base/{path} (1 kB)')"
                for path, size in [
                    (ours[0], 400_000),
                    ("org/plugin/p/1/p-1.jar", 5),
                    (ours[1], 600_000),
                ]
            ),
        ]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        result = processes._download(
            [sys.executable, "-c", script],
            mvn="mvn",
            pom=tmp_path / "pom.xml",
            product="Test",
            home=tmp_path,
        )
        gc.collect()
    assert result.returncode == 0
    err = capsys.readouterr().err
    assert "Test: 2 jars to fetch" in err
    assert "Test: 2 of 2 jars (100%), 1.0 MB" in err
    assert "Test: downloaded 1.0 MB in" in err


def test_repo_path_ignores_the_mirror_base() -> None:
    paths = {"g/a/1/a-1.jar"}
    assert processes._repo_path("https://x.example/maven2/g/a/1/a-1.jar", paths) == "g/a/1/a-1.jar"
    assert processes._repo_path("https://x.example/g/a/1/a-1.jar", paths) == "g/a/1/a-1.jar"
    assert processes._repo_path("https://x.example/g/b/1/b-1.jar", paths) is None
