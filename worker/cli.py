"""Command line: ``python -m worker worker|ask|produce|load-catalog``.

``worker`` hands over to Faust's own CLI (same options as ``faust worker``).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import orjson

from worker.recsys_core.errors import ConfigurationError, TransientStoreError
from worker.settings import Settings, load_settings

#: LOG_LEVEL -> Faust's ``--loglevel`` (which says "warn", and refuses "warning").
_FAUST_LOGLEVELS = {"DEBUG": "debug", "INFO": "info", "WARNING": "warn", "ERROR": "error"}


def faust_loglevel(level: str) -> str:
    """Faust's name for a LOG_LEVEL value."""
    return _FAUST_LOGLEVELS[level]


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None


def kafka_options(settings: Settings) -> dict[str, Any]:
    """aiokafka security options from the settings (see ``worker.app.kafka_options``)."""
    from worker.app import kafka_options as options

    return options(settings)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """recsys-worker: real-time personalisation on Kafka, Redis and Qdrant."""


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def worker(ctx: click.Context) -> None:
    """Run the Faust worker (extra options go to Faust, e.g. -l info)."""
    from worker.malloc import cap_malloc_arenas

    cap_malloc_arenas()  # before Faust, RocksDB and Qdrant start their threads
    settings = _settings()
    from worker.app import create_app
    from worker.logs import configure_logging, patch_faust_spinner
    from worker.topics import ensure_topics

    configure_logging(settings)
    patch_faust_spinner()
    try:
        asyncio.run(ensure_topics(settings, kafka_options(settings)))
        app = create_app(settings)
    except (ConfigurationError, TransientStoreError) as exc:
        raise click.ClickException(str(exc)) from None
    sys.argv = [sys.argv[0], "worker", *faust_worker_args(settings, ctx.args)]
    app.main()


def faust_worker_args(settings: Settings, given: Sequence[str]) -> list[str]:
    """Faust's ``worker`` options: ``given`` (passed through) plus what the settings
    imply where ``given`` does not say: the log level, and ``--without-web`` for
    WEB_PORT=0 (Faust's command enables the web server unless told otherwise,
    whatever the app's ``web_enabled``)."""
    args = list(given)
    if not any(a in ("-l", "--loglevel") or a.startswith("--loglevel=") for a in args):
        args = ["-l", faust_loglevel(settings.log_level), *args]
    if settings.web_port == 0 and not {"--with-web", "--without-web"} & set(args):
        args.append("--without-web")
    return args


@cli.command()
@click.argument("user_id")
@click.option("--k", "k", default=10, show_default=True, help="How many items.")
@click.option("--query", default=None, help="Free text to match (cold start).")
@click.option("--exclude", multiple=True, help="Content id to leave out (repeatable).")
@click.option("--timeout", default=None, type=float, help="Seconds to wait for the reply.")
def ask(user_id: str, k: int, query: str | None, exclude: tuple[str, ...],
        timeout: float | None) -> None:
    """Ask the running worker for USER_ID's recommendations (prints JSON)."""
    settings = _settings()
    from worker.client import RecsysClient, RequestTimeout

    async def run() -> dict[str, Any]:
        async with RecsysClient(
            settings.bootstrap_servers,
            requests_topic=settings.requests_topic,
            timeout=timeout or settings.request_timeout_s,
            **kafka_options(settings),
        ) as client:
            return await client.recommend(user_id, k=k, query=query,
                                          exclude=list(exclude) or None)

    try:
        reply = asyncio.run(run())
    except RequestTimeout as exc:
        raise click.ClickException(f"{exc} (is the worker running?)") from None
    click.echo(orjson.dumps(reply, option=orjson.OPT_INDENT_2).decode())
    if "error" in reply:
        sys.exit(1)


