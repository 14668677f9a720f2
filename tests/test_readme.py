"""Every fenced code block of README.md runs as written (issue: a new user's first hour, defect 6).

- ```yaml blocks are read with mmfuse's own YAML loader and validated against the config schema
  (`parse_config`, compare.set applied, align objectives built), so a renamed field fails here.
- ```bash blocks run line by line (a `make` target: its recipe's mmfuse lines), in README order, in one temporary working directory that holds
  a copy of examples/ and tiny versions of the configs the README names (same columns, task,
  fusion and output_dir, but tiny random encoders, 1 epoch, and a few dozen rows of the built-in
  data, which is also what `load_builtin("easy_vqa")` returns here): each `mmfuse ...` line in-process through typer's CliRunner and must exit 0; `mmfuse serve`
  runs up to where uvicorn would take the foreground, and its app is then served on a free
  loopback port, where each `curl` line's request is sent with httpx.
- ```python blocks are executed (exec) in the same directory, after the lines above them, and
  must print no Lightning banner.

Lines that cannot run here are in NOT_RUN, lines run with cheaper arguments in CHEAPER, each with
the reason and what covers it; a line that is neither run nor listed fails
test_every_readme_line_is_run_or_listed, and a block in another language fails
test_every_block_has_a_language_this_test_runs. About 75 s on 2 CPU cores.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import re
import shlex
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from mmfuse.align.train import build_objectives
from mmfuse.cli import app
from mmfuse.compare import with_compare_settings
from mmfuse.config import parse_config
from mmfuse.errors import ConfigError
from mmfuse.safe_yaml import load_yaml, read_yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
EXAMPLES = ROOT / "examples"
LANGUAGES = ("bash", "yaml", "python")

# Command lines that are not run in-process: the line (comments stripped) -> why, and what covers it.
NOT_RUN = {
    "make test": "runs this very test suite (pytest); it cannot run inside itself",
    "python bench/spoken.py configs/easy_vqa_spoken.yaml": "a benchmark on the full built-in easy_vqa_spoken "
                 "set (48k synthesised clips, Whisper features): hours on a CPU; its figures are in "
                 "docs/benchmarks.md. Synthesising that set is tested on a tiny one in tests/test_spoken.py, "
                 "and training and predicting on image + speech run here (`mmfuse train configs/easy_vqa_spoken.yaml`)",
    "mmfuse tune configs/shape_scenes.yaml --trials 20": "20 trainings of 20 epochs on the generated shape_scenes "
                 "set, which has no tiny table here; tests/test_tune.py runs 3-trial tunes of the tiny encoders "
                 "(the study, best.yaml trained as it is, report.md, resuming, pruning, a wrong field)",
}

# Lines run with cheaper arguments than written: the line -> (what runs instead, why and what covers the rest).
CHEAPER = {
    "mmfuse compare configs/easy_vqa.yaml --fusions all --seeds 3": (
        "mmfuse compare configs/easy_vqa.yaml --fusions concat,late --seeds 2",
        "36 cells that each train, evaluate and (first seed) measure noise curves: 60-140 s here even with "
        "tiny encoders; 4 cells run the same harness end to end (both seeds, the paired test, the curves). "
        "That `all` means the README's twelve fusions is test_fusions_all_is_the_readme_list; each fusion "
        "is tested in tests/test_fusion.py, and tests/test_compare.py runs cells in real child processes"),
}

# Where the README's commands find the server its `mmfuse serve` line starts.
README_URL = "http://127.0.0.1:8000"
runner = CliRunner()


# ----- reading the README ------------------------------------------------------------------------

@dataclass
class Block:
    language: str
    text: str
    line: int  # README line of the block's first line of code


@dataclass
class Command:
    text: str  # the logical line: continuations joined, comment removed
    line: int
    words: list[str]  # the program and its arguments, after any NAME=... prefixes
    env: dict[str, str] = field(default_factory=dict)  # NAME -> its value as written (may be $(...))


# `NAME=$(python -c '...') ` in front of a command: a variable set from a command's output.
PREFIX = re.compile(r"^\s*(\w+)=(\$\([^()']*'[^']*'\)|\S+)\s+")


def readme_blocks() -> list[Block]:
    blocks, lines, current = [], README.read_text(encoding="utf-8").splitlines(), None
    for number, line in enumerate(lines, start=1):
        fence = re.match(r"^\s*```(.*)$", line)
        if fence and current is None:
            current = Block(fence.group(1).strip(), "", number + 1)
        elif fence:
            blocks.append(current)
            current = None
        elif current is not None:
            current.text += line + "\n"
    assert current is None, f"README.md:{current.line - 1}: a code fence is never closed"
    return blocks


def commands(block: Block) -> list[Command]:
    """A bash block's command lines: `\\` continuations joined, `# comments` and blank lines dropped."""
    found, pending, start = [], "", 0
    for offset, line in enumerate(block.text.splitlines()):
        if not pending:
            start = block.line + offset
        pending += line
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        rest, env = pending, {}
        while match := PREFIX.match(rest):
            env[match.group(1)] = match.group(2)
            rest = rest[match.end():]
        words = shlex.split(rest, comments=True)
        if words:
            text = " ".join(f"{name}={value}" for name, value in env.items())
            found.append(Command(f"{text} {shlex.join(words)}".strip(), start, words, env))
        pending = ""
    assert not pending, f"README.md:{start}: a line continues past the end of its block"
    return found


