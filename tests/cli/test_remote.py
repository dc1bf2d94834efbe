"""Batches on real ComfyUI servers (``fpe_headless.comfy.remote``): two servers on loopback, the pack installed
in each as ComfyUI-Manager does, running ``fpe batch``'s jobs. The checks before a batch; an item's failure
worded as in-process; a group split between servers; a lost answer to POST /prompt not run twice; a new
source sent to the server with the shorter queue; a stuck item retried elsewhere until no server is
left; and one server stopped mid-batch, the batch still completing with images equal, pixel for pixel, to
the in-process run of the same prompts."""

from __future__ import annotations

import copy
import io
import json
import socket
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fpe_harness.comfy_server import ComfyServer
from fpe_headless.batch.batch import BatchSettings, make_jobs
from fpe_headless.batch.datasets import EditItem
from fpe_headless.comfy.jobs import InProcessRunner, Job
from fpe_headless.comfy.remote import RemoteError, RemoteRunner, check_servers

REPO = Path(__file__).resolve().parents[2]
SIDE, STEPS = 64, 2
SOURCES = {"ducks": "a photo of green ducks walking on street", "car": "a photo of a red car in a city"}
TARGETS = {"ducks": ["a photo of rubber ducks walking on street", "a photo of wooden ducks walking on street",
                    "a photo of paper ducks walking on street"],
           "car": ["a photo of a blue car in a city", "a photo of a golden car in a city",
                   "a photo of a green car in a city"]}


@pytest.fixture(scope="module")
def servers(comfy_host, tiny_sd15_ckpt, tmp_path_factory):
    """Two ComfyUI servers, set up one after the other (disk) and booted together. Each is started from a
    thread that lives until the end: a server gets SIGTERM when the thread that started it ends (the
    harness's PR_SET_PDEATHSIG, which is per thread)."""
    checkpoint = comfy_host.workdir / "models" / "checkpoints" / tiny_sd15_ckpt
    pair = [ComfyServer(comfy_host.path, tmp_path_factory.mktemp(f"server-{n}"), [checkpoint], small_photo_side=SIDE)
            for n in ("a", "b")]
    release = threading.Event()
    errors = []

    def start_and_hold(server):
        try:
            server.start()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(exc)
        finally:
            booted.release()
        release.wait()

    booted = threading.Semaphore(0)
    threads = [threading.Thread(target=start_and_hold, args=(server,), daemon=True) for server in pair]
    try:
        for server in pair:
            server.prepare()
        for thread in threads:
            thread.start()
        for _ in threads:
            booted.acquire()
        if errors:
            raise errors[0]
        yield pair
    finally:
        for server in pair:
            server.stop()
        release.set()


def edit_jobs(keys_and_targets: list[tuple[str, str]], checkpoint: str, *, steps: int = STEPS, seed: int = 0
              ) -> list[Job]:
    """The batch's jobs (``fpe batch``'s ``make_jobs``) at CPU size; a key's prefix names its source."""
    items = [EditItem(key, SOURCES[key.split("-")[0]], target) for key, target in keys_and_targets]
    return make_jobs(items, BatchSettings(checkpoint=checkpoint, steps=steps, size=SIDE, seed=seed))


