"""The `mixdesk` command line, run as a real subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mixdesk.engine.events import Done, SamplingParams
from mixdesk.engine.generate import generate
from mixdesk.engine.loader import load_model


def mixdesk(*args: str, home: Path, stdin: str | None = None, timeout: float = 300
            ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MIXDESK_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "mixdesk.app.cli", *args], env=env,
                          input=stdin, capture_output=True, text=True, timeout=timeout,
                          check=False)


def assert_user_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture
def broken_copy(tiny_mixtral: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "model"
    shutil.copytree(tiny_mixtral, dest)
    return dest


def test_folder_without_config(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = mixdesk("generate", str(tmp_path / "empty"), "--prompt", "hi", home=tmp_path)
    assert_user_error(result, "no config.json", "empty")


def test_missing_folder(tmp_path: Path) -> None:
    result = mixdesk("generate", str(tmp_path / "nope"), "--prompt", "hi", home=tmp_path)
    assert_user_error(result, "no such model folder")


def test_truncated_shard(broken_copy: Path, tmp_path: Path) -> None:
    shard = sorted(broken_copy.glob("*.safetensors"))[-1]
    with shard.open("r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    result = mixdesk("generate", str(broken_copy), "--prompt", "hi", home=tmp_path)
    assert_user_error(result, shard.name, "truncated")


def test_missing_tokenizer(broken_copy: Path, tmp_path: Path) -> None:
    for name in ("tokenizer.json", "tokenizer.model"):
        (broken_copy / name).unlink(missing_ok=True)
    result = mixdesk("generate", str(broken_copy), "--prompt", "hi", home=tmp_path)
    assert_user_error(result, "no tokenizer.json")


def test_unsupported_architecture(broken_copy: Path, tmp_path: Path) -> None:
    config = json.loads((broken_copy / "config.json").read_text())
    config["model_type"] = "gpt2"
    (broken_copy / "config.json").write_text(json.dumps(config))
    result = mixdesk("generate", str(broken_copy), "--prompt", "hi", home=tmp_path)
    assert_user_error(result, "'gpt2' is not supported")


def test_shape_that_disagrees_with_config(broken_copy: Path, tmp_path: Path) -> None:
    config = json.loads((broken_copy / "config.json").read_text())
    config["intermediate_size"] += 1
    (broken_copy / "config.json").write_text(json.dumps(config))
    result = mixdesk("generate", str(broken_copy), "--prompt", "hi", home=tmp_path)
    assert_user_error(result, "has shape", "config.json implies")


@pytest.mark.parametrize(("flags", "words"), [
    (["--temperature", "abc"], ["--temperature", "invalid float"]),
    (["--temperature", "-1"], ["temperature must be >= 0"]),
    (["--top-p", "7"], ["top_p"]),
    (["--max-new-tokens", "0"], ["max_new_tokens"]),
    (["--context", "0"], ["--context"]),
    (["--dtype", "int3"], ["--dtype"]),
    (["--bogus"], ["unrecognized arguments"]),
])
def test_nonsense_flag_values(tiny_mixtral: Path, tmp_path: Path, flags: list[str],
                              words: list[str]) -> None:
    result = mixdesk("generate", str(tiny_mixtral), "--prompt", "hi", *flags, home=tmp_path)
    assert_user_error(result, *words)


def test_generate_json_equals_the_engine(tiny_mixtral: Path, tmp_path: Path) -> None:
    result = mixdesk("generate", str(tiny_mixtral), "--prompt", "hello", "--temperature", "0",
                     "--max-new-tokens", "12", "--json", home=tmp_path)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert set(out) >= {"token_ids", "text", "prompt_tokens", "ttft_s", "prefill_tps",
                        "decode_tps"}
    done = list(generate(load_model(tiny_mixtral), "hello",
                         SamplingParams(temperature=0, max_new_tokens=12)))[-1]
    assert isinstance(done, Done)
    assert out["token_ids"] == list(done.token_ids)
    assert out["text"] == done.text
    assert out["prompt_tokens"] == done.stats.prompt_tokens


def test_generate_streams_plain_text(tiny_mixtral: Path, tmp_path: Path) -> None:
    json_run = mixdesk("generate", str(tiny_mixtral), "--prompt", "hello", "--temperature", "0",
                       "--max-new-tokens", "12", "--json", home=tmp_path)
    text_run = mixdesk("generate", str(tiny_mixtral), "--prompt", "hello", "--temperature", "0",
                       "--max-new-tokens", "12", home=tmp_path)
    assert text_run.returncode == 0
    assert text_run.stdout == json.loads(json_run.stdout)["text"] + "\n"


def test_chat_repl_answers_and_exits(tiny_mixtral: Path, tmp_path: Path) -> None:
    result = mixdesk("chat", str(tiny_mixtral), "--temperature", "0", "--max-new-tokens", "8",
                     home=tmp_path, stdin="hello\n/reset\nagain\n/exit\n")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("tok/s") == 2
    assert "Traceback" not in result.stderr


def test_chat_repl_ends_on_eof(tiny_mixtral: Path, tmp_path: Path) -> None:
    result = mixdesk("chat", str(tiny_mixtral), "--max-new-tokens", "4", home=tmp_path,
                     stdin="hi\n")
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_demo_answers_paris(smol_moe: Path, tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "demo").symlink_to(smol_moe)  # as `mixdesk demo` leaves it
    result = mixdesk("generate", "demo", "--chat", "--prompt", "What is the capital of France?",
                     "--temperature", "0", home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout


@pytest.mark.slow
def test_demo_prints_its_path_when_built(smol_moe: Path, tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "demo").symlink_to(smol_moe)
    result = mixdesk("demo", home=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "models" / "demo")


def test_serve_refuses_an_open_bind_without_a_key(tiny_mixtral: Path, tmp_path: Path) -> None:
    env_key = os.environ.pop("MIXDESK_API_KEY", None)
    try:
        result = mixdesk("serve", str(tiny_mixtral), "--host", "0.0.0.0", home=tmp_path)
    finally:
        if env_key is not None:
            os.environ["MIXDESK_API_KEY"] = env_key
    assert_user_error(result, "0.0.0.0", "API key")


def test_quantize_then_generate(tiny_mixtral: Path, tmp_path: Path) -> None:
    dest = tmp_path / "tiny-q"
    result = mixdesk("quantize", str(tiny_mixtral), str(dest), "--recipe", "4bit-g64",
                     home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    assert "4bit-g64" in json.dumps(manifest)
    run = mixdesk("generate", str(dest), "--prompt", "hello", "--temperature", "0",
                  "--max-new-tokens", "6", "--json", home=tmp_path)
    assert run.returncode == 0, run.stderr
    assert len(json.loads(run.stdout)["token_ids"]) >= 1


def test_quantize_rejects_an_unknown_recipe(tiny_mixtral: Path, tmp_path: Path) -> None:
    result = mixdesk("quantize", str(tiny_mixtral), str(tmp_path / "out"), "--recipe", "1bit",
                     home=tmp_path)
    assert_user_error(result, "unknown recipe '1bit'", "hqq-card")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_generate_loads_neither_qt_nor_the_web_server(tiny_mixtral: Path, tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from mixdesk.app.cli import main\n"
        f"assert main(['generate', {str(tiny_mixtral)!r}, '--prompt', 'hi',"
        " '--max-new-tokens', '2']) == 0\n"
        "print('LOADED', ' '.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    env = {**os.environ, "MIXDESK_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300, check=True)
    loaded = set(out.stdout.split("LOADED", 1)[1].split())
    assert "torch" in loaded  # the check is live: the engine did run
    assert loaded & {"PySide6", "shiboken6", "starlette", "uvicorn"} == set()


def test_plan_prints_a_table_and_refuses_a_tiny_budget(
        tiny_mixtral: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mixdesk.app.cli import main  # noqa: PLC0415

    assert main(["plan", str(tiny_mixtral), "--budget", "2", "--context", "64"]) == 0
    out = capsys.readouterr().out
    assert "4bit-g64" in out and "kv cache" in out and "tok/s" in out
    assert main(["plan", str(tiny_mixtral), "--budget", "0.01", "--context", "64"]) == 2
    assert "needs at least" in capsys.readouterr().err


def test_bench_without_a_gpu_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    from mixdesk.app.cli import main  # noqa: PLC0415

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: bench would run")
    assert main(["bench", "--sections", "engine", "--axes", "0"]) == 2
    assert "no CUDA GPU is here" in capsys.readouterr().err
    assert main(["-v", "bench", "offload", "--layers", "2"]) == 2
    with pytest.raises(SystemExit) as shown:  # the bench module's own help
        main(["bench", "--help"])
    assert shown.value.code == 0 and "--sections" in capsys.readouterr().out
    with pytest.raises(SystemExit) as shown:  # and the offload bench's
        main(["bench", "offload", "--help"])
    assert shown.value.code == 0 and "--fractions" in capsys.readouterr().out
