"""Tests of the `bailing` command line through `bailing.cli.main` (in process, real demo checkpoints)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from bailing.cli import main

needs_engine = pytest.mark.skipif(importlib.util.find_spec("engine") is None, reason="engine not present")


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    assert main(["init-demo", str(root)]) == 0
    return root


def test_init_demo_prints_paths(demo_root, capsys):
    assert main(["init-demo", str(demo_root)]) == 0  # second run: already complete, kept
    lines = capsys.readouterr().out.splitlines()
    models = [f"{m}: {demo_root / m}" for m in ("ling", "ring", "llada2", "ming", "ming2")]
    assert lines == [*models, f"samples: {demo_root / 'samples'}"]
    for model in ("ling", "ring", "llada2", "ming", "ming2"):
        for name in ("config.json", "tokenizer.json", "model.safetensors.index.json", "bailing_demo.json"):
            assert (demo_root / model / name).is_file()


def test_init_demo_writes_sample_media_the_ming_processor_takes(demo_root):
    from models.ming.processing import MingProcessor

    samples = demo_root / "samples"
    processor = MingProcessor.from_pretrained(demo_root / "ming")
    content = [{"type": "image"}, {"type": "audio"}, {"type": "video"}, {"type": "text", "text": "?"}]
    inputs = processor.process(
        [{"role": "user", "content": content}],
        images=[(samples / "photo.jpg").read_bytes()],
        audios=[(samples / "speech.wav").read_bytes()],
        videos=[(samples / "clip.mp4").read_bytes()],
    )
    assert inputs.image_grid_thw is not None and inputs.video_grid_thw is not None
    assert inputs.audio_feats is not None and inputs.audio_feats_lengths.tolist() == [[200]]  # 2 s


@pytest.mark.parametrize("model", ["ling", "ring", "llada2", "ming", "ming2"])
def test_init_demo_user_error(tmp_path, capsys, model):
    (tmp_path / model).mkdir()
    (tmp_path / model / "keep.txt").write_text("x")
    assert main(["init-demo", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and str(tmp_path / model) in err
    assert (tmp_path / model / "keep.txt").read_text() == "x"


def test_help_exits_cleanly(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "init-demo" in capsys.readouterr().out


@needs_engine
@pytest.mark.parametrize("model", ["ling", "ring", "llada2", "ming", "ming2"])
def test_generate_json(demo_root, capsys, model):
    argv = ["generate", "--model", str(demo_root / model), "--max-tokens", "5", "--json", "Hello there"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    record = json.loads(captured.out)
    assert set(record) == {"text", "token_ids", "finish_reason", "usage", "tokens_per_s"}
    assert record["usage"]["completion_tokens"] == len(record["token_ids"]) <= 5
    assert record["usage"]["prompt_tokens"] > 0 and record["finish_reason"] in {"stop", "length"}
    assert "tok/s]" in captured.err
    assert main(argv) == 0  # greedy by default: the same tokens again
    assert json.loads(capsys.readouterr().out)["token_ids"] == record["token_ids"]


@needs_engine
def test_generate_text_with_sampling(demo_root, capsys):
    argv = [
        "generate",
        "--model",
        str(demo_root / "ling"),
        "--max-tokens",
        "3",
        "--temperature",
        "0.7",
        "--top-p",
        "0.9",
        "--top-k",
        "20",
        "--seed",
        "7",
        "--dtype",
        "float32",
        "Hi",
    ]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("[") and " tokens in " in captured.err


@needs_engine
@pytest.mark.parametrize("extra", [["--model", "/nonexistent/model"], ["--temperature", "-1"]])
def test_generate_user_errors(demo_root, capsys, extra):
    argv = ["generate", "--model", str(demo_root / "ling"), *extra, "x"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err


@needs_engine
def test_generate_weights_only_folder_text_prompt_is_a_clean_error(golden_copy, capsys):
    assert main(["generate", "--model", str(golden_copy), "hello"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no tokenizer.json" in err and "Traceback" not in err


@needs_engine
def test_generate_broken_checkpoint_is_a_clean_error(golden_copy, capsys):
    (golden_copy / "model.safetensors").write_bytes(b"\x00" * 4)
    assert main(["generate", "--model", str(golden_copy), "hello"]) == 2
    err = capsys.readouterr().err
    assert "corrupt safetensors file" in err and "Traceback" not in err