def run_all(runner, jobs) -> dict:
    results = {}

    def on_result(result):
        assert result.key not in results, f"{result.key} reported twice"
        results[result.key] = result

    runner.run(jobs, on_result)
    assert sorted(results) == sorted(job.key for job in jobs)
    return results


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_check_servers_names_each_bad_server_and_its_fix(servers, tiny_sd15_ckpt):
    check_servers([s.url for s in servers], tiny_sd15_ckpt)  # both fine: no error

    dead = f"127.0.0.1:{free_port()}"
    with pytest.raises(RemoteError) as error:
        check_servers([servers[0].url, dead], tiny_sd15_ckpt)
    message = str(error.value)
    assert "\n" not in message and servers[0].url not in message
    assert f"--server http://{dead}: no ComfyUI answers there" in message and "start it" in message

    with pytest.raises(RemoteError, match=rf"--server {servers[1].url}: has no checkpoint sd15\.safetensors "
                                          rf"\(it has: {tiny_sd15_ckpt}\); put sd15\.safetensors in that "
                                          r"server's models/checkpoints"):
        check_servers([servers[1].url], "sd15.safetensors")

    class NoPack(BaseHTTPRequestHandler):  # a ComfyUI without the pack: object_info knows no FPE node
        def do_GET(self):
            body = json.dumps({}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    bare = ThreadingHTTPServer(("127.0.0.1", 0), NoPack)
    threading.Thread(target=bare.serve_forever, daemon=True).start()
    try:
        with pytest.raises(RemoteError, match="lacks the free-prompt-editing node FPESourceCapture .*install or update"):
            check_servers([f"http://127.0.0.1:{bare.server_port}"], tiny_sd15_ckpt)
    finally:
        bare.shutdown()


def test_an_item_that_fails_is_recorded_as_in_process_and_the_rest_finish(servers, tiny_sd15_ckpt):
    good, invalid, broken, after = jobs = edit_jobs(
        [("ducks-good", TARGETS["ducks"][0]), ("ducks-invalid", TARGETS["ducks"][1]),
         ("ducks-broken", TARGETS["ducks"][2]), ("ducks-after", "a photo of glass ducks walking on street")],
        tiny_sd15_ckpt)
    # refused at POST /prompt (HTTP 400); a sampler, not a checkpoint, as the servers' checkpoint lists differ
    # from this process's (the message lists the choices)
    invalid.prompt["8"]["inputs"]["sampler_name"] = "no_such_sampler"
    broken.prompt["8"]["inputs"]["steps"] = STEPS + 1  # the capture's steps differ: the pack fails at run time
    after.prompt["7"]["inputs"]["end"] = 0.4  # edits no step of 2: the pack warns, the item still runs

    unreadable = Job("ducks-unreadable", good.group, {}, {}, error="photo x.png: no such file in /nowhere")

    remote = run_all(RemoteRunner([servers[0].url], say=None), [*jobs, unreadable])
    local = run_all(InProcessRunner(), jobs)
    assert remote["ducks-unreadable"].error == unreadable.error and remote["ducks-unreadable"].where == "not run"
    assert remote["ducks-good"].ok and remote["ducks-after"].ok
    assert remote["ducks-invalid"].error.startswith("the prompt did not validate: node 8 ")
    assert remote["ducks-broken"].error.startswith(
        "node 8 'KSampler (target: same seed, steps, sampler)' (KSampler) failed: FPEError: the target sampler")
    for key in ("ducks-invalid", "ducks-broken"):  # worded as the in-process run words it, one line
        assert remote[key].error == local[key].error and "\n" not in remote[key].error
        assert remote[key].images == {} and remote[key].where == servers[0].url
    assert remote["ducks-good"].where == servers[0].url and remote["ducks-good"].seconds > 0
    assert remote["ducks-good"].warnings == [] and remote["ducks-after"].warnings == local["ducks-after"].warnings
    assert remote["ducks-after"].warnings[0].startswith("FPE: the edit is off: start 0.0 / end 0.4 edit no step of 2")


def test_an_idle_server_takes_the_tail_of_a_busy_servers_group(servers, tiny_sd15_ckpt):
    jobs = edit_jobs([(f"car-{n}", target) for n, target in enumerate(TARGETS["car"])], tiny_sd15_ckpt, seed=1)
    order = []
    RemoteRunner([s.url for s in servers], say=None).run(jobs, order.append)
    assert all(r.ok for r in order), [r.error for r in order]
    # One server took the group; the other, with no untouched group left, took its tail item (paying the
    # source again) to run beside the owner's two: the batch ends sooner.
    owner = next(r.where for r in order if r.key == "car-0")
    assert [r.key for r in order if r.where == owner] == ["car-0", "car-1"]
    assert [r.key for r in order if r.where != owner] == ["car-2"]


class AnswerLosingProxy:
    """A loopback TCP proxy to ``port`` that passes every byte both ways (HTTP and the websocket alike), except
    the answer to the first ``POST /prompt``: the server gets the request and answers, and the answer is read
    and dropped (a lost answer), its connection held until the client gives up. Stops itself on ``stop()``."""

    def __init__(self, port: int):
        self.port = port
        self.lost = threading.Event()  # the answer to a POST /prompt was dropped
        self.stopping = threading.Event()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while not self.stopping.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            dropping = threading.Event()  # this connection's answers are dropped
            threading.Thread(target=self.pump, args=(client, server, dropping, True), daemon=True).start()
            threading.Thread(target=self.pump, args=(server, client, dropping, False), daemon=True).start()

    def pump(self, source, sink, dropping, to_server):
        source.settimeout(0.2)
        while not self.stopping.is_set():
            try:
                data = source.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            if to_server and data.startswith(b"POST /prompt ") and not self.lost.is_set():
                self.lost.set()
                dropping.set()
            if not to_server and dropping.is_set():
                continue
            try:
                sink.sendall(data)
            except OSError:
                break
        for end in (source, sink):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            end.close()

    def stop(self):
        self.stopping.set()
        self.listener.close()


def post_json(server, path: str, body: dict):
    request = urllib.request.Request(server.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
        data = response.read()
    return json.loads(data) if data else None


def runs_of(servers, prompt: dict) -> list[str]:
    """Where ``prompt`` ran or runs, one entry per time it was queued: the servers' /history and /queue."""
    prompt = json.loads(json.dumps(prompt))
    found = []
    for server in servers:
        found += [server.url for entry in server.get_json("/history").values() if entry["prompt"][2] == prompt]
        queue = server.get_json("/queue")
        found += [server.url for item in queue["queue_running"] + queue["queue_pending"] if item[2] == prompt]
    return found


def test_a_lost_answer_to_post_prompt_does_not_run_the_item_twice(servers, tiny_sd15_ckpt):
    """The server queued the prompt but its answer never came: past the answer timeout the runner finds the
    prompt there by the id it chose, and takes its result; it neither sends it again nor moves it on."""
    job, = edit_jobs([("ducks-lost", "a photo of plastic ducks walking on street")], tiny_sd15_ckpt, seed=4)
    proxy = AnswerLosingProxy(int(servers[0].url.rsplit(":", 1)[1]))
    notices = []
    started = time.monotonic()
    try:
        results = run_all(RemoteRunner([proxy.url, servers[1].url], answer_s=3.0, say=notices.append), [job])
    finally:
        proxy.stop()
    assert proxy.lost.is_set()  # the first server got the group, and its answer was lost
    result = results["ducks-lost"]
    assert result.ok, result.error
    assert result.where == proxy.url and set(result.images) == {"source", "edit"}
    assert notices == [] and time.monotonic() - started < 60
    assert runs_of(servers, job.prompt) == [servers[0].url]  # queued once, on the server it was sent to


def test_a_new_source_goes_to_the_server_with_the_shortest_queue(servers, tiny_sd15_ckpt):
    """Another client keeps the first server busy: the group goes to the second, whose reported queue is
    shorter, and its tail is not moved back behind the other client's prompt."""
    busy, idle = servers
    foreign = {  # another user's long plain generation
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny_sd15_ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse", "clip": ["1", 1]}},
        "3": {"class_type": "EmptyLatentImage", "inputs": {"width": SIDE, "height": SIDE, "batch_size": 1}},
        "4": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["2", 0], "latent_image": ["3", 0], "seed": 5,
            "steps": 10000, "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "5": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 2]}},
        "6": {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}},
    }
    foreign_id = post_json(busy, "/prompt", {"prompt": foreign, "client_id": "another-user"})["prompt_id"]
    try:
        deadline = time.monotonic() + 60
        while not busy.get_json("/queue")["queue_running"]:
            assert time.monotonic() < deadline, "the other user's prompt never started"
            time.sleep(0.2)
        jobs = edit_jobs([(f"ducks-{n}", target) for n, target in enumerate(TARGETS["ducks"])], tiny_sd15_ckpt,
                         seed=6)
        order = []
        RemoteRunner([busy.url, idle.url], say=None).run(jobs, order.append)
        assert all(r.ok for r in order), [r.error for r in order]
        assert [r.where for r in order] == [idle.url] * 3
        running = busy.get_json("/queue")["queue_running"]
        assert [item[1] for item in running] == [foreign_id]  # busy the whole time: the premise held
    finally:
        post_json(busy, "/interrupt", {})
        post_json(busy, "/queue", {"clear": True})
        deadline = time.monotonic() + 60
        while busy.get_json("/queue")["queue_running"] and time.monotonic() < deadline:
            time.sleep(0.2)


def test_an_item_past_the_timeout_is_retried_elsewhere_and_the_batch_ends(servers, tiny_sd15_ckpt):
    slow, = edit_jobs([("car-slow", TARGETS["car"][0])], tiny_sd15_ckpt, steps=200, seed=2)
    notices = []
    started = time.monotonic()
    results = run_all(RemoteRunner([s.url for s in servers], timeout=1.0, retries=2, say=notices.append), [slow])
    took = time.monotonic() - started
    # Both servers ran it past the timeout: each is out, the item ends with an error, nothing hangs.
    assert results["car-slow"].error.startswith("no ComfyUI server left: ")
    assert all(f"{s.url} ran item car-slow past the 1 s timeout" in results["car-slow"].error for s in servers)
    assert "ran item car-slow past the 1 s timeout" in notices[0] and "its 1 items go to the others" in notices[0]
    assert notices[1] == results["car-slow"].error and len(notices) == 2
    assert took < 30
    # Each server was told to drop it: its queue empties well before 200 steps would.
    for server in servers:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            queue = server.get_json("/queue")
            if not queue["queue_running"] and not queue["queue_pending"]:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"{server.url} still runs the timed-out prompt")