@cli.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--topic", default=None, help="Topic (default: EVENTS_TOPIC).")
def produce(path: Path, topic: str | None) -> None:
    """Send each line of a JSONL file, as raw bytes, to the events topic.

    Records are keyed like RudderStack's Kafka destination: by userId, else
    anonymousId.
    """
    settings = _settings()
    from aiokafka import AIOKafkaProducer

    async def run() -> int:
        producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers,
                                    linger_ms=5, acks="all", **kafka_options(settings))
        await producer.start()
        n = 0
        try:
            with path.open("rb") as fh:
                for line in fh:
                    line = line.rstrip(b"\r\n")
                    if not line:
                        continue
                    await producer.send(topic or settings.events_topic, value=line,
                                        key=_rudder_key(line))
                    n += 1
            await producer.flush()
        finally:
            await producer.stop()
        return n

    n = asyncio.run(run())
    click.echo(f"sent {n} records to {topic or settings.events_topic}")


def _rudder_key(line: bytes) -> bytes | None:
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    uid = obj.get("userId") or obj.get("anonymousId")
    return str(uid).encode() if isinstance(uid, str | int) and uid != "" else None


@cli.command("load-catalog")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--limit", default=None, type=int, help="Load only the first N items.")
def load_catalog_cmd(path: Path, limit: int | None) -> None:
    """Embed a catalogue (MovieLens movies.csv or JSONL) into Qdrant."""
    settings = _settings()
    from tqdm import tqdm

    from worker.bootstrap import build_adapters
    from worker.catalog import load_catalog, read_catalog

    items = read_catalog(path)[:limit]

    async def run() -> int:
        adapters = build_adapters(settings)
        try:
            await adapters.content.ensure_collection(adapters.embedder.dim)
            with tqdm(total=len(items), unit="item", desc="embedding") as bar:
                return await load_catalog(items, store=adapters.content,
                                          embedder=adapters.embedder, progress=bar)
        finally:
            await adapters.aclose()

    try:
        n = asyncio.run(run())
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"loaded {n} items into {settings.qdrant_collection}")


def _when(value: str | None, *, allow_earliest: bool) -> datetime | None:
    if value is None or (allow_earliest and value == "earliest"):
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO-8601 time") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


@cli.command()
@click.option("--from", "from_", default="earliest", show_default=True,
              help="'earliest' or an ISO-8601 time (record timestamps, per partition).")
@click.option("--until", default=None, help="ISO-8601 time: stop after records up to it.")
@click.option("--dry-run", is_flag=True, help="Print the plan (offsets, counts); write nothing.")
def replay(from_: str, until: str | None, dry_run: bool) -> None:
    """Re-run the events topic through the ingest path to rebuild Redis state.

    Runs under its own consumer group (APP_ID-replay), bounded by the end offsets
    captured at start; never sends replies and never moves the live group's
    offsets. Idempotent. Exit code 0 when every partition was read to its end.
    """
    settings = _settings()
    from tqdm import tqdm

    from worker import replay as rp
    from worker.bootstrap import build_adapters, build_services

    start = _when(from_, allow_earliest=True)
    stop = _when(until, allow_earliest=False)
    opts = kafka_options(settings)

    async def go() -> dict[str, Any]:
        ranges = await rp.plan(settings, start=start, until=stop, kafka_options=opts)
        total = sum(r.count for r in ranges)
        click.echo(f"replay of {settings.events_topic} as group {rp.replay_group(settings)}: "
                   f"{total} records")
        for r in ranges:
            click.echo(f"  partition {r.partition}: offsets {r.start}..{r.end} ({r.count})")
        if dry_run:
            return {"dry_run": True, "records": total}
        adapters = build_adapters(settings)
        try:
            services = build_services(adapters)
            with tqdm(total=total, unit="rec", desc="replaying", dynamic_ncols=True) as bar:
                summary = await rp.run(settings, ranges, services.pipeline,
                                       kafka_options=opts, on_progress=bar.update)
        finally:
            await adapters.aclose()
        return summary.as_dict()

    try:
        result = asyncio.run(go())
    except (ConfigurationError, TransientStoreError, LookupError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


def main() -> None:
    cli(prog_name="python -m worker")
