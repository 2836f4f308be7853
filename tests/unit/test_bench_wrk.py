"""bench/_wrk.py: the generated Lua script, the parsing of its ``done()`` line, and one short real wrk run."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bench._wrk import MARKER, lua_string, parse_output, post_script, run_wrk


def test_lua_string_escapes_quotes_backslashes_and_control_characters():
    assert lua_string('a "b" \\ c') == '"a \\"b\\" \\\\ c"'
    assert lua_string("x\ny") == '"x\\010y"'


def test_post_script_holds_every_body_as_json_and_the_path():
    script = post_script(
        "/v1/query", [{"question": 'say "hi"'}, {"question": "two"}], headers={"Authorization": "Bearer k"}
    )
    assert 'local path = "/v1/query"' in script
    assert 'wrk.headers["Authorization"] = "Bearer k"' in script
    assert lua_string(json.dumps({"question": 'say "hi"'})) in script
    assert "non2xx" in script and "latency:percentile(99)" in script


def test_post_script_refuses_no_bodies():
    with pytest.raises(ValueError, match="at least one body"):
        post_script("/v1/query", [])


def test_parse_output_counts_non_2xx_and_socket_errors_and_converts_units():
    raw = {
        "requests": 100,
        "duration_us": 2_000_000,
        "non2xx": 3,
        "connect_errors": 0,
        "read_errors": 1,
        "write_errors": 0,
        "status_errors": 3,
        "timeouts": 1,
        "p50_us": 12_345,
        "p95_us": 20_000,
        "p99_us": 30_500,
        "mean_us": 13_000.0,
        "max_us": 40_000,
    }
    stdout = "Running 2s test\n" + MARKER + json.dumps(raw) + "\nRequests/sec: 50.00\n"
    result = parse_output(stdout, cpu_seconds=0.4, cores=2)
    assert (result.ok, result.errors, result.rps) == (97, 5, 48.5)
    assert (result.p50_ms, result.p99_ms) == (12.35, 30.5)
    assert result.cpu_share == pytest.approx(0.1)


def test_parse_output_without_the_done_line_is_an_error():
    with pytest.raises(ValueError, match="WRK_JSON"):
        parse_output("unable to connect to 127.0.0.1:1 Connection refused\n")


class _Handler(BaseHTTPRequestHandler):
    """200 for question "ok" with the bench's key, 503 for another question, 401 without the key."""

    def do_POST(self) -> None:
        if self.headers.get("Authorization") != "Bearer k":
            self.send_error(401)
            return
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        status = 200 if body["question"] == "ok" else 503
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:  # no line per request on stderr
        pass


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # wrk closes its connections mid-request when its time is up: a broken pipe, not a failure


@pytest.fixture
def server() -> Iterator[str]:
    httpd = _Server(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)")
def test_a_real_wrk_run_posts_the_bodies_in_turn_and_counts_non_2xx_as_errors(server: str, tmp_path: Path):
    script = tmp_path / "post.lua"
    script.write_text(
        post_script("/v1/query", [{"question": "ok"}, {"question": "refused"}], headers={"Authorization": "Bearer k"})
    )
    result = run_wrk(server + "/v1/query", script, connections=1, duration=1)
    assert result.requests > 10
    # one connection alternates the two bodies, so half the responses are 503s
    assert abs(result.errors - result.requests / 2) <= 1
    assert result.ok + result.errors == result.requests
    assert 0 <= result.cpu_share < 1
