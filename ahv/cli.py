"""`ahv serve`, `ahv check-config`, `ahv models list|fetch`, `ahv backup`; also
`python -m ahv`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from aiohttp import web

from ahv import __version__
from ahv.config import Config, ConfigError, load_config
from ahv.errors import StartupError
from ahv.logging_setup import FORMATS, LEVELS

log = logging.getLogger("ahv")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ahv", description="self-hosted AI orchestrator")
    parser.add_argument("--version", action="version", version=f"ahv {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the server")
    serve.add_argument("--config", default="ahv.toml", help="path to ahv.toml")
    serve.add_argument("--port", type=int, help="override server.port (0 = any free port)")
    serve.add_argument("--host", help="override server.host")
    serve.add_argument("--log-format", choices=FORMATS, help="override server.log_format")
    serve.add_argument("--log-level", choices=LEVELS, help="override server.log_level")
    check = commands.add_parser("check-config", help="validate ahv.toml and exit")
    check.add_argument("--config", default="ahv.toml", help="path to ahv.toml")
    models = commands.add_parser("models", help="the model files named in ahv.toml")
    models_commands = models.add_subparsers(dest="models_command", required=True)
    models_list = models_commands.add_parser("list", help="configured, present, verified")
    models_list.add_argument("--config", default="ahv.toml", help="path to ahv.toml")
    models_fetch = models_commands.add_parser("fetch", help="download a model from its url")
    models_fetch.add_argument("name", help="a model name in [models.files]")
    models_fetch.add_argument("--config", default="ahv.toml", help="path to ahv.toml")
    backup = commands.add_parser("backup", help="copy the queue database, also while serving")
    backup.add_argument("path", help="the file to write (PATH.part first, then renamed)")
    backup.add_argument("--config", default="ahv.toml", help="path to ahv.toml")
    backup.add_argument("--force", action="store_true", help="overwrite PATH if it exists")
    args = parser.parse_args(argv)

    if args.command != "serve":
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    # Until the file is read only `--log-format` is known; `ahv serve` then follows the
    # config's log format for its own lines too.
    log_format: str = getattr(args, "log_format", None) or "text"
    try:
        config = load_config(args.config)
        if args.command == "check-config":
            from ahv.tasks import load_registry

            load_registry(config)
            print(f"{args.config}: ok")
            return 0
        if args.command == "models":
            return _models(config, args.models_command, getattr(args, "name", ""))
        if args.command == "backup":
            return _backup(config, args.path, args.force)
        from ahv.reload import with_overrides

        overrides = {
            "port": args.port,
            "host": args.host,
            "log_format": args.log_format,
            "log_level": args.log_level,
        }
        config = with_overrides(config, overrides)
    except ConfigError as exc:
        _refused(log_format, f"ahv: config error: {exc}", "config_error")
        return 2
    from ahv.logging_setup import setup_logging

    log_format = config.server.log_format
    logs = setup_logging(log_format, config.server.log_level)
    _install_uvloop()
    refusal: tuple[str, str] | None = None
    try:
        asyncio.run(_serve(config, args.config, overrides))
    except ConfigError as exc:
        refusal = (f"ahv: config error: {exc}", "config_error")
    except StartupError as exc:
        refusal = (f"ahv: cannot start: {exc}", "startup_error")
    finally:
        logs.close()  # writes out the queued log lines, before the reason below
    if refusal is not None:
        _refused(log_format, *refusal)
        return 2
    return 0


def _refused(log_format: str, message: str, event: str) -> None:
    from ahv.logging_setup import console_line

    print(console_line(log_format, logging.ERROR, message, event=event), file=sys.stderr)


def _backup(config: Config, path: str, force: bool) -> int:
    from ahv.backup import BackupError, backup_database

    try:
        done = backup_database(config.server.data_dir, path, force=force)
    except BackupError as exc:
        print(f"ahv: backup: {exc}", file=sys.stderr)
        return 2
    print(f"backup: {done.path}: {done.jobs} jobs, {done.size_bytes / 1e6:.1f} MB")
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


async def _serve(config: Config, config_path: str, overrides: dict[str, object]) -> None:
    from ahv.http.app import create_app
    from ahv.http.keys import ORCHESTRATOR
    from ahv.logging_setup import console_line
    from ahv.reload import Reloader
    from ahv.sdnotify import notify

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
    # Tests and scripts read this line to find a port chosen with --port 0: they search it for
    # `ahv listening on http://HOST:PORT`, which is the whole line in text mode and its `msg`
    # in json mode (with `url` beside it).
    url = f"http://{config.server.host}:{port}"
    print(
        console_line(
            config.server.log_format,
            logging.INFO,
            f"ahv listening on {url}",
            event="listening",
            url=url,
        ),
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # SIGHUP (systemctl reload): re-read ahv.toml, apply what can change while running.
    loop.add_signal_handler(
        signal.SIGHUP, Reloader(app[ORCHESTRATOR], config_path, overrides).trigger
    )
    notify("READY=1")
    await stop.wait()
    notify("STOPPING=1")
    # The running config: a reload (SIGHUP) may have changed the grace time since the start.
    grace_s = app[ORCHESTRATOR].config.server.shutdown_grace_s
    log.info("stopping: no new jobs; running jobs get %s s", grace_s)
    await app[ORCHESTRATOR].drain()
    log.info("stopping: delivering due webhooks")
    await runner.cleanup()
    log.info("stopped")
