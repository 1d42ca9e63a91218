"""Start the Feast transformer: ``python -m serving.transformer_main [kserve flags]``.

KServe starts a transformer container with its own arguments appended to the ones the
InferenceService declares (kserve v0.20 ``CustomTransformer.GetContainer``): ``--model_name
<isvc name>``, ``--predictor_host <isvc>-predictor.<namespace>`` and ``--http_port 8080`` unless
given, and ``--workers <containerConcurrency>`` when the transformer sets one. The online store is
the Feast repository ``mlstack.features.repo.open_store`` opens: the embedded default, or the
config file ``MLSTACK_FEAST_CONFIG`` names (the cluster's Redis). Locally ``mlstack serve
--transformer-port`` runs this with ``--host 127.0.0.1`` in front of its predictor.
"""

from __future__ import annotations

import argparse
from typing import Any

from mlstack.errors import exit_on_error
from mlstack.settings import DEFAULTS


def build_parser() -> argparse.ArgumentParser:
    from kserve import model_server

    parser = argparse.ArgumentParser(
        prog="python -m serving.transformer_main",
        parents=[model_server.parser],
        description=__doc__,
    )
    parser.add_argument("--host", default="0.0.0.0", help="REST bind address (0.0.0.0 in a pod)")
    parser.add_argument("--max_batch_size", type=int, default=256, help="ids per request")
    parser.set_defaults(model_name=DEFAULTS.model_name)
    return parser


def serve(model: Any, host: str) -> None:
    """KServe's model server for the transformer on ``host``, with the predictor's surface
    (``serving/surface.py``: no model-repository extension, no explain, readiness = answering)
    and the transformer's own refusals (``TransformerError``: 404 for unknown ids, the
    predictor's 4xx passed on)."""
    from kserve import model_server

    from serving import surface
    from serving.transformer import TransformerError, error_response

    class Bound(surface.SurfaceRESTServer):
        def _add_exception_handlers(self, app: Any) -> None:
            super()._add_exception_handlers(app)
            app.add_exception_handler(TransformerError, error_response)

    Bound.host = host
    model_server.RESTServer = Bound  # type: ignore[misc]
    server = model_server.ModelServer()
    server.dataplane = surface.ServingDataPlane(server.registered_models, [model.name])
    server.model_repository_extension = surface.SealedRepository(server.registered_models)
    server.start([model])


def main() -> None:
    args, _ = build_parser().parse_known_args()
    if args.workers != 1:
        raise SystemExit("error: --workers must be 1 (run more replicas instead)")
    if not args.predictor_host:
        raise SystemExit("error: --predictor_host is required (KServe passes it in a pod)")
    if args.predictor_protocol == "grpc-v2" or args.protocol == "grpc-v2":
        raise SystemExit("error: the transformer forwards over REST (v1 or v2), not grpc-v2")
    with exit_on_error():
        from mlstack.features.repo import feature_refs, open_store
        from serving.transformer import FeastTransformer

        model = FeastTransformer(
            args.model_name, open_store(), feature_refs(), max_batch_size=args.max_batch_size
        )
        # an online store that does not answer: one error line, exit 1, no server
        model.load()
        serve(model, args.host)


if __name__ == "__main__":
    main()
