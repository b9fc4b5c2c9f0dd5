"""Loaded chat models by registered alias or version, swapped atomically when an alias moves in MLflow.

    pool = ModelPool(ChatRegistry(tracking_uri, base_model_path), poll_s=10, wanted=lambda: [champion_ref])
    pool.start()                      # preloads what ``wanted`` names, then polls the aliases every poll_s seconds
    ref, model = pool.serve(route.candidates)
    completion = model.complete(messages, max_tokens=64)   # model.registered_model / model.version: who answered

A version is the base model plus its LoRA adapter merged into a private copy (a merged export folder loads as is),
so every loaded version is an independent model: no shared adapter state to switch between requests. Each model
generates one request at a time (batch size 1, its own lock). Hot swap: the poller loads an alias's new version in
its own thread, then replaces one dict entry under a lock; a request that already holds the old model finishes on
it, and the old weights are freed when the last such request ends. Nothing a request does waits for a load, except
the very first request for a reference nobody preloaded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from feedback_pipeline.serving.router import BASE, ModelRef

log = logging.getLogger(__name__)


class NoModelAvailable(RuntimeError):
    """None of a route's candidates could be loaded (not even the base model)."""


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of turn) or "length" (max_tokens reached)


class ChatModel:
    """One loaded version: tokenizer + causal LM in eval mode, greedy or sampled generation, one request at a time."""

    def __init__(self, registered_model: str, version: str, base_model_path: str, adapter_dir: str | None = None,
                 max_prompt_tokens: int = 1024):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from feedback_pipeline.evaluation.chat_eval import _end_of_turn_ids

        started = time.perf_counter()
        self.registered_model, self.version, self.max_prompt_tokens = registered_model, version, max_prompt_tokens
        tokenizer_dir = adapter_dir if adapter_dir and (Path(adapter_dir) / "tokenizer_config.json").is_file() \
            else base_model_path
        self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        model = AutoModelForCausalLM.from_pretrained(str(base_model_path), dtype=torch.float32)
        if adapter_dir:
            from peft import PeftModel

            # Merged into this copy's weights: as fast as the base at inference, and nothing shared with other versions.
            model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
        self.model = model.eval()
        self.eot_ids = sorted(_end_of_turn_ids(self.model, self.tokenizer))
        self.pad_id = int(self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eot_ids[0])
        self._lock = threading.Lock()
        self.load_s = time.perf_counter() - started

    def _encode(self, messages: list[dict]):
        from feedback_pipeline.training.chat_preference import fit_prompt

        fitted = fit_prompt(self.tokenizer, messages, self.max_prompt_tokens)
        text = self.tokenizer.apply_chat_template(fitted, add_generation_prompt=True, tokenize=False)
        return self.tokenizer(text, add_special_tokens=False, return_tensors="pt")

    def _config(self, max_tokens: int, temperature: float, top_p: float):
        from transformers import GenerationConfig

        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {
            "do_sample": False}
        return GenerationConfig(max_new_tokens=max_tokens, num_beams=1, eos_token_id=self.eot_ids,
                                pad_token_id=self.pad_id, **sampling)

    def _finish(self, prompt_len: int, output) -> Completion:
        generated = output[0, prompt_len:].tolist()
        stop = next((k for k, tok in enumerate(generated) if tok in self.eot_ids), None)
        kept = generated if stop is None else generated[:stop]
        return Completion(self.tokenizer.decode(kept, skip_special_tokens=True).strip(), prompt_len, len(kept),
                          "length" if stop is None else "stop")

    def complete(self, messages: list[dict], max_tokens: int, temperature: float = 0.0, top_p: float = 1.0) -> Completion:
        import torch

        inputs = self._encode(messages)
        with self._lock, torch.inference_mode():
            output = self.model.generate(**inputs, generation_config=self._config(max_tokens, temperature, top_p))
        return self._finish(inputs["input_ids"].shape[1], output)

    def stream(self, messages: list[dict], max_tokens: int, temperature: float = 0.0,
               top_p: float = 1.0) -> Iterator[str | Completion]:
        """Text pieces as they are generated, then the whole Completion as the last item."""
        import torch
        from transformers import TextIteratorStreamer

        inputs = self._encode(messages)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=120)
        result: dict = {}

        def run() -> None:
            try:
                with self._lock, torch.inference_mode():
                    result["output"] = self.model.generate(
                        **inputs, streamer=streamer, generation_config=self._config(max_tokens, temperature, top_p))
            except BaseException as exc:  # re-raised in the request's thread below
                result["error"] = exc
                streamer.end()

        worker = threading.Thread(target=run, name="chat-stream", daemon=True)
        worker.start()
        for piece in streamer:
            if piece:
                yield piece
        worker.join()
        if "error" in result:
            raise result["error"]
        yield self._finish(inputs["input_ids"].shape[1], result["output"])


