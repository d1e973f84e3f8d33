"""The task registry: built-in tasks plus those of the plugin modules named in ahv.toml."""

from __future__ import annotations

import importlib
from types import ModuleType

from ahv.config import Config, ConfigError
from ahv.tasks.base import TaskContext, TaskOutput, TaskSpec


def builtin_tasks() -> list[TaskSpec]:
    from ahv.tasks.background import REMOVE_BACKGROUND
    from ahv.tasks.faceswap import FACESWAP, FACESWAP_MULTI
    from ahv.tasks.faceswap_video import FACESWAP_VIDEO
    from ahv.tasks.gen_images import AHV_IMAGE, CX_IMAGE, GG_IMAGE
    from ahv.tasks.gen_video import AHV_VIDEO
    from ahv.tasks.objects import REMOVE_OBJECT, SCAN_OBJECTS
    from ahv.tasks.upscale import UPSCALE

    return [
        UPSCALE,
        FACESWAP,
        FACESWAP_MULTI,
        FACESWAP_VIDEO,
        REMOVE_BACKGROUND,
        SCAN_OBJECTS,
        REMOVE_OBJECT,
        AHV_IMAGE,
        AHV_VIDEO,
        GG_IMAGE,
        CX_IMAGE,
    ]


def load_registry(config: Config) -> dict[str, TaskSpec]:
    registry = {spec.name: spec for spec in builtin_tasks()}
    for i, module_name in enumerate(config.server.plugins):
        module = _import_plugin(i, module_name)
        specs = getattr(module, "TASKS", None)
        if not isinstance(specs, list) or not all(isinstance(s, TaskSpec) for s in specs):
            raise ConfigError(
                f"server.plugins[{i}]: {module_name!r} must define TASKS, a list of TaskSpec"
            )
        for spec in specs:
            registry[spec.name] = spec
    for i, backend in enumerate(config.backends):
        for task in backend.tasks:
            if task not in registry:
                known = ", ".join(sorted(registry))
                raise ConfigError(
                    f"backends[{i}].tasks: unknown task {task!r} (known tasks: {known})"
                )
            provider = registry[task].provider
            if provider is not None:  # provider tasks run on their provider's backend only
                raise ConfigError(
                    f"backends[{i}].tasks: {task!r} runs on a cloud provider "
                    f"([providers.{provider(config)}]), not on a cpu/cuda backend"
                )
    for task in config.queue.timeouts_s:
        if task not in registry:
            raise ConfigError(f"queue.timeouts_s: unknown task {task!r}")
    for task in config.retention.tasks:
        if task not in registry:
            raise ConfigError(f"retention.tasks: unknown task {task!r}")
    return registry


def _import_plugin(i: int, module_name: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"server.plugins[{i}]: cannot import {module_name!r}: {exc}") from exc
    except Exception as exc:
        # A plugin's own bug (a SyntaxError, or whatever its import runs raises) is as much a
        # config problem as a missing module: named, without a traceback, for serve,
        # check-config and a reload alike.
        raise ConfigError(
            f"server.plugins[{i}]: importing {module_name!r} failed: "
            f"{type(exc).__name__}: {_one_line(exc)}"
        ) from exc


def _one_line(exc: Exception) -> str:
    if isinstance(exc, SyntaxError):  # its str() lacks the file; the place is what helps
        return f"{exc.msg} ({exc.filename}, line {exc.lineno})"
    return " ".join(str(exc).split()) or "(no message)"


__all__ = ["TaskContext", "TaskOutput", "TaskSpec", "load_registry"]
