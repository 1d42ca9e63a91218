"""What the predictor exposes: the routes clients need, and readiness that means "answers".

KServe 0.21's REST server, as it comes, also mounts the model-repository extension
(``POST /v2/repository/models/{name}/load|unload``) for any client, answers 501 on every
versioned V2 route, and says the server is ready whatever its models do. Here:

- the repository extension's routes and V1 ``:explain`` (no explainer) are not mounted; the
  extension handed to KServe refuses load and unload (what a gRPC client would reach);
- ``/v2/models/{name}/versions/{version}[/ready|/infer]`` answer as the unversioned routes for the
  version being served and 404 naming it for any other (so does KServe's ``?model_version=``);
- ``/v2/health/ready`` is ready only while every served model is registered and answers a probe
  prediction; ``/v2/models/{name}/ready`` and ``/v1/models/{name}`` run the same probe;
- the inference routes (V2 ``infer``, V1 ``:predict``) come first among the app's routes, and the
  inference lane (``serving.lane``) in front of the app answers them with their own handler.
"""

from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.routing import APIRoute, APIRouter
from kserve import model_server
from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER
from kserve.errors import ModelNotFound, ModelNotReady
from kserve.model import BaseKServeModel
from kserve.model_repository import ModelRepository
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput
from kserve.protocol.model_repository_extension import ModelRepositoryExtension
from kserve.protocol.rest.server import RESTServer
from kserve.protocol.rest.v1_endpoints import V1Endpoints
from kserve.protocol.rest.v2_datamodels import (
    InferenceRequest,
    InferenceResponse,
    ModelMetadataResponse,
    ModelReadyResponse,
)
from kserve.protocol.rest.v2_endpoints import V2Endpoints
from timing_asgi import TimingMiddleware

from serving import lane

