"""Where a recommendation request's time goes, hop by hop, over the real stack.

Starts the same live worker as ``make bench``'s requests part (``bench_perf.py``:
warm-up events for ``--users`` users on the local stack, MovieLens in the embedded
Qdrant), sets its requests topic and a reply topic of its own to
``message.timestamp.type=LogAppendTime`` (the broker stamps each record when it
appends it), and sends requests at fixed rates. Per request:

* ``send_to_appended``: the client's send → the broker appended the request;
* ``worker``: request appended → reply appended (the worker's fetch, its answer,
  its reply's produce);
* ``reply_to_client``: reply appended → the client has it;
* ``total``: the client's send → the client has the reply.

Beside them, per phase: the worker's own request timing and stage means
(``/metrics``), the worker's and Redis's CPU (read as ``bench_perf`` reads them).
``worker`` minus the answer is what Kafka and Faust add inside the worker. One
clock (the same machine). Phases for ``new`` users ask for users the worker has
never seen: their answer is the popular list from its cache, ranked (~2.5 ms in
the worker, against ~8-10 ms for a user with a history), so those phases show what
the path costs around an almost instant answer: the floor under any
recommendation's latency on the machine.

Writes ``benchmarks/results/request_path.json`` and ``request_path.png``. A
benchmark, not a test: it never fails on a number.

  python benchmarks/request_path.py [--phases 10:1:300:new,100:8:3000] [--users 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType  # noqa: E402

import benchmarks.bench_perf as bp  # noqa: E402
from benchmarks.perf_events import user_id  # noqa: E402
from worker.client import RecsysClient  # noqa: E402

HOPS = ("send_to_appended", "worker", "reply_to_client", "total")
class TimedClient(RecsysClient):
    """``RecsysClient`` that keeps, per request, the four times of its path."""

    async def _read_replies(self) -> None:
        assert self._consumer is not None
        async for msg in self._consumer:
            now = time.time()
            body = orjson.loads(msg.value or b"null")
            if not isinstance(body, dict):
                continue
            fut = self._pending.pop(str(body.get("correlation_id")), None)
            if fut is not None and not fut.done():
                fut.set_result({"value": body.get("value"), "appended": msg.timestamp / 1000,
                                "received": now})

    async def timed(self, uid: str) -> tuple[float, float, float, float]:
        """(sent, request appended, reply appended, received), epoch seconds."""
        assert self._producer is not None
        cid = uuid.uuid4().hex
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[cid] = fut
        try:
            sent = time.time()
            meta = await self._producer.send_and_wait(
                self.requests_topic, key=uid.encode(),
                value=orjson.dumps({"user_id": uid, "k": 10}),
                headers=[("Faust-Ag-ReplyTo", self.reply_topic.encode()),
                         ("Faust-Ag-CorrelationId", cid.encode())])
            got = await asyncio.wait_for(fut, self.timeout)
        finally:
            self._pending.pop(cid, None)
        if "error" in (got["value"] or {}):
            raise RuntimeError(f"the worker refused a request: {got['value']}")
        return sent, meta.timestamp / 1000, got["appended"], got["received"]


async def run_phase(client: TimedClient, live: bp.Live, users: list[str], rate: float,
                    concurrency: int, redis_url: str) -> dict[str, Any]:
    """Open loop: request i is due at t0 + i/rate; at most ``concurrency`` in flight."""
    times: list[tuple[float, float, float, float]] = []
    nxt = 0
    t0 = time.perf_counter() + 0.05

    async def runner() -> None:
        nonlocal nxt
        while nxt < len(users):
            i = nxt
            nxt += 1
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            times.append(await client.timed(users[i]))

    stages0, cpu0 = await bp.stage_totals(live.port), bp.cpu_seconds(live.worker)
    redis0 = await bp.redis_load_at(redis_url)
    await asyncio.gather(*(runner() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    stages1, cpu1 = await bp.stage_totals(live.port), bp.cpu_seconds(live.worker)
    redis1 = await bp.redis_load_at(redis_url)
    hops = {
        "send_to_appended": [b - a for a, b, _, _ in times],
        "worker": [c - b for _, b, c, _ in times],
        "reply_to_client": [d - c for _, _, c, d in times],
        "total": [d - a for a, _, _, d in times],
    }
    out: dict[str, Any] = {"rate": rate, "concurrency": concurrency, "requests": len(times),
                           "achieved_rate": round(len(times) / elapsed, 1)}
    out["hops"] = {k: bp.latency_summary(v) for k, v in hops.items()}
    out["worker_stages"] = bp.stage_share(stages0, stages1, elapsed)
    out["worker_cpu"] = bp.cpu_share(cpu0, cpu1, elapsed)
    out["redis"] = bp.redis_share(redis0, redis1, elapsed)
    med = {k: out["hops"][k]["p50_ms"] for k in HOPS}
    bp.log(f"  {rate:g}/s, {concurrency} in flight: medians {med} ms; the worker's answer "
           f"{answer_ms(out)} ms on average")
    return out


def answer_ms(phase: dict[str, Any]) -> float:
    """The worker's mean time to answer a request over the phase (its own timing)."""
    return float(phase["worker_stages"].get("request/total", {}).get("mean_ms", 0.0))


