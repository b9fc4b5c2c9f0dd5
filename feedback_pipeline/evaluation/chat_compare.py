"""Challenger vs champion chat model on the same held-out feedback, in one pass: what the release gate reads.

Both models are LoRA adapters on one base (the bare base is the champion "version 0" while none is promoted), loaded
once with named adapters. Measured, each paired per example so the gate gets a paired interval:

- ``liked_logprob``: mean per-token log-probability of held-out liked answers (its NLL is a guardrail);
- ``preference_accuracy``: on held-out chosen/rejected pairs, does the model give the chosen answer the higher
  length-normalised log-probability (ties half); ``preference_margin``: by how much (per-token log-prob, chosen
  minus rejected);
- generated answers: both models answer the same held-out prompts, the reward model judges each pair of answers;
  win rate and length-controlled win rate (the primary metric by default), length / refusal / repetition / empty
  answers as guardrails, win outcomes per segment;
- the gold set: BLEU, chrF and ROUGE-L of each model's answers against the curated references.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from feedback_pipeline.evaluation.chat_eval import response_logprobs
from feedback_pipeline.evaluation.gate import (Evidence, GateDecision, GatePolicy, Guardrail, Interval, decide,
                                               length_controlled_win_rate, paired_interval, prompt_groups,
                                               segment_evidence, win_outcomes)
from feedback_pipeline.evaluation.generation import ChatGenerator, guardrail_arrays
from feedback_pipeline.evaluation.gold import GoldSet, score_gold

CHAMPION, CHALLENGER = "champion", "challenger"


@dataclass(frozen=True)
class ChatCompareOptions:
    n_generated: int = 16  # held-out prompts both models answer (scheduled runs can use more)
    max_new_tokens: int = 48
    batch_size: int = 8
    max_liked: int = 40
    max_pairs: int = 40
    max_gold: int = 12
    max_length: int = 256
    seed: int = 0


@dataclass(frozen=True)
class ChatComparison:
    intervals: dict[str, Interval]  # challenger - champion, paired per example
    win: dict[str, float]  # raw and length-controlled win rate with intervals
    guardrails: dict[str, dict[str, float]]  # model -> guardrail means
    gold: dict[str, dict[str, float]]  # model -> bleu / chrf / rougeL
    segments: dict[str, tuple[list[float], list[float]]]  # segment -> (0.5s, win outcomes)
    judge: str
    champion: str
    examples: list[dict] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        """Flat numbers for MLflow and Dagster metadata."""
        out = {f"{k}_{side}": getattr(iv, side) for k, iv in self.intervals.items()
               for side in ("champion", "challenger", "diff", "ci_low", "ci_high")}
        out.update({k: float(v) for k, v in self.win.items()})
        for model, values in (*self.guardrails.items(), *self.gold.items()):
            out.update({f"{model}_{k}": float(v) for k, v in values.items()})
        return out


def _key(prompt: Any) -> str:
    return hashlib.sha256(json.dumps(prompt, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:20]


class ChampionCache:
    """What the champion produced for given inputs (generated answers, log-prob scores), keyed by the champion's
    identity (e.g. ``feedback-chat/3``), the kind of result and its settings: the champion is run once per input, not
    again for every challenger it meets. Challengers are never cached."""

    def __init__(self, folder: Path | None, identity: str, kind: str):
        self.path = None
        self.values: dict[str, Any] = {}
        if folder is not None:
            name = hashlib.sha256(f"{identity}|{kind}".encode()).hexdigest()[:24]
            self.path = Path(folder) / f"{name}.json"
            if self.path.is_file():
                self.values = json.loads(self.path.read_text(encoding="utf-8"))

    def fill(self, inputs: Sequence[Any], compute: Callable[[list[Any]], Sequence[Any]]) -> list[Any]:
        missing = [x for x in inputs if _key(x) not in self.values]
        if missing:
            self.values.update({_key(x): v for x, v in zip(missing, compute(missing))})
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.path.write_text(json.dumps(self.values, ensure_ascii=False), encoding="utf-8")
        return [self.values[_key(x)] for x in inputs]


def _answer(value: Any) -> str:
    return value[-1]["content"] if isinstance(value, list) else str(value)


def held_out_prompts(held_out: Sequence[Mapping[str, Any]], n: int, seed: int) -> list[Mapping[str, Any]]:
    """``n`` distinct held-out prompts (first record of each), a seeded sample stable for a given eval split."""
    seen: dict[str, Mapping[str, Any]] = {}
    for record in held_out:
        seen.setdefault(_key(record["prompt"]), record)
    keys = sorted(seen)
    order = np.random.default_rng(seed).permutation(len(keys))[:n]
    return [seen[keys[i]] for i in sorted(order)]


def compare_chat_with_champion(base_model_path: str, champion_adapter: str | None, challenger_adapter: str,
                               held_out: Sequence[Mapping[str, Any]], pairs: Sequence[Mapping[str, Any]],
                               judge, judge_name: str, champion_name: str, gold: GoldSet | None = None,
                               options: ChatCompareOptions = ChatCompareOptions(),
                               segment_of: Callable[[str], Mapping[str, str]] | None = None,
                               cache_dir: Path | None = None, log: Callable[[str], None] = lambda _: None
                               ) -> ChatComparison:
    """Score both models on the same held-out data. ``held_out``: KTO records (prompt, completion, label,
    feedback_id); ``pairs``: DPO records; ``judge``: an object with ``score(prompts, answers) -> array``
    (``RewardScorer``); ``segment_of(feedback_id)`` gives a record's segments (model, intent, project, subject)."""
    gen = ChatGenerator(base_model_path, {CHAMPION: champion_adapter, CHALLENGER: challenger_adapter},
                        max_prompt_tokens=options.max_length)
    intervals: dict[str, Interval] = {}

    def logprobs(name: str, examples: list[dict]) -> np.ndarray:
        def score(batch: list[dict]) -> list[float]:
            with gen.use(name):
                return [s / n for s, n in response_logprobs(gen.model, gen.tokenizer, batch, options.max_length, 4)]

        if name == CHAMPION:
            return np.array(ChampionCache(cache_dir, champion_name, f"logprob|{options.max_length}").fill(examples, score))
        return np.array(score(examples))

    liked = [{"prompt": r["prompt"], "response": _answer(r["completion"])}
             for r in held_out if r["label"] is True][: options.max_liked]
    if liked:
        log(f"scoring {len(liked)} held-out liked answers under both models")
        intervals["liked_logprob"] = paired_interval(logprobs(CHAMPION, liked), logprobs(CHALLENGER, liked),
                                                     seed=options.seed)
    chosen_rejected = [{"prompt": p["prompt"], "response": _answer(p[key])}
                       for p in pairs[: options.max_pairs] for key in ("chosen", "rejected")]
    if chosen_rejected:
        log(f"scoring {len(chosen_rejected) // 2} held-out preference pairs under both models")
        accuracy, margin = {}, {}
        for name in (CHAMPION, CHALLENGER):
            lp = logprobs(name, chosen_rejected)
            accuracy[name] = win_outcomes(lp[1::2], lp[0::2])  # chosen (even rows) above rejected
            margin[name] = lp[0::2] - lp[1::2]  # per-token log-prob of chosen minus rejected
        prompts = prompt_groups(pairs[: options.max_pairs])  # the pairs of one prompt are resampled together
        intervals["preference_accuracy"] = paired_interval(accuracy[CHAMPION], accuracy[CHALLENGER],
                                                           seed=options.seed, groups=prompts)
        intervals["preference_margin"] = paired_interval(margin[CHAMPION], margin[CHALLENGER], seed=options.seed,
                                                         groups=prompts)

    records = held_out_prompts(held_out, options.n_generated, options.seed)
    prompts = [r["prompt"] for r in records]
    log(f"generating answers to {len(prompts)} held-out prompts with both models")
    champion_cache = ChampionCache(cache_dir, champion_name, f"answers|{options.max_new_tokens}")
    answers = {
        CHAMPION: champion_cache.fill(prompts, lambda ps: gen.generate(CHAMPION, ps, options.max_new_tokens,
                                                                       options.batch_size)),
        CHALLENGER: gen.generate(CHALLENGER, prompts, options.max_new_tokens, options.batch_size),
    }
    rewards = {name: np.asarray(judge.score(prompts, answers[name]), float) for name in answers}
    arrays = {name: guardrail_arrays(answers[name], gen.tokenizer) for name in answers}
    win = length_controlled_win_rate(rewards[CHAMPION], rewards[CHALLENGER], arrays[CHAMPION]["tokens"],
                                     arrays[CHALLENGER]["tokens"], seed=options.seed)
    intervals["reward"] = paired_interval(rewards[CHAMPION], rewards[CHALLENGER], seed=options.seed)
    guardrails = {name: {"mean_tokens": float(a["tokens"].mean()), "refusal_rate": float(a["refusal"].mean()),
                         "repetition_rate": float(a["repetitive"].mean()), "empty_rate": float(a["empty"].mean())}
                  for name, a in arrays.items()}
    wins = win_outcomes(rewards[CHAMPION], rewards[CHALLENGER])
    segments: dict[str, tuple[list[float], list[float]]] = {}
    if segment_of is not None:
        for record, outcome in zip(records, wins):
            for column, value in (segment_of(str(record.get("feedback_id"))) or {}).items():
                if value:
                    half, outs = segments.setdefault(f"{column}={value}", ([], []))
                    half.append(0.5)
                    outs.append(float(outcome))

    gold_scores: dict[str, dict[str, float]] = {}
    if gold is not None and gold.items:
        items = list(gold.items)[: options.max_gold]
        gold_prompts = [list(item.prompt) for item in items]
        refs = [list(item.references) for item in items]
        log(f"answering {len(items)} gold-set prompts (gold set {gold.version}) with both models")
        gold_answers = {CHAMPION: champion_cache.fill(gold_prompts, lambda ps: gen.generate(
                            CHAMPION, ps, options.max_new_tokens, options.batch_size)),
                        CHALLENGER: gen.generate(CHALLENGER, gold_prompts, options.max_new_tokens, options.batch_size)}
        scored = {name: score_gold(gold_answers[name], refs) for name in gold_answers}
        gold_scores = {name: {"gold_bleu": s["bleu"], "gold_chrf": s["chrf"], "gold_rougeL": s["rougeL"],
                              "gold_items": float(s["n_items"])}
                       for name, s in scored.items()}
        intervals["gold_sentence_chrf"] = paired_interval(scored[CHAMPION]["sentence_chrf"],
                                                 scored[CHALLENGER]["sentence_chrf"], seed=options.seed)

    examples = [{"prompt": _answer(p)[:200], "champion": answers[CHAMPION][i][:300],
                 "challenger": answers[CHALLENGER][i][:300], "reward_champion": float(rewards[CHAMPION][i]),
                 "reward_challenger": float(rewards[CHALLENGER][i])} for i, p in enumerate(prompts[:3])]
    return ChatComparison(intervals, win, guardrails, gold_scores, segments, judge_name, champion_name, examples)


