import pytest

from ragtune.config import load_run_config
from ragtune.errors import RagtuneError


def test_unknown_key_is_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("docs: kb\ntrain:\n  lrr: 0.1\n")
    with pytest.raises(RagtuneError, match=r"unknown key 'train\.lrr'"):
        load_run_config(p)


def test_bad_value_is_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("docs: kb\nbuild:\n  oracle_p: lots\n")
    with pytest.raises(RagtuneError, match=r"'build\.oracle_p'"):
        load_run_config(p)


def test_missing_docs_and_bad_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train: {}\n")
    with pytest.raises(RagtuneError, match="missing required key 'docs'"):
        load_run_config(p)
    p.write_text("docs: [unclosed\n")
    with pytest.raises(RagtuneError, match="not valid YAML"):
        load_run_config(p)


def test_paths_relative_to_the_yaml(tmp_path):
    (tmp_path / "kb").mkdir()
    p = tmp_path / "c.yaml"
    p.write_text("docs: kb\nrun_dir: runs/x\n")
    cfg = load_run_config(p)
    assert cfg.docs == str((tmp_path / "kb").resolve())
    assert cfg.run_dir == "runs/x"


def test_configuration_doc_is_current():
    from pathlib import Path

    from ragtune.config import config_reference

    doc = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
    assert doc.read_text(encoding="utf-8").strip() == config_reference().strip(), (
        "regenerate: python -c 'from ragtune.config import config_reference as c; print(c())' > docs/configuration.md"
    )
