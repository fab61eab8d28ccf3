"""A rolling restart of the local cluster loses nothing.

deploy/local-cluster.sh starts Redis, three gateways, herald-admin, HAProxy
and Prometheus on loopback (drain_timeout 3 s). WebSocket clients connect
through HAProxy only and subscribe with `since`; a publisher sends a steady
stream through herald-admin. Then `local-cluster.sh roll` gives each gateway
in turn SIGTERM and starts it again once it has exited. Every client must
be closed with 1012, reconnect through HAProxy, recover with `since`, and
end up with exactly the events published, once each and in order. Then
Prometheus must see every target up, the clients' sessions in
`herald_connections`, and answer every query of the Grafana dashboard.
"""

import asyncio
import json
import os
import random
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from conftest import DEPLOY, http_get, wait_until

SCRIPT = DEPLOY / "local-cluster.sh"
TOPICS = [f"deploy.t{i}" for i in range(4)]
CLIENTS = 48
RATE = 80  # events per second, over all topics
DRAIN = 3  # seconds: HERALD_DRAIN_TIMEOUT of the cluster


def read_env(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            env[key] = value.strip("'")
    return env


@pytest.fixture(scope="module")
def cluster(herald_bin, tmp_path_factory):
    state = tmp_path_factory.mktemp("local-cluster")
    env = {**os.environ, "HERALD_BIN_DIR": str(herald_bin), "HERALD_LOCAL_DIR": str(state),
           "HERALD_DRAIN_TIMEOUT": f"{DRAIN}s"}
    env.setdefault("HERALD_LOG_LEVEL", "info")
    env.pop("HERALD_LOCAL_BASE_PORT", None)
    try:
        subprocess.run([SCRIPT, "start"], env=env, check=True, timeout=120, stdout=subprocess.DEVNULL)
        yield {"state": state, "env": env, **read_env(state / "cluster.env")}
    except BaseException:
        for log in sorted((state / "logs").glob("*.log")):
            print(f"---- {log.name} (last lines)\n" + "\n".join(log.read_text().splitlines()[-15:]))
        raise
    finally:
        subprocess.run([SCRIPT, "stop"], env=env, timeout=120)


class Publisher(threading.Thread):
    """A steady stream of events through herald-admin, one per call, round
    robin over TOPICS. Records each topic's ids in publish order."""

    def __init__(self, admin_url: str, key: str):
        super().__init__(daemon=True)
        self.url = admin_url + "/v1/publish"
        self.key = key
        self.published: dict[str, list[str]] = {t: [] for t in TOPICS}
        self.error: str | None = None
        self.stopping = threading.Event()
        self.seq = 0

    def publish(self, topic: str, seq: int) -> str:
        # No retry: herald-admin and Redis stay up through the roll, so any
        # failed publish is a failure of the test.
        req = urllib.request.Request(self.url, method="POST", data=json.dumps(
            {"topic": topic, "data": {"seq": seq}}).encode(), headers={
            "Authorization": f"Bearer {self.key}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.load(resp)["results"][0]["id"]

    def run(self):
        start = time.monotonic()
        try:
            while not self.stopping.is_set():
                self.seq += 1
                topic = TOPICS[self.seq % len(TOPICS)]
                self.published[topic].append(self.publish(topic, self.seq))
                # Pace to RATE (catching up after a slow call).
                delay = start + self.seq / RATE - time.monotonic()
                if delay > 0:
                    self.stopping.wait(delay)
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = repr(e)


class Client:
    """One WebSocket client, always through HAProxy, resubscribing with
    `since` after every close."""

    def __init__(self, n: int, url: str, anchors: dict[str, str]):
        self.n = n
        self.url = url
        self.topics = [TOPICS[n % len(TOPICS)], TOPICS[(n + 1) % len(TOPICS)]]
        self.last = {t: anchors[t] for t in self.topics}
        self.received: dict[str, list[str]] = {t: [] for t in self.topics}
        # Where each message came from: (connection number, "replay" before
        # the subscribed reply or "live" after it), for the failure report.
        self.origin: dict[str, list[tuple[int, str]]] = {t: [] for t in self.topics}
        self.connects = 0
        self.refused: list[str] = []
        self.closes: list[int | None] = []
        self.nodes: list[str] = []
        self.recovered: list[dict] = []
        self.errors: list[dict] = []
        self.subscribed = asyncio.Event()
        self.done = asyncio.Event()
        self.expected: dict[str, int] | None = None
        self.ws = None
        self.stopping = False

    def check_done(self):
        if self.expected and all(len(self.received[t]) >= self.expected[t] for t in self.topics):
            self.done.set()

    async def open(self):
        deadline = asyncio.get_running_loop().time() + 30
        for attempt in range(1000):
            try:
                return await connect(self.url, open_timeout=5, ping_interval=None, max_queue=None)
            except (InvalidHandshake, OSError, TimeoutError) as e:
                self.refused.append(repr(e))
                if asyncio.get_running_loop().time() > deadline:
                    raise
                # Back off with jitter before retrying (what a real client does).
                await asyncio.sleep(min(0.05 * 2 ** min(attempt, 4), 1.0) * random.uniform(0.5, 1.0))
        raise AssertionError("unreachable")

    async def session(self, ws):
        welcome = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert welcome["type"] == "welcome", welcome
        self.nodes.append(welcome["node"])
        ref = str(self.connects)
        phase = "replay"
        await ws.send(json.dumps({"type": "subscribe", "ref": ref, "topics": self.topics, "since": self.last}))
        async for raw in ws:
            frame = json.loads(raw)
            kind = frame["type"]
            if kind == "message":
                self.received[frame["topic"]].append(frame["id"])
                self.origin[frame["topic"]].append((self.connects, phase))
                self.last[frame["topic"]] = frame["id"]
                self.check_done()
            elif kind == "subscribed" and frame.get("ref") == ref:
                phase = "live"
                self.recovered.append(frame.get("recovered", {}))
                self.subscribed.set()
            elif kind == "error":
                self.errors.append(frame)

    async def run(self):
        while not self.stopping:
            self.ws = await self.open()
            self.connects += 1
            try:
                await self.session(self.ws)
            except ConnectionClosed:
                pass
            if not self.stopping:
                self.closes.append(self.ws.close_code)

    async def stop(self):
        self.stopping = True
        if self.ws is not None:
            await self.ws.close()


def mint_token(cluster) -> str:
    return subprocess.run(
        [Path(cluster["HERALD_BIN_DIR"]) / "herald-gateway", "token", "--sub", "e2e", "--topics", "deploy.>",
         "--ttl", "10m", "--jwt-hs256-secret", cluster["HERALD_JWT_SECRET"]],
        check=True, capture_output=True, text=True, timeout=20, cwd=cluster["state"]).stdout.strip()


def prometheus(cluster, query: str) -> list:
    url = cluster["HERALD_PROMETHEUS_URL"] + "/api/v1/query?" + urllib.parse.urlencode({"query": query})
    status, body = http_get(url)
    answer = json.loads(body)
    assert status == 200 and answer["status"] == "success", (query, answer)
    return answer["data"]["result"]


def dashboard_queries() -> list[str]:
    board = json.loads((DEPLOY / "grafana" / "herald.json").read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", []) if t.get("expr")]
    return [e.replace("$__rate_interval", "1m").replace("$node", ".*") for e in exprs]


async def scenario(cluster) -> dict:
    publisher = Publisher(cluster["HERALD_ADMIN_URL"], cluster["HERALD_ADMIN_KEY"])
    # One event per topic first: every client subscribes `since` it, so a
    # reconnect recovers even before the client has seen a live event.
    anchors = {t: publisher.publish(t, -i - 1) for i, t in enumerate(TOPICS)}
    token = mint_token(cluster)
    url = cluster["HERALD_LB_URL"] + "?token=" + token
    clients = [Client(n, url, anchors) for n in range(CLIENTS)]
    tasks = [asyncio.create_task(c.run()) for c in clients]
    try:
        await asyncio.wait_for(asyncio.gather(*(c.subscribed.wait() for c in clients)), 30)

        publisher.start()
        roll = await asyncio.create_subprocess_exec(SCRIPT, "roll", env=cluster["env"],
                                                    stderr=asyncio.subprocess.PIPE)
        t0 = time.monotonic()
        _, roll_log = await asyncio.wait_for(roll.communicate(), 3 * (DRAIN + 30))
        roll_seconds = time.monotonic() - t0
        assert roll.returncode == 0, roll_log.decode()
        # Keep publishing a little after the last node is back.
        await asyncio.sleep(1)
        publisher.stopping.set()
        await asyncio.to_thread(publisher.join, 30)
        assert not publisher.is_alive() and publisher.error is None, publisher.error

        for c in clients:
            c.expected = {t: len(publisher.published[t]) for t in c.topics}
            c.check_done()
        pending = [c for c in clients if not c.done.is_set()]
        if pending:
            await asyncio.wait(
                [asyncio.create_task(c.done.wait()) for c in pending], timeout=20)
        for t in tasks:
            if t.done() and t.exception():
                raise t.exception()
        roll_end = time.time()
        # While the clients are still connected: Prometheus scrapes every
        # target again after the roll, and counts the clients' sessions.
        await asyncio.to_thread(wait_until, "every Prometheus target up after the roll",
                                lambda: targets_up_since(cluster, roll_end), 40, 0.5)
        await asyncio.to_thread(wait_until, f"Prometheus to count {CLIENTS} sessions",
                                lambda: sessions_seen(cluster) == CLIENTS, 40, 0.5)
        return {"clients": clients, "publisher": publisher, "roll_seconds": roll_seconds,
                "roll_log": roll_log.decode()}
    finally:
        for c in clients:
            await c.stop()
        await asyncio.wait(tasks, timeout=10)


def targets_up_since(cluster, since: float) -> bool:
    """Every target (3 gateways, herald-admin, HAProxy) up at a scrape after `since`."""
    _, body = http_get(cluster["HERALD_PROMETHEUS_URL"] + "/api/v1/targets")
    targets = json.loads(body)["data"]["activeTargets"]
    assert {t["labels"]["job"] for t in targets} <= {"herald", "herald-admin", "haproxy"}
    fresh = [t for t in targets if t["health"] == "up" and scraped_at(t["lastScrape"]) > since]
    return len(targets) == 5 and len(fresh) == 5


def sessions_seen(cluster) -> float:
    result = prometheus(cluster, 'sum(herald_connections{job="herald"})')
    return float(result[0]["value"][1]) if result else -1


def scraped_at(stamp: str) -> float:
    """Seconds since the epoch of an RFC 3339 time as Prometheus writes it
    (nanoseconds, `Z` or an offset)."""
    stamp = stamp.replace("Z", "+00:00")
    main, offset = stamp[:-6], stamp[-6:]
    head, _, frac = main.partition(".")
    return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}{offset}").timestamp()


def compare(got: list[str], want: list[str], origin: list[tuple[int, str]]) -> str | None:
    """What is wrong with the events a client received on a topic (`got`,
    with the connection and phase each came in) against what was published
    (`want`): a problem, or None. Any loss, duplicate or reordering is one
    (this test once caught a replay delivered twice on reconnect)."""
    kept, where = list(got), list(origin)
    if kept == want:
        return None
    lost = len(set(want) - set(kept))
    dups = len(kept) - len(set(kept))
    in_order = list(dict.fromkeys(e for e in kept if e in set(want))) == [e for e in want if e in set(kept)]
    i = next((i for i, (g, w) in enumerate(zip(kept, want)) if g != w), min(len(kept), len(want)))
    around = ", ".join(f"{kept[j]} (connection {where[j][0]}, {where[j][1]})"
                       for j in range(max(0, i - 3), min(len(kept), i + 3)))
    return (f"{len(kept)} received, {len(want)} published, {lost} lost, {dups} duplicated, order "
            f"{'kept' if in_order else 'broken'}; first difference at #{i}: expected "
            f"{want[i] if i < len(want) else 'nothing'}, received around it: {around}")


def test_rolling_restart_loses_nothing(cluster):
    result = asyncio.run(scenario(cluster))
    clients, publisher = result["clients"], result["publisher"]
    sent = sum(len(ids) for ids in publisher.published.values())
    print(f"\nrolling restart of 3 gateways took {result['roll_seconds']:.1f}s; {sent} events published "
          f"through herald-admin\n{result['roll_log'].strip()}")

    problems = []
    for c in clients:
        for t in c.topics:
            problem = compare(c.received[t], publisher.published[t], c.origin[t])
            if problem:
                problems.append(f"client {c.n} {t}: {problem}")
        if c.connects < 2:
            problems.append(f"client {c.n} was never reconnected (nodes {c.nodes})")
        if any(code != 1012 for code in c.closes):
            problems.append(f"client {c.n} closes: {c.closes} (expected only 1012)")
        if any(r != {t: True for t in c.topics} for r in c.recovered):
            problems.append(f"client {c.n} did not recover every topic: {c.recovered}")
        if c.errors:
            problems.append(f"client {c.n} errors: {c.errors}")
        if c.refused:
            problems.append(f"client {c.n} handshakes failed through HAProxy: {c.refused}")
    assert not problems, "\n".join(problems)

    reconnects = sum(c.connects - 1 for c in clients)
    print(f"{len(clients)} clients: {reconnects} reconnects through HAProxy, all recovered with since, "
          f"0 lost, 0 duplicated, order kept; "
          f"nodes seen: {sorted({n for c in clients for n in c.nodes})}")

    # Every query of the Grafana dashboard is valid PromQL that Prometheus answers.
    for query in dashboard_queries():
        prometheus(cluster, query)