@dataclass(frozen=True)
class ChatGuardrailTolerances:
    length_relative: float = 0.5  # mean answer tokens may change by at most 50% either way
    refusal_rate: float = 0.10
    repetition_rate: float = 0.10
    empty_rate: float = 0.05
    liked_nll_relative: float = 0.05  # held-out NLL on liked answers may rise by at most 5%


def chat_primary(comparison: ChatComparison, metric: str) -> Interval:
    """The paired interval of the policy's primary metric (win rates as the excess over 0.5)."""
    if metric in ("lc_win_rate", "win_rate"):
        w = comparison.win
        return Interval(0.5, w[metric], w[metric] - 0.5, w[f"{metric}_ci_low"] - 0.5, w[f"{metric}_ci_high"] - 0.5,
                        int(w["n"]))
    if metric not in comparison.intervals:
        raise KeyError(f"primary metric {metric!r} was not measured; measured: {sorted(comparison.intervals)}")
    return comparison.intervals[metric]


def chat_decision(comparison: ChatComparison, policy: GatePolicy,
                  tolerances: ChatGuardrailTolerances = ChatGuardrailTolerances()) -> GateDecision:
    g_champ, g_chall = comparison.guardrails[CHAMPION], comparison.guardrails[CHALLENGER]
    guardrails = [
        Guardrail("mean_tokens", g_champ["mean_tokens"], g_chall["mean_tokens"], "either",
                  tolerances.length_relative, relative=True),
        Guardrail("refusal_rate", g_champ["refusal_rate"], g_chall["refusal_rate"], "higher", tolerances.refusal_rate),
        Guardrail("repetition_rate", g_champ["repetition_rate"], g_chall["repetition_rate"], "higher",
                  tolerances.repetition_rate),
        Guardrail("empty_rate", g_champ["empty_rate"], g_chall["empty_rate"], "higher", tolerances.empty_rate),
    ]
    if "liked_logprob" in comparison.intervals:
        iv = comparison.intervals["liked_logprob"]
        guardrails.append(Guardrail("liked_nll", -iv.champion, -iv.challenger, "higher",
                                    tolerances.liked_nll_relative, relative=True))
    secondary = [Evidence(name, "secondary", iv.champion, iv.challenger, iv.diff, iv.ci_low, iv.ci_high, iv.n, None)
                 for name, iv in sorted(comparison.intervals.items()) if name != policy.primary_metric]
    w = comparison.win
    for metric in ("win_rate", "lc_win_rate"):
        if metric != policy.primary_metric:
            secondary.append(Evidence(metric, "secondary", 0.5, w[metric], w[metric] - 0.5, w[f"{metric}_ci_low"] - 0.5,
                                      w[f"{metric}_ci_high"] - 0.5, int(w["n"]), None, f"judge {comparison.judge}"))
    for name, b in comparison.gold.get(CHALLENGER, {}).items():
        if name != "gold_items":
            a = comparison.gold[CHAMPION][name]
            secondary.append(Evidence(name, "secondary", a, b, b - a, float("nan"), float("nan"),
                                      int(comparison.gold[CHALLENGER]["gold_items"]), None, "corpus score on the gold set"))
    segments = segment_evidence(comparison.segments, policy, seed=0)
    return decide(policy, chat_primary(comparison, policy.primary_metric), guardrails, segments, secondary)
