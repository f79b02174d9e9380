"""A scripted OpenAI-compatible chat server on 127.0.0.1 for judge tests and benchmarks.

Run: `python tests/helpers/fake_openai_server.py [--latency S] [--api-key KEY] [--lifetime S]`; it prints
`PORT <n>` on stdout once listening and stops by itself after `--lifetime` seconds.

`POST /v1/chat/completions` needs `Authorization: Bearer KEY` (when --api-key is set). The reply is
scripted by the answer being judged (the text between <answer> tags of the first user message):
- `PLAN[step|step|...]` plays one step per request for that answer (the last step repeats); steps:
  `429`, `500`, `slow:SECONDS` (sleep, then reply "5"), `reply:TEXT`, `echo-auth` (reply with the
  Authorization header, to test redaction), `html` (HTTP 200 with an HTML page, like a proxy's login
  page), `bad-usage:TEXT` (reply TEXT with non-numeric token counts);
- otherwise `SCORE=<text>` replies `<text>`; otherwise the reply is "5".
Every request also sleeps `--latency` seconds. `GET /_stats` returns counters (requests, peak in-flight,
statuses, requests per answer); `POST /_reset` zeroes them.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_ANSWER = re.compile(r"<answer>\n(.*?)\n</answer>", re.DOTALL)
_PLAN = re.compile(r"PLAN\[([^\]]*)\]")
_SCORE = re.compile(r"SCORE=(\S+)")


class State:
    def __init__(self, latency: float, api_key: str | None):
        self.latency, self.api_key = latency, api_key
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.inflight = 0
        self.peak_inflight = 0
        self.statuses: Counter[int] = Counter()
        self.attempts: Counter[str] = Counter()

    def snapshot(self) -> dict:
        with self.lock:
            return {
                "requests": self.requests,
                "inflight": self.inflight,
                "peak_inflight": self.peak_inflight,
                "statuses": {str(k): v for k, v in self.statuses.items()},
                "per_answer": dict(self.attempts),
            }


def _completion(model: str, text: str, prompt_chars: int) -> dict:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_chars // 4, "completion_tokens": 1, "total_tokens": prompt_chars // 4 + 1},
    }


def make_handler(state: State) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like a real server
        disable_nagle_algorithm = True  # headers and body go out in two writes: avoid Nagle + delayed-ACK stalls

        def log_message(self, *args: object) -> None:  # quiet
            pass

        def _send(self, status: int, body: dict | str, headers: dict[str, str] | None = None) -> None:
            html = isinstance(body, str)
            data = body.encode() if html else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=utf-8" if html else "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            try:
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout): normal here
                return
            with state.lock:
                state.statuses[status] += 1

        def do_GET(self) -> None:
            if self.path == "/_stats":
                self._send(200, state.snapshot())
            else:
                self._send(404, {"error": {"message": "not found"}})

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path == "/_reset":
                with state.lock:
                    state.reset()
                self._send(200, {"ok": True})
                return
            if self.path != "/v1/chat/completions":
                self._send(404, {"error": {"message": f"no route {self.path}"}})
                return
            with state.lock:
                state.requests += 1
                state.inflight += 1
                state.peak_inflight = max(state.peak_inflight, state.inflight)
            try:
                self._chat(json.loads(body))
            finally:
                with state.lock:
                    state.inflight -= 1

        def _chat(self, request: dict) -> None:
            auth = self.headers.get("Authorization", "")
            if state.api_key is not None and auth != f"Bearer {state.api_key}":
                self._send(401, {"error": {"message": "invalid api key", "type": "invalid_request_error"}})
                return
            user = next((m["content"] for m in request["messages"] if m["role"] == "user"), "")
            m = _ANSWER.search(user)
            answer = m.group(1) if m else ""
            digest = hashlib.sha256(answer.encode()).hexdigest()[:12]
            with state.lock:
                attempt = state.attempts[digest]
                state.attempts[digest] += 1
            time.sleep(state.latency)
            plan = _PLAN.search(answer)
            if plan:
                steps = plan.group(1).split("|")
                step = steps[min(attempt, len(steps) - 1)]
            else:
                score = _SCORE.search(answer)
                step = f"reply:{score.group(1)}" if score else "reply:5"
            model = request.get("model", "fake")
            if step == "429":
                self._send(429, {"error": {"message": "rate limited"}}, {"retry-after-ms": "20"})
            elif step == "500":
                self._send(500, {"error": {"message": "boom"}})
            elif step.startswith("slow:"):
                time.sleep(float(step[5:]))
                self._send(200, _completion(model, "5", len(user)))
            elif step == "echo-auth":
                self._send(200, _completion(model, auth, len(user)))
            elif step == "html":
                self._send(200, "<!DOCTYPE html>\n<html><body><h1>Sign in to the gateway</h1></body></html>\n")
            elif step.startswith("bad-usage:"):
                body = _completion(model, step.removeprefix("bad-usage:"), len(user))
                body["usage"] = {"prompt_tokens": "n/a", "completion_tokens": None, "total_tokens": [1]}
                self._send(200, body)
            else:
                self._send(200, _completion(model, step.removeprefix("reply:"), len(user)))

    return Handler


@dataclass
class RunningServer:
    """Handle on a server subprocess: its base URL and its counters."""

    process: subprocess.Popen
    port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _call(self, method: str, path: str) -> dict:
        data = b"" if method == "POST" else None
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method, data=data)
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def stats(self) -> dict:
        return self._call("GET", "/_stats")

    def reset(self) -> None:
        self._call("POST", "/_reset")


@contextlib.contextmanager
def serve(latency: float = 0.0, api_key: str | None = None, lifetime: float = 300.0) -> Iterator[RunningServer]:
    """Start the server as a subprocess (its own GIL, so it does not slow the client down), stop it after."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--latency", str(latency), "--lifetime", str(lifetime)]
    if api_key is not None:
        cmd += ["--api-key", api_key]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.startswith("PORT "):
            raise RuntimeError(f"fake OpenAI server did not start: {line!r}")
        yield RunningServer(proc, int(line.split()[1]))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--lifetime", type=float, default=300.0, help="stop by itself after this many seconds")
    args = parser.parse_args(argv)
    state = State(args.latency, args.api_key)
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    server.daemon_threads = True
    timer = threading.Timer(args.lifetime, server.shutdown)
    timer.daemon = True
    timer.start()
    print(f"PORT {server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