def test_a_batch_survives_a_server_stopped_mid_batch_with_in_process_outputs(servers, tiny_sd15_ckpt):
    jobs = edit_jobs([(f"{group}-{n}", target) for group in SOURCES for n, target in enumerate(TARGETS[group])],
                     tiny_sd15_ckpt)
    by_url = {s.url: s for s in servers}
    order, notices, stopped = [], [], []

    def on_result(result):
        order.append(result)
        if not stopped:  # the first server to finish an item dies right after
            stopped.append(result.where)
            by_url[result.where].stop()

    RemoteRunner(list(by_url), timeout=120, say=notices.append).run(jobs, on_result)
    results = {r.key: r for r in order}
    assert len(order) == len(jobs) == len(results)
    failed = {k: r.error for k, r in results.items() if not r.ok}
    assert not failed, failed
    dead, = stopped
    survivor = next(url for url in by_url if url != dead)
    on_dead = [r.key for r in order if r.where == dead]
    assert on_dead and len(on_dead) < len(jobs)  # both servers did some
    assert all(r.where == survivor for r in order if r.key not in on_dead)
    assert any(n.startswith(f"server {dead} stopped answering") and "go to the others" in n for n in notices)
    # A group's items end in batch order on each server (its cache pays the source once).
    for url in by_url:
        for group in SOURCES:
            keys = [r.key for r in order if r.where == url and r.key.startswith(group)]
            assert keys == sorted(keys), keys
    assert all(r.seconds > 0 for r in order)

    local = run_all(InProcessRunner(), [copy.deepcopy(job) for job in jobs])
    for key, result in results.items():
        assert set(result.images) == {"source", "edit"}
        for role, png in result.images.items():
            assert np.array_equal(pixels(png), pixels(local[key].images[role])), f"{key} {role} differs"


