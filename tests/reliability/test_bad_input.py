"""Bad input is one line and exit 2, naming the file and line where there is one (defects 10 and 11)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.reliability.conftest import ROWS, tuna, write_config

GOOD = json.dumps(ROWS[0])


def chat(content) -> str:
    return json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": content}]})


BAD_DATA = {
    "int content": (f"{GOOD}\n\n\n{chat(7)}\n", "line 4, message 2: `content` must be a string, got int"),
    "null content": (f"{GOOD}\n{chat(None)}\n", "line 2, message 2: `content` must be a string, got null"),
    "list content": (f"{GOOD}\n{chat([{'type': 'text'}])}\n", "line 2, message 2: `content` must be a string, got list"),
    "blank lines": (f"{GOOD}\n\n\n\n\n" + json.dumps({"messages": []}) + "\n", "line 6: `messages` must be a non-empty"),
}


def run_on(tmp_path, model, content: bytes | str) -> Path:
    data = tmp_path / "data.jsonl"
    data.write_bytes(content if isinstance(content, bytes) else content.encode())
    return write_config(tmp_path, model, data, max_steps=1)


@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_bad_records_name_their_line(case, tmp_path, template, capsys):
    content, message = BAD_DATA[case]
    config = run_on(tmp_path, template["model"], content)
    raw = config.read_text().replace("eval_split: 0.2", "eval_split: 0.0")
    config.write_text(raw)
    assert tuna("train", str(config)) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines()[-1].startswith("tuna: error:") and "Traceback" not in err
    assert message in err and str(tmp_path / "data.jsonl") in err


def test_a_byte_that_is_not_utf8_names_its_line(tmp_path, template, capsys):
    config = run_on(tmp_path, template["model"], f"{GOOD}\n{GOOD}\n".encode() + b'{"text": "caf\xe9"}\n')
    assert tuna("train", str(config)) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "line 3 is not UTF-8 text (byte 0xe9 at column 14)" in last


def test_a_byte_order_mark_and_crlf_are_accepted(tmp_path, template):
    lines = "\r\n".join(json.dumps(r) for r in ROWS) + "\r\n"
    assert tuna("train", str(run_on(tmp_path, template["model"], b"\xef\xbb\xbf" + lines.encode()))) == 0


@pytest.mark.parametrize("broken", ["invalid config", "no weights", "garbage weights"])
def test_a_broken_model_directory_is_one_line(broken, tmp_path, template, capsys):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(template["model"], model)
    if broken == "invalid config":
        (model / "config.json").write_text("{not json")
    elif broken == "no weights":
        (model / "model.safetensors").unlink()
    else:
        (model / "model.safetensors").write_bytes(b"\x00\x01garbage" * 50)
    config = write_config(tmp_path, model, template["data"], max_steps=1)
    assert tuna("train", str(config)) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.splitlines()[-1].startswith(f"tuna: error: cannot load the model in {model}")


def test_an_absurd_learning_rate_is_refused(tmp_path, template, capsys):
    config = write_config(tmp_path, template["model"], template["data"])
    assert tuna("train", str(config), "--set", "train.lr=1e38") == 2
    assert "train.lr: Input should be less than or equal to 1" in capsys.readouterr().err
