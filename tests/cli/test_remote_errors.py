"""`--server` mistakes and servers that never answer (``fpe_headless.comfy.remote``), as a user meets them: one
line naming the server and the fix, exit status 2 before ComfyUI starts, and no hang. The servers here are
loopback sockets that accept a connection and never answer; no ComfyUI server is started."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from fpe_headless.comfy.jobs import Job
from fpe_headless.comfy.remote import CHECK_ANSWER_S, RemoteError, RemoteRunner, server_url

REPO = Path(__file__).resolve().parents[2]


@contextmanager
def silent_server():
    """A loopback port that accepts TCP connections (the kernel completes them from the listen backlog) and
    never answers: nothing reads or writes them. Closed, with its connections, when the block ends."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def fpe(*args, cwd):
    tmpdir = Path(cwd) / ".tmpdir"  # the command's own TMPDIR: another process's leftovers stay out of its stderr
    tmpdir.mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(REPO), FPE_PROG="fpe", TMPDIR=str(tmpdir))
    return subprocess.Popen([sys.executable, "-m", "fpe_headless", *map(str, args)], env=env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, limit: float) -> tuple[int, str]:
    try:
        _, stderr = process.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        pytest.fail(f"{process.args[3:]} still ran after {limit:g} s")
    return process.returncode, stderr


def test_server_urls_are_checked_before_anything_connects(tmp_path):
    # The address forms a user gives, normalised; everything else is refused without a connection.
    assert server_url("127.0.0.1:8188") == "http://127.0.0.1:8188"
    assert server_url(" http://127.0.0.1:8188/ ") == "http://127.0.0.1:8188"
    assert server_url("HTTPS://gpu-box") == "https://gpu-box"
    assert server_url("http://[::1]:8189") == "http://[::1]:8189"
    for bad, why in [("http://127.0.0.1:0", "port 0 is not a port number 1 to 65535"),
                     ("http://127.0.0.1:port", "port port is not a port number"),
                     ("http://:8188", "no host"),
                     ("http://127.0.0.1:8188/prompt", "not a path"),
                     ("http://127.0.0.1:8188/?x=1", "not a path, query"),
                     ("wss://127.0.0.1:8188", "not its websocket's")]:
        with pytest.raises(RemoteError, match=rf"^{re.escape(f'--server {bad}: ')}.*{why}.*give http://HOST:PORT"):
            server_url(bad)
        with pytest.raises(RemoteError):
            RemoteRunner([bad])

    # The two examples, through both commands that take --server.
    cases = [
        (("batch", "car-fake-edit", "--server", "htp://127.0.0.1:8188", "--checkpoint", "sd15.safetensors"),
         "--server htp://127.0.0.1:8188: unknown scheme 'htp': give http://HOST:PORT"),
        (("batch", "car-fake-edit", "--server", "http://127.0.0.1:8188", "--server", "http://127.0.0.1:99999",
          "--checkpoint", "sd15.safetensors"),
         "--server http://127.0.0.1:99999: port 99999 is not a port number 1 to 65535 (ComfyUI's default is 8188)"),
        (("probe", "build", "color-car", "--server", "htp://127.0.0.1:8188", "--checkpoint", "sd15.safetensors"),
         "--server htp://127.0.0.1:8188: unknown scheme 'htp'"),
        (("probe", "build", "color-car", "--server", "http://127.0.0.1:99999", "--checkpoint", "sd15.safetensors"),
         "--server http://127.0.0.1:99999: port 99999 is not a port number 1 to 65535"),
    ]
    runs = [(args, message, fpe(*args, cwd=tmp_path)) for args, message in cases]
    for args, message, process in runs:
        status, stderr = finish(process, 120)
        assert status == 2 and message in stderr, (args, stderr)
        assert stderr.strip().count("\n") == 0 and "Traceback" not in stderr, stderr


def test_a_server_that_accepts_but_never_answers_stops_both_commands_with_one_line(tmp_path):
    """`fpe batch --server` and `fpe probe build --server` against a server that accepts the connection and
    never answers: the check before the batch gives up after CHECK_ANSWER_S and names the server and the call."""
    with silent_server() as url:
        started = time.monotonic()
        batch_run = fpe("batch", "car-fake-edit", "--server", url, "--checkpoint", "sd15.safetensors",
                        "--limit", "2", cwd=tmp_path)
        probe_run = fpe("probe", "build", "color-car", "--server", url, "--checkpoint", "sd15.safetensors",
                        "--limit", "2", cwd=tmp_path)
        for process, node in ((batch_run, "FPESourceCapture"), (probe_run, "FPESaveAttentionMaps")):
            status, stderr = finish(process, CHECK_ANSWER_S + 60)
            assert status == 2, stderr
            assert (f"--server {url}: accepted the connection but did not answer GET /object_info/{node} within "
                    f"{CHECK_ANSWER_S:g} s; restart that ComfyUI if it is stuck") in stderr, stderr
            assert stderr.strip().count("\n") == 0 and "Traceback" not in stderr, stderr
        took = time.monotonic() - started
    assert CHECK_ANSWER_S <= took < CHECK_ANSWER_S + 40, took  # waited the bound, then stopped


def test_a_batch_on_a_server_that_never_answers_ends_each_item_with_the_reason():
    """During the batch the websocket handshake is bounded too: no server left, every item gets an error
    naming the server and what it waited for, and run() returns."""
    jobs = [Job(f"car-{n}", "car", {"1": {"class_type": "KSampler", "inputs": {}}}, {"1": "edit"}) for n in range(2)]
    results, notices, returned = {}, [], []

    def run(url):
        RemoteRunner([url], answer_s=1.0, say=notices.append).run(jobs, lambda r: results.setdefault(r.key, r))
        returned.append(True)

    with silent_server() as url:
        started = time.monotonic()
        worker = threading.Thread(target=run, args=(url,), daemon=True)
        worker.start()
        worker.join(timeout=30)
        took = time.monotonic() - started
    assert returned, "RemoteRunner.run still waits on a server that never answers"
    assert took < 15, took
    why = (f"no ComfyUI server left: {url} accepted the connection but did not answer the websocket handshake "
           "(GET /ws) within 1 s")
    assert sorted(results) == ["car-0", "car-1"]
    assert all(result.error == why for result in results.values()), results
    assert notices == [why]
