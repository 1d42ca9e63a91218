"""What the predictor exposes: the routes clients need, and readiness that means "answers".

KServe 0.21's REST server, as it comes, also mounts the model-repository extension
(``POST /v2/repository/models/{name}/load|unload``) for any client, answers 501 on every
versioned V2 route, and says the server is ready whatever its models do. Here:

- the repository extension's routes and V1 ``:explain`` (no explainer) are not mounted; the
  extension handed to KServe refuses load and unload (what a gRPC client would reach);
- ``/v2/models/{name}/versions/{version}[/ready|/infer]`` answer as the unversioned routes for the
  version being served and 404 naming it for any other (so does KServe's ``?model_version=``);
- ``/v2/health/ready`` is ready only while every served model is registered and answers a probe
  prediction; ``/v2/models/{name}/ready`` and ``/v1/models/{name}`` run the same probe.
"""

from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.routing import APIRoute, APIRouter
from kserve import model_server
from kserve.errors import ModelNotFound
from kserve.model_repository import ModelRepository
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.model_repository_extension import ModelRepositoryExtension
from kserve.protocol.rest.server import RESTServer
from kserve.protocol.rest.v2_datamodels import (
    InferenceRequest,
    InferenceResponse,
    ModelMetadataResponse,
    ModelReadyResponse,
)
from kserve.protocol.rest.v2_endpoints import V2Endpoints

MODEL = "/v2/models/{model_name}"
VERSIONED = f"{MODEL}/versions/{{model_version}}"
# mounted by KServe, not by this predictor: model lifecycle is the InferenceService's, and the
# model routes are replaced by ones that know the served version
UNMOUNTED = frozenset(
    {
        "/v2/repository/models/{model_name}/load",
        "/v2/repository/models/{model_name}/unload",
        "/v1/models/{model_name}:explain",
        *(
            f"{prefix}{route}"
            for prefix in (MODEL, VERSIONED)
            for route in ("", "/ready", "/infer")
        ),
    }
)


class VersionNotFound(ModelNotFound):
    """A versioned route named a version this server does not serve (KServe answers 404)."""

    def __init__(self, model_name: str, asked: str, served: str):
        super().__init__(model_name)
        self.reason = (
            f"Model {model_name} has no version {asked!r} here: this server serves version "
            f"{served!r} (or use /v2/models/{model_name}/...)"
        )


class SealedRepository(ModelRepositoryExtension):
    """The repository extension KServe hands its servers, with load and unload refused: what
    serves is decided by the InferenceService (``storageUri``), never by a request."""

    async def load(self, model_name: str) -> None:
        raise NotImplementedError(f"loading models is not offered here ({model_name})")

    async def unload(self, model_name: str) -> None:
        raise NotImplementedError(f"unloading models is not offered here ({model_name})")


class ServingDataPlane(DataPlane):
    """KServe's data plane, with readiness that follows the served models."""

    def __init__(self, model_registry: ModelRepository, served: list[str]):
        super().__init__(model_registry=model_registry)
        self.served = list(served)

    def metadata(self) -> dict:
        return {**super().metadata(), "extensions": []}

    async def ready(self) -> bool:
        """Every served model is registered and healthy (for ChurnModel: answers a probe)."""
        return bool(self.served) and all(
            [await self.model_registry.is_model_ready(name) for name in self.served]
        )

    async def model_ready(
        self, model_name: str, disable_predictor_health_check: bool = False
    ) -> bool:
        if disable_predictor_health_check:
            # the check in front of each prediction: the request itself exercises the model, a
            # probe there would cost every request a second prediction
            model = self.model_registry.get_model(model_name)
            if model is None:
                raise ModelNotFound(model_name)
            return bool(model.ready)
        return bool(await super().model_ready(model_name))

    async def model_metadata(self, model_name: str) -> dict:
        meta = await super().model_metadata(model_name)
        version = served_version(self, model_name)
        return {**meta, "versions": [version]} if version else meta


def served_version(dataplane: DataPlane, model_name: str) -> str:
    """The version the registered model ``model_name`` serves ("" when it names none)."""
    model = dataplane.model_registry.get_model(model_name)
    if model is None:
        raise ModelNotFound(model_name)
    return str(getattr(model, "model_version", "") or "")


def mount_model_routes(app: FastAPI, dataplane: DataPlane) -> None:
    """V2 model metadata, readiness and inference, unversioned and versioned: a version, in the
    path or as KServe's ``model_version`` query parameter, must be the served one."""
    v2 = V2Endpoints(dataplane)

    def check(model_name: str, model_version: str | None) -> None:
        if model_version is None:
            return
        served = served_version(dataplane, model_name)
        if model_version != served:
            raise VersionNotFound(model_name, model_version, served)

    async def metadata(model_name: str, model_version: str | None = None) -> ModelMetadataResponse:
        check(model_name, model_version)
        return await v2.model_metadata(model_name)

    async def ready(model_name: str, model_version: str | None = None) -> ModelReadyResponse:
        check(model_name, model_version)
        return await v2.model_ready(model_name)

    async def infer(
        raw_request: Request,
        raw_response: Response,
        model_name: str,
        request_body: InferenceRequest | bytes,
        model_version: str | None = None,
    ) -> InferenceResponse | Response:
        check(model_name, model_version)
        return await v2.infer(raw_request, raw_response, model_name, request_body)

    for prefix in (MODEL, VERSIONED):
        for path, endpoint, response_model, method in (
            (prefix, metadata, ModelMetadataResponse, "GET"),
            (f"{prefix}/ready", ready, ModelReadyResponse, "GET"),
            (f"{prefix}/infer", infer, None, "POST"),
        ):
            app.add_api_route(
                path, endpoint, response_model=response_model, methods=[method], tags=["V2"]
            )


class SurfaceRESTServer(RESTServer):
    """KServe's REST server bound to ``host``, with the surface described above."""

    host = "0.0.0.0"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.config.host = self.host  # KServe's own always binds 0.0.0.0

    def _register_endpoints(self, app: FastAPI) -> None:
        # KServe builds one APIRouter per protocol and includes it in the app: each is cut down
        # to the routes this predictor mounts before it is included
        include = app.include_router

        def include_mounted(router: APIRouter, *args: Any, **kwargs: Any) -> None:
            router.routes[:] = [
                route
                for route in router.routes
                if not (isinstance(route, APIRoute) and route.path in UNMOUNTED)
            ]
            include(router, *args, **kwargs)

        app.include_router = include_mounted  # type: ignore[method-assign]
        try:
            super()._register_endpoints(app)
        finally:
            del app.include_router
        mount_model_routes(app, self.dataplane)


def serve(models: list[Any], host: str) -> None:
    """Start KServe's model server for ``models`` (loaded) on ``host`` with this surface."""

    class Bound(SurfaceRESTServer):
        pass

    Bound.host = host
    model_server.RESTServer = Bound  # type: ignore[misc]
    server = model_server.ModelServer()
    server.dataplane = ServingDataPlane(server.registered_models, [m.name for m in models])
    server.model_repository_extension = SealedRepository(server.registered_models)
    server.start(models)
