"""The Helm chart in k8s/chart: it lints, renders valid objects, passes checkov, refuses bad values, and the server it
runs (command, arguments, probes, ports, graceful stop) works.

The tools come from `bash k8s/install-tools.sh` (tools/bin: helm 4, kubernetes-validate, checkov; their Python venv
tools/venv also parses the rendered YAML, so this file needs nothing new in the project's venv).

What only a GPU cluster can check: the image build (k8s/Dockerfile FROM the NGC image), the native DALI backend
(`repo.build --target dali`, which this machine's tritonserver lacks: the last test runs the same command line on
the Python target's repository), GPU scheduling and the CUDA memory pool.
"""

import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from repo.models import tuned

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "k8s" / "chart"
TOOLS = ROOT / "tools" / "bin"
RELEASE = "seg"
NAMESPACE = "video"
OLDEST_KUBERNETES = "1.28.0"  # Chart.yaml kubeVersion
# APIs of CRDs that a full cluster serves (the Prometheus operator's); `helm template` knows only built-in APIs.
CRD_API_VERSIONS = ("monitoring.coreos.com/v1",)
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}

CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
CASES = [None, *CI_VALUES]
CASE_IDS = ["default", *(p.name.removesuffix("-values.yaml") for p in CI_VALUES)]
HELM_HOME = ROOT / "tools" / "helm-home"  # Helm's cache and config: in the git-ignored tools/, not in ~
ACCESS_VALUES = CHART / "ci" / "04-access-values.yaml"
# Every protocol but health (repo/access.py): the probes and the helm test reach health without the key.
RESTRICTED = "metadata,inference,shared-memory,model-config,model-repository,statistics,trace,logging"
TLS_DIR = "/etc/segment-video/tls"


def tool(name: str) -> str:
    path = TOOLS / name
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is missing: run `bash k8s/install-tools.sh` (installs helm, kubernetes-validate, checkov)")
    return str(path)


def env(**more: str) -> dict[str, str]:
    """Helm's cache and config under tools/; tools/bin first on PATH (checkov runs `helm`)."""
    return {
        **os.environ,
        "PATH": f"{TOOLS}{os.pathsep}{os.environ.get('PATH', '')}",
        "HELM_CACHE_HOME": str(HELM_HOME / "cache"),
        "HELM_CONFIG_HOME": str(HELM_HOME / "config"),
        "HELM_DATA_HOME": str(HELM_HOME / "data"),
        **more,
    }


def run(*cmd: str, timeout: float = 120, **more_env: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env(**more_env), cwd=ROOT)


def values_args(values: Path | None) -> list[str]:
    return [] if values is None else ["-f", str(values)]


def template(values: Path | None = None, *args: str, api_versions=CRD_API_VERSIONS) -> subprocess.CompletedProcess:
    api = [a for v in api_versions for a in ("--api-versions", v)]
    return run(tool("helm"), "template", RELEASE, str(CHART), "-n", NAMESPACE, *api, *values_args(values), *args)


