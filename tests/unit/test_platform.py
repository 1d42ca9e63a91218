"""manifests/platform and the app-of-apps (argocd/platform): rendered, walked strictly, and the
facts they share with the rest of the stack checked against their one source."""

import functools
import json
import re
from pathlib import Path

import pytest
import yaml

from mlstack.settings import DEFAULTS, code_root, load_settings
from tests.support.k8s_schema import manifest_errors
from tests.support.kube import render
from tests.unit.test_manifests import checkov, kubernetes_validate
from tests.unit.test_workflows import commands

ROOT = code_root()


@functools.cache
def rendered(path: str) -> list[dict]:
    """A kustomization under the repository root, rendered once per session (never at import)."""
    return render(ROOT / path)


def base() -> list[dict]:
    return rendered("manifests/platform/base")


def dev() -> list[dict]:
    return rendered("manifests/platform/dev")


def apps() -> list[dict]:
    return rendered("argocd/platform")


def every() -> dict[str, list[dict]]:
    return {
        "dev": dev(),
        "staging": rendered("manifests/overlays/staging"),
        "production": rendered("manifests/overlays/production"),
        "monitoring": rendered("manifests/monitoring"),
    }


CORE_GROUPS = ("v1", "apps/v1", "batch/v1", "rbac.authorization.k8s.io/v1", "networking.k8s.io/v1")


def named(docs: list[dict], kind: str, name: str, namespace: str | None = None) -> dict:
    [doc] = [
        d
        for d in docs
        if d["kind"] == kind
        and d["metadata"]["name"] == name
        and (namespace is None or d["metadata"].get("namespace") == namespace)
    ]
    return doc


# every document's strict walk: test_manifests.SOURCES (which lists these kustomizations)
# argocd/platform renders no core kinds: only the kustomizations that have some are validated
@pytest.mark.parametrize("path", ["manifests/platform/base", "manifests/platform/dev"])
def test_core_kinds_pass_kubernetes_validate(path, tmp_path):
    core = [d for d in rendered(path) if d["apiVersion"] in CORE_GROUPS]
    assert core
    done = kubernetes_validate(tmp_path, core)
    assert done.returncode == 0, done.stdout + done.stderr


def test_no_secret_is_in_git_and_every_secret_read_comes_from_an_external_secret():
    made = {
        (d["metadata"]["namespace"], d["spec"]["target"]["name"])
        for docs in every().values()
        for d in docs
        if d["kind"] == "ExternalSecret"
    }
    read = set()
    for docs in every().values():
        assert not [d for d in docs if d["kind"] == "Secret"]
        for doc in docs:
            ns = doc["metadata"].get("namespace")
            text = yaml.safe_dump(doc)
            read |= {(ns, n) for n in re.findall(r"secretName: ([\w-]+)", text)}
            for ref in re.findall(r"secretKeyRef:\n\s+key: \S+\n\s+name: ([\w-]+)", text):
                read.add((ns, ref))
            if doc["kind"] == "ServiceAccount":
                read |= {(ns, s["name"]) for s in doc.get("secrets", [])}
    read |= {("ml-training", "dvc-remote-s3")}  # the Katib trial Job's (katib/experiment.yaml)
    assert read and read <= made, read - made


def test_model_store_credentials_carry_kserves_s3_annotations():
    for docs, endpoint, https in ((base(), "s3.amazonaws.com", "1"),
                                  (dev(), "minio.mlops.svc.cluster.local:9000", "0")):  # fmt: skip
        for env in ("ml-staging", "ml-production"):
            spec = named(docs, "ExternalSecret", "model-store-credentials", env)["spec"]
            notes = spec["target"]["template"]["metadata"]["annotations"]
            assert notes["serving.kserve.io/s3-endpoint"] == endpoint
            assert notes["serving.kserve.io/s3-usehttps"] == https
            assert {d["secretKey"] for d in spec["data"]} == {
                "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY",
            }