def test_probe_maps_come_back_from_servers_as_in_process(servers, tiny_sd15_ckpt, tmp_path):
    """fpe probe build on servers: FPE Save Attention Maps' file (temp folder, listed under fpe_maps) comes
    back through /view and equals the in-process file's maps."""
    from fpe_headless.probe import build as probing

    probe_set = probing.SETS["color-car"]
    samples = probing.plan(probe_set, seeds=1)[:4]
    settings = probing.BuildSettings(checkpoint=tiny_sd15_ckpt, steps=STEPS, size=SIDE)
    jobs = [probing.make_job(s, probe_set, settings) for s in samples]
    remote = run_all(RemoteRunner([s.url for s in servers], say=None), jobs)
    local = run_all(InProcessRunner(), jobs)
    for key, result in remote.items():
        assert result.ok, result.error
        names, maps = probing.read_maps(result.images["maps"], "cross")
        local_names, local_maps = probing.read_maps(local[key].images["maps"], "cross")
        assert names == local_names and len(maps) == 16
        assert all(torch.equal(a, b) for a, b in zip(maps, local_maps, strict=True))


def test_a_local_edit_batch_uploads_its_mask_and_comes_back_as_in_process(servers, tiny_sd15_ckpt, tmp_path):
    """fpe batch --local annotation on a server: the item's mask PNG goes up beside its photo (/upload/image),
    and the edit and the mask the run used come back equal, pixel for pixel, to the in-process run's."""
    from fpe_headless.batch.datasets import encode_mask

    Image.open(REPO / "workflows" / "fpe_example_apple.png").convert("RGB").resize((512, 512)).save(tmp_path / "a.png")
    left = np.zeros((512, 512), dtype=bool)
    left[:, :256] = True
    items = [EditItem(f"apple-{n}", "a red apple", f"a {colour} apple", image="a.png", mask=encode_mask(left))
             for n, colour in enumerate(("green", "purple"))]
    jobs = make_jobs(items, BatchSettings(checkpoint=tiny_sd15_ckpt, steps=STEPS, size=SIDE, images=tmp_path,
                                          staging=tmp_path / "in", local="annotation"))
    assert [sorted(name.split("_")[1] for name in job.uploads) for job in jobs] == [["mask", "photo"]] * 2
    # both servers: the mid-batch test above stopped one of them, whichever finished first
    remote = run_all(RemoteRunner([s.url for s in servers], say=None), jobs)
    local = run_all(InProcessRunner(), jobs)
    for key, result in remote.items():
        assert result.ok, result.error
        assert set(result.images) == {"edit", "mask"}
        for role in ("edit", "mask"):
            assert np.array_equal(pixels(result.images[role]), pixels(local[key].images[role])), (key, role)