@functools.cache
def rendered(values: Path | None = None, *args: str) -> str:
    result = template(values, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def parse(manifests: str) -> list[dict]:
    """YAML documents -> objects, with the tools venv's PyYAML (a dependency of checkov and kubernetes-validate)."""
    python = ROOT / "tools" / "venv" / "bin" / "python"
    if not os.access(python, os.X_OK):
        pytest.fail(f"{python} is missing: run `bash k8s/install-tools.sh`")
    code = "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))"
    result = subprocess.run([str(python), "-c", code], input=manifests, capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def objects(values: Path | None = None, *args: str) -> dict[tuple[str, str], dict]:
    return {(o["kind"], o["metadata"]["name"]): o for o in parse(rendered(values, *args))}


def one(values: Path | None, kind: str, *args: str) -> dict:
    found = [o for (k, _), o in objects(values, *args).items() if k == kind]
    assert len(found) == 1, f"{len(found)} objects of kind {kind}"
    return found[0]


def server_container(values: Path | None = None, *args: str) -> dict:
    return one(values, "Deployment", *args)["spec"]["template"]["spec"]["containers"][0]


def arg_value(container: dict, option: str) -> str:
    values = [a.split("=", 1)[1] for a in container["args"] if a.startswith(f"{option}=")]
    assert len(values) == 1, f"{option} appears {len(values)} times in {container['args']}"
    return values[0]


@functools.cache
def newest_kubernetes() -> str:
    python = ROOT / "tools" / "venv" / "bin" / "python"
    code = "import kubernetes_validate.utils as u; print(u.latest_version())"
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout.strip()


# ---- lint, render, validate ------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", CASES, ids=CASE_IDS)
def test_helm_lint_strict(values):
    result = run(tool("helm"), "lint", "--strict", str(CHART), "-n", NAMESPACE, *values_args(values))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("kube_version", ["oldest", "newest"])
@pytest.mark.parametrize("values", CASES, ids=CASE_IDS)
def test_rendered_objects_are_valid_kubernetes(values, kube_version, tmp_path):
    version = OLDEST_KUBERNETES if kube_version == "oldest" else newest_kubernetes()
    manifests = tmp_path / "manifests.yaml"
    manifests.write_text(rendered(values))
    result = run(tool("kubernetes-validate"), "--strict", "-k", version, "--quiet", str(manifests))
    assert result.returncode == 0, result.stdout + result.stderr
    # kubernetes-validate knows no CRD: it may skip those (with a warning), and only those.
    for line in (result.stdout + result.stderr).splitlines():
        if "Couldn't find schema" in line:
            assert any(kind in line and api in line for api, kind in CRD_KINDS), line
        assert not line.startswith("ERROR"), line


def test_every_object_is_namespaced_and_labelled():
    for values in CASES:
        for (kind, name), obj in objects(values).items():
            meta = obj["metadata"]
            # The dashboard goes where Grafana's sidecar looks (dashboard.namespace, "monitoring" in 02).
            expected = "monitoring" if name.endswith("-dashboard") and "02-" in str(values) else NAMESPACE
            assert meta["namespace"] == expected, (kind, name)
            assert meta["labels"]["app.kubernetes.io/instance"] == RELEASE, (kind, name)
            assert meta["labels"]["app.kubernetes.io/managed-by"] == "Helm", (kind, name)


def test_optional_objects_are_off_by_default_and_on_in_production():
    default = {kind for kind, _ in objects(None)}
    assert default == {"ServiceAccount", "Service", "Deployment", "Pod"}
    production = {kind for kind, _ in objects(CHART / "ci" / "02-production-values.yaml")}
    optional = {"HorizontalPodAutoscaler", "ServiceMonitor", "Ingress", "PodDisruptionBudget", "NetworkPolicy"}
    assert optional | {"ConfigMap"} <= production


def test_crd_objects_are_well_formed_and_only_where_the_cluster_has_their_api():
    production = CHART / "ci" / "02-production-values.yaml"
    monitor = one(production, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["name"] and monitor["metadata"]["namespace"] == NAMESPACE
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    spec = monitor["spec"]
    assert set(spec) <= {"jobLabel", "selector", "namespaceSelector", "endpoints"}
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    # It selects the normal Service (not the headless one, which would scrape every pod twice), on its metrics port.
    services = [o for (k, _), o in objects(production).items() if k == "Service"]
    selected = [s for s in services if spec["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
    assert [s["spec"].get("clusterIP") for s in selected] == [None]
    [endpoint] = spec["endpoints"]
    assert endpoint["port"] in {p["name"] for p in selected[0]["spec"]["ports"]} and endpoint["path"] == "/metrics"
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "relabelings", "metricRelabelings"}
    # Without the Prometheus operator's API (plain `helm template`, or a cluster without it) there is none.
    kinds = {o["kind"] for o in parse(template(production, api_versions=()).stdout)}
    assert "ServiceMonitor" not in kinds and "Deployment" in kinds


# ---- checkov ----------------------------------------------------------------------------------------------------


def checkov_results(*args: str, **more_env: str) -> list[dict]:
    # --skip-download: no call to Prisma Cloud for guidelines (this machine has no such network anyway).
    command = [tool("checkov"), *args, "--compact", "--skip-download", "-o", "json"]
    result = run(*command, timeout=300, **more_env)
    assert result.returncode in (0, 1), result.stdout[-3000:] + result.stderr[-3000:]
    reports = json.loads(result.stdout)
    return reports if isinstance(reports, list) else [reports]


def assert_clean(reports: list[dict]) -> None:
    assert reports and all(r["summary"]["passed"] > 100 for r in reports), "checkov checked (almost) nothing"
    assert not any(r["summary"]["parsing_errors"] for r in reports), reports
    failed = [
        f"{c['check_id']} {c['check_name']}: {c['resource']} ({c['file_path']})"
        for r in reports
        for c in r["results"]["failed_checks"]
    ]
    assert not failed, "\n".join(failed)
    for r in reports:
        for skipped in r["results"]["skipped_checks"]:
            reason = skipped["check_result"].get("suppress_comment", "")
            assert len(reason) > 30, f"{skipped['check_id']} on {skipped['resource']} is skipped without a reason"


def test_checkov_helm_framework_on_the_chart():
    # checkov renders the chart with `helm template` (default values) into HELM_NAMESPACE.
    assert_clean(checkov_results("-d", str(CHART), "--framework", "helm", HELM_NAMESPACE=NAMESPACE))


def test_checkov_on_every_rendered_values_file(tmp_path):
    for values, name in zip(CASES, CASE_IDS, strict=True):
        (tmp_path / f"{name}.yaml").write_text(rendered(values))
    assert_clean(checkov_results("-d", str(tmp_path), "--framework", "kubernetes"))


def test_checkov_on_the_dockerfile():
    assert_clean(checkov_results("-f", str(ROOT / "k8s" / "Dockerfile"), "--framework", "dockerfile"))


# ---- values.schema.json ------------------------------------------------------------------------------------------

BAD_VALUES = {
    "string-replicas": (["--set-string", "replicaCount=two"], "/replicaCount", "got string, want integer"),
    "unknown-key": (["--set", "replicaz=2"], "replicaz", "not allowed"),
    "negative-shm": (["--set", "shm.sizeLimit=-1Gi"], "/shm/sizeLimit", "-1Gi"),
    "negative-pool": (["--set", "server.cudaMemoryPoolBytes=-1"], "/server/cudaMemoryPoolBytes", "minimum"),
    "nested-unknown-key": (["--set", "weights.objectStore.urll=x"], "/weights/objectStore", "urll"),
    "access-unknown-key": (["--set", "server.access.tls.secretNam=x"], "/server/access/tls", "secretNam"),
    "access-header-capitals": (
        ["--set", "server.access.restrictedKey.header=Key"],
        "/server/access/restrictedKey",
        "Key",
    ),
    "access-old-place": (["--set", "access.enabled=true"], "access", "not allowed"),
}


@pytest.mark.parametrize("command", ["lint", "template"])
@pytest.mark.parametrize("case", BAD_VALUES, ids=list(BAD_VALUES))
def test_schema_rejects_bad_values_naming_them(command, case):
    args, path, detail = BAD_VALUES[case]
    extra = ["--strict"] if command == "lint" else [RELEASE]
    result = run(tool("helm"), command, *extra, str(CHART), *args)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert path in output and detail in output, output


# ---- what the Deployment says ------------------------------------------------------------------------------------


def test_deployment_runs_one_gpu_pod_hardened_with_a_large_shm_and_graceful_stop():
    deployment = one(None, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = server_container()
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"] == {"medium": "Memory", "sizeLimit": "2Gi"}
    assert "emptyDir" in volumes[mounts["/tmp"]] and "emptyDir" in volumes[mounts["/home/segmenter"]]
    exit_timeout = int(arg_value(container, "--exit-timeout-secs"))
    sleep = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] > exit_timeout + sleep
    assert arg_value(container, "--model-repository") == "/models"
    assert arg_value(container, "--model-control-mode") == "none"
    assert arg_value(container, "--allow-metrics") == "true"
    # The pool the image's model repository counts on (`repo.build --device gpu`: each video's share of it).
    assert arg_value(container, "--cuda-memory-pool-byte-size") == f"0:{tuned('gpu')['cuda_pool_bytes']}"
    assert [a for a in container["args"] if a.startswith("--backend-config=python,shm-default-byte-size=")]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert container["startupProbe"]["httpGet"]["port"] == "http"
    headless = objects(None)[("Service", f"{RELEASE}-segment-video-headless")]
    assert headless["spec"]["clusterIP"] == "None"


def test_a_pod_of_several_gpus_gets_them_all_and_a_pool_on_each():
    container = server_container(None, "--set", "gpu.count=2")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    pools = [a.split("=", 1)[1] for a in container["args"] if a.startswith("--cuda-memory-pool-byte-size=")]
    assert pools == [f"{gpu}:{tuned('gpu')['cuda_pool_bytes']}" for gpu in (0, 1)]
    # The image's repository has no list of GPUs: Triton places each model's instances on every GPU it sees.
    dockerfile = (ROOT / "k8s" / "Dockerfile").read_text()
    assert dockerfile.count("repo.build --target dali --device gpu --gpus all") == 2


def test_weights_from_an_object_store_are_downloaded_and_checked_before_the_server_starts():
    values = CHART / "ci" / "03-object-store-weights-values.yaml"
    pod = one(values, "Deployment")["spec"]["template"]["spec"]
    [init] = pod["initContainers"]
    script = init["command"][-1]
    assert "sha256sum -c" in script and "$WEIGHTS_FILE" in script
    init_env = {e["name"]: e.get("value") for e in init["env"]}
    assert init_env["WEIGHTS_FILE"] == "/weights/fcn_resnet101.pt"
    server = pod["containers"][0]
    assert {"name": "weights", "mountPath": "/weights", "readOnly": True} in server["volumeMounts"]
    assert "envFrom" not in init, "credentials are mounted as files, not environment variables"
    # Without a sha256 the chart refuses to render: an unchecked download would be loaded as the model.
    result = template(values, "--set", "weights.objectStore.sha256=")
    assert result.returncode != 0 and "weights.objectStore.sha256" in result.stderr


def test_weights_from_a_volume_and_restricted_protocols_from_a_secret(tmp_path):
    volume = ["--set", "weights.source=volume", "--set", "weights.volume.persistentVolumeClaim.claimName=fcn"]
    volume += ["--set", "weights.subPath=segment-video"]
    pod = one(None, "Deployment", *volume)["spec"]["template"]["spec"]
    assert {"name": "weights", "persistentVolumeClaim": {"claimName": "fcn"}} in pod["volumes"]
    mount = {"name": "weights", "mountPath": "/weights", "readOnly": True, "subPath": "segment-video"}
    assert mount in pod["containers"][0]["volumeMounts"]
    missing = template(None, "--set", "weights.source=volume")
    assert missing.returncode != 0 and "weights.volume" in missing.stderr

    access = ["--set", "server.access.restrictedKey.secretName=triton-key"]
    container = server_container(None, *access)
    assert arg_value(container, "--grpc-restricted-protocol") == f"{RESTRICTED}:segment-key=$(TRITON_ACCESS_KEY)"
    assert arg_value(container, "--http-restricted-api") == f"{RESTRICTED}:segment-key=$(TRITON_ACCESS_KEY)"
    [key] = [e for e in container["env"] if e["name"] == "TRITON_ACCESS_KEY"]
    assert key["valueFrom"]["secretKeyRef"] == {"name": "triton-key", "key": "key"}
    assert arg_value(container, "--model-control-mode") == "none"
    assert not [a for a in container["args"] if "ssl" in a]
    (tmp_path / "variants.yaml").write_text(rendered(None, *volume, *access))
    result = run(tool("kubernetes-validate"), "--strict", "-k", OLDEST_KUBERNETES, str(tmp_path / "variants.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_access_key_tls_and_model_control_from_secrets():
    """ci/04-access-values.yaml: the flags are repo/access.py's (the key from the Secret through an environment
    variable), the TLS Secret is mounted for the server and the helm test, the Ingress speaks TLS to the pods."""
    from repo.access import Access, access_args

    container = server_container(ACCESS_VALUES, "--set", "ingress.enabled=true")
    key = "$(TRITON_ACCESS_KEY)"
    tls = Path(TLS_DIR)
    expected = access_args(
        Access(
            "segment-key", key, tls_cert=tls / "tls.crt", tls_key=tls / "tls.key", tls_ca=tls / "ca.crt",
            mutual_tls=True, model_control=True,
        )
    )  # fmt: skip
    options = (
        "--grpc-restricted",
        "--http-restricted",
        "--model-control",
        "--load-model",
        "--grpc-use-ssl",
        "--grpc-s",
    )
    rendered_access = [a for a in container["args"] if a.startswith(options) or a.startswith("--grpc-root-cert")]
    assert sorted(rendered_access) == sorted(expected)
    assert arg_value(container, "--grpc-restricted-protocol") == f"{RESTRICTED}:segment-key={key}"
    assert arg_value(container, "--model-control-mode") == "explicit"
    [env] = [e for e in container["env"] if e["name"] == "TRITON_ACCESS_KEY"]
    assert env["valueFrom"]["secretKeyRef"] == {"name": "segment-video-key", "key": "key"}
    assert {"name": "grpc-tls", "mountPath": TLS_DIR, "readOnly": True} in container["volumeMounts"]
    objects_ = objects(ACCESS_VALUES, "--set", "ingress.enabled=true")
    pod = objects_[("Deployment", f"{RELEASE}-segment-video")]["spec"]["template"]["spec"]
    secret = {"name": "grpc-tls", "secret": {"secretName": "segment-video-grpc-tls", "defaultMode": 0o440}}
    assert secret in pod["volumes"]
    # The probes stay on HTTP health, which the restricted groups leave open.
    assert {container[f"{k}Probe"]["httpGet"]["path"] for k in ("startup", "liveness", "readiness")} <= {
        "/v2/health/ready", "/v2/health/live",
    }  # fmt: skip
    test_pod = objects_[("Pod", f"{RELEASE}-segment-video-test-ready")]["spec"]
    test_env = {e["name"]: e.get("value") for e in test_pod["containers"][0]["env"]}
    assert test_env["GRPC_TLS_DIR"] == TLS_DIR and test_env["GRPC_TLS_MUTUAL"] == "true"
    assert secret in test_pod["volumes"]
    ingress = objects_[("Ingress", f"{RELEASE}-segment-video")]
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPCS"

    # Plain TLS: no client CA, no mutual flag; without access values nothing of it is rendered.
    plain_tls = server_container(None, "--set", "server.access.tls.secretName=grpc-tls")
    assert arg_value(plain_tls, "--grpc-use-ssl") == "true"
    assert not [a for a in plain_tls["args"] if a.startswith(("--grpc-root-cert", "--grpc-use-ssl-mutual"))]
    default = server_container()
    assert not [a for a in default["args"] if "restricted" in a or "ssl" in a or "load-model" in a]
    assert "TRITON_ACCESS_KEY" not in {e["name"] for e in default["env"]}
    assert (
        one(None, "Ingress", "--set", "ingress.enabled=true")["metadata"]["annotations"][
            "nginx.ingress.kubernetes.io/backend-protocol"
        ]
        == "GRPC"
    )


@pytest.mark.parametrize(
    "values, error",
    [
        (
            ["server.access.modelControl=true"],
            "server.access.modelControl needs server.access.restrictedKey.secretName",
        ),
        (["server.access.tls.mutual=true"], "server.access.tls.mutual needs server.access.tls.secretName"),
        (
            ["server.access.restrictedKey.secretName=k", "server.access.restrictedKey.secretKey="],
            "needs server.access.restrictedKey.secretKey",
        ),
    ],
    ids=["model-control-without-a-key", "mutual-without-a-secret", "key-without-its-secret-key"],
)
def test_access_refuses_values_that_would_open_or_break_the_server(values, error):
    result = template(None, *[a for v in values for a in ("--set", v)])
    assert result.returncode != 0 and error in result.stderr, result.stderr


def test_the_charts_access_flags_work_with_this_machines_tritonserver(tmp_path):
    """ci/04-access-values.yaml's command line (access key, mutual TLS, model control), run here on an empty model
    repository, the key expanded as Kubernetes does and the Secret's files made with openssl: health answers without
    the key (the probes), the rest only with it, gRPC only over TLS with a client certificate."""
    import tritonclient.grpc as grpcclient
    from test_access import make_certs
    from tritonclient.utils import InferenceServerException

    container = server_container(ACCESS_VALUES)
    secret = tmp_path / "secret-files"  # the Secret's tls.crt, tls.key and ca.crt
    secret.mkdir()
    make_certs(secret, "tls")
    value = "k3y/+=="  # as a Secret's value could be
    container = {
        **container,
        "args": [a.replace("$(TRITON_ACCESS_KEY)", value).replace(TLS_DIR, str(secret)) for a in container["args"]],
    }
    repository = tmp_path / "empty-repository"
    repository.mkdir()
    command, ports = local_command(container, repository, tmp_path)
    http = f"http://127.0.0.1:{ports['http']}"
    with running(command, http + container["startupProbe"]["httpGet"]["path"], tmp_path / "server.log", 60):
        assert http_status(http + container["livenessProbe"]["httpGet"]["path"]) == 200
        with pytest.raises(urllib.error.HTTPError, match="403"):  # server metadata over HTTP: the key is missing
            urllib.request.urlopen(http + "/v2", timeout=5)
        request = urllib.request.Request(http + "/v2", headers={"segment-key": value})
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200
        header = "triton-grpc-protocol-segment-key"
        url = f"127.0.0.1:{ports['grpc']}"
        tls = dict(ssl=True, root_certificates=str(secret / "ca.crt"))
        mutual = dict(tls, private_key=str(secret / "client.key"), certificate_chain=str(secret / "client.crt"))
        client = grpcclient.InferenceServerClient(url, **mutual)
        assert client.is_server_ready()  # health: open, as the helm test calls it
        with pytest.raises(InferenceServerException, match=f"expecting header '{header}'"):
            client.get_server_metadata()
        assert client.get_server_metadata(headers={header: value}).name == "triton"
        with pytest.raises(InferenceServerException, match="failed to load 'absent'"):  # model control is on
            client.load_model("absent", headers={header: value})
        client.close()
        for options in ({}, tls):  # plain gRPC, and TLS without a client certificate
            client = grpcclient.InferenceServerClient(url, **options)
            with pytest.raises(InferenceServerException):
                client.is_server_ready(client_timeout=5)
            client.close()


def test_the_dashboard_shows_the_projects_and_tritons_metrics():
    configmap = one(CHART / "ci" / "02-production-values.yaml", "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(configmap["data"]["segment-video.json"])
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for metric in (
        "segment_video_frames_total",
        "segment_video_chunks_total",
        "nv_inference_request_duration_us",
        "nv_inference_request_success",
        "nv_inference_request_failure",
        "nv_inference_queue_duration_us",
        "nv_inference_count",
        "nv_gpu_utilization",
        "nv_gpu_memory_used_bytes",
    ):
        assert metric in exprs, metric


# ---- what the chart runs is what works ------------------------------------------------------------------------


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        # As servers do (tritonserver too): a port whose last connections are in TIME_WAIT can be listened on.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except OSError:
        return None


@contextlib.contextmanager
def running(command: list[str], ready_url: str, log_path: Path, timeout: float) -> Iterator[subprocess.Popen]:
    """A rendered tritonserver command, started and waited for until `ready_url` answers 200; stopped at the end
    (SIGINT, then SIGKILL to its process group) if the test has not stopped it."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while http_status(ready_url) != 200:
            assert proc.poll() is None, f"tritonserver exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"not ready after {timeout:.0f} s:\n{log_path.read_text()[-4000:]}"
            time.sleep(0.3)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def local_command(container: dict, repository: Path, workdir: Path) -> tuple[list[str], dict[str, int]]:
    """The rendered command line for this machine: its tritonserver and Python backend, the model repository built
    here, no GPU-only option, loopback addresses; the rendered ports where free, others where not."""
    from repo.serve import _pytriton_server

    assert container["command"] == ["tritonserver"]
    on_path = shutil.which("tritonserver")
    if on_path:
        binary, backend_args = on_path, []
    else:
        binary, backends = _pytriton_server(workdir)
        backend_args = [f"--backend-directory={backends}"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for name, port in ports.items():
        if not port_is_free(port):
            ports[name] = free_port()
            print(f"rendered {name} port {port} is taken here: using {ports[name]}")
    args = []
    for arg in container["args"]:
        option = arg.split("=", 1)[0]
        if option == "--cuda-memory-pool-byte-size":
            continue  # GPU-only: this machine has no GPU
        if option == "--model-repository":
            arg = f"--model-repository={repository}"
        for name, flag in (("http", "--http-port"), ("grpc", "--grpc-port"), ("metrics", "--metrics-port")):
            if option == flag:
                arg = f"{flag}={ports[name]}"
        args.append(arg)
    loopback = ["--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1"]
    return [str(binary), *args, *backend_args, *loopback], ports


def test_what_the_chart_runs_is_what_works(tmp_path):
    """The rendered Deployment's command, arguments, probes and ports, run here on the Python target's repository
    (the NGC image runs `repo.build --target dali`, whose native DALI backend this machine's server lacks)."""
    import tritonclient.grpc as grpcclient

    container = server_container()
    repository = tmp_path / "repo"
    build = [sys.executable, "-m", "repo.build", "--out", str(repository), "--random-weights", "0"]
    build += ["--model-size", "32", "32", "--frames-per-chunk", "4", "--decoder-instances", "1"]
    subprocess.run(build, check=True, cwd=ROOT, capture_output=True, timeout=120)
    command, ports = local_command(container, repository, tmp_path)
    exit_timeout = int(arg_value(container, "--exit-timeout-secs"))
    probes = {kind: container[f"{kind}Probe"]["httpGet"] for kind in ("startup", "liveness", "readiness")}
    assert {p["port"] for p in probes.values()} == {"http"}
    http = f"http://127.0.0.1:{ports['http']}"

    log_path = tmp_path / "server.log"
    # The startup probe's budget is minutes on a GPU; here the small CPU repository is ready well within 150 s.
    with running(command, http + probes["startup"]["path"], log_path, 150) as proc:
        assert http_status(http + probes["liveness"]["path"]) == 200
        assert http_status(http + probes["readiness"]["path"]) == 200
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{ports['grpc']}")
        assert client.is_server_ready(), "gRPC: server not ready"
        assert client.is_model_ready("segment_video"), "gRPC: segment_video not ready"
        client.close()
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['metrics']}/metrics", timeout=5) as response:
            metrics = response.read().decode()
        assert 'nv_inference_count{model="segment_video"' in metrics, metrics[:2000]

        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=exit_timeout)
        stopped_in = time.monotonic() - started
        assert proc.returncode == 0, f"exit code {proc.returncode}:\n{log_path.read_text()[-4000:]}"
        assert stopped_in < exit_timeout
