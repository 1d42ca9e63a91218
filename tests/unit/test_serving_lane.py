"""The inference lane (serving.lane) takes the inference routes' paths and nothing else."""

import pytest


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/v2/models/churn/infer", ("v2", {"model_name": "churn"})),
        (
            "/v2/models/churn/versions/3/infer",
            ("v2", {"model_name": "churn", "model_version": "3"}),
        ),
        ("/v1/models/churn:predict", ("v1", {"model_name": "churn"})),
        ("/v1/models/a:b:predict", ("v1", {"model_name": "a:b"})),
        ("/v2/models//infer", None),
        ("/v2/models/churn/versions//infer", None),
        ("/v1/models/:predict", None),
        ("/v2/models/churn/infer/", None),
        ("/v2/models/churn/ready", None),
        ("/v1/models/churn:explain", None),
        ("/v1/models/churn", None),
        ("/v2/models/a/b/infer", None),
        ("/x/v2/models/churn/infer", None),
    ],
)
def test_the_inference_lane_takes_exactly_the_inference_routes_paths(path, route):
    """serving.lane.route_of matches what the router's ``{model_name}`` (``[^/]+``) matches."""
    from starlette.routing import compile_path

    from serving.lane import route_of

    assert route_of(path) == route
    templates = {
        "/v2/models/{model_name}/infer",
        "/v2/models/{model_name}/versions/{model_version}/infer",
        "/v1/models/{model_name}:predict",
    }
    matched = [m.groupdict() for t in templates if (m := compile_path(t)[0].match(path))]
    assert matched == ([] if route is None else [route[1]])
