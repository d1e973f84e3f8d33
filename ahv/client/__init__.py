"""ahv's client library: a typed async and sync client of the HTTP API, and `verify_webhook`
for receivers. Imports only aiohttp and msgspec (none of the server's model stack).

    from ahv.client import Client
    with Client("http://gpu-box:2022", "my-key") as ahv:
        job = ahv.wait(ahv.submit("upscale", {"image_url": url, "scale": 2}).job_id)
"""

from ahv.client.aio import AsyncClient
from ahv.client.sync import Client
from ahv.client.types import (
    FINAL_STATUSES,
    AhvClientError,
    Job,
    JobError,
    JobEvent,
    JobPage,
    JobResult,
    ResultFile,
    WebhookEvent,
)
from ahv.client.webhooks import WebhookVerificationError, verify_webhook

__all__ = [
    "FINAL_STATUSES",
    "AhvClientError",
    "AsyncClient",
    "Client",
    "Job",
    "JobError",
    "JobEvent",
    "JobPage",
    "JobResult",
    "ResultFile",
    "WebhookEvent",
    "WebhookVerificationError",
    "verify_webhook",
]
