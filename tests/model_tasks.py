"""A plugin task that runs an ONNX model through the session cache, for the model tests:
`onnx_identity` needs the model `tiny` of [models.files] and echoes its input through it."""

from __future__ import annotations

import msgspec
import numpy as np
from onnx import TensorProto, helper

from ahv.config import Config
from ahv.tasks.base import TaskContext, TaskOutput, TaskSpec


def tiny_model(scale: float = 2.0) -> bytes:
    """y = x * scale, x and y float[1, 3]: a real (tiny) ONNX model."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    k = helper.make_tensor("k", TensorProto.FLOAT, [1], [scale])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "k"], ["y"])], "tiny", [x], [y], [k])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


class IdentityPayload(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    value: float = 1.0


async def run_identity(ctx: TaskContext, payload: IdentityPayload) -> TaskOutput:
    sessions = ctx.sessions
    assert sessions is not None

    def work() -> tuple[list[float], list[str]]:
        session = sessions.get("tiny", ctx.device)
        (out,) = session.run(None, {"x": np.full((1, 3), payload.value, np.float32)})
        return [float(v) for v in out[0]], list(session.get_providers())

    values, providers = await ctx.run_in_thread(work)
    return TaskOutput(meta={"values": values, "providers": providers, "slot": sessions.slot})


def _needs(config: Config) -> list[str]:
    return ["tiny"]


TASKS = [
    TaskSpec(
        name="onnx_identity",
        payload_type=IdentityPayload,
        run=run_identity,  # type: ignore[arg-type]
        models=_needs,
    )
]