def test_pipeline_runner_is_the_settings_identity_with_least_privilege():
    account = load_settings().kfp_service_account
    named(base(), "ServiceAccount", account, "kubeflow")
    rules = {
        (d["kind"], d["metadata"]["name"]): d["rules"]
        for d in base()
        if d["kind"] in ("Role", "ClusterRole")
    }
    for rule in (r for rs in rules.values() for r in rs):
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
        if "secrets" in rule["resources"]:
            assert rule["resourceNames"] and set(rule["verbs"]) == {"get"}, rule
    [katib] = [r for r in rules[("Role", "mlstack-katib-experiments")]
               if r["resources"] == ["experiments"]]  # fmt: skip
    assert set(katib["verbs"]) == {"create", "get", "list", "watch", "delete"}
    [isvc] = rules[("ClusterRole", "mlstack-inferenceservice-reader")]
    assert set(isvc["verbs"]) == {"get", "list", "watch"}
    bindings = [d for d in base() if d["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    assert not [d for d in bindings if d["kind"] == "ClusterRoleBinding"]  # all namespaced
    assert {d["metadata"]["namespace"] for d in bindings} == {
        "kubeflow", "ml-training", "ml-staging", "ml-production"
    }  # fmt: skip
    for binding in bindings:
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": account, "namespace": "kubeflow"}
        ]


def test_mlflow_server_postgres_s3_allowed_hosts_and_the_url_its_clients_use():
    deployment = named(dev(), "Deployment", "mlflow", "mlops")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    args = dict(a.removeprefix("--").split("=", 1) for a in container["args"] if "=" in a)
    assert args["backend-store-uri"] == "$(MLFLOW_BACKEND_STORE_URI)"
    assert "--serve-artifacts" in container["args"]
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-backend"
    assert env["MLFLOW_ARTIFACTS_DESTINATION"]["value"].startswith("s3://")
    assert env["MLFLOW_S3_ENDPOINT_URL"]["value"] == "http://minio.mlops.svc.cluster.local:9000"
    service = named(dev(), "Service", "mlflow", "mlops")
    port = service["spec"]["ports"][0]["port"]
    url = f"http://mlflow.mlops.svc.cluster.local:{port}"
    assert f"mlflow.mlops.svc.cluster.local:{port}" in args["allowed-hosts"].split(",")
    # what the in-cluster clients are configured with is that Service
    experiment = yaml.safe_load(DEFAULTS.katib_experiment.read_text())
    trial = experiment["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]
    trial_env = {e["name"]: e.get("value") for e in trial["containers"][0]["env"]}
    assert trial_env["MLFLOW_TRACKING_URI"] == url
    assert "mlflow-artifacts" in env["MLFLOW_ARTIFACTS_DESTINATION"]["value"]
    buckets = named(dev(), "Job", "minio-buckets", "mlops")
    script = buckets["spec"]["template"]["spec"]["containers"][0]["args"][0]
    data_bucket = re.search(r"url = s3://([\w-]+)/", (ROOT / ".dvc" / "config").read_text())[1]
    assert '"mlflow-artifacts"' in script and f'"{data_bucket}"' in script


# --- the app-of-apps -------------------------------------------------------------------------


def applications() -> list[dict]:
    return [d for d in apps() if d["kind"] == "Application"]


THIS_REPO = "https://github.com/mlstack/mlstack.git"


def sources(app: dict) -> list[dict]:
    return app["spec"].get("sources") or [app["spec"]["source"]]


def test_app_of_apps_installs_the_platform_at_pinned_versions():
    names = {a["metadata"]["name"] for a in applications()}
    assert {"kfp", "kserve", "kserve-crd", "katib", "kube-prometheus-stack", "cert-manager",
            "external-secrets", "knative-serving", "mlstack-platform", "mlstack-argocd"} <= names  # fmt: skip
    for app in applications():
        for source in sources(app):
            rev = source["targetRevision"]
            if source["repoURL"] == THIS_REPO:
                assert rev == "main", app["metadata"]["name"]
            else:  # an upstream release: a version, never a branch
                assert re.fullmatch(r"v?\d+\.\d+\.\d+", rev), (app["metadata"]["name"], rev)
    project = named(apps(), "AppProject", "platform")["spec"]
    for app in applications():
        assert app["spec"]["project"] == "platform"
        for source in sources(app):
            url = source["repoURL"]
            assert any(re.fullmatch(re.escape(p).replace(r"\*", ".*"), url)
                       for p in project["sourceRepos"]), url  # fmt: skip
    root = yaml.safe_load((ROOT / "argocd" / "root.yaml").read_text())
    assert root["spec"]["source"]["path"] == "argocd/platform" and manifest_errors(root) == []
    install = yaml.safe_load((ROOT / "argocd" / "install" / "kustomization.yaml").read_text())
    assert re.search(r"/argo-cd/v\d+\.\d+\.\d+/manifests/install\.yaml$", install["resources"][0])


def test_sync_waves_put_crds_and_operators_before_what_uses_them():
    wave = {
        a["metadata"]["name"]: int(a["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"])
        for a in applications()
    }
    for before, after in [("kserve-crd", "kserve"), ("cert-manager", "kserve"),
                          ("knative-serving", "kserve"), ("kfp-cluster-scoped", "kfp"),
                          ("external-secrets", "mlstack-platform"), ("kserve", "mlstack-argocd"),
                          ("kube-prometheus-stack", "mlstack-argocd"), ("katib", "mlstack-platform")]:  # fmt: skip
        assert wave[before] < wave[after], (before, after)
    # waves wait for health only if Argo CD knows an Application's health: the Argo CD install
    # itself (before any wave) merges that check into argocd-cm
    install = yaml.safe_load((ROOT / "argocd/install/kustomization.yaml").read_text())
    [cm] = install["configMapGenerator"]
    assert cm["name"] == "argocd-cm" and cm["behavior"] == "merge"
    key, _, file = cm["files"][0].partition("=")
    assert key == "resource.customizations.health.argoproj.io_Application"
    assert (ROOT / "argocd/install" / file).is_file()
    project = named(apps(), "AppProject", "platform")
    assert int(project["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"]) < min(
        wave.values()
    )


def application_health(health: dict | None, sync: str = "Synced") -> str:
    from lupa import LuaRuntime

    lua = LuaRuntime(unpack_returned_tuples=True)
    script = (ROOT / "argocd" / "install" / "application-health.lua").read_text()
    if health is None:
        obj = lua.table_from({})
    else:
        status = {"health": lua.table_from(health), "sync": lua.table_from({"status": sync})}
        obj = lua.table_from({"status": lua.table_from(status)})
    return lua.execute(f"local obj = ...\n{script}", obj)["status"]


def test_application_health_is_the_childs_own_once_synced():
    assert application_health(None) == "Progressing"
    assert application_health({"status": "Healthy"}) == "Healthy"
    assert application_health({"status": "Healthy"}, sync="OutOfSync") == "Progressing"
    assert application_health({"status": "Degraded", "message": "x"}) == "Degraded"


def test_knative_is_one_pinned_release_with_kourier():
    k = yaml.safe_load((ROOT / "manifests/platform/knative/kustomization.yaml").read_text())
    versions = {re.search(r"/download/(knative-v[\d.]+)/", url)[1] for url in k["resources"]}
    assert len(versions) == 1 and any("kourier" in url for url in k["resources"])
    assert "kourier.ingress.networking.knative.dev" in k["patches"][0]["patch"]


def test_kube_prometheus_stack_values_select_the_stacks_monitors_rules_and_dashboards():
    values = yaml.safe_load(
        (ROOT / "manifests/platform/kube-prometheus-stack/values.yaml").read_text()
    )
    spec = values["prometheus"]["prometheusSpec"]
    assert spec["podMonitorSelectorNilUsesHelmValues"] is False
    assert spec["ruleSelectorNilUsesHelmValues"] is False
    dashboards = named(every()["monitoring"], "ConfigMap", "grafana-dashboards-churn")
    label = values["grafana"]["sidecar"]["dashboards"]["label"]
    assert (
        dashboards["metadata"]["labels"][label]
        == values["grafana"]["sidecar"]["dashboards"]["labelValue"]
    )
    # the declared-version metric the ChurnModelVersionMismatch rule reads comes from this config
    state = values["kube-state-metrics"]["customResourceState"]
    [resource] = state["config"]["spec"]["resources"]
    [metric] = resource["metrics"]
    # <prefix>_<name>, as kube-state-metrics names it (tests/unit/test_upstream_kube_state_metrics.py)
    exported = f"{resource['metricNamePrefix']}_{metric['name']}"
    assert state["enabled"] and exported in (ROOT / "manifests/monitoring/rules.yaml").read_text()
    assert values["alertmanager"]["alertmanagerSpec"]["alertmanagerConfigMatcherStrategy"] == {
        "type": "OnNamespaceExceptForAlertmanagerNamespace"
    }


def test_checkov_passes_on_the_rendered_platform(tmp_path: Path):
    (tmp_path / "platform.yaml").write_text(yaml.safe_dump_all(dev()))
    (tmp_path / "apps.yaml").write_text(yaml.safe_dump_all(apps()))
    done = checkov("-d", str(tmp_path), "--framework", "kubernetes")
    assert done.returncode == 0, done.stdout + done.stderr


SHELLCHECK = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "shellcheck"


def test_cluster_up_passes_shellcheck_and_pins_its_versions(tmp_path: Path):
    import subprocess

    script = ROOT / "scripts" / "cluster-up.sh"
    done = subprocess.run([str(SHELLCHECK), str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout
    text = script.read_text()
    assert re.search(r"kindest/node:v[\d.]+@sha256:[0-9a-f]{64}", text)
    assert "root-app" in text and "argocd/install" in text
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/usr/bin/env bash\nrm -rf $DIR/*\n")
    done = subprocess.run([str(SHELLCHECK), str(bad)], capture_output=True, text=True)
    assert done.returncode != 0 and "SC2086" in done.stdout


def test_the_dvc_secret_gives_every_key_the_pipeline_and_the_trials_read():
    from mlstack.pipeline.compile import read_ir
    from pipelines.common import DVC_SECRET_KEYS

    secret = load_settings().dvc_secret
    _, platform = read_ir(load_settings().ir_path)
    [ingest] = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values()
    pipeline_keys = {
        k["secretKey"]
        for s in ingest["secretAsEnv"]
        if s["secretName"] == secret
        for k in s["keyToEnv"]
    }
    experiment = yaml.safe_load(DEFAULTS.katib_experiment.read_text())
    trial = experiment["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]
    trial_keys = {
        e["valueFrom"]["secretKeyRef"]["key"]
        for e in trial["containers"][0]["env"]
        if e.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == secret
    }
    assert pipeline_keys == set(DVC_SECRET_KEYS) and trial_keys == pipeline_keys
    for namespace in ("kubeflow", "ml-training"):
        made = named(dev(), "ExternalSecret", secret, namespace)["spec"]["target"]["template"][
            "data"
        ]
        assert set(made) == pipeline_keys, namespace
        assert made["MLSTACK_DVC_REMOTE"] == "s3" and made["AWS_ENDPOINT_URL"].startswith(
            "http://minio."
        )


def test_strict_walk_follows_embedded_go_structs():
    # KustomizeSelector embeds KustomizeResId, which embeds KustomizeGvk (TypeScript `extends`)
    katib = named(render(ROOT / "argocd" / "platform"), "Application", "katib")
    target = katib["spec"]["source"]["kustomize"]["patches"][0]["target"]
    assert manifest_errors(katib) == [] and target["kind"] == "Namespace"
    target["kindd"] = target.pop("kind")
    assert manifest_errors(katib) == [
        "spec.source.kustomize.patches[0].target.kindd: unknown field"
    ]


def test_promotion_maps_proxied_artifacts_onto_the_deployed_destination():
    [container] = named(dev(), "Deployment", "mlflow", "mlops")["spec"]["template"]["spec"][
        "containers"
    ]
    destination = {e["name"]: e.get("value") for e in container["env"]}[
        "MLFLOW_ARTIFACTS_DESTINATION"
    ]
    e2e = yaml.safe_load((ROOT / ".github/workflows/e2e-kind.yml").read_text())
    [promote] = [
        words
        for step in e2e["jobs"]["e2e"]["steps"]
        for words in commands(step.get("run", ""))
        if ".venv/bin/mlstack" in words and "promote" in words
    ]
    assert (
        f"MLSTACK_ARTIFACTS_DESTINATION={destination}"
        in promote[: promote.index(".venv/bin/mlstack")]
    )
    # the promote workflow takes it from the repository's variable of that name
    job = yaml.safe_load((ROOT / ".github/workflows/promote.yml").read_text())["jobs"]["promote"]
    assert (
        job["env"]["MLSTACK_ARTIFACTS_DESTINATION"] == "${{ vars.MLSTACK_ARTIFACTS_DESTINATION }}"
    )


# --- Feast's cluster stores (dev: Redis and the registry's database on the platform Postgres) ---


def cluster_up_secret(name: str) -> dict[str, str]:
    """The properties `make cluster-up` writes into the dev secret store's ``name`` (with the
    generated values as ``$var``)."""
    text = (ROOT / "scripts" / "cluster-up.sh").read_text().replace("\\\n", " ")
    [line] = [ln for ln in text.splitlines() if ln.strip().startswith(f"secret {name} ")]
    return dict(re.findall(r'"([\w-]+)=([^"]*)"', line))


def test_feast_redis_is_our_image_locked_down_probed_and_reached_by_feasts_clients_only():
    statefulset = named(dev(), "StatefulSet", "feast-redis", "mlops")
    spec = statefulset["spec"]["template"]["spec"]
    [container] = spec["containers"]
    assert container["image"] == DEFAULTS.redis_image
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] and security["runAsNonRoot"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert spec["automountServiceAccountToken"] is False
    assert container["resources"]["limits"] and container["resources"]["requests"]
    # the password is a file only: nothing of a Secret in the environment or on the command line
    assert "env" not in container and "envFrom" not in container
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert container["args"][0] == f"{mounts['auth']}/redis.conf"
    assert container["args"][container["args"].index("--dir") + 1] == mounts["data"]
    assert container["args"][container["args"].index("--maxmemory-policy") + 1] == "noeviction"
    for probe in ("readinessProbe", "livenessProbe"):
        command = " ".join(container[probe]["exec"]["command"])
        assert f"{mounts['auth']}/password" in command and "ping" in command
    [claim] = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    secret = named(dev(), "ExternalSecret", "feast-redis", "mlops")["spec"]
    assert secret["target"]["template"]["data"] == {
        "redis.conf": "requirepass {{ .password }}",
        "password": "{{ .password }}",
    }
    [remote] = secret["data"]
    assert remote["remoteRef"] == {"key": "mlstack-feast", "property": "redis-password"}
    port = container["ports"][0]["containerPort"]
    service = named(dev(), "Service", "feast-redis", "mlops")
    assert service["spec"]["ports"][0]["port"] == port
    policy = named(dev(), "NetworkPolicy", "feast-redis", "mlops")["spec"]
    [rule] = policy["ingress"]
    allowed = {p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
               for p in rule["from"]}  # fmt: skip
    assert allowed == {"kubeflow", "ml-staging", "ml-production"}
    assert rule["ports"] == [{"port": port, "protocol": "TCP"}]


def test_feast_registry_database_is_made_on_the_platform_postgres_from_the_secret():
    postgres = named(dev(), "StatefulSet", "mlflow-postgres", "mlops")["spec"]["template"]["spec"]
    [container] = postgres["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in postgres["volumes"]}
    assert mounts["initdb"] == "/docker-entrypoint-initdb.d"
    init = volumes["initdb"]["configMap"]
    assert init["defaultMode"] & 0o111  # executed by the entrypoint, not sourced into it
    [config_map] = [d for d in dev() if d["kind"] == "ConfigMap" and d["metadata"]["name"] == init["name"]]  # fmt: skip
    assert config_map["metadata"]["namespace"] == "mlops"
    [script] = config_map["data"].values()
    assert script == (ROOT / "manifests/platform/dev/feast-registry-init.sh").read_text()
    assert f"{mounts['feast-password']}/password" in script
    assert volumes["feast-password"]["secret"]["secretName"] == "feast-postgres"
    [remote] = named(dev(), "ExternalSecret", "feast-postgres", "mlops")["spec"]["data"]
    assert remote["remoteRef"] == {"key": "mlstack-feast", "property": "registry-password"}
    policy = named(dev(), "NetworkPolicy", "mlflow-postgres", "mlops")["spec"]
    sources = policy["ingress"][0]["from"]
    allowed = {s["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
               for s in sources if "namespaceSelector" in s}  # fmt: skip
    assert allowed == {"kubeflow", "ml-staging", "ml-production"}
    assert {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "mlflow"}}} in sources


def test_the_feature_store_steps_config_map_names_the_images_cluster_config_and_state_dir():
    """pipelines/common.use_feature_store reads the ConfigMap's keys: the cluster config as the
    training image carries it (components/Dockerfile copies feature_repo/ into its WORKDIR) and
    the state directory its emptyDir is mounted at; feast-store in kubeflow gives its Secret keys."""
    from pipelines.common import FEAST_SECRET_KEYS, STATE_DIR, STEPS_CONFIG_KEYS

    dockerfile = (ROOT / "components" / "Dockerfile").read_text()
    [workdir] = re.findall(r"^WORKDIR (\S+)$", dockerfile, re.MULTILINE)
    assert re.search(r"^COPY feature_repo \./feature_repo$", dockerfile, re.MULTILINE)
    for docs in (base(), dev()):
        data = named(docs, "ConfigMap", DEFAULTS.steps_config_map, "kubeflow")["data"]
        assert set(data) == set(STEPS_CONFIG_KEYS)
        assert data["MLSTACK_STATE_DIR"] == STATE_DIR
        config = Path(data["MLSTACK_FEAST_CONFIG"])
        assert config.parent.parent == Path(workdir)
        assert (ROOT / config.relative_to(workdir)).is_file()
        assert config.name == "feature_store.cluster.yaml"
        secret = named(docs, "ExternalSecret", DEFAULTS.feast_secret, "kubeflow")["spec"]
        assert set(secret["target"]["template"]["data"]) == set(FEAST_SECRET_KEYS)


def test_feast_clients_get_the_stores_the_cluster_config_reads_at_the_dev_services():
    config = yaml.safe_load((ROOT / "feature_repo" / "feature_store.cluster.yaml").read_text())
    wanted = set(re.findall(r"\$\{(\w+)\}", json.dumps(config)))  # its values, not its comments
    assert wanted == {"MLSTACK_FEAST_REGISTRY", "MLSTACK_FEAST_REDIS"}
    assert config["registry"]["registry_type"] == "sql"
    assert config["online_store"]["type"] == "redis"
    for namespace in ("kubeflow", "ml-staging", "ml-production"):
        for docs in (base(), dev()):
            spec = named(docs, "ExternalSecret", "feast-store", namespace)["spec"]
            assert set(spec["target"]["template"]["data"]) == wanted, namespace
            remote = {d["remoteRef"]["property"] for d in spec["data"]}
            assert remote == {"registry-uri", "redis-connection"}
    # what cluster-up generates points at the dev Services, the init script's database and user,
    # with the same passwords the servers get
    feast = cluster_up_secret("mlstack-feast")
    redis_port = named(dev(), "Service", "feast-redis", "mlops")["spec"]["ports"][0]["port"]
    pg_port = named(dev(), "Service", "mlflow-postgres", "mlops")["spec"]["ports"][0]["port"]
    assert feast["redis-connection"] == (
        f"feast-redis.mlops.svc.cluster.local:{redis_port},password=${{redis_password}}"
    )
    assert feast["redis-password"] == "$redis_password"
    assert feast["registry-uri"] == (
        "postgresql+psycopg://feast:${feast_pg_password}"
        f"@mlflow-postgres.mlops.svc.cluster.local:{pg_port}/feast"
    )
    assert feast["registry-password"] == "$feast_pg_password"
    script = (ROOT / "manifests/platform/dev/feast-registry-init.sh").read_text()
    assert "CREATE ROLE feast LOGIN" in script and "CREATE DATABASE feast OWNER feast" in script
    reader = named(dev(), "Role", "secret-reader", "mlstack-secrets")
    assert "mlstack-feast" in reader["rules"][0]["resourceNames"]