def make_recipe(target: str) -> list[str]:
    """The command lines of a Makefile target, `$(VENV)/bin/` dropped (the venv's own programs)."""
    lines = (ROOT / "Makefile").read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"^{re.escape(target)}\s*:", line))
    recipe = []
    for line in lines[start + 1:]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip().replace("$(VENV)/bin/", ""))
    return recipe


def kind(command: Command) -> str:
    if command.text in NOT_RUN:
        return "listed"
    if command.words[0] == "make" and len(command.words) == 2:
        # Its recipe, when that is only mmfuse lines (the prerequisites, installing .venv, are not run).
        recipe = make_recipe(command.words[1])
        return "make" if recipe and all(line.startswith("mmfuse ") for line in recipe) else "unknown"
    return {"mmfuse": "cli", "curl": "http"}.get(command.words[0], "unknown")


# ----- static checks (fast) ----------------------------------------------------------------------

def test_every_block_has_a_language_this_test_runs():
    for block in readme_blocks():
        assert block.language in LANGUAGES, (
            f"README.md:{block.line - 1}: a ```{block.language} block; this test runs {', '.join(LANGUAGES)} "
            "blocks: use one of those, or teach tests/test_readme.py to check the new kind")


def test_every_readme_line_is_run_or_listed():
    seen = set()
    for block in readme_blocks():
        if block.language != "bash":
            continue
        for command in commands(block):
            seen.add(command.text)
            assert kind(command) != "unknown", (
                f"README.md:{command.line}: `{command.text}` is neither an `mmfuse` nor a `curl` line, nor a "
                "`make` target of mmfuse lines: "
                "run it in test_readme_runs_as_written, or list it in NOT_RUN with the reason and what covers it")
    stale = (set(NOT_RUN) | set(CHEAPER)) - seen
    assert not stale, f"NOT_RUN / CHEAPER list lines the README no longer has: {stale}"


def test_fusions_all_is_the_readme_list():
    """`compare --fusions all` means the fusions the README's Parts table lists."""
    from mmfuse.compare import parse_fusions

    row = next(line for line in README.read_text(encoding="utf-8").splitlines() if line.startswith("| fusion |"))
    listed = re.findall(r"`(\w+)`", row)
    assert sorted(parse_fusions("all")) == sorted(listed)
    assert len(listed) == 12 and "twelve fusion strategies" in README.read_text(encoding="utf-8")


def test_yaml_blocks_are_valid_configs():
    """Each fragment (the rest of the config left at its defaults) passes the schema, where a
    misspelt or renamed field is an error."""
    yaml_blocks = [block for block in readme_blocks() if block.language == "yaml"]
    assert len(yaml_blocks) >= 3
    for block in yaml_blocks:
        raw = load_yaml(block.text, f"README.md:{block.line}")
        assert isinstance(raw, dict) and raw, f"README.md:{block.line}: not a mapping"
        try:
            config = parse_config(raw, f"README.md:{block.line}")  # every field has a default
            with_compare_settings(config)  # compare.set's dotted fields, applied and validated
            if config.align is not None:  # objective names and their options
                build_objectives(config.align, {"image": 4, "text": 4})
        except ConfigError as error:
            pytest.fail(str(error))
        dumped = config.model_dump(mode="json")
        for section, value in raw.items():  # nothing written is dropped on the way
            assert section in dumped, (block.line, section)
            if isinstance(value, dict):
                assert set(value) <= set(dumped[section] or {}), (block.line, section, value)


def test_my_yaml_is_the_readme_config():
    """examples/my.yaml is the README's "Your own data" config, field for field."""
    block = next(b for b in readme_blocks() if b.language == "yaml" and "my_table.csv" in b.text)
    assert read_yaml(EXAMPLES / "my.yaml") == load_yaml(block.text)


