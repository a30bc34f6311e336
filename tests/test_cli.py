"""The command line: every verb explains itself, and bad input is one line, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ragtune.cli import app

VERBS = sorted(c.name or c.callback.__name__ for c in app.registered_commands)


def ragtune(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ragtune", *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def test_every_design_verb_exists():
    for verb in [
        "ingest",
        "synth",
        "import",
        "build",
        "inspect",
        "train",
        "export",
        "eval",
        "ask",
        "serve",
        "tiny-model",
        "pretrain",
        "run",
    ]:
        assert verb in VERBS


@pytest.mark.parametrize("verb", VERBS)
def test_help_says_what_each_verb_does(verb):
    p = ragtune(verb, "--help")
    assert p.returncode == 0
    assert "Usage" in p.stdout and len(p.stdout.splitlines()) > 4


@pytest.mark.parametrize(
    "args",
    [
        ["ingest", "/nonexistent/folder"],
        ["synth", "--run", "/nonexistent/run"],
        ["build", "--run", "/nonexistent/run"],
        ["train", "--run", "/nonexistent/run"],
        ["eval", "--run", "/nonexistent/run"],
        ["run", "/nonexistent/config.yaml"],
        ["import", "/nonexistent/file.json"],
        ["tiny-model", "--corpus", "/nonexistent", "--out", "/tmp/x"],
        ["ask", "--question", "q", "--base-model", "/nonexistent/model", "--context", "/nonexistent.txt"],
    ],
)
def test_bad_input_is_one_line_with_exit_code_2(args, tmp_path):
    p = ragtune(*args, cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip() and not ln.startswith("[transformers]")]
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in p.stderr


def test_bad_question_styles_are_named_before_any_work(tmp_path):
    p = ragtune("synth", "--run", str(tmp_path), "--question-styles", "cloze=half")
    assert p.returncode == 2 and "--question-styles 'cloze=half'" in p.stderr and "e.g. cloze=0.4" in p.stderr


def test_unknown_config_key_names_the_key(tmp_path):
    (tmp_path / "kb").mkdir()
    (tmp_path / "c.yaml").write_text("docs: kb\nbuild:\n  k_distractor: 3\n")
    p = ragtune("run", str(tmp_path / "c.yaml"))
    assert p.returncode == 2 and "build.k_distractor" in p.stderr
