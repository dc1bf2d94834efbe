"""Batch jobs on running ComfyUI servers, through ComfyUI's own HTTP + websocket API.

:class:`RemoteRunner` has the shape of ``jobs.InProcessRunner``: ``run(jobs, on_result)``. Each server
gets a websocket (``/ws?clientId=``) for its messages and up to ``depth`` prompts queued at once
(``POST /prompt``), so it never waits for the next one; results come from ``/history/{id}`` and
``/view``. The websocket only says *when* to look: a lost message costs at most one history poll.

Scheduling: the jobs of one ``group`` (edits of one source) go to one server in order, so its cache
pays the source once; a server that has nothing left takes an untouched group, else the tail of
another server's group when that ends the batch sooner (counting the source it must pay again as
one item). Among servers free for a new group, the one with the shortest queue as it reports it (other
clients' prompts included: the websocket's ``status``) takes it. A server that stops answering (refused,
reset, websocket closed, no answer within ``answer_s``) or runs one item past ``timeout`` is out for the
rest of the batch: its items go back to the others, and each item it had in flight counts one failure;
an item that failed on ``retries`` + 1 servers ends with an error. When no server is left, every
remaining item ends with an error: the batch never hangs.

Each prompt is sent with an id chosen here (``prompt_id``, which current ComfyUI uses, and
``extra_data.fpe_prompt_id``, which both it and ComfyUI of 2024 keep in ``/queue`` and ``/history``).
Neither host refuses a duplicate, so when the answer to ``POST /prompt`` is lost the server's queue and
history are searched for that id before the prompt is sent again: one item never runs twice there.

Nothing is deleted on the servers: ComfyUI has no API to delete outputs, so the images stay in each
server's output folder, as if its user had queued them.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp

from .executor import _label, _one_line, validation_message
from .jobs import Job, JobResult, OnResult, output_files

DEFAULT_TIMEOUT = 1800.0  # seconds one item may run on a server: a CPU server can take minutes
DEFAULT_RETRIES = 2
DEFAULT_DEPTH = 2  # prompts queued per server: one running, one waiting, so it never idles
POLL_S = 5.0  # how often in-flight prompts are looked up in /history when the websocket is quiet
# Every call to a server is bounded: a server that accepts a connection and never answers would
# otherwise hold the batch forever. --timeout (an item's run time) is a different limit.
CONNECT_S = 10.0  # a TCP connect: milliseconds for any running server
CHECK_ANSWER_S = 10.0  # before the batch: an idle ComfyUI answers /object_info in well under a second
ANSWER_S = 30.0  # during the batch: a server busy running items may answer more slowly
REQUEST_TOTAL_S = 300.0  # one whole request (an upload, an image), however it trickles
HEARTBEAT_S = 30.0  # websocket ping; no pong within half of it closes the websocket
HISTORY_LOOKBACK = 256  # finished prompts searched for one whose POST /prompt answer was lost
ID_KEY = "fpe_prompt_id"  # our id in extra_data: kept in /queue and /history by every host
PACK_NODE = "FPESourceCapture"
WARNING_EVENT = "free-prompt-editing.warning"
NOT_RUN = "not run"  # ``where`` of a job that could not be made into a prompt (``Job.error``), as ``batch`` says
# What a server's failure looks like from here: refused, reset, timed out, or an answer that isn't HTTP.
CONNECTION_ERRORS = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError,
                     ConnectionError, OSError)


class RemoteError(Exception):
    """A server that cannot run the batch: one line naming it and the fix."""


def server_url(text: str) -> str:
    """``host:port`` or an ``http(s)://host[:port][/]`` URL -> ``http://host:port`` (no trailing slash).
    Anything else raises :class:`RemoteError` naming the URL and the fix, before any connection."""
    given = text.strip()
    url = given if "://" in given else f"http://{given}"
    fix = "give http://HOST:PORT (or https://), e.g. http://127.0.0.1:8188"
    try:
        parts = urlsplit(url)
    except ValueError:  # an unbalanced [ of an IPv6 address
        raise RemoteError(f"--server {given}: not a URL: {fix}") from None
    try:
        port = parts.port
    except ValueError:  # out of 0..65535, or not a number
        port = 0
    if port == 0 or parts.netloc.endswith(":"):
        number = parts.netloc.rpartition(":")[2] or "(none)"
        raise RemoteError(f"--server {given}: port {number} is not a port number 1 to 65535 (ComfyUI's default "
                          f"is 8188): {fix}")
    scheme = parts.scheme.lower()
    if scheme in ("ws", "wss"):
        raise RemoteError(f"--server {given}: give the server's http:// address, not its websocket's (that one is "
                          f"found from it): {fix}")
    if scheme not in ("http", "https"):
        raise RemoteError(f"--server {given}: unknown scheme {parts.scheme!r}: {fix}")
    if not parts.hostname:
        raise RemoteError(f"--server {given}: no host: {fix}")
    if parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc:
        raise RemoteError(f"--server {given}: only the server's address is wanted, not a path, query or user: {fix}")
    return f"{scheme}://{parts.netloc}"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "no answer in time"
    text = _one_line(exc) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _no_answer(exc: BaseException, waited_for: str, answer_s: float) -> str | None:
    """What a timed-out call waited for ("accepted the connection but did not answer GET /x within 10 s"),
    or None when ``exc`` is not a timeout."""
    if isinstance(exc, getattr(aiohttp, "ConnectionTimeoutError", ())):  # aiohttp >= 3.10; older: the next test
        return f"did not accept a connection within {CONNECT_S:g} s"
    if isinstance(exc, asyncio.TimeoutError):
        return f"accepted the connection but did not answer {waited_for} within {answer_s:g} s"
    return None


def _timeouts(answer_s: float, total: float | None = REQUEST_TOTAL_S) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=total, sock_connect=CONNECT_S, sock_read=answer_s)


# --- checks before a batch ------------------------------------------------------------------------


def check_servers(urls: Iterable[str], checkpoint_name: str, node: str = PACK_NODE) -> None:
    """Raise :class:`RemoteError` (one line, every bad server named with its fix) unless each server
    answers, has the pack's nodes and has the checkpoint."""
    problems = asyncio.run(_check_all([server_url(u) for u in urls], checkpoint_name, node))
    if problems:
        raise RemoteError("; ".join(problems))