def test_example_files_exist_are_small_and_named_in_the_readme():
    text = README.read_text(encoding="utf-8")
    for name in re.findall(r"\bexamples/[\w./-]+\.\w+", text):
        assert (ROOT / name).is_file(), f"the README names {name}, which does not exist"
    total = sum(path.stat().st_size for path in EXAMPLES.rglob("*") if path.is_file())
    assert total < 200_000, f"examples/ holds {total} bytes; keep it small"
    tables = {"new.csv": ["image", "question"], "images.csv": ["image", "caption"],
              "more.csv": ["image", "caption"], "my_table.csv": ["img_path", "question", "answer"]}
    for name, columns in tables.items():
        assert list(pd.read_csv(EXAMPLES / name).columns) == columns, name
        assert f"`examples/{name}`" in text, f"the README does not describe examples/{name}"


# ----- a working directory where every line can run --------------------------------------------

def easy_vqa_sample(folder: Path, train_images: int = 16, test_images: int = 8) -> pd.DataFrame:
    """A few images of the built-in easy-VQA (train and test) with all their questions."""
    from mmfuse.data import load_builtin

    table = load_builtin("easy_vqa")
    keep = []
    for split, count in (("train", train_images), ("test", test_images)):
        images = table.loc[table["split"] == split, "image"].drop_duplicates().head(count)
        keep.append(table[table["image"].isin(images)])
    sample = pd.concat(keep, ignore_index=True)
    folder.mkdir(parents=True, exist_ok=True)
    sample.to_csv(folder / "easy_vqa.csv", index=False)
    return sample


def write_tiny_tables(folder: Path) -> dict[str, str]:
    """Small stand-ins for the built-in sources the configs name: source name -> table path."""
    from mmfuse.align.captions import read_shape_pixels
    from mmfuse.modalities import MODALITIES

    sample = easy_vqa_sample(folder)
    # easy_vqa_spoken: the same rows with a short clip each (tones, not speech: the tiny audio
    # encoder is random anyway), in the built-in's columns.
    (folder / "audio").mkdir()
    clips = [MODALITIES["audio"].example_file(folder / "audio", i) for i in range(4)]
    spoken = sample.assign(audio=[str(clips[i % len(clips)]) for i in range(len(sample))])
    spoken.to_csv(folder / "easy_vqa_spoken.csv", index=False)
    # align captions (built-in `easy_vqa`: "a red circle" per image, with its split).
    images = sample.drop_duplicates("image")
    captions = pd.DataFrame({"image": images["image"],
                             "caption": ["a " + " ".join(read_shape_pixels(p)) for p in images["image"]],
                             "split": images["split"]})
    captions.to_csv(folder / "easy_vqa_captions.csv", index=False)
    return {"easy_vqa": "data/easy_vqa.csv", "easy_vqa_spoken": "data/easy_vqa_spoken.csv",
            "captions:easy_vqa": "data/easy_vqa_captions.csv"}


def tiny_version(raw: dict[str, Any], tables: dict[str, str]) -> dict[str, Any]:
    """A shipped config made cheap: tiny random encoders, 1 epoch, the tiny tables; columns,
    fusion, task and output_dir as shipped."""
    raw = copy.deepcopy(raw)
    data = raw.get("data")
    if data is not None:
        assert data.get("source") in tables, f"no tiny table for data.source {data.get('source')!r}"
        data["source"] = tables[data["source"]]
    for modality, section in (raw.get("encoders") or {}).items():
        if section is not None:
            section.pop("options", None)
            section["name"] = f"tiny_{modality}"
            if section.get("standardize"):  # scales cached features: the shipped encoder is frozen
                section["trainable"] = False
            if modality == "image":
                section["image_size"] = 16
    raw.setdefault("fusion", {})["dim"] = 16
    raw.setdefault("head", {})["hidden"] = 16
    raw.setdefault("train", {}).update(epochs=1, batch_size=8, progress_bar=False)
    if "compare" in raw:  # every cell 1 epoch over the tiny encoders (the shipped set swaps in EfficientNet)
        raw["compare"]["set"] = {"train.epochs": 1, "train.group_by_image": False, "train.batch_size": 64}
        raw["compare"]["robustness_levels"] = [0.5]
    if raw.get("align") is not None:
        captions = raw["align"].get("captions", "easy_vqa")
        raw["align"].update(captions=tables[f"captions:{captions}"], dim=8, epochs=3, batch_size=16)
    return raw


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Path:
    shutil.copytree(EXAMPLES, tmp_path / "examples")
    tables = write_tiny_tables(tmp_path / "data")
    # The configs the README's lines name, less those only lines that are not run name.
    named = sorted({name for block in readme_blocks() if block.language != "yaml"
                    for line in block.text.splitlines() if line.split("#")[0].strip() not in NOT_RUN
                    for name in re.findall(r"\bconfigs/[\w.-]+\.yaml", line)})
    assert named, "the README's commands name no config"
    (tmp_path / "configs").mkdir()
    for name in named:
        raw = tiny_version(read_yaml(ROOT / name), tables)
        parse_config(copy.deepcopy(raw), name)  # still a valid config
        (tmp_path / name).write_text(yaml.safe_dump(raw, sort_keys=False))
    # The built-in data read as a DataFrame (the Python block) is the same tiny sample.
    from mmfuse.data import datasets

    full = datasets.load_builtin
    sample = pd.read_csv(tmp_path / tables["easy_vqa"])
    monkeypatch.setattr(datasets, "load_builtin", lambda name: sample.copy() if name == "easy_vqa" else full(name))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MMFUSE_TOKEN", raising=False)
    return tmp_path


