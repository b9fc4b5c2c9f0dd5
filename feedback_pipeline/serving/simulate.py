"""Simulated users for the serving loop. SIMULATED everywhere: their feedback has ``source="simulated"`` and
``metadata.simulated = true``, so reports and datasets can tell them from people.

Each user asks one canned question through the real chat endpoint (the router picks the variant), reads the
answer, likes it with a probability the simulation knows, and sends the thumb through the real capture endpoint
with the answer's ``response_id``, so the A/B asset attributes it exactly as it would a person's. The like
probability comes from the arm (``like_by_arm``) or from a measurable property of the answer (its length).
"""

from __future__ import annotations

import json
import random
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

SOURCE = "simulated"
QUESTIONS = (
    "How do I reset my password?", "What is the capital of France?", "Give me a tip for sleeping better.",
    "How do I boil an egg?", "What does HTTP stand for?", "Suggest a name for a cat.",
    "How many days are in a leap year?", "What is a good first programming language?",
    "How do I make tea?", "Why is the sky blue?", "What is 12 times 12?", "How do plants make food?",
)


@dataclass(frozen=True)
class UserModel:
    """P(like) of one answer: by arm when the arm is listed, else by the answer's length, else ``base``."""
    like_by_arm: dict[str, float] = field(default_factory=dict)
    prefer: Literal["none", "shorter", "longer"] = "none"
    threshold_chars: int = 0  # "shorter": len(answer) <= threshold is the liked property
    p_match: float = 0.9
    p_other: float = 0.2
    base: float = 0.5

    def like_probability(self, answer: str, arm: str | None) -> float:
        if arm in self.like_by_arm:
            return self.like_by_arm[arm]
        if self.prefer == "none":
            return self.base
        short = len(answer) <= self.threshold_chars
        return self.p_match if short == (self.prefer == "shorter") else self.p_other


@dataclass
class SimulationReport:
    users: int = 0
    served: Counter = field(default_factory=Counter)  # arm ("" outside experiments) -> answers
    liked: Counter = field(default_factory=Counter)
    versions: Counter = field(default_factory=Counter)  # "name/version" -> answers
    errors: list[str] = field(default_factory=list)

    def like_rate(self, arm: str) -> float | None:
        return self.liked[arm] / self.served[arm] if self.served[arm] else None


def _post(url: str, body: dict, key: str, timeout: float) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def simulate(base_url: str, key: str, users: int, model: UserModel, seed: int = 0, max_tokens: int = 8,
             intent: str | None = None, project: str | None = None, timeout: float = 120.0) -> SimulationReport:
    """Run ``users`` simulated users against the service at ``base_url`` (a write key); raises on no answer."""
    rng, report = random.Random(seed), SimulationReport()
    for u in range(users):
        user_id = f"sim-{seed}-{u}"
        question = rng.choice(QUESTIONS)
        status, body = _post(f"{base_url}/v1/chat/completions", {
            "model": "auto", "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens,
            "user": user_id, "intent": intent, "project": project}, key, timeout)
        if status != 200:
            report.errors.append(f"chat {status}: {body}")
            continue
        answer, variant = body["choices"][0]["message"]["content"], body["feedback_pipeline"]
        arm = variant.get("arm") or ""
        liked = rng.random() < model.like_probability(answer, variant.get("arm"))
        status, ack = _post(f"{base_url}/v1/feedback", {
            "query": question, "response": answer or "(empty answer)", "rating": "up" if liked else "down",
            "user_id": user_id, "response_id": variant["response_id"], "intent": intent, "project": project,
            "source": SOURCE, "metadata": {"simulated": True, "seed": seed}}, key, timeout)
        if status not in (200, 201):
            report.errors.append(f"feedback {status}: {ack}")
            continue
        report.users += 1
        report.served[arm] += 1
        report.liked[arm] += int(liked)
        report.versions[f"{variant['registered_model']}/{variant['model_version']}"] += 1
    return report
