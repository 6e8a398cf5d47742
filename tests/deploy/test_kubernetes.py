"""deploy/kubernetes/, checked offline (no cluster, no Ray started): each ray.io object against KubeRay's
own CRD schema (``../shared/k8s/kuberay-v1-crds/``) with unknown fields refused, the core objects against
Kubernetes' own schemas (kubernetes-validate, strict), the RayService's ``serveConfigV2`` by Ray Serve's
schema and equal to ``serve_config_document``, and what the files must agree on between them: images and
Ray versions, resources, the Secrets and ConfigMaps they name, where the job publishes the model and the
service loads it.

Why unknown fields need refusing here: the CRDs list each object's properties but never set
``additionalProperties`` (nor does Ray Serve's schema forbid extra keys), so a misspelt field passes a plain
schema check. On a cluster the API server drops it, silently unless the client asks for strict field
validation (kubectl does, other tools may not): ``rayStartParam:`` would deploy a cluster without its settings,
and a misspelt Serve option is ignored by Serve itself."""

from __future__ import annotations

import copy
import functools
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml
from helpers.datasets import REPO_ROOT
from jsonschema.exceptions import best_match

DEPLOY = REPO_ROOT / "deploy" / "kubernetes"
CRDS = REPO_ROOT.parent / "shared" / "k8s" / "kuberay-v1-crds"
# The oldest Kubernetes the manifests claim, and the newest that kubernetes-validate ships schemas for.
K8S_VERSIONS = ("1.33", "1.37")
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml",
             "RayService": "ray.io_rayservices.yaml"}
IMAGE = "registry.example.com/asl-platform"
SERVICE_ACCOUNT = "asl-platform"
ENV_CONFIG_MAP = "asl-platform-env"
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are 1 MB each: libyaml parses them 10x faster


# --------------------------------------------------------------------------- the manifests


@functools.cache
def manifests() -> tuple[tuple[str, dict], ...]:
    """(file name, object) for every object of every YAML file in deploy/kubernetes/."""
    found = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        found += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return tuple(found)


def objects(*kinds: str) -> list[dict]:
    return [doc for _, doc in manifests() if doc["kind"] in kinds]