# ----- running the lines ---------------------------------------------------------------------------

class Session:
    """The state the README's lines build up: a served model, for the `curl` lines."""

    def __init__(self, stack: contextlib.ExitStack, monkeypatch):
        self.stack, self.monkeypatch = stack, monkeypatch
        self.url: str | None = None

    def run(self, command: Command) -> None:
        started = time.perf_counter()
        what = kind(command)
        if what == "cli":
            self.cli(command)
        elif what == "make":
            for line in make_recipe(command.words[1]):
                self.cli(Command(line, command.line, shlex.split(line)))
        elif what == "http":
            self.curl(command)
        print(f"{time.perf_counter() - started:6.1f} s  README.md:{command.line} {command.text[:80]}")

    def where(self, command: Command) -> str:
        return f"README.md:{command.line}: `{command.text}`"

    def environment(self, command: Command) -> dict[str, str]:
        """The NAME=... prefixes as the shell sets them: $(python -c '...') runs, its output the value."""
        env = {}
        for name, value in command.env.items():
            inner = re.fullmatch(r"\$\((.*)\)", value, re.DOTALL)
            if inner:
                argv = shlex.split(inner.group(1))
                assert argv[0] == "python", self.where(command)
                value = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True,
                                       check=True).stdout.strip()
            env[name] = value
        return env

    def cli(self, command: Command) -> None:
        env, args = self.environment(command), command.words[1:]
        if command.text in CHEAPER:
            args = shlex.split(CHEAPER[command.text][0])[1:]
        if args[0] == "compare":
            # Each cell in this process rather than a forkserver child (whose start re-imports torch,
            # Lightning and transformers: 10-20 s here); tests/test_compare.py runs real children.
            import mmfuse.compare as compare

            def in_this_process(cell_dir, context):
                compare.run_cell(cell_dir)
                return 0

            self.monkeypatch.setattr(compare, "launch_cell", in_this_process)
        if args[0] == "serve":
            return self.serve(command, env, args)
        result = runner.invoke(app, args, env=env)
        assert result.exit_code == 0, failure(self.where(command), result)

    def serve(self, command: Command, env: dict[str, str], args: list[str]) -> None:
        """`mmfuse serve` runs until stopped: the command runs for real up to the point where uvicorn
        would take over the foreground; the app it built is then served in a background thread on a
        free loopback port (mmfuse.serve.local.running), which the `curl` lines below talk to."""
        import mmfuse.serve.server as server_module
        from mmfuse.serve.local import running

        built = []

        class Foreground:
            def run(self):
                pass

            def model_failed(self):
                return None

        def make_server(app_, *, host, port, **_):
            built.append((app_, host, port))
            return Foreground()

        self.monkeypatch.setattr(server_module, "make_server", make_server)
        result = runner.invoke(app, args, env=env)
        assert result.exit_code == 0, failure(self.where(command), result)
        (served, host, port), = built
        if env.get("MMFUSE_TOKEN"):
            # The README says beyond loopback a token is required: the same line without it is refused.
            refused = runner.invoke(app, args, env={"MMFUSE_TOKEN": None})
            assert refused.exit_code != 0 and "token" in str(refused.exception), self.where(command)
            return  # not started: the README's curl lines carry no token
        assert (host, port) == ("127.0.0.1", 8000), self.where(command)
        self.url = self.stack.enter_context(running(served))
        client = self.stack.enter_context(httpx.Client(base_url=self.url, timeout=30))
        deadline = time.monotonic() + 60
        while client.get("/health/ready").status_code != 200:
            assert time.monotonic() < deadline, f"{self.where(command)}: the model never became ready"
            time.sleep(0.05)

    def curl(self, command: Command) -> None:
        """The request a `curl` line sends, sent with httpx to the server started above."""
        assert self.url, f"{self.where(command)}: no `mmfuse serve` line before it"
        words = list(command.words[1:])
        url, headers, form, files, body = None, {}, {}, {}, None
        while words:
            word = words.pop(0)
            if word == "-s":
                continue
            if word == "-H":
                name, value = words.pop(0).split(":", 1)
                headers[name.strip()] = value.strip()
            elif word == "-F":
                name, value = words.pop(0).split("=", 1)
                if value.startswith("@"):
                    files[name] = (Path(value[1:]).name, Path(value[1:]).read_bytes())
                else:
                    form[name] = value
            elif word == "-d":
                body = words.pop(0)
            else:
                assert not word.startswith("-"), f"{self.where(command)}: curl option {word} not understood here"
                assert word.startswith(README_URL), self.where(command)
                url = self.url + word[len(README_URL):]
        assert url, self.where(command)
        if body is not None:
            response = httpx.post(url, content=body, headers=headers, timeout=60)
        else:
            response = httpx.post(url, data=form, files=files or None, headers=headers, timeout=60)
        assert response.status_code == 200, f"{self.where(command)}: {response.status_code} {response.text}"
        assert response.json()["predictions"], self.where(command)


