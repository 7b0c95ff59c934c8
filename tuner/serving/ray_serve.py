"""The champion on the Ray cluster: a Ray Serve application whose one deployment answers `POST /invocations` with
Ray Serve's own batching (`@serve.batch`) and follows its alias without a restart.

Each replica loads the registered model as an MLflow pyfunc (`image_model.CellImageModel`: the decoding,
preprocessing, P(ALL) and call of the logged model itself, nothing copied here) and pins the version the alias
names. Requests are read as MLflow's scoring server reads them (`http_body.py`) and decoded in the request's own
task, so a bad image refuses only its request; the decoded images of concurrent requests meet in one batch through
the network. The response is MLflow's `{"predictions": [...]}` plus `model_version`, the version that answered.

A new champion is picked up by polling: every `poll_s` seconds a replica asks the registry which version the alias
names and, when it moved, loads that version beside the old one and swaps them between batches. Polling, not a
reconfigure pushed by `promote`: promote talks to MLflow only (it may run where the cluster is out of reach), so
the registry stays the one place that says which model is the champion, and every replica finds out by itself
within `poll_s` (one small registry read per replica per period).
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import ray.serve as serve

from leukotune.tuner.serving.http_body import BadRequest, ImageRequest, predictions_body, read_request
from leukotune.tuner.serving.image_model import CellImageModel, UnusableImageModel

APP_NAME = "leukotune-champion"
DEPLOYMENT_NAME = "champion"
ROUTE_PREFIX = "/"
DEFAULT_PORT = 8000
DEFAULT_POLL_S = 30.0
MAX_BATCH_SIZE = 32  # images through the network at once
BATCH_WAIT_S = 0.01  # how long a lone request waits for others to join its batch
# Requests a replica holds at once: enough to fill a batch while another runs.
MAX_ONGOING_REQUESTS = 2 * MAX_BATCH_SIZE

logger = logging.getLogger("leukotune.serve")


@dataclass(frozen=True)
class ServeSettings:
    """What a replica needs: which model, which registry, how often to look at the alias."""

    model_uri: str
    tracking_uri: str
    poll_s: float = DEFAULT_POLL_S


@dataclass(frozen=True)
class ServedModel:
    """A loaded model and the registered version it is (None for a logged model, `models:/<model_id>`)."""

    version: str | None
    model: CellImageModel


def current_version(model_uri: str, tracking_uri: str) -> str | None:
    """The version `models:/NAME@alias` names now (or N of `models:/NAME/N`; None for a logged model)."""
    from mlflow.tracking import MlflowClient

    from leukotune.tuner.registry.model_uris import registered_parts

    parts = registered_parts(model_uri)
    if parts is None:
        return None
    name, alias, version = parts
    if alias is None:
        return version
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    return str(client.get_model_version_by_alias(name, alias).version)


def load_served(model_uri: str, tracking_uri: str, version: str | None) -> ServedModel:
    """The image model of `version` (pinned, so the alias moving during the download cannot mix two versions)."""
    import mlflow.pyfunc

    from leukotune.tuner.registry.model_uris import process_tracking_uri, registered_parts

    parts = registered_parts(model_uri)
    pinned = f"models:/{parts[0]}/{version}" if parts is not None and version is not None else model_uri
    with process_tracking_uri(tracking_uri):
        model = mlflow.pyfunc.load_model(pinned).unwrap_python_model()
    if not isinstance(model, CellImageModel):
        raise UnusableImageModel(f"{pinned} is not a leukotune image model ({type(model).__name__}); register one "
                                 f"with `leukotune promote`")
    return ServedModel(version, model)


@dataclass(frozen=True)
class _Decoded:
    """One request's images, decoded by the model that will score them (a swap between decoding and the batch must
    not feed one version's pixels to another)."""

    served: ServedModel
    pixels: Any
    tta: bool


@serve.deployment(name=DEPLOYMENT_NAME, max_ongoing_requests=MAX_ONGOING_REQUESTS,
                  ray_actor_options={"num_cpus": 1})