def the(kind: str, name: str | None = None) -> dict:
    matches = [doc for doc in objects(kind) if name is None or doc["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name or ''} in {DEPLOY}, found {len(matches)}"
    return matches[0]


def cluster_spec(doc: dict) -> dict:
    """The RayCluster spec of a RayCluster, RayJob or RayService."""
    return {"RayCluster": lambda: doc["spec"], "RayJob": lambda: doc["spec"]["rayClusterSpec"],
            "RayService": lambda: doc["spec"]["rayClusterConfig"]}[doc["kind"]]()


def templates(doc: dict) -> list[tuple[str, dict]]:
    """(group, pod template) of a Ray object's head and worker groups, or of a core workload."""
    if doc["kind"] in CRD_FILES:
        spec = cluster_spec(doc)
        return [("head", spec["headGroupSpec"]["template"]),
                *((group["groupName"], group["template"]) for group in spec.get("workerGroupSpecs", []))]
    template = doc.get("spec", {}).get("template")
    return [(doc["metadata"]["name"], template)] if template else []


def pod_specs(doc: dict) -> list[tuple[str, dict]]:
    return [(group, template["spec"]) for group, template in templates(doc)]


def ray_objects() -> list[dict]:
    return objects(*CRD_FILES)


def ids(docs: list[dict]) -> list[str]:
    return [f"{doc['kind']}/{doc['metadata']['name']}" for doc in docs]


# --------------------------------------------------------------------------- schemas


def closed(schema):
    """A copy of a JSON schema (KubeRay's OpenAPI v3, or pydantic's) in which every object schema that lists
    its properties takes no others, unless it says which others it takes (``additionalProperties``) or keeps
    any (``x-kubernetes-preserve-unknown-fields``)."""
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in ("properties", "patternProperties", "$defs", "definitions"):  # name -> schema
            out[key] = {name: closed(sub) for name, sub in value.items()}
        elif key in ("items", "prefixItems", "additionalProperties", "anyOf", "allOf", "oneOf", "not", "if", "then",
                     "else"):
            out[key] = closed(value)
        else:  # default, enum, x-kubernetes-validations, ...: values, not schemas
            out[key] = value
    keeps_unknown = out.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in out and "additionalProperties" not in out and not keeps_unknown:
        out["additionalProperties"] = False
    return out


def schema_errors(validator: jsonschema.protocols.Validator, instance) -> list[str]:
    """Every error, as ``path: message`` (for an anyOf/oneOf, the branch that came closest)."""
    errors = []
    for error in validator.iter_errors(instance):
        error = best_match(error.context) if error.context else error
        errors.append(f"{'.'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}")
    return sorted(errors)


@functools.cache
def crd_schema(kind: str) -> dict:
    """The openAPIV3Schema of ``kind``'s served ray.io/v1 version, as KubeRay ships it."""
    crd = yaml.load((CRDS / CRD_FILES[kind]).read_text(), Loader=_LOADER)
    assert crd["spec"]["names"]["kind"] == kind
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1" and v["served"]]
    return version["schema"]["openAPIV3Schema"]


@pytest.fixture(scope="module")
def crd_validators() -> dict[str, tuple[jsonschema.protocols.Validator, jsonschema.protocols.Validator]]:
    """kind -> (strict validator, the CRD's schema as it is), for RayCluster, RayJob and RayService."""
    if not CRDS.is_dir():
        pytest.skip(f"{CRDS} is absent: the KubeRay CRDs come with the shared folder beside the repository "
                    "(see ../shared/k8s/README.md); without them the ray.io objects cannot be checked")
    validator = jsonschema.Draft202012Validator
    return {kind: (validator(closed(crd_schema(kind))), validator(crd_schema(kind))) for kind in CRD_FILES}


def kubernetes_errors(doc: dict) -> list[str]:
    """What Kubernetes' own schemas (strict: unknown fields too) say of a core object, for each K8S_VERSIONS."""
    import kubernetes_validate

    errors = []
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            errors.append(f"{version}: {'.'.join(map(str, error.path))}: {error.message}")
    return errors


def serve_schema_errors(document: dict) -> list[str]:
    """What Ray Serve says of a ``serve deploy`` config (``ServeDeploySchema``, what the controller applies),
    plus the keys its schema would ignore (it takes and drops unknown ones: a typo would silently not apply)."""
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    try:
        ServeDeploySchema.model_validate(document)
    except ValidationError as error:
        return [str(error)]
    return schema_errors(jsonschema.Draft202012Validator(closed(ServeDeploySchema.model_json_schema())), document)


# --------------------------------------------------------------------------- the objects against their schemas


def test_the_manifests_hold_every_kind_named_and_labelled():
    kinds = {doc["kind"] for _, doc in manifests()}
    assert {"RayCluster", "RayJob", "RayService", "Secret", "ConfigMap", "Service", "StatefulSet",
            "ServiceAccount"} <= kinds
    names = [(doc["kind"], doc["metadata"]["name"]) for _, doc in manifests()]
    assert len(names) == len(set(names)), "two objects of one kind share a name"
    for _, doc in manifests():
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "asl-platform", doc["metadata"]["name"]


@pytest.mark.parametrize("doc", ray_objects(), ids=ids(ray_objects()))
def test_ray_objects_match_kuberays_crd_with_no_unknown_field(doc, crd_validators):
    strict, _ = crd_validators[doc["kind"]]
    assert doc["apiVersion"] == "ray.io/v1"
    assert schema_errors(strict, doc) == []
    # The CRD leaves metadata (and the pod templates') an open object: check them as Kubernetes' ObjectMeta.
    for meta in [doc["metadata"], *(template.get("metadata", {}) for _, template in templates(doc))]:
        assert kubernetes_errors({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", **meta}}) == []


@pytest.mark.parametrize("doc", [d for _, d in manifests() if d["kind"] not in CRD_FILES],
                         ids=ids([d for _, d in manifests() if d["kind"] not in CRD_FILES]))
def test_core_objects_match_kubernetes_schemas(doc):
    assert kubernetes_errors(doc) == []


def test_a_misspelt_field_is_rejected(crd_validators):
    strict, as_shipped = crd_validators["RayService"]
    service = copy.deepcopy(the("RayService"))
    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]
    head["rayStartParam"] = head.pop("rayStartParams")
    container = head["template"]["spec"]["containers"][0]
    container["resource"] = container.pop("resources")
    assert schema_errors(strict, service) == [
        "spec.rayClusterConfig.headGroupSpec.template.spec.containers.0: "
        "Additional properties are not allowed ('resource' was unexpected)",
        "spec.rayClusterConfig.headGroupSpec: Additional properties are not allowed ('rayStartParam' was unexpected)",
    ]
    assert schema_errors(as_shipped, service) == []  # why closed() is needed
    # A wrong type is caught by the schema as shipped too.
    service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"] = "two"
    assert ("spec.rayClusterConfig.workerGroupSpecs.0.maxReplicas: 'two' is not of type 'integer'"
            in schema_errors(as_shipped, service))


def test_a_misspelt_field_of_a_core_object_is_rejected():
    secret = copy.deepcopy(the("Secret", "asl-redis"))
    secret["stringdata"] = secret.pop("stringData")
    assert any("'stringdata' was unexpected" in error for error in kubernetes_errors(secret))


# --------------------------------------------------------------------------- serveConfigV2


def serve_config_v2() -> dict:
    return yaml.safe_load(the("RayService")["spec"]["serveConfigV2"])


def test_serve_config_v2_is_serve_config_yamls_application_with_the_model_on_s3():
    from asl_platform.config import ServeConfig
    from asl_platform.serving.deployments import serve_config_document

    document = serve_config_v2()
    assert serve_schema_errors(document) == []
    model = document["applications"][0]["args"]["model"]
    assert model.startswith("s3://"), "replicas on any node load the model: it must be on S3 (docs/cluster.md)"
    expected = serve_config_document(ServeConfig(model=model, host="0.0.0.0", port=8000))  # what KubeRay expects
    assert document == expected, (
        "serveConfigV2 differs from serve_config_document (serve_config.yaml's application); it should be:\n"
        + yaml.safe_dump(expected, sort_keys=False))

    misspelt = copy.deepcopy(document)
    misspelt["applications"][0]["deployments"][0]["max_replicas_per_nod"] = 1
    assert serve_schema_errors(misspelt) == [
        "applications.0.deployments.0: Additional properties are not allowed ('max_replicas_per_nod' was unexpected)"]


def test_a_new_model_is_rolled_out_on_a_new_cluster():
    """KubeRay upgrades without downtime (a new cluster, then the switch) when rayClusterConfig changes; a
    change of serveConfigV2 alone restarts the replicas in place, old ones first (Serve's max_surge_percent 0)."""
    service = the("RayService")
    assert service["spec"]["upgradeStrategy"]["type"] == "NewCluster"
    annotations = cluster_spec(service)["headGroupSpec"]["template"]["metadata"]["annotations"]
    assert annotations["asl-platform/model"] == serve_config_v2()["applications"][0]["args"]["model"]


def test_the_workers_can_hold_the_most_model_replicas():
    deployments = {d["name"]: d for d in serve_config_v2()["applications"][0]["deployments"]}
    model = deployments["ASLModel"]
    needed = model["autoscaling_config"]["max_replicas"] * model["ray_actor_options"]["num_cpus"]
    groups = cluster_spec(the("RayService"))["workerGroupSpecs"]
    cpus = sum(group["maxReplicas"] * _cpus(group["template"]["spec"]["containers"][0]) for group in groups)
    assert cpus >= needed, f"the worker groups reach {cpus} CPUs; {needed} are needed for max_replicas"


def _cpus(container: dict) -> float:
    value = str(container["resources"]["limits"]["cpu"])
    return float(value[:-1]) / 1000 if value.endswith("m") else float(value)


# --------------------------------------------------------------------------- what the files agree on


def test_images_ray_versions_and_resources():
    ray_pin = re.search(r"(?m)^ray==(\S+)$", (REPO_ROOT / "requirements.lock").read_text()).group(1)
    version = re.search(r'(?m)^version = "(\S+)"$', (REPO_ROOT / "pyproject.toml").read_text()).group(1)
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert f"ARG BASE=rayproject/ray:{ray_pin}-py311-cpu\nFROM ${{BASE}}\n" in dockerfile
    assert f"rayproject/ray:{ray_pin}-py311-gpu" in dockerfile  # the GPU image's build, documented
    for doc in ray_objects():
        spec = cluster_spec(doc)
        assert spec["rayVersion"] == ray_pin, ids([doc])
        assert _has_resources(spec["autoscalerOptions"]), f"{ids([doc])}: the autoscaler container"
        for group, pod in pod_specs(doc):
            assert pod["serviceAccountName"] == SERVICE_ACCOUNT, (ids([doc]), group)
            (container,) = pod["containers"]
            gpu = "nvidia.com/gpu" in container["resources"]["limits"]
            assert container["image"] == f"{IMAGE}:{version}{'-gpu' if gpu else ''}", (ids([doc]), group)
            assert {"configMapRef": {"name": ENV_CONFIG_MAP}} in container["envFrom"], (ids([doc]), group)
            assert _has_resources(container), (ids([doc]), group)
    for doc in objects("StatefulSet", "Deployment"):
        for _, pod in pod_specs(doc):
            for container in pod["containers"]:
                assert _has_resources(container), (ids([doc]), container["name"])
                assert re.fullmatch(r"[\w./-]+:[\w.-]+", container["image"]), "images are tagged"


def _has_resources(container: dict) -> bool:
    resources = container.get("resources", {})
    return all({"cpu", "memory"} <= set(resources.get(kind, {})) for kind in ("requests", "limits"))


def test_every_ray_container_gets_the_platforms_ray_defaults():
    from asl_platform.runtime import RAY_DEFAULTS

    env = the("ConfigMap", ENV_CONFIG_MAP)["data"]
    assert {key: env.get(key) for key in RAY_DEFAULTS} == RAY_DEFAULTS


def secret_keys(name: str) -> set[str]:
    """The keys of the Secret ``name`` (secrets.example.yaml shows each one the manifests read)."""
    secrets = {doc["metadata"]["name"]: doc for doc in objects("Secret")}
    assert name in secrets, f"the manifests read the Secret {name}, which none of them shows"
    return set(secrets[name].get("stringData", {})) | set(secrets[name].get("data", {}))


def test_gcs_fault_tolerance_token_auth_and_every_named_secret_and_config_map_exist():
    config_maps = {doc["metadata"]["name"] for doc in objects("ConfigMap")}
    redis = the("Service", "asl-redis")
    for doc in ray_objects():
        spec = cluster_spec(doc)
        auth = spec["authOptions"]
        assert auth["mode"] == "token" and "auth_token" in secret_keys(auth["secretName"]), ids([doc])
        if doc["kind"] == "RayJob":
            continue  # its cluster lives for one job: no GCS fault tolerance
        ft = spec["gcsFaultToleranceOptions"]
        assert ft["redisAddress"] == f"{redis['metadata']['name']}:{redis['spec']['ports'][0]['port']}", ids([doc])
        ref = ft["redisPassword"]["valueFrom"]["secretKeyRef"]
        assert ref["key"] in secret_keys(ref["name"]), ids([doc])
    for doc in [*ray_objects(), *objects("StatefulSet")]:
        for group, pod in pod_specs(doc):
            for container in pod["containers"]:
                for source in container.get("envFrom", []):
                    if "secretRef" in source and not source["secretRef"].get("optional"):
                        secret_keys(source["secretRef"]["name"])
                    if "configMapRef" in source and not source["configMapRef"].get("optional"):
                        assert source["configMapRef"]["name"] in config_maps, (ids([doc]), group, source)
                for var in container.get("env", []):
                    ref = var.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        assert ref["key"] in secret_keys(ref["name"]), (ids([doc]), group, var["name"])
            for volume in pod.get("volumes", []):
                if "configMap" in volume:
                    assert volume["configMap"]["name"] in config_maps, (ids([doc]), group, volume)


def test_the_job_runs_the_pipeline_on_s3_and_publishes_the_model_the_service_loads():
    from asl_platform.cli import build_parser, resolve_config

    job = the("RayJob")
    head = cluster_spec(job)["headGroupSpec"]["template"]["spec"]
    command = shlex.split(job["spec"]["entrypoint"])
    assert command[0] == "bash", "the entrypoint runs the ConfigMap's script"
    script_path = Path(command[1])
    (mount,) = [m for m in head["containers"][0]["volumeMounts"] if Path(m["mountPath"]) == script_path.parent]
    (volume,) = [v for v in head["volumes"] if v["name"] == mount["name"]]
    script = the("ConfigMap", volume["configMap"]["name"])["data"][script_path.name]

    s3 = re.search(r"(?m)^S3=(s3://\S+)$", script).group(1)

    def command_line(program: str) -> list[str]:
        (line,) = [line for line in script.splitlines() if line.startswith(f"{program} ")]
        return shlex.split(line.replace("$S3", s3))

    argv = command_line("asl-platform")
    assert argv[1] == "pipeline"
    cfg = resolve_config(build_parser().parse_args(argv[1:]))  # the CLI's own parser and config checks
    assert cfg.data.root.startswith("s3://") and cfg.run.storage_path.startswith("s3://")
    assert Path(cfg.run.output_dir).is_absolute(), "outputs go to an absolute --output (docs/cluster.md)"
    local = re.search(r'Path\("([^"]+)"\)', script).group(1)
    published = command_line("python")[2]
    assert Path(local) == cfg.models_dir and published == f"{s3}/models/{cfg.run.name}"
    model = serve_config_v2()["applications"][0]["args"]["model"]  # the folder, or one of its versions (v<N>)
    assert re.fullmatch(re.escape(published) + r"(/v\d+)?", model), "the service loads what the job publishes"