def failure(where: str, result) -> str:
    """What a failed line printed, and its traceback."""
    text = f"{where} exited {result.exit_code}:\n{result.output}"
    if result.exc_info and not isinstance(result.exception, SystemExit):
        text += "".join(traceback.format_exception(*result.exc_info))
    return text


def run_python(block: Block) -> None:
    # Blank lines in front, so a traceback's line numbers are the README's.
    code = compile("\n" * (block.line - 1) + block.text, str(README), "exec")
    exec(code, {"__name__": "__main__"})


def as_in_a_fresh_interpreter() -> None:
    """Lightning's loggers as importing Lightning leaves them (INFO), whatever the lines before did."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.INFO)


def test_readme_runs_as_written(workspace, monkeypatch, capfd):
    earlier: list[str] = []
    with contextlib.ExitStack() as stack:
        session = Session(stack, monkeypatch)
        for block in readme_blocks():
            if block.language == "bash":
                for command in commands(block):
                    session.run(command)
            elif block.language == "python":
                as_in_a_fresh_interpreter()
                earlier.append(capfd.readouterr().out)  # what the lines before printed (timings)
                started = time.perf_counter()
                run_python(block)
                printed = capfd.readouterr()
                print(f"{time.perf_counter() - started:6.1f} s  README.md:{block.line} python block")
                sys.stdout.write(printed.out)
                sys.stderr.write(printed.err)
                # The Python API prints what the CLI prints, not Lightning's banner.
                for noise in ("GPU available", "TPU available", "litlogger"):
                    assert noise not in printed.out + printed.err, f"README.md:{block.line}: printed {noise!r}"
    print("".join(earlier), end="")
    where_things_go(workspace)


def where_things_go(workspace: Path) -> None:
    """The files "Where things go" names are where it says, after the README's lines."""
    run = workspace / "runs" / "easy_vqa"
    for path in ("model/config.yaml", "model/model.safetensors", "model/report/report.md",
                 "model/report/export.md", "checkpoints/best.ckpt", "checkpoints/last.ckpt",
                 "compare/comparison.md", "compare/comparison.csv"):
        assert (run / path).is_file(), f"RUN/{path}"
    versions = sorted(p.parent.relative_to(run).as_posix() for p in (run / "logs").rglob("events.out.tfevents*"))
    assert versions and all(re.fullmatch(r"logs/version_\d+", v) for v in versions), versions
    assert len(set(versions)) >= 3, f"one TensorBoard version per run: {versions}"  # 2 trains + fit()
    for model in ("model_onnx", "model_onnx_int8", "model_pruned"):
        assert (run / model / "onnx" / "manifest.json").is_file(), model
    assert (workspace / "runs" / "easy_vqa_align" / "model").is_dir()
    assert (workspace / "report" / "report.md").is_file()  # p.evaluate(report_dir="report")
    assert (workspace / "my_index").is_dir()
    cache = workspace / ".mmfuse_cache"
    assert cache.is_dir() and list(cache.rglob("*.safetensors")), "the feature cache is not ./.mmfuse_cache"
