"""A SIMULATED top LLM tier: an OpenAI-compatible server on loopback answering from a test set's references.

No large LLM runs on these machines, so the routing benchmark stands in for the top tier with this server: it reads
the question out of the RAG prompt, answers with the test set's first reference (citing passage 1), or the
abstention sentence for an unanswerable question, after a realistic delay (``ttft_s`` plus ``s_per_token`` per
completion token), and reports usage (prompt tokens ~ words x 1.3) so the stack prices it like a hosted model. Its
quality is therefore an upper bound; everything the benchmark reports about it is labelled a simulation.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

_QUESTION = re.compile(r"Question:\s*(.*?)\s*\nAnswer:\s*$", re.S)


def _tokens(text: str) -> int:
    return max(1, round(len(text.split()) * 1.3))


class SimulatedTopTier:
    """The server, as a context manager; ``answers`` maps a question to its reply."""

    def __init__(self, answers: Mapping[str, str], *, ttft_s: float = 0.35, s_per_token: float = 0.01) -> None:
        self.answers = dict(answers)
        self.ttft_s = ttft_s
        self.s_per_token = s_per_token
        self.model = "simulated-top-tier"
        self.calls = 0
        self._server: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        """The ``/v1`` URL."""
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def reply(self, prompt: str) -> str:
        """What the simulation answers to ``prompt``."""
        from rag.types import ABSTAIN_TEXT

        found = _QUESTION.search(prompt)
        answer = self.answers.get(found.group(1).strip()) if found else None
        return f"{answer} [1]." if answer else ABSTAIN_TEXT

    def __enter__(self) -> SimulatedTopTier:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                prompt = "\n".join(str(m.get("content", "")) for m in body.get("messages", []))
                reply = owner.reply(prompt)
                owner.calls += 1
                usage = {"prompt_tokens": _tokens(prompt), "completion_tokens": _tokens(reply)}
                usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
                time.sleep(owner.ttft_s + owner.s_per_token * usage["completion_tokens"])
                data = json.dumps(
                    {
                        "id": "sim",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": owner.model,
                        "choices": [
                            {"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}
                        ],
                        "usage": usage,
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
