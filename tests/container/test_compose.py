"""compose.yaml with Dify's override, as shipped: `compose up` fills the named models volume
with the demo models on first start, and a second service reaches lokal by its service
name; a container on "Dify's" network (an external network, as Dify's compose project
makes) reaches it at http://lokal:8080 too.

Test-only, in an extra override file: the image the tier built (no second build), pip
reading the demo wheels from a mounted folder instead of the index, and the client service.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.ports import free_port
from tests.container.conftest import ROOT, Engine, Image, unavailable, wait_ready

# The client: waits for lokal by service name, asks the demo chat model, prints the answer.
CLIENT = """\
import json, time, urllib.request
for _ in range(600):
    try:
        urllib.request.urlopen("http://lokal:8080/readyz", timeout=5)
        break
    except Exception:
        time.sleep(1)
body = {"model": "gpt-3.5-turbo", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}]}
request = urllib.request.Request("http://lokal:8080/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
answer = json.load(urllib.request.urlopen(request, timeout=300))
print("client got:", json.dumps(answer["choices"][0]["message"]))
"""


@dataclass
class Project:
    engine: Engine
    name: str
    files: list[str]
    env: dict[str, str]
    base: str

    def compose(self, *args: str, timeout: float = 600) -> str:
        command = [*self.engine.compose, "-p", self.name]
        for path in self.files:
            command += ["-f", path]
        result = subprocess.run([*command, *args], cwd=ROOT, env=self.env, capture_output=True,
                                text=True, timeout=timeout)
        assert result.returncode == 0, (f"{' '.join(command + list(args))}:\n"
                                        f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result.stdout

    def container(self, service: str) -> str:
        found = self.engine("ps", "-a", "--filter", f"label=com.docker.compose.project={self.name}",
                            "--filter", f"label=com.docker.compose.service={service}",
                            "--format", "{{.Names}}").stdout.split()
        assert len(found) == 1, found
        return found[0]

    def logs(self, service: str) -> str:
        result = self.engine("logs", self.container(service), check=False)
        return result.stdout + result.stderr


@pytest.fixture(scope="module")
def project(engine: Engine, image: Image, demo_wheels: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    if not engine.compose:
        unavailable("podman-compose is not installed")
    name = f"lokaltest{os.getpid()}"
    dify = f"{name}-dify"
    engine("network", "create", dify)
    override = tmp_path_factory.mktemp("compose") / "test.yaml"
    override.write_text(yaml.safe_dump({"services": {
        "lokal": {"image": image.name,
                  "environment": {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "/wheels", "THREADS": "2"},
                  "volumes": [f"{demo_wheels}:/wheels:ro"]},
        "client": {"image": image.name, "depends_on": ["lokal"], "restart": "no",
                   "command": ["python3", "-c", CLIENT]},
    }}))
    port = free_port()
    env = dict(engine.env, LOKAL_PORT=str(port), DIFY_NETWORK=dify)
    project = Project(engine, name, ["compose.yaml", "deploy/dify/compose.dify.yaml", str(override)],
                      env, f"http://127.0.0.1:{port}")
    try:
        project.compose("up", "-d")
        yield project
    finally:
        containers = engine("ps", "-a", "-q", "--filter", f"label=com.docker.compose.project={name}").stdout.split()
        engine.remove(*containers)  # with their anonymous volumes (the client's /models)
        project.compose("down", "-v")
        engine("volume", "rm", "-f", f"{name}_models", check=False)
        engine("network", "rm", f"{name}_default", check=False)
        engine("network", "rm", dify, check=False)


def test_compose_up_serves_the_demo_models_from_the_volume(project: Project) -> None:
    wait_ready(project.base, 600, lambda: project.logs("lokal"))
    listed = {m["id"] for m in httpx.get(f"{project.base}/v1/models", timeout=30).json()["data"]}
    assert {"gpt-3.5-turbo", "text-embedding-ada-002"} <= listed
    files = project.engine("exec", project.container("lokal"), "ls", "-A", "/models").stdout.split()
    assert {"SmolLM2-135M-Instruct.Q4_1.gguf", "gpt-3.5-turbo.yaml", ".demo-packages"} <= set(files)
    # The small image has no sentence-transformers: the demo's embedding model says so.
    assert "needs the sentence-transformers extra" in project.logs("lokal")


def test_a_second_service_reaches_lokal_by_service_name(project: Project) -> None:
    client = project.container("client")
    deadline = time.monotonic() + 600
    while project.engine.inspect(client)["State"]["Status"] != "exited":
        assert time.monotonic() < deadline, project.logs("client")
        time.sleep(1)
    assert project.engine.inspect(client)["State"]["ExitCode"] == 0, project.logs("client")
    line = next(line for line in project.logs("client").splitlines() if line.startswith("client got:"))
    assert json.loads(line.split(":", 1)[1])["content"]


def test_dify_s_network_reaches_lokal_at_its_service_name(project: Project, image: Image) -> None:
    wait_ready(project.base, 600, lambda: project.logs("lokal"))
    code = ("import json, urllib.request; print(json.dumps([m['id'] for m in json.load("
            "urllib.request.urlopen('http://lokal:8080/v1/models', timeout=30))['data']]))")
    result = project.engine("run", "--rm", "--network", project.env["DIFY_NETWORK"], image.name,
                            "python3", "-c", code)
    assert "gpt-3.5-turbo" in json.loads(result.stdout.strip().splitlines()[-1])


def test_the_health_check_passes(project: Project) -> None:
    wait_ready(project.base, 600, lambda: project.logs("lokal"))
    lokal = project.container("lokal")
    if project.engine.name == "podman":
        run = project.engine("healthcheck", "run", lokal, check=False)
        assert run.returncode == 0, run.stdout + run.stderr
    deadline = time.monotonic() + 120
    while True:
        state = project.engine.inspect(lokal)["State"]
        health = state.get("Health") or state.get("Healthcheck")
        if health["Status"] == "healthy" or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert health["Status"] == "healthy", health