async def _check_all(urls: list[str], checkpoint_name: str, node: str) -> list[str]:
    async with aiohttp.ClientSession(timeout=_timeouts(CHECK_ANSWER_S, total=6 * CHECK_ANSWER_S)) as session:
        found = await asyncio.gather(*(_check(session, url, checkpoint_name, node) for url in urls))
    return [problem for problem in found if problem]


async def _check(session: aiohttp.ClientSession, url: str, checkpoint_name: str, node: str) -> str | None:
    path = f"/object_info/{node}"
    try:
        pack = await _get_json(session, url + path)
        path = "/object_info/CheckpointLoaderSimple"
        loader = await _get_json(session, url + path)
    except CONNECTION_ERRORS as exc:
        waited = _no_answer(exc, f"GET {path}", CHECK_ANSWER_S)
        if waited is not None:
            return (f"--server {url}: {waited}; restart that ComfyUI if it is stuck, or fix the address if another "
                    "program listens there")
        return f"--server {url}: no ComfyUI answers there ({_reason(exc)}); start it or fix the address"
    except (aiohttp.ClientResponseError, ValueError):
        return f"--server {url}: answers, but not as ComfyUI's API does; check the address and port"
    if not isinstance(pack, dict) or node not in pack:
        return (f"--server {url}: that ComfyUI lacks the free-prompt-editing node {node} (no pack there, or an "
                "older version); install or update the pack in its custom_nodes and restart it")
    names = _combo_options(loader, "CheckpointLoaderSimple", "ckpt_name")
    if checkpoint_name not in names:
        has = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "") if names else "none"
        return (f"--server {url}: has no checkpoint {checkpoint_name} (it has: {has}); put {checkpoint_name} "
                "in that server's models/checkpoints")
    return None


