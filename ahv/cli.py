"""`ahv serve`, `ahv check-config`, `ahv models list|fetch`; also `python -m ahv`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from aiohttp import web

from ahv.config import Config, ConfigError, load_config
from ahv.errors import StartupError

log = logging.getLogger("ahv")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ahv", description="self-hosted AI orchestrator")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the server")
    serve.add_argument("--config", default="ahv.toml", help="path to ahv.toml")
    serve.add_argument("--port", type=int, help="override server.port (0 = any free port)")
    serve.add_argument("--host", help="override server.host")
    check = commands.add_parser("check-config", help="validate ahv.toml and exit")
    check.add_argument("--config", default="ahv.toml", help="path to ahv.toml")
    models = commands.add_parser("models", help="the model files named in ahv.toml")
    models_commands = models.add_subparsers(dest="models_command", required=True)
    models_list = models_commands.add_parser("list", help="configured, present, verified")
    models_list.add_argument("--config", default="ahv.toml", help="path to ahv.toml")
    models_fetch = models_commands.add_parser("fetch", help="download a model from its url")
    models_fetch.add_argument("name", help="a model name in [models.files]")
    models_fetch.add_argument("--config", default="ahv.toml", help="path to ahv.toml")
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = load_config(args.config)
        if args.command == "check-config":
            from ahv.tasks import load_registry

            load_registry(config)
            print(f"{args.config}: ok")
            return 0
        if args.command == "models":
            return _models(config, args.models_command, getattr(args, "name", ""))
        overrides = {"port": args.port, "host": args.host}
        server = config.server
        import msgspec

        server = msgspec.structs.replace(
            server, **{k: v for k, v in overrides.items() if v is not None}
        )
        config = msgspec.structs.replace(config, server=server)
    except ConfigError as exc:
        print(f"ahv: config error: {exc}", file=sys.stderr)
        return 2
    _install_uvloop()
    try:
        asyncio.run(_serve(config))
    except ConfigError as exc:
        print(f"ahv: config error: {exc}", file=sys.stderr)
        return 2
    except StartupError as exc:
        print(f"ahv: cannot start: {exc}", file=sys.stderr)
        return 2
    return 0


def _models(config: Config, command: str, name: str) -> int:
    from ahv.errors import AhvError
    from ahv.models.registry import ModelRegistry

    registry = ModelRegistry(config.models)
    if command == "list":
        rows = [("name", "file", "status", "size")]
        for model in registry.names():
            size = registry.size(model)
            shown = "-" if size is None else f"{size / 1e6:.1f} MB"
            rows.append((model, str(registry.path(model)), registry.status(model), shown))
        if len(rows) == 1:
            print(f"no models configured in [models.files] (models.dir = {registry.dir})")
            return 0
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        for row in rows:
            print("  ".join([*(row[i].ljust(widths[i]) for i in range(3)), row[3]]))
        return 0
    from ahv.models.fetch import fetch_model, text_progress

    drawn: list[str] = []

    def draw(text: str) -> None:
        drawn.append(text)
        sys.stderr.write(text)
        sys.stderr.flush()

    try:
        path = asyncio.run(fetch_model(registry, name, progress=text_progress(draw)))
    except AhvError as exc:
        print("\n" if drawn else "", end="", file=sys.stderr)
        print(f"ahv: models fetch: {exc.message}", file=sys.stderr)
        return 2
    print("\n" if drawn else "", end="", file=sys.stderr)
    print(f"model {name}: saved {path} ({registry.status(name)})")
    return 0


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _serve(config: Config) -> None:
    from ahv.http.app import create_app
    from ahv.http.keys import ORCHESTRATOR

    app = create_app(config)
    # keepalive_timeout bounds the wait for a request's headers as well as idle keep-alive
    # time (aiohttp arms it from the connection's start); the body is bounded in the middleware.
    runner = web.AppRunner(
        app,
        access_log=None,
        shutdown_timeout=5.0,
        keepalive_timeout=config.server.read_timeout_s,
    )
    await runner.setup()
    site = web.TCPSite(runner, config.server.host, config.server.port, backlog=1024)
    await site.start()
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    port = sockets[0].getsockname()[1] if sockets else config.server.port
    # Tests and scripts read this line to find a port chosen with --port 0.
    print(f"ahv listening on http://{config.server.host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: no new jobs; running jobs get %s s", config.server.shutdown_grace_s)
    await app[ORCHESTRATOR].drain()
    log.info("stopping: delivering due webhooks")
    await runner.cleanup()
    log.info("stopped")