class ChatRegistry:
    """The MLflow registry seen from serving: which version an alias names now, and where a version's files are
    (the ``adapter_dir`` / ``base_model_path`` tags the pipeline sets, else the logged model's artifacts)."""

    def __init__(self, tracking_uri: str, base_model_path: str, cache_dir: Path):
        from mlflow.tracking import MlflowClient

        self.tracking_uri, self.base_model_path, self.cache_dir = tracking_uri, str(base_model_path), Path(cache_dir)
        self.client = MlflowClient(tracking_uri, registry_uri=tracking_uri)

    def resolve(self, ref: ModelRef) -> str | None:
        """The version ``ref`` names now; None when the alias (or the model) does not exist."""
        from mlflow.exceptions import MlflowException

        if ref.is_base:
            return "0"
        if ref.version is not None:
            return ref.version
        try:
            return str(self.client.get_model_version_by_alias(ref.model, ref.alias).version)
        except MlflowException:
            return None

    def files(self, name: str, version: str) -> tuple[str, str | None]:
        """(base model folder, adapter folder or None) for one version; a merged export is (its folder, None)."""
        import mlflow
        from mlflow.models import Model

        tags = self.client.get_model_version(name, version).tags or {}
        adapter, base = tags.get("adapter_dir"), tags.get("base_model_path")
        if adapter and (Path(adapter) / "adapter_config.json").is_file():
            return (base if base and Path(base).is_dir() else self.base_model_path), adapter
        local = Path(mlflow.artifacts.download_artifacts(
            f"models:/{name}/{version}", dst_path=str(self.cache_dir / name / version),
            tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri))
        pyfunc = Model.load(str(local)).flavors.get("python_function", {}) if (local / "MLmodel").is_file() else {}
        logged = (pyfunc.get("artifacts") or {}).get("adapter", {}).get("path")  # register_chat_adapter's layout
        if logged and (local / logged / "adapter_config.json").is_file():
            base = (pyfunc.get("config") or {}).get("base_model_path")
            return (base if base and Path(base).is_dir() else self.base_model_path), str(local / logged)
        merged = next((p.parent for p in sorted(local.rglob("config.json"))
                       if not (p.parent / "adapter_config.json").exists()), None)
        if merged is None:
            raise FileNotFoundError(f"{name}/{version}: no LoRA adapter and no model folder in {local}")
        return str(merged), None


Loader = Callable[[str, str, str, "str | None"], ChatModel]


class ModelPool:
    """The models that answer each reference now; loads on demand, preloads ``wanted()``, follows moved aliases."""

    def __init__(self, registry: ChatRegistry, poll_s: float = 10.0, wanted: Callable[[], list[ModelRef]] = list,
                 loader: Loader = ChatModel):
        self.registry, self.poll_s, self.wanted, self._loader = registry, poll_s, wanted, loader
        self._current: dict[ModelRef, ChatModel] = {}  # replaced entry by entry under _lock, read without it
        self._versions: dict[tuple[str, str], ChatModel] = {}  # one copy per version, whichever refs name it
        self._failed: dict[ModelRef, float] = {}  # ref -> when it failed; retried after poll_s
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()  # loads one at a time: two 0.5 GB loads at once gain nothing on 2 cores
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.swaps: list[tuple[ModelRef, str, str]] = []  # (ref, old version, new version), for tests and logs

    def _load(self, ref: ModelRef) -> ChatModel:
        version = self.registry.resolve(ref)
        if version is None:
            raise LookupError(f"{ref} is not set")
        key = (BASE, "0") if ref.is_base else (ref.model, version)
        with self._load_lock:
            if key not in self._versions:
                base, adapter = (self.registry.base_model_path, None) if ref.is_base else self.registry.files(*key)
                model = self._loader(key[0], key[1], base, adapter)
                log.info("loaded %s/%s in %.1f s", key[0], key[1], getattr(model, "load_s", float("nan")))
                with self._lock:
                    self._versions[key] = model
            return self._versions[key]

    def get(self, ref: ModelRef) -> ChatModel | None:
        """The model answering ``ref`` now, loading it on first use; None when it cannot be loaded (for poll_s)."""
        model = self._current.get(ref)
        if model is not None:
            return model
        if time.monotonic() - self._failed.get(ref, -1e18) < self.poll_s:
            return None
        try:
            model = self._load(ref)
        except Exception as exc:  # a missing alias is routine (no champion yet): the route falls back
            level = logging.DEBUG if isinstance(exc, LookupError) else logging.WARNING
            log.log(level, "cannot load %s: %s: %s", ref, type(exc).__name__, exc)
            self._failed[ref] = time.monotonic()
            return None
        with self._lock:
            self._failed.pop(ref, None)
            return self._current.setdefault(ref, model)

    def serve(self, candidates: tuple[ModelRef, ...]) -> tuple[ModelRef, ChatModel]:
        for ref in candidates:
            model = self.get(ref)
            if model is not None:
                return ref, model
        raise NoModelAvailable(f"none of {', '.join(map(str, candidates))} could be loaded")

    def refresh(self) -> None:
        """One poll: move every aliased reference to the version its alias names now (loaded before the swap), drop
        references whose alias vanished, preload what ``wanted()`` names, free versions nothing names any more."""
        for ref, model in list(self._current.items()):
            if ref.alias is None:
                continue
            version = self.registry.resolve(ref)
            if version == model.version:
                continue
            try:
                new = self._load(ref) if version is not None else None
            except Exception as exc:  # keep serving the old version; try again next poll
                log.warning("alias %s moved to %s, which does not load (%s: %s); still serving %s",
                            ref, version, type(exc).__name__, exc, model.version)
                continue
            with self._lock:
                if new is None:
                    self._current.pop(ref, None)
                else:
                    self._current[ref] = new
                self.swaps.append((ref, model.version, version or ""))
            log.info("swapped %s: %s -> %s", ref, model.version, version)
        for ref in self.wanted():
            self.get(ref)
        with self._lock:
            named = {id(m) for m in self._current.values()}
            self._versions = {k: m for k, m in self._versions.items() if id(m) in named}

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.refresh()
            except Exception:  # the registry may be briefly unreachable: serve what is loaded, poll again
                log.exception("model poll failed")

    def start(self) -> None:
        """Preload in the background, then poll; requests are served meanwhile (first ones may wait for a load)."""
        def run() -> None:
            try:
                self.refresh()
            except Exception:
                log.exception("model preload failed")
            self._poll()

        self._thread = threading.Thread(target=run, name="model-pool", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def loaded(self) -> dict[ModelRef, ChatModel]:
        return dict(self._current)