def _combo_options(object_info: dict, node: str, name: str) -> list[str]:
    """A combo input's choices: ``[[choices], {...}]``, or ``["COMBO", {"options": [...]}]`` (newer API)."""
    try:
        spec = object_info[node]["input"]["required"][name]
    except (KeyError, TypeError):
        return []
    if isinstance(spec[0], list):
        return spec[0]
    if spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
        return list(spec[1].get("options", []))
    return []


async def _get_json(session: aiohttp.ClientSession, url: str):
    async with session.get(url) as response:
        response.raise_for_status()
        return json.loads(await response.read())


# --- the runner -------------------------------------------------------------------------------------


class RemoteRunner:
    """Jobs on running ComfyUI servers (``urls``), each with the pack and the batch's checkpoint."""

    def __init__(self, urls: Iterable[str], *, timeout: float = DEFAULT_TIMEOUT, retries: int = DEFAULT_RETRIES,
                 depth: int = DEFAULT_DEPTH, say: Callable[[str], None] | None = print, poll: float = POLL_S,
                 answer_s: float = ANSWER_S):
        self.urls = list(dict.fromkeys(server_url(u) for u in urls))
        if not self.urls:
            raise ValueError("RemoteRunner needs at least one server URL")
        self.timeout, self.retries, self.depth, self.poll = timeout, retries, max(1, depth), poll
        self.answer_s = answer_s  # how long any one answer may take (``timeout`` is an item's run time)
        self.say = say or (lambda line: None)

    def run(self, jobs: Iterable[Job], on_result: OnResult) -> None:
        """Run every job; ``on_result`` is called once per job, in this thread, as each ends."""
        jobs = list(jobs)
        if jobs:
            asyncio.run(_Batch(self, jobs, on_result).run())


class _ServerGone(Exception):
    """The server stopped answering: ``str()`` says how, for the notice and the items' errors."""


@dataclass
class _Item:
    job: Job
    index: int  # place in the batch: returned items keep their order
    failures: list[str] = field(default_factory=list)  # "URL: what happened", one per server it was lost on


@dataclass
class _Seen:
    """What the websocket said about one prompt (it may speak before POST /prompt has answered)."""

    started: float | None = None
    ended: float | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Flight:
    item: _Item
    prompt_id: str
    queued: float
    node_errors: dict  # outputs ComfyUI dropped at validation (it queues the rest)


class _Server:
    def __init__(self, url: str):
        self.url = url
        self.client_id = uuid.uuid4().hex
        self.alive = True
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.ws_closed: str | None = None  # why the websocket ended
        self.todo: deque[_Item] = deque()  # assigned here, not yet queued (one group's items, in order)
        self.flights: dict[str, _Flight] = {}  # queued here, result not yet taken (queue order)
        self.seen: dict[str, _Seen] = {}
        self.running: str | None = None  # the prompt this server says it runs
        self.last_end = 0.0  # when its last prompt ended (a start time when the websocket missed one)
        self.last_poll = time.monotonic()
        self.uploaded: set[str] = set()
        self.sending: _Item | None = None  # taken from todo, POST /prompt not answered yet
        self.reported = 0  # prompts in its queue, running included, as its last websocket status said
        self.wake = asyncio.Event()

    def load(self) -> int:
        """Items this server still has to run."""
        return len(self.todo) + len(self.flights) + (self.sending is not None)

    def foreign(self) -> int:
        """Other clients' prompts in its queue: ours wait behind them."""
        return max(0, self.reported - len(self.flights) - (self.sending is not None))


