"""The optional external judge against a real OpenAI-compatible HTTP endpoint on loopback.

The endpoint here is a small stand-in for a third-party service (not one of our components): it rates an answer by
the number of distinct words, so the expected ratings are known.
"""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from feedback_pipeline.evaluation.judges import OpenAICompatibleJudge


class _Endpoint(BaseHTTPRequestHandler):
    seen: list[dict] = []
    reply: str | None = None

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Endpoint.seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        answer = body["messages"][-1]["content"].split("Answer:\n", 1)[1].rsplit("\n\nRating:", 1)[0]
        content = _Endpoint.reply or str(min(10, max(1, len(set(answer.split())))))
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Endpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Endpoint.seen, _Endpoint.reply = [], None
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()
    server.server_close()


def test_external_judge_rates_each_answer_over_http(endpoint):
    judge = OpenAICompatibleJudge(endpoint, "grader", api_key="k-1")
    prompts = [[{"role": "user", "content": "Hi"}], "Plain prompt"]
    scores = judge.score(prompts, ["one two three", "a a a a"])
    assert scores.tolist() == [3.0, 1.0]
    first = _Endpoint.seen[0]
    assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer k-1"
    assert first["body"]["model"] == "grader" and first["body"]["temperature"] == 0
    assert "User message:\nHi" in first["body"]["messages"][-1]["content"]
    assert judge.name.startswith("openai-compatible:grader@http://127.0.0.1")


def test_an_unreadable_rating_or_a_dead_endpoint_raises(endpoint):
    _Endpoint.reply = "I cannot grade this."
    with pytest.raises(ValueError, match="no rating"):
        OpenAICompatibleJudge(endpoint, "grader").score(["q"], ["a"])
    with pytest.raises(RuntimeError, match="request failed"):
        OpenAICompatibleJudge("http://127.0.0.1:9/v1", "grader", timeout_s=2).score(["q"], ["a"])
