"""The job system in-process: every kind of reference, conflicts, hostile galleries (#21),
deletion by install record."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from lokal.errors import LokalError
from lokal.install.gallery import GallerySource
from lokal.install.manager import InstallManager
from tests.install.conftest import Fixture, blob, policy_for, sha, snapshot

GGUF = b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 16  # a header with no tensors, no metadata


def gguf(size: int, seed: int = 0) -> bytes:
    return GGUF + blob(size - len(GGUF), seed)


def make(fixture: Fixture, models: Path, index: list[dict[str, Any]] | str | None = None,
         **kw: Any) -> InstallManager:
    galleries = [GallerySource("lokal", "builtin")]
    if index is not None:
        text = index if isinstance(index, str) else yaml.safe_dump(index)
        fixture.add("/index.yaml", text.encode())
        galleries.append(GallerySource("test", f"{fixture.base}/index.yaml"))
    return InstallManager(models, policy_for(fixture, **kw), galleries)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def install(manager: InstallManager, ref: str, **kw: Any) -> Any:
    job = manager.start(ref, **kw)
    events = [e async for e in job.events()]
    return job, events


def test_install_by_gallery_name_writes_files_config_and_record(fixture: Fixture, tmp_path: Path) -> None:
    data = gguf(1 << 20)
    url = fixture.add("/files/tiny.gguf", data)
    fixture.add("/base.yaml", yaml.safe_dump({
        "config_file": "backend: llama-cpp\nparameters:\n  model: tiny.gguf\ncontext_size: 512\n",
        "prompt_templates": [{"name": "tiny-chat", "content": "{{.Input}}"}]}).encode())
    index = [{"name": "tiny", "url": f"{fixture.base}/base.yaml", "description": "a tiny model",
              "overrides": {"parameters": {"temperature": 0.3}},
              "files": [{"filename": "tiny.gguf", "uri": url, "sha256": sha(data)}]}]
    models = tmp_path / "models"
    manager = make(fixture, models, index)
    job, events = run(install(manager, "test@tiny", name="chat"))
    assert job.status == "done", job.error
    assert events[-1].status == "done" and events[-1].progress == 100
    progress = [e for e in events if e.status == "downloading"]
    assert progress and progress[-1].file_name == "tiny.gguf" and progress[-1].completed == len(data)
    assert (models / "tiny.gguf").read_bytes() == data
    config = yaml.safe_load((models / "chat.yaml").read_text())
    assert config["name"] == "chat" and config["parameters"] == {"model": "tiny.gguf", "temperature": 0.3}
    assert (models / "tiny-chat.tmpl").read_text() == "{{.Input}}"
    record = json.loads((models / ".lokal/installs/chat.json").read_text())
    assert record["files"] == ["tiny.gguf"] and record["templates"] == ["tiny-chat.tmpl"]
    assert job.status_dict()["processed"] is True and job.status_dict()["message"] == "completed"


def test_install_from_hugging_face_by_quant_tag_with_its_projector(fixture: Fixture, tmp_path: Path) -> None:
    fixture.state.hf["acme/Tiny-GGUF"] = {
        "Tiny-Q8_0.gguf": gguf(4096, 1), "Tiny-Q4_K_M.gguf": gguf(4096, 2),
        "mmproj-Tiny-f16.gguf": gguf(2048, 3), "README.md": b"hi"}
    models = tmp_path / "models"
    manager = make(fixture, models)
    job, _ = run(install(manager, "hf://acme/Tiny-GGUF:q8_0"))
    assert job.status == "done", job.error
    config = yaml.safe_load((models / "tiny.yaml").read_text())
    assert config["parameters"]["model"] == "Tiny-Q8_0.gguf" and config["mmproj"] == "mmproj-Tiny-f16.gguf"
    assert sorted(p.name for p in models.iterdir() if p.is_file()) == [
        "Tiny-Q8_0.gguf", "mmproj-Tiny-f16.gguf", "tiny.yaml"]
    job, _ = run(install(manager, "hf://acme/Tiny-GGUF", name="default"))  # Q4_K_M by default
    assert yaml.safe_load((models / "default.yaml").read_text())["parameters"]["model"] == "Tiny-Q4_K_M.gguf"
    job, _ = run(install(manager, "hf://acme/Tiny-GGUF:IQ2_XS", name="x"))
    assert job.error is not None and job.error.status == 404 and "Tiny-Q8_0.gguf" in job.error.message
    job, _ = run(install(manager, "huggingface://acme/Tiny-GGUF/Tiny-Q8_0.gguf", name="direct"))
    assert job.status == "done", job.error  # the file is there already, verified by its hash


def test_install_by_url_and_by_config_url(fixture: Fixture, tmp_path: Path) -> None:
    data = gguf(8192)
    url = fixture.add("/dl/Some-Model.Q4_0.gguf", data)
    fixture.add("/configs/mine.yaml", yaml.safe_dump({
        "name": "mine", "parameters": {"model": "m.gguf"},
        "download_files": [{"filename": "m.gguf", "uri": url, "sha256": sha(data)}]}).encode())
    models = tmp_path / "models"
    manager = make(fixture, models)
    job, _ = run(install(manager, url))
    assert job.status == "done", job.error and job.name == "Some-Model.Q4_0"
    job, _ = run(install(manager, f"{fixture.base}/configs/mine.yaml"))
    assert job.status == "done", job.error
    config = yaml.safe_load((models / "mine.yaml").read_text())
    assert config["parameters"]["model"] == "m.gguf" and "download_files" not in config


@pytest.mark.parametrize("ref, status, text", [
    ("tiyn", 404, "Did you mean: tiny"),
    ("nogallery@tiny", 404, "no gallery named"),
    ("ftp://example.org/x.gguf", 400, "scheme 'ftp'"),
    ("hf://", 400, "huggingface://owner/repo/file"),
    ("https://example.org/readme.txt", 400, ".gguf model file or a .yaml"),
    ("file:///etc/passwd", 400, "command line only"),
])
def test_bad_references_are_clear_errors(fixture: Fixture, tmp_path: Path, ref: str, status: int,
                                         text: str) -> None:
    manager = make(fixture, tmp_path / "models", [{"name": "tiny", "config_file": {}}])

    async def go() -> None:
        job = manager.start(ref)
        with pytest.raises(LokalError) as err:
            await job.planned()
        assert err.value.status == status and text in err.value.message

    run(go())


def test_a_gallery_that_does_not_parse_is_named_with_its_line(fixture: Fixture, tmp_path: Path) -> None:
    manager = make(fixture, tmp_path / "models", "- name: a\n  url: [unclosed\n- name: b\n")
    job, _ = run(install(manager, "b"))
    assert job.status == "error" and "gallery 'test'" in job.error.message and "line 3" in job.error.message


def test_installing_over_a_model_needs_force(fixture: Fixture, tmp_path: Path) -> None:
    url = fixture.add("/m.gguf", gguf(4096))
    models = tmp_path / "models"
    manager = make(fixture, models)
    assert run(install(manager, url, name="m"))[0].status == "done"
    job, _ = run(install(manager, url, name="m"))
    assert job.error is not None and job.error.status == 409 and "--force" in job.error.message
    assert run(install(manager, url, name="m", force=True))[0].status == "done"


def test_a_cancelled_install_leaves_the_folder_as_it_was_and_resumes(fixture: Fixture, tmp_path: Path) -> None:
    data = gguf(3 << 20)
    url = fixture.add("/slow.gguf", data, rate=3 << 20)
    models = tmp_path / "models"
    models.mkdir()
    manager = make(fixture, models)

    async def go() -> Any:
        job = manager.start(url, name="slow")
        async for event in job.events():
            if event.status == "downloading" and (event.completed or 0) > 0:
                job.cancel()
        return job

    job = run(go())
    assert job.status == "cancelled" and job.status_dict()["cancelled"] is True
    assert [p for p in models.iterdir() if not p.name.startswith(".")] == []
    time.sleep(0.5)  # the server notices the closed connection
    served = fixture.state.served["/slow.gguf"]
    fixture.state.behaviour["/slow.gguf"].rate = None
    assert run(install(manager, url, name="slow"))[0].status == "done"
    assert fixture.state.served["/slow.gguf"] - served <= len(data) - served + (1 << 20), fixture.state.hits
    assert (models / "slow.gguf").read_bytes() == data


def test_two_installs_of_one_file_download_it_once(fixture: Fixture, tmp_path: Path) -> None:
    data = gguf(2 << 20)
    url = fixture.add("/shared.gguf", data, rate=4 << 20)
    models = tmp_path / "models"
    manager = make(fixture, models, [{"name": "s", "config_file": {"parameters": {"model": "shared.gguf"}},
                                      "files": [{"filename": "shared.gguf", "uri": url, "sha256": sha(data)}]}])

    async def go() -> list[Any]:
        jobs = [manager.start("s", name="one"), manager.start("s", name="two")]
        return [await j.wait() for j in jobs]

    jobs = run(go())
    assert [j.status for j in jobs] == ["done", "done"], [j.error for j in jobs]
    assert fixture.state.gets("/shared.gguf") == 1


def test_a_full_disk_fails_planning_with_507(fixture: Fixture, tmp_path: Path) -> None:
    url = fixture.add("/m.gguf", gguf(4096))
    manager = make(fixture, tmp_path / "models")
    manager.downloader.free_bytes = lambda _: 10

    async def go() -> None:
        with pytest.raises(LokalError) as err:
            await manager.start(url).planned()
        assert err.value.status == 507 and "4096 bytes needed" in err.value.message

    run(go())


# Hostile galleries (#21) -----------------------------------------------------------------

def hostile(fixture: Fixture, **entry: Any) -> dict[str, Any]:
    url = fixture.add("/evil.gguf", gguf(4096, 9))
    base = {"name": "evil", "config_file": {"parameters": {"model": "evil.gguf"}},
            "files": [{"filename": "evil.gguf", "uri": url}]}
    base.update(entry)
    return base


@pytest.mark.parametrize("case, rule", [
    ({"files": [{"filename": "../escape.gguf", "uri": "{u}"}]}, "'..'"),
    ({"files": [{"filename": "/tmp/abs.gguf", "uri": "{u}"}]}, "absolute"),
    ({"files": [{"filename": "sub\\x.gguf", "uri": "{u}"}]}, "backslash"),
    ({"files": [{"filename": "link/x.gguf", "uri": "{u}"}]}, "symlink"),
    ({"config_file": {"parameters": {"model": "victim.gguf"}},
      "files": [{"filename": "victim.gguf", "uri": "{u}"}]}, "belongs to model victim"),
    ({"files": [{"filename": "victim.yaml", "uri": "{u}"}]}, "names a model config"),
    ({"files": [{"filename": ".lokal/installs/victim.json", "uri": "{u}"}]}, "hidden"),
    ({"files": [{"filename": "evil.gguf", "uri": "http://169.254.169.254/latest/meta-data"}]}, "metadata"),
    ({"files": [{"filename": "evil.gguf", "uri": "http://[::1]:1/x.gguf"}]}, "loopback"),
    ({"files": [{"filename": "evil.gguf", "uri": "{redirect}"}]}, "loopback"),
    ({"files": [{"filename": "evil.gguf", "uri": "{big}", "size": 10}]}, "size cap|not the 10"),
    ({"config_file": {"parameters": {"model": "../../etc/passwd"}}}, "'..'"),
    ({"config_file": {"parameters": {"model": "evil.gguf"}, "allow_remote_images": True}}, "allow_remote_images"),
    ({"config_file": {"parameters": {"model": "evil.gguf"}, "backend": "/bin/sh"}}, "not served by lokal"),
    ({"name": "victim"}, "exists already"),
])
def test_hostile_gallery_entries_are_refused_and_nothing_changes(fixture: Fixture, tmp_path: Path,
                                                                 case: dict[str, Any], rule: str) -> None:
    models = tmp_path / "models"
    models.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (models / "link").symlink_to(outside)
    (models / "victim.gguf").write_bytes(gguf(4096, 5))
    (models / "victim.yaml").write_text("name: victim\nparameters:\n  model: victim.gguf\n")
    other = policy_for(fixture).hf_endpoint  # the fixture: allowed only by 127.0.0.1, not ::1
    fixture.add("/big.gguf", gguf(8192))
    fixture.add("/redirect", b"", redirect="http://127.0.0.2:9/x.gguf")
    text = json.dumps(case).replace("{u}", f"{other}/evil.gguf").replace(
        "{redirect}", f"{other}/redirect").replace("{big}", f"{other}/big.gguf")
    entry = hostile(fixture, **json.loads(text))
    name = entry["name"]
    manager = make(fixture, models, [entry])
    before, outside_before = snapshot(models), snapshot(outside)
    job, _ = run(install(manager, name))
    assert job.status == "error", "installed a hostile entry"
    assert any(r in job.error.message for r in rule.split("|")), job.error.message
    assert 400 <= job.error.status < 500
    assert snapshot(models) == before and snapshot(outside) == outside_before


def test_a_plain_http_gallery_from_a_host_not_allowed_is_refused(fixture: Fixture, tmp_path: Path) -> None:
    fixture.add("/index.yaml", b"- name: x\n")
    manager = InstallManager(tmp_path / "models", policy_for(fixture).__class__(
        resolver=lambda h, p: ["93.184.215.14"]),
        [GallerySource("plain", "http://gallery.example/index.yaml")])
    job, _ = run(install(manager, "x"))
    assert job.error is not None and "plain http is allowed only" in job.error.message


# Deletion --------------------------------------------------------------------------------

def test_delete_removes_only_what_the_record_names_and_never_a_shared_file(fixture: Fixture,
                                                                           tmp_path: Path) -> None:
    data = gguf(4096)
    url = fixture.add("/m.gguf", data)
    models = tmp_path / "models"
    manager = make(fixture, models)
    assert run(install(manager, url, name="a"))[0].status == "done"
    (models / "b.yaml").write_text("name: b\nparameters:\n  model: m.gguf\n")  # shares the file
    (models / "unrelated.bin").write_bytes(b"keep me")
    for bad in ("../b", "a/../../x", "/etc/passwd", "..", "a\\b"):
        with pytest.raises(LokalError) as err:
            manager.remove(bad)
        assert err.value.status == 400
    with pytest.raises(LokalError) as err:
        manager.remove("nope")
    assert err.value.status == 404
    job = manager.remove("a")
    assert job.removed == ["a.yaml"] and job.kept == ["m.gguf (used by b)"]
    assert (models / "m.gguf").exists() and (models / "unrelated.bin").exists()
    job = manager.remove("b")  # a hand-written config: its config, and the file it names
    assert sorted(job.removed) == ["b.yaml", "m.gguf"]
    assert sorted(os.listdir(models)) == [".lokal", "unrelated.bin"]