MODEL = "/v2/models/{model_name}"
V1_PREDICT = "/v1/models/{model_name}:predict"
VERSIONED = f"{MODEL}/versions/{{model_version}}"
# mounted by KServe, not by this predictor: model lifecycle is the InferenceService's, and the
# model routes are replaced by ones that know the served version
UNMOUNTED = frozenset(
    {
        "/v2/repository/models/{model_name}/load",
        "/v2/repository/models/{model_name}/unload",
        "/v1/models/{model_name}:explain",
        V1_PREDICT,  # mounted again here, in front (``mount_model_routes``)
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

    async def get_model(self, name: str) -> BaseKServeModel:
        """The registered model for an inference. KServe's runs the model's health check first
        (for ChurnModel the readiness probe: a second prediction on every request) and reloads
        the model when that fails; here a loaded model serves as it is, and only one not loaded
        yet is loaded. A model that stops answering fails its requests and its readiness probe
        (``/v2/health/ready``), which takes the pod out of service."""
        model = self.model_registry.get_model(name)
        if model is None:
            raise ModelNotFound(name)
        if not model.ready:
            model.load()
        return model

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


_REQUEST_KEYS = frozenset({"id", "parameters", "inputs", "outputs"})
_INPUT_KEYS = frozenset({"name", "shape", "datatype", "parameters", "data"})
_OUTPUT_KEYS = frozenset({"name", "parameters"})
_PARAMETER_TYPES = frozenset({str, int, float, bool})  # KServe's InferParameter
_TENSOR_KEYS = ("name", "shape", "datatype", "parameters", "data")
_BINARY_HEADER = INFERENCE_CONTENT_LENGTH_HEADER.lower().encode()  # binary tensors follow
_ORJSON = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY  # FastAPI's ORJSONResponse


def _plain_parameters(value: Any) -> bool:
    return value is None or (
        type(value) is dict and all(type(v) in _PARAMETER_TYPES for v in value.values())
    )


def plain_infer_request(body: bytes, model_name: str) -> InferRequest | None:
    """The V2 request in ``body`` when it is a JSON object that KServe's ``InferenceRequest``
    model takes as it is: only its fields, each of the JSON type it declares (nothing to coerce),
    no FP16 data. None for anything else, which then takes KServe's way (its pydantic model, its
    422 or 400): a request answered here is one KServe would have accepted unchanged."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if type(doc) is not dict or not doc.keys() <= _REQUEST_KEYS:
        return None
    request_id, parameters = doc.get("id"), doc.get("parameters")
    inputs, outputs = doc.get("inputs"), doc.get("outputs")
    if not (request_id is None or type(request_id) is str) or not _plain_parameters(parameters):
        return None
    if type(inputs) is not list or not (outputs is None or type(outputs) is list):
        return None
    infer_inputs = []
    for tensor in inputs:
        if type(tensor) is not dict or not tensor.keys() <= _INPUT_KEYS:
            return None
        name, shape, datatype = tensor.get("name"), tensor.get("shape"), tensor.get("datatype")
        data, params = tensor.get("data"), tensor.get("parameters")
        if type(name) is not str or type(datatype) is not str or type(data) is not list:
            return None
        if type(shape) is not list or not all(type(d) is int for d in shape):
            return None
        if not _plain_parameters(params) or (datatype == "FP16" and data):
            return None  # KServe refuses FP16 data in JSON, with its own message
        infer_inputs.append(
            InferInput(name, shape, datatype, data, {} if params is None else params)
        )
    requested = []
    for output in outputs or ():
        if type(output) is not dict or not output.keys() <= _OUTPUT_KEYS:
            return None
        name, params = output.get("name"), output.get("parameters")
        if type(name) is not str or not _plain_parameters(params):
            return None
        requested.append(RequestedOutput(name, {} if params is None else params))
    return InferRequest(
        model_name=model_name,
        infer_inputs=infer_inputs,
        request_id=request_id,
        parameters=parameters,
        request_outputs=requested or None,
    )


def _plain_tensor(output: Any) -> bool:
    return (
        type(output) is dict
        and output.keys() <= set(_TENSOR_KEYS)
        and type(output.get("name")) is str
        and type(output.get("datatype")) is str
        and type(output.get("data")) is list
        and type(output.get("shape")) is list
        and all(type(d) is int for d in output["shape"])
        and _plain_parameters(output.get("parameters"))
    )


def response_body(response: Any) -> bytes:
    """The JSON bytes of a V2 response as KServe's route makes them (``InferenceResponse``, its
    fields in order, then FastAPI's ORJSONResponse), written directly when every field already
    has its declared type (what ``ChurnModel`` returns), through the pydantic model otherwise."""
    if (
        type(response) is dict
        and response.keys() <= {"model_name", "model_version", "id", "parameters", "outputs"}
        and type(response.get("model_name")) is str
        and type(response.get("model_version")) in (str, type(None))
        and type(response.get("id")) is str
        and _plain_parameters(response.get("parameters"))
        and type(response.get("outputs")) is list
        and all(map(_plain_tensor, response["outputs"]))
    ):
        body = {
            "model_name": response["model_name"],
            "model_version": response.get("model_version"),
            "id": response["id"],
            "parameters": response.get("parameters"),
            "outputs": [{k: o.get(k) for k in _TENSOR_KEYS} for o in response["outputs"]],
        }
    else:
        body = jsonable_encoder(InferenceResponse.model_validate(response))
    return orjson.dumps(body, option=_ORJSON)


class RaisingRoute(APIRoute):
    """A route that raises the exception the inference lane hands over with a request
    (``serving.lane``), where its handler would have raised it."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def raising(request: Request) -> Response:
            raised = request.scope.pop(lane.RAISED, None)
            if raised is not None:
                raise raised
            return await handler(request)

        return raising


def _plain_route(
    dataplane: DataPlane, check: Any
) -> tuple[type[APIRoute], Callable[[Request], Coroutine[Any, Any, Response | None]]]:
    """The route class of V2 inference: a plain JSON request (``plain_infer_request``) is
    decoded with orjson and answered with ``response_body``, through the same data plane call as
    KServe's route (the model's ``__call__``: its latency histograms, including for a request the
    model refuses); any other request goes to the endpoint as FastAPI validates it. With it, its
    plain handler (None for a request it leaves to the validated endpoint), which the inference
    lane calls too."""

    class PlainInferRoute(RaisingRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            validated = super().get_route_handler()

            async def handler(request: Request) -> Response:
                if lane.RAISED in request.scope:
                    return await validated(request)  # which raises it
                answer = await plain_infer(request)
                return answer if answer is not None else await validated(request)

            return handler

    async def plain_infer(request: Request) -> Response | None:
        scope = request.scope
        if scope["query_string"]:  # KServe's ?model_version=: its route checks it
            return None
        # the raw header list (lower-case names), not Starlette's Headers, for the checks
        raw = scope["headers"]
        if [value for key, value in raw if key == b"content-type"] != [b"application/json"]:
            return None
        if any(key == _BINARY_HEADER or key.startswith(b"ce-") for key, _ in raw):
            return None  # binary tensors, a CloudEvent
        headers = request.headers
        model_name = request.path_params["model_name"]
        infer_request = plain_infer_request(await request.body(), model_name)
        if infer_request is None:
            return None
        check(model_name, request.path_params.get("model_version"))
        if not await dataplane.model_ready(model_name, True):
            raise ModelNotReady(model_name)
        request_headers = dict(headers)
        response, response_headers = await dataplane.infer(
            model_name=model_name, request=infer_request, headers=request_headers
        )
        response, encoded_headers = dataplane.encode(
            model_name=model_name, response=response, headers=request_headers, req_attributes={}
        )
        response_headers.update(encoded_headers)
        response_headers.pop("content-length", None)
        response_headers.pop("content-type", None)
        if isinstance(response, bytes):
            return Response(response, headers=response_headers)
        return Response(
            response_body(response), media_type="application/json", headers=response_headers
        )

    return PlainInferRoute, plain_infer


def mount_model_routes(app: FastAPI, dataplane: DataPlane) -> lane.Answer:
    """V2 model metadata, readiness and inference, unversioned and versioned: a version, in the
    path or as KServe's ``model_version`` query parameter, must be the served one; and KServe's
    V1 inference endpoint. The inference routes take what the inference lane hands over
    (``RaisingRoute``); returned: their handler, for the lane."""
    v2 = V2Endpoints(dataplane)
    v1 = V1Endpoints(dataplane)

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

    plain, plain_infer = _plain_route(dataplane, check)
    for prefix in (MODEL, VERSIONED):
        for path, endpoint, response_model, method in (
            (prefix, metadata, ModelMetadataResponse, "GET"),
            (f"{prefix}/ready", ready, ModelReadyResponse, "GET"),
        ):
            app.add_api_route(
                path, endpoint, response_model=response_model, methods=[method], tags=["V2"]
            )
        app.router.add_api_route(
            f"{prefix}/infer",
            infer,
            response_model=None,
            methods=["POST"],
            tags=["V2"],
            route_class_override=plain,
        )
    app.router.add_api_route(
        V1_PREDICT,
        v1.predict,
        response_model=None,
        methods=["POST"],
        tags=["V1"],
        route_class_override=RaisingRoute,
    )

    async def answer(protocol: str, request: Request) -> Response | None:
        """What the inference route of ``protocol`` answers (None: left to KServe's app)."""
        if protocol == "v1":
            response = await v1.predict(request.path_params["model_name"], request)
            return response if isinstance(response, Response) else None
        return await plain_infer(request)

    return answer


class CachedRouteNames:
    """The metric namer of KServe's ``TimingMiddleware`` (the ``kserve.trace`` timing line of
    every request) with its names kept: KServe's (``StarletteScopeToName``) matches each request
    against every route a second time, before routing, and the name depends only on the method
    and the path. The names of the first ``limit`` distinct ones are kept (clients choose paths)."""

    def __init__(self, namer: Callable[[dict], str], limit: int = 256):
        self.namer = namer
        self.limit = limit
        self.names: dict[tuple[Any, Any, Any], str] = {}

    def __call__(self, scope: dict) -> str:
        key = (scope.get("method"), scope.get("root_path"), scope.get("path"))
        name = self.names.get(key)
        if name is None:
            name = self.namer(scope)
            if len(self.names) < self.limit:
                self.names[key] = name
        return name


class SurfaceRESTServer(RESTServer):
    """KServe's REST server bound to ``host``, with the surface described above."""

    host = "0.0.0.0"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.config.host = self.host  # KServe's own always binds 0.0.0.0
        self.answer: lane.Answer | None = None  # the inference routes' handler, once mounted
        self.lane: lane.InferenceLane | None = None

    def _add_middlewares(self, app: FastAPI) -> None:
        super()._add_middlewares(app)
        for middleware in app.user_middleware:
            namer = middleware.kwargs.get("metric_namer")
            if middleware.cls is TimingMiddleware and namer is not None:
                middleware.kwargs["metric_namer"] = CachedRouteNames(namer)

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
        self.answer = mount_model_routes(app, self.dataplane)
        # inference first: Starlette tries the routes in order (no other route matches these)
        infer = [r for r in app.router.routes if isinstance(r, RaisingRoute)]
        app.router.routes[:] = [*infer, *(r for r in app.router.routes if r not in infer)]

    def create_application(self) -> None:
        """KServe's app, behind the inference lane (``serving.lane``): what uvicorn serves."""
        super().create_application()
        assert self.answer is not None
        app = model_server.app  # what KServe's create_application built on
        self.config.app = self.lane = lane.InferenceLane(app, self.answer)


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