class _Batch:
    def __init__(self, runner: RemoteRunner, jobs: list[Job], on_result: OnResult):
        self.runner = runner
        self.on_result = on_result
        self.open = {job.key for job in jobs}  # no result yet
        if len(self.open) != len(jobs):
            raise ValueError("job keys must be unique in a batch")
        self.unrunnable = [job for job in jobs if job.error is not None]  # never reached ComfyUI: reported first
        groups: dict[str, deque[_Item]] = {}
        for index, job in enumerate(jobs):
            if job.error is None:
                groups.setdefault(job.group, deque()).append(_Item(job, index))
        self.pool: deque[deque[_Item]] = deque(groups.values())  # untouched groups (or returned items)
        self.servers = [_Server(url) for url in runner.urls]
        self.finished = asyncio.Event()
        self.obituaries: list[str] = []

    # -- the whole batch -------------------------------------------------------------------------

    async def run(self) -> None:
        for job in self.unrunnable:
            self.emit(JobResult(job.key, error=job.error, where=NOT_RUN))
        if self.finished.is_set():
            return
        # No total on the session: the websocket lives as long as the batch (request() bounds each request).
        async with aiohttp.ClientSession(timeout=_timeouts(self.runner.answer_s, total=None)) as session:
            # Every websocket first, so the first groups go by every server's reported queue.
            await asyncio.gather(*(self.connect(session, server) for server in self.servers))
            drivers = [asyncio.create_task(self.drive(session, server)) for server in self.servers if server.alive]
            finished = asyncio.create_task(self.finished.wait())
            pending = {finished, *drivers}
            try:
                while not self.finished.is_set():
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:  # a driver ends only when its server is out, or on_result raised
                        if task is not finished and task.exception() is not None:
                            raise task.exception()
                    if not pending - {finished} and not self.finished.is_set():  # cannot happen: say so
                        raise RuntimeError(f"remote batch stalled with {len(self.open)} items open")
            finally:
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                for server in self.servers:
                    if server.ws is not None and not server.ws.closed:
                        await server.ws.close()

    def emit(self, result: JobResult) -> None:
        if result.key not in self.open:
            return  # already reported (a server's late answer after its items moved on)
        self.open.discard(result.key)
        self.on_result(result)
        if not self.open:
            self.finished.set()

    def wake_all(self) -> None:
        for server in self.servers:
            server.wake.set()

    # -- one server --------------------------------------------------------------------------------

    async def connect(self, session: aiohttp.ClientSession, server: _Server) -> None:
        """The server's websocket, and its first message (ComfyUI's ``status``: its queue); else it is out."""
        answer_s = self.runner.answer_s
        try:
            try:
                server.ws = await session.ws_connect(f"{_ws_base(server.url)}/ws?clientId={server.client_id}",
                                                     heartbeat=HEARTBEAT_S, max_msg_size=64 * 2**20)
            except (*CONNECTION_ERRORS, aiohttp.WSServerHandshakeError) as exc:
                waited = _no_answer(exc, "the websocket handshake (GET /ws)", answer_s)
                raise _ServerGone(waited or f"does not answer ({_reason(exc)})") from None
            try:
                message = await asyncio.wait_for(server.ws.receive(), answer_s)
            except asyncio.TimeoutError:
                raise _ServerGone(f"opened its websocket but sent no status within {answer_s:g} s") from None
            if message.type == aiohttp.WSMsgType.TEXT:
                self.heard_text(server, message.data)
        except _ServerGone as gone:
            self.lost(server, str(gone))

    async def drive(self, session: aiohttp.ClientSession, server: _Server) -> None:
        reader = None
        try:
            reader = asyncio.create_task(self.read(server))
            while server.alive and not self.finished.is_set():
                if server.ws_closed:
                    raise _ServerGone(f"stopped answering ({server.ws_closed})")
                await self.fill(session, server)
                await self.collect(session, server)
                await self.check_time(session, server)
                self.check_nothing_lost()
                await self.wait(server)
        except _ServerGone as gone:
            self.lost(server, str(gone))
        finally:
            if reader is not None:
                reader.cancel()

    async def wait(self, server: _Server) -> None:
        """Until the websocket has news, the next poll, or the nearest deadline."""
        now = time.monotonic()
        delay = server.last_poll + self.runner.poll - now
        for flight in server.flights.values():
            start = self.start_of(server, flight)
            if start is not None:
                delay = min(delay, start + self.runner.timeout - now)
        try:
            await asyncio.wait_for(server.wake.wait(), max(0.01, delay))
        except asyncio.TimeoutError:
            pass
        server.wake.clear()

    async def read(self, server: _Server) -> None:
        """The server's messages -> ``server.seen``; wakes its driver when a prompt may have ended."""
        ws = server.ws
        try:
            async for message in ws:
                if message.type == aiohttp.WSMsgType.TEXT:  # binary frames are previews
                    self.heard_text(server, message.data)
        except CONNECTION_ERRORS as exc:
            server.ws_closed = f"websocket: {_reason(exc)}"
        else:
            if isinstance(ws.exception(), asyncio.TimeoutError):  # the heartbeat's pong never came
                server.ws_closed = f"its websocket did not answer a ping within {HEARTBEAT_S / 2:g} s"
            else:
                server.ws_closed = "its websocket closed"
        server.wake.set()

    def heard_text(self, server: _Server, text: str) -> None:
        try:
            event = json.loads(text)
            kind, data = event.get("type"), event.get("data") or {}
        except (ValueError, AttributeError):
            return
        self.heard(server, kind, data)

    def heard(self, server: _Server, kind: str, data: dict) -> None:
        now = time.monotonic()
        prompt_id = data.get("prompt_id") if isinstance(data, dict) else None
        if kind == "status" and isinstance(data, dict):
            remaining = ((data.get("status") or {}).get("exec_info") or {}).get("queue_remaining")
            if isinstance(remaining, int):
                server.reported = remaining
        elif kind == "execution_start" and prompt_id:
            server.running = prompt_id
            server.seen.setdefault(prompt_id, _Seen()).started = now
        elif kind == WARNING_EVENT and server.running:  # sent to the client whose prompt runs: ours
            server.seen.setdefault(server.running, _Seen()).warnings.append(
                f"{data.get('summary')}: {data.get('detail')}")
        elif (kind in ("execution_success", "execution_error", "execution_interrupted")
              or (kind == "executing" and data.get("node") is None)):
            prompt_id = prompt_id or server.running
            if prompt_id:
                seen = server.seen.setdefault(prompt_id, _Seen())
                seen.ended = seen.ended or now
            if prompt_id == server.running:
                server.running = None
            server.wake.set()

    def start_of(self, server: _Server, flight: _Flight) -> float | None:
        """When the server started the prompt: as the websocket said, else (a message was lost) when it
        was queued or the one before ended, for the oldest of ours; None while it can't have started."""
        seen = server.seen.get(flight.prompt_id)
        if seen is not None and seen.started is not None:
            return seen.started
        if next(iter(server.flights)) == flight.prompt_id:
            return max(flight.queued, server.last_end)
        return None

    # -- handing out work --------------------------------------------------------------------------

    async def fill(self, session: aiohttp.ClientSession, server: _Server) -> None:
        while server.alive and len(server.flights) < self.runner.depth:
            item = self.next_item(server)
            if item is None:
                return
            server.sending = item
            try:
                await self.submit(session, server, item)
            except _ServerGone:
                server.todo.appendleft(item)  # not queued there: it goes back with the rest
                raise
            finally:
                server.sending = None

    def check_nothing_lost(self) -> None:
        """Every open item is in the pool or with a live server: else the batch would wait forever."""
        held = {item.job.key for chunk in self.pool for item in chunk}
        for server in self.servers:
            if server.alive:
                held.update(item.job.key for item in server.todo)
                held.update(flight.item.job.key for flight in server.flights.values())
                if server.sending is not None:
                    held.add(server.sending.job.key)
        if self.open - held:
            raise RuntimeError(f"remote batch lost track of items {sorted(self.open - held)} (a bug: please report)")

    def next_item(self, server: _Server) -> _Item | None:
        if not server.todo and self.pool:
            lighter = self.lightest_free(server)
            if lighter is not None:  # it starts a new source sooner: leave the group to it
                lighter.wake.set()
                return None
            server.todo = self.pool.popleft()
            if self.pool:
                self.wake_all()  # a server that left the last group to this one may take the next
        if not server.todo:
            self.steal_for(server)
        return server.todo.popleft() if server.todo else None

    def lightest_free(self, server: _Server) -> _Server | None:
        """Another server free for a new group whose queue (ours and other clients') is shorter, or None."""
        queued = len(server.flights) + server.foreign()
        free = [s for s in self.servers if s is not server and s.alive and not s.todo and s.sending is None
                and len(s.flights) < self.runner.depth and len(s.flights) + s.foreign() < queued]
        return min(free, key=lambda s: len(s.flights) + s.foreign(), default=None)

    def steal_for(self, thief: _Server) -> None:
        """Take the tail of the busiest server's group when that ends the batch sooner: the thief ends at
        its queue + the source it pays again + m items, the owner at its queue - m (a queue counts other
        clients' prompts too)."""
        best, best_m = None, 0
        for owner in self.servers:
            if owner is thief or not owner.alive or not owner.todo:
                continue
            m = min(len(owner.todo), (owner.load() + owner.foreign() - len(thief.flights) - thief.foreign() - 1) // 2)
            if m > best_m:
                best, best_m = owner, m
        if best is not None:
            tail = [best.todo.pop() for _ in range(best_m)]
            thief.todo = deque(reversed(tail))

    async def submit(self, session: aiohttp.ClientSession, server: _Server, item: _Item) -> None:
        job = item.job
        for name, local in job.uploads.items():
            if name in server.uploaded:
                continue
            try:
                data = local.read_bytes()
            except OSError as exc:
                self.emit(JobResult(job.key, error=f"cannot read the upload {local}: {exc.strerror or exc}",
                                    where=server.url))
                return
            subfolder, _, filename = name.rpartition("/")
            form = aiohttp.FormData()
            form.add_field("image", data, filename=filename, content_type="application/octet-stream")
            form.add_field("overwrite", "true")
            form.add_field("type", "input")
            form.add_field("subfolder", subfolder)
            status, answer = await self.request(session, server, "POST", "/upload/image", data=form)
            if status != 200 or not isinstance(answer, dict) or answer.get("name") != filename:
                self.emit(JobResult(job.key, error=f"{server.url} refused the upload {name} (HTTP {status})",
                                    where=server.url))
                return
            server.uploaded.add(name)
        prompt_id = str(uuid.uuid4())
        body = {"prompt": job.prompt, "client_id": server.client_id, "prompt_id": prompt_id,
                "extra_data": {ID_KEY: prompt_id}}
        for sent in range(2):
            try:
                status, answer = await self.request(session, server, "POST", "/prompt", json=body)
                break
            except _ServerGone:
                # The answer is lost, not necessarily the prompt: send it again only if the server lacks it.
                queued_as = await self.find_prompt(session, server, prompt_id)
                if queued_as is not None:
                    server.flights[queued_as] = _Flight(item, queued_as, time.monotonic(), {})
                    return
                if sent:
                    raise
        answer = answer if isinstance(answer, dict) else {}
        if status == 200 and answer.get("prompt_id"):
            server.flights[answer["prompt_id"]] = _Flight(item, answer["prompt_id"], time.monotonic(),
                                                          answer.get("node_errors") or {})
        elif status == 400 and ("node_errors" in answer or "error" in answer):
            error = answer.get("error") if isinstance(answer.get("error"), dict) else {"message": answer.get("error")}
            self.emit(JobResult(job.key, error=validation_message(job.prompt, error, answer.get("node_errors")),
                                where=server.url))
        else:
            self.emit(JobResult(job.key, error=f"{server.url} did not queue the prompt (HTTP {status}: "
                                f"{_one_line(answer)[:200]})", where=server.url))

    async def find_prompt(self, session: aiohttp.ClientSession, server: _Server, prompt_id: str) -> str | None:
        """The server's id of our prompt ``prompt_id`` if it queued, runs or ran it (ComfyUI of 2024 picks its
        own ids: ours is in extra_data), else None; raises :class:`_ServerGone` if it does not answer."""
        status, entry = await self.request(session, server, "GET", f"/history/{prompt_id}")
        if status == 200 and isinstance(entry, dict) and entry.get(prompt_id):
            return prompt_id
        status, queue = await self.request(session, server, "GET", "/queue")  # before history: it moves there
        queue = queue if status == 200 and isinstance(queue, dict) else {}
        for queued in [*(queue.get("queue_running") or []), *(queue.get("queue_pending") or [])]:
            if _is_ours(queued, prompt_id):
                return queued[1]
        status, history = await self.request(session, server, "GET", f"/history?max_items={HISTORY_LOOKBACK}")
        for key, entry in (history.items() if status == 200 and isinstance(history, dict) else ()):
            if isinstance(entry, dict) and _is_ours(entry.get("prompt"), prompt_id):
                return key
        return None

    # -- taking results ----------------------------------------------------------------------------

    async def collect(self, session: aiohttp.ClientSession, server: _Server) -> None:
        """Results of the prompts the websocket says ended; of all in flight when a poll is due."""
        polling = time.monotonic() >= server.last_poll + self.runner.poll
        if polling:
            server.last_poll = time.monotonic()
        for prompt_id, flight in list(server.flights.items()):
            seen = server.seen.get(prompt_id)
            if polling or (seen is not None and seen.ended is not None):
                await self.take(session, server, flight)

    async def take(self, session: aiohttp.ClientSession, server: _Server, flight: _Flight) -> None:
        status, history = await self.request(session, server, "GET", f"/history/{flight.prompt_id}")
        entry = history.get(flight.prompt_id) if status == 200 and isinstance(history, dict) else None
        if not entry:
            return  # not finished yet: ComfyUI writes the history entry when the prompt ends
        job = flight.item.job
        error = _failure(job, entry)
        images: dict[str, bytes] = {}
        outputs = entry.get("outputs") or {}
        for node_id, role in job.outputs.items() if error is None else ():
            found = output_files(outputs.get(node_id) or {})
            if not found:
                error = (validation_message(job.prompt, {}, flight.node_errors) if flight.node_errors
                         else f"output node {node_id} ({role}) wrote no image")
                break
            image = found[0]
            params = {"filename": image["filename"], "subfolder": image.get("subfolder", ""),
                      "type": image.get("type", "output")}
            status, data = await self.request(session, server, "GET", "/view", params=params, raw=True)
            if status != 200:
                error = f"{server.url} did not serve the image of output node {node_id} (HTTP {status})"
                break
            images[role] = data
        # Taken only now: a server that dies while its images come leaves the item in flight, to be retried.
        seen = server.seen.pop(flight.prompt_id, None) or _Seen()
        started = seen.started if seen.started is not None else max(flight.queued, server.last_end)
        ended = seen.ended if seen.ended is not None else time.monotonic()
        server.last_end = max(server.last_end, ended)
        del server.flights[flight.prompt_id]
        self.emit(JobResult(job.key, images if error is None else {}, error, max(0.0, ended - started), server.url,
                            seen.warnings))

    # -- a server that stops or sticks ---------------------------------------------------------------

    async def check_time(self, session: aiohttp.ClientSession, server: _Server) -> None:
        now = time.monotonic()
        for flight in list(server.flights.values()):
            start = self.start_of(server, flight)
            if start is None or now - start <= self.runner.timeout:
                continue
            # Stuck or far too slow: every item sent there would wait behind it. Stop it working for us.
            ours = list(server.flights)
            try:
                if server.running == flight.prompt_id:
                    await self.request(session, server, "POST", "/interrupt", json={"prompt_id": flight.prompt_id})
                await self.request(session, server, "POST", "/queue", json={"delete": ours})
            except _ServerGone:
                pass
            self.lost(server, f"ran item {flight.item.job.key} past the {self.runner.timeout:g} s timeout "
                              "(raise --timeout if items are that slow)", blame=flight)
            return

    def lost(self, server: _Server, why: str, blame: _Flight | None = None) -> None:
        """The server is out of this batch: its items go back to the pool, first in line. Each item it had
        in flight counts a failure (only ``blame`` when the server is stuck on it: the others waited)."""
        if not server.alive:
            return
        server.alive = False
        self.obituaries.append(f"{server.url} {why}")
        back = list(server.todo)
        for flight in server.flights.values():
            if blame is None or flight is blame:
                flight.item.failures.append(f"{server.url}: {why}")
            back.append(flight.item)
        server.todo, server.flights = deque(), {}
        retried = []
        for item in back:
            if len(item.failures) > self.runner.retries:
                self.emit(JobResult(item.job.key, error=f"lost on {len(item.failures)} servers (--retries "
                                    f"{self.runner.retries}); last: {item.failures[-1]}", where=server.url))
            else:
                retried.append(item)
        # Back in front of the pool, one chunk per group, each in batch order (the earliest group first).
        chunks = [deque(items) for _, items in itertools.groupby(
            sorted(retried, key=lambda item: (item.job.group, item.index)), key=lambda item: item.job.group)]
        for chunk in sorted(chunks, key=lambda chunk: chunk[0].index, reverse=True):
            self.pool.appendleft(chunk)
        if any(s.alive for s in self.servers):
            self.runner.say(f"server {server.url} {why}: " + (
                f"its {len(retried)} items go to the others" if retried else "the others carry on"))
        else:
            self.no_server_left()
        self.wake_all()

    def no_server_left(self) -> None:
        why = "no ComfyUI server left: " + "; ".join(self.obituaries)
        self.runner.say(why)
        leftovers = [item for chunk in self.pool for item in chunk]
        for server in self.servers:
            leftovers += list(server.todo) + [flight.item for flight in server.flights.values()]
        self.pool.clear()
        for item in sorted(leftovers, key=lambda item: item.index):
            self.emit(JobResult(item.job.key, error=why))
        self.finished.set()

    # -- HTTP ----------------------------------------------------------------------------------------

    async def request(self, session: aiohttp.ClientSession, server: _Server, method: str, path: str, *,
                      raw: bool = False, **kwargs) -> tuple[int, object]:
        """(status, JSON or bytes); a connection failure or no answer in time raises :class:`_ServerGone`."""
        try:
            async with session.request(method, server.url + path, timeout=_timeouts(self.runner.answer_s),
                                       **kwargs) as response:
                body = await response.read()
        except CONNECTION_ERRORS as exc:
            waited = _no_answer(exc, f"{method} {path.split('?')[0]}", self.runner.answer_s)
            raise _ServerGone(waited or f"stopped answering ({_reason(exc)})") from None
        if raw:
            return response.status, body
        try:
            return response.status, json.loads(body) if body else None
        except ValueError:
            return response.status, body.decode(errors="replace")


def _failure(job: Job, entry: dict) -> str | None:
    """A finished history entry's error, one line as the in-process runner words it, or None."""
    status = entry.get("status") or {}
    if status.get("status_str", "success") == "success" and status.get("completed", True):
        return None
    for event, data in status.get("messages") or []:
        if event == "execution_error":
            return (f"{_label(job.prompt, data.get('node_id'))} failed: "
                    f"{str(data.get('exception_type', '')).split('.')[-1]}: "
                    f"{_one_line(data.get('exception_message', ''))}")
        if event == "execution_interrupted":
            return f"{_label(job.prompt, data.get('node_id'))} was interrupted on the server (Cancel pressed there?)"
    return "the prompt failed on the server (its history gives no reason)"


def _is_ours(queued, prompt_id: str) -> bool:
    """A /queue item or history ``prompt`` ([number, id, prompt, extra_data, ...]) sent with our id."""
    if not isinstance(queued, list) or len(queued) < 4:
        return False
    return queued[1] == prompt_id or (isinstance(queued[3], dict) and queued[3].get(ID_KEY) == prompt_id)


def _ws_base(url: str) -> str:
    return "wss://" + url[len("https://"):] if url.startswith("https://") else "ws://" + url.split("://", 1)[1]