class ChampionDeployment:
    """`POST /invocations` (see the module docstring) and `GET /ping`."""

    # Ray Serve awaits an async constructor (the first model loads off the event loop); mypy knows no such thing.
    async def __init__(self, settings: ServeSettings) -> None:  # type: ignore[misc]
        from leukotune.tuner.process import configure_process

        configure_process("worker")
        self.settings = settings
        version = await asyncio.to_thread(current_version, settings.model_uri, settings.tracking_uri)
        self.served = await asyncio.to_thread(load_served, settings.model_uri, settings.tracking_uri, version)
        self._follower = None
        if "@" in settings.model_uri:
            self._follower = asyncio.get_running_loop().create_task(self._follow_alias())

    async def __call__(self, request: Any) -> Any:
        from starlette.responses import JSONResponse, PlainTextResponse

        path = request.url.path.rstrip("/")
        if path == "/ping" and request.method == "GET":
            return PlainTextResponse("\n")
        if path != "/invocations" or request.method != "POST":
            return JSONResponse({"message": f"no route {request.method} {request.url.path}: POST /invocations"},
                                status_code=404)
        try:
            asked = read_request(await request.body(), request.headers.get("content-type", ""),
                                 dict(request.query_params))
            decoded = await asyncio.to_thread(self._decode, asked)
        except BadRequest as exc:
            return JSONResponse({"error_code": "BAD_REQUEST", "message": str(exc)}, status_code=exc.status)
        rows = await self._score(decoded)
        return JSONResponse(predictions_body(rows, decoded.served.version))

    def _decode(self, asked: ImageRequest) -> _Decoded:
        from mlflow.exceptions import MlflowException

        served = self.served
        try:
            return _Decoded(served, served.model.decode(asked.files), asked.tta)
        except MlflowException as exc:  # image_model's refusal: an image it cannot read
            raise BadRequest(exc.message) from None

    @serve.batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=BATCH_WAIT_S)
    async def _score(self, requests: list[_Decoded]) -> list[list[dict[str, Any]]]:
        """One pass through the network per (model, tta) group of the batch; each request gets its own rows."""
        return await asyncio.to_thread(score_batch, requests)

    async def _follow_alias(self) -> None:
        settings = self.settings
        while True:
            await asyncio.sleep(settings.poll_s)
            try:
                version = await asyncio.to_thread(current_version, settings.model_uri, settings.tracking_uri)
                if version != self.served.version:
                    self.served = await asyncio.to_thread(load_served, settings.model_uri, settings.tracking_uri,
                                                          version)
                    logger.warning("%s now serves version %s", settings.model_uri, version)
            except Exception as exc:  # noqa: BLE001 - the registry may be down for a while: keep the loaded model
                logger.warning("could not follow %s (keeping version %s): %s", settings.model_uri,
                               self.served.version, exc)


def score_batch(requests: list[_Decoded]) -> list[list[dict[str, Any]]]:
    """The rows of each request, in order: the requests sharing a model and tta go through it as one array."""
    import numpy as np

    answers: list[list[dict[str, Any]]] = [[] for _ in requests]
    groups: dict[tuple[int, bool], list[int]] = {}
    for index, item in enumerate(requests):
        groups.setdefault((id(item.served), item.tta), []).append(index)
    for indices in groups.values():
        first = requests[indices[0]]
        frame = first.served.model.answer(np.concatenate([requests[i].pixels for i in indices]), tta=first.tta)
        rows = frame.to_dict(orient="records")
        offset = 0
        for i in indices:
            count = len(requests[i].pixels)
            answers[i] = rows[offset:offset + count]
            offset += count
    return answers


def build_app(settings: ServeSettings, replicas: int = 1) -> Any:
    # @serve.deployment made the class a Deployment, which mypy cannot see.
    return ChampionDeployment.options(num_replicas=replicas).bind(settings)  # type: ignore[attr-defined]