def plot(phases: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{p['rate']:g}/s, {p['concurrency']} in flight"
              + ("\nnew users" if p.get("users") == "new" else "") for p in phases]
    fig, ax = plt.subplots(figsize=(9, 4))
    bottom = [0.0] * len(phases)
    parts = [("send_to_appended", "send → request appended"),
             ("answer", "the worker's answer (mean)"),
             ("worker_rest", "the rest in the worker: fetch, queueing, reply"),
             ("reply_to_client", "reply appended → client")]
    for key, label in parts:
        vals = []
        for p in phases:
            answer = answer_ms(p)
            if key == "answer":
                vals.append(answer)
            elif key == "worker_rest":
                vals.append(max(0.0, p["hops"]["worker"]["p50_ms"] - answer))
            else:
                vals.append(p["hops"][key]["p50_ms"])
        ax.bar(labels, vals, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax.set_ylabel("ms (medians; the answer: its mean)")
    ax.set_title("Where a request's time goes")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


async def main(args: argparse.Namespace) -> int:
    from redis.asyncio import Redis

    phases = []
    for ph in args.phases.split(","):
        parts = ph.split(":")
        if len(parts) == 3:
            parts.append("known")
        if len(parts) != 4 or parts[3] not in ("known", "new"):
            raise SystemExit(f"--phases: {ph!r}: rate:in-flight:requests[:known|new]")
        phases.append((float(parts[0]), float(parts[1]), float(parts[2]), parts[3]))
    bargs = bp.parse_args(["--only", "requests", "--users", str(args.users)])
    st = bp.stack_env()
    broker = st.get("KAFKA_BROKER", "127.0.0.1:19092")
    base = st.get("REDIS_URL", "redis://127.0.0.1:16379/0")
    redis_url = base.rsplit("/", 1)[0] + "/3"
    run_id = f"path{uuid.uuid4().hex[:8]}"
    workdir = ROOT / ".cache" / "bench" / "runs" / run_id
    workdir.mkdir(parents=True)
    b = bp.Bench(bargs, broker, redis_url, run_id, workdir)
    client_r = Redis.from_url(redis_url)
    await client_r.flushdb()
    await client_r.aclose()
    code = bp.code_fingerprint()
    b.catalogue = await bp.prepare_catalogue(bargs)
    results: list[dict[str, Any]] = []
    try:
        live = await bp.ensure_live(b)
        await bp.wait_committed(b, live.env, timeout=600)
        admin = AIOKafkaAdminClient(bootstrap_servers=broker)
        await admin.start()
        reply = f"{run_id}-reply"
        try:
            await admin.alter_configs([ConfigResource(
                ConfigResourceType.TOPIC, live.env["REQUESTS_TOPIC"],
                {"message.timestamp.type": "LogAppendTime"})])
            await admin.create_topics([NewTopic(
                reply, 1, 1, topic_configs={"message.timestamp.type": "LogAppendTime"})])
        finally:
            await admin.close()
        rng = random.Random(5)
        client = TimedClient(broker, requests_topic=live.env["REQUESTS_TOPIC"],
                             reply_topic=reply, timeout=10)
        await client.start()
        try:
            for _ in range(30):  # warm-up: metadata, caches
                await client.timed(user_id(rng.randrange(live.users)))
            for rate, concurrency, n, who in phases:
                # "new": users the worker has never seen (no signals, no history):
                # the answer is the popular list, read from its cache and ranked, so
                # the phase measures what the path costs around an almost instant answer
                first = live.users if who == "new" else 0
                users = [user_id(first + rng.randrange(live.users)) for _ in range(int(n))]
                phase = await run_phase(client, live, users, rate, int(concurrency), redis_url)
                results.append({"users": who} | phase)
        finally:
            await client.close()
    finally:
        for w in b.workers:
            w.stop(timeout=20)
        with contextlib.suppress(Exception):
            await bp.delete_run_topics(b)
        with contextlib.suppress(Exception):
            admin = AIOKafkaAdminClient(bootstrap_servers=broker)
            await admin.start()
            await admin.delete_topics([f"{run_id}-reply"])
            await admin.close()
        with contextlib.suppress(Exception):
            r = Redis.from_url(redis_url)
            await r.flushdb(asynchronous=True)
            await r.aclose()
        shutil.rmtree(workdir, ignore_errors=True)
    out = {
        "phases": results,
        "how_measured": __doc__.split("\n\n")[1:3],
        "machine": bp.machine_info(),
        "code": code,
        "settings": {"users": args.users, "warm_up_events": max(args.users * 2, 10_000),
                     "k": 10, "catalogue": b.catalogue.name},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(out, option=orjson.OPT_INDENT_2))
    plot(results, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    print(orjson.dumps({f"{p['rate']:g}/s {p['users']}": {k: p["hops"][k]["p50_ms"]
                                                           for k in HOPS}
                        | {"answer_mean_ms": answer_ms(p)}
                        for p in results}, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--phases", default="10:1:300:new,100:8:3000:new,10:1:200,100:8:3000",
                   help="rate:in-flight:requests[:known|new], comma-separated (new: users "
                   "never seen, whose answer is the cached popular list)")
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--out", type=Path, default=bp.RESULTS / "request_path.json")
    sys.exit(asyncio.run(main(p.parse_args())))
