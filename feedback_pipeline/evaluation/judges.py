"""An external judge for generated answers: any OpenAI-compatible chat endpoint, instead of the reward model.

Off by default (the reward model trained from feedback judges). When configured (``JUDGE_BASE_URL`` and
``JUDGE_MODEL``), each answer is rated 1-10 by the endpoint at temperature 0, one request per answer; the gate's win
rates then compare those ratings. An unreadable rating or a failed request raises: no made-up score reaches the gate.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Sequence

import numpy as np

RUBRIC = ("You grade answers of a chat assistant. Rate how well the answer helps the user with their last message: "
          "correct, relevant, complete, clear, not padded. Reply with one integer from 1 (useless) to 10 (excellent) "
          "and nothing else.")


def _last_user_turn(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    turns = [m["content"] for m in prompt if m.get("role") == "user"]
    return turns[-1] if turns else str(prompt)


class OpenAICompatibleJudge:
    def __init__(self, base_url: str, model: str, api_key: str = "", timeout_s: float = 60.0):
        if not base_url or not model:
            raise ValueError("the external judge needs a base URL and a model name")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key, self.timeout_s = model, api_key, timeout_s

    @property
    def name(self) -> str:
        return f"openai-compatible:{self.model}@{self.url.rsplit('/chat/completions', 1)[0]}"

    def rate(self, prompt, answer: str) -> float:
        body = {"model": self.model, "temperature": 0, "max_tokens": 4, "messages": [
            {"role": "system", "content": RUBRIC},
            {"role": "user", "content": f"User message:\n{_last_user_turn(prompt)}\n\nAnswer:\n{answer}\n\nRating:"}]}
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, json.dumps(body).encode(), headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                reply = json.loads(response.read())
        except (urllib.error.URLError, TimeoutError, json.JSONDecodeError) as exc:
            raise RuntimeError(f"judge {self.name}: request failed: {exc}") from exc
        try:
            text = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise RuntimeError(f"judge {self.name}: unexpected response {str(reply)[:200]!r}") from exc
        match = re.search(r"\b(10|[1-9])\b", str(text))
        if not match:
            raise ValueError(f"judge {self.name}: no rating 1-10 in its reply {str(text)[:100]!r}")
        return float(match.group(1))

    def score(self, prompts: Sequence, answers: Sequence[str]) -> np.ndarray:
        if len(prompts) != len(answers):
            raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
        return np.array([self.rate(p, str(a)) for p, a in zip(prompts, answers)], dtype=float)
