"""Requests sent again through prepared libcurl handles (polls) answer exactly as the
ordinary path does, against a real HTTP server."""

import asyncio
import socket

import pytest
from tornado import web
from tornado.httpclient import HTTPRequest
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from outpostspawner.curl import prepare
from outpostspawner.errors import OutpostError
from outpostspawner.outpost import OutpostClient


class Seen(list):
    """The requests the server saw; ``arrived`` is set at the first."""

    def __init__(self):
        super().__init__()
        self.arrived = asyncio.Event()

    def append(self, item):
        super().append(item)
        self.arrived.set()


class Answer(web.RequestHandler):
    def initialize(self, seen):
        self.seen = seen

    async def get(self, code):
        self.seen.append(
            {
                "peer": self.request.connection.stream.socket.getpeername(),
                "headers": sorted(
                    (k, v) for k, v in self.request.headers.get_all() if k != "Content-Length"
                ),
                "query": self.request.query,
            }
        )
        delay = float(self.get_argument("delay", "0"))
        if delay:
            await asyncio.sleep(delay)
        self.set_status(int(code))
        if code == "204":
            return
        size = int(self.get_argument("size", "0"))
        if size:
            self.finish(b'{"pad": "' + b"x" * size + b'"}')
        elif code == "299":
            self.finish(b"not json")
        else:
            self.finish({"status": None, "code": int(code), "module": "m", "class": "C"})


@pytest.fixture
async def server():
    seen = Seen()
    [sock] = bind_sockets(0, "127.0.0.1", family=socket.AF_INET)
    http = HTTPServer(web.Application([(r"/(\d+)", Answer, {"seen": seen})]))
    http.add_sockets([sock])
    port = sock.getsockname()[1]
    yield f"http://127.0.0.1:{port}", seen
    http.stop()
    await asyncio.wait_for(http.close_all_connections(), 10)


@pytest.fixture
async def client():
    c = OutpostClient(start_limit=2, request_limit=4, defaults={"user_agent": "hub-test"})
    yield c
    c.close()


async def outcome(client, request, reuse):
    try:
        resp = await client.fetch("poll", request, reuse=reuse)
    except OutpostError as e:
        return ("error", e.code, str(e), e.log_message.replace(request.url, "URL"))
    return ("ok", resp.code, resp.body)


@pytest.mark.parametrize("code", ["200", "204", "299", "404", "419", "500", "401"])
async def test_a_reused_request_answers_as_the_ordinary_path(server, client, code):
    base, seen = server
    kwargs = dict(
        headers={"Authorization": "token secret-x", "Accept": "application/json"},
        auth_username=None,
        request_timeout=5,
    )
    ordinary = await outcome(client, HTTPRequest(f"{base}/{code}", **kwargs), False)
    reused = HTTPRequest(f"{base}/{code}", **kwargs)
    first = await outcome(client, reused, True)
    again = await outcome(client, reused, True)
    assert first == again == ordinary
    # the server saw the same request from both paths (tornado's own setup)
    assert seen[0]["headers"] == seen[1]["headers"] == seen[2]["headers"]
    assert ("User-Agent", "hub-test") in seen[1]["headers"]
    assert client._prepared[reused] is not None


async def test_request_kwargs_mean_the_same(server, client):
    base, seen = server
    kwargs = dict(auth_username="outpost", auth_password="pw", user_agent="mine", request_timeout=5)
    await client.fetch("poll", HTTPRequest(f"{base}/200", **kwargs))
    await client.fetch("poll", HTTPRequest(f"{base}/200", **kwargs), reuse=True)
    assert seen[0]["headers"] == seen[1]["headers"]
    assert ("Authorization", "Basic b3V0cG9zdDpwdw==") in seen[1]["headers"]
    assert ("User-Agent", "mine") in seen[1]["headers"]


async def test_the_connection_is_kept_between_sends(server, client):
    base, seen = server
    requests = [HTTPRequest(f"{base}/200?n={i}") for i in range(5)]
    for _ in range(3):
        for request in requests:
            await client.fetch("poll", request, reuse=True)
    assert len(seen) == 15
    assert len({s["peer"] for s in seen}) == 1  # one connection for all handles


async def test_a_slow_answer_is_a_timeout_and_the_handle_is_used_again(server, client):
    base, _ = server
    slow = HTTPRequest(f"{base}/200?delay=2", request_timeout=0.3)
    with pytest.raises(OutpostError) as info:
        await client.fetch("poll", slow, reuse=True)
    assert info.value.code == 599
    assert "did not answer in time" in str(info.value)
    fast = HTTPRequest(f"{base}/200", request_timeout=5)
    assert (await client.fetch("poll", fast, reuse=True)).body["code"] == 200


async def test_no_server_is_a_connection_failure(client):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    request = HTTPRequest(f"http://127.0.0.1:{port}/200", connect_timeout=2)
    reused = await outcome(client, request, True)
    ordinary = await outcome(client, HTTPRequest(request.url, connect_timeout=2), False)
    assert reused[:3] == ordinary[:3] == ("error", 599, reused[2])
    assert "connection failed" in reused[2]


async def test_a_body_over_the_limit_is_refused(server):
    base, _ = server
    client = OutpostClient(start_limit=1, request_limit=1, defaults={})
    client.http.max_body_size = 1000
    try:
        with pytest.raises(OutpostError) as info:
            await client.fetch("poll", HTTPRequest(f"{base}/200?size=5000"), reuse=True)
        assert info.value.code == 599
        assert "max_body_size" in info.value.log_message
        small = await client.fetch("poll", HTTPRequest(f"{base}/200?size=10"), reuse=True)
        assert small.body == {"pad": "x" * 10}
    finally:
        client.close()


async def test_a_cancelled_send_leaves_the_handle_ready(server, client):
    base, seen = server
    request = HTTPRequest(f"{base}/200?delay=0.5", request_timeout=5)
    task = asyncio.create_task(client.fetch("poll", request, reuse=True))
    await asyncio.wait_for(seen.arrived.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not client._prepared[request].busy
    assert (await client.fetch("poll", request, reuse=True)).code == 200


async def test_the_same_request_twice_at_once(server, client):
    base, seen = server
    request = HTTPRequest(f"{base}/200?delay=0.2", request_timeout=5)
    answers = await asyncio.gather(
        client.fetch("poll", request, reuse=True), client.fetch("poll", request, reuse=True)
    )
    assert [a.code for a in answers] == [200, 200]
    assert len(seen) == 2


async def test_closing_ends_a_send_in_flight(server):
    base, seen = server
    client = OutpostClient(start_limit=1, request_limit=1)
    task = asyncio.create_task(client.fetch("poll", HTTPRequest(f"{base}/200?delay=2"), reuse=True))
    await asyncio.wait_for(seen.arrived.wait(), 5)
    client.close()
    with pytest.raises(OutpostError) as info:
        await asyncio.wait_for(task, 5)
    assert info.value.code == 599


async def test_requests_that_cannot_be_reused_go_the_ordinary_way(server, client):
    base, _ = server
    chunks = []
    streaming = HTTPRequest(f"{base}/200", streaming_callback=chunks.append)
    assert prepare(client.http, streaming) is None
    await client.fetch("poll", streaming, reuse=True)
    assert chunks
    assert client._prepared[streaming] is None


async def test_a_dropped_request_frees_its_handle(server, client):
    import gc

    base, _ = server
    request = HTTPRequest(f"{base}/200")
    await client.fetch("poll", request, reuse=True)
    assert len(client._prepared) == 1
    del request
    gc.collect()
    assert len(client._prepared) == 0
