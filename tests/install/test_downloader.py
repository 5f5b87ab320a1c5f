"""The downloader against a real loopback server: resume, retries, hashes, disk, sharing,
cancel; and the outbound rules (#21) that every fetch obeys."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from lokal.errors import InsufficientStorage
from lokal.transfer.downloader import Cancelled, ChecksumMismatch, DownloadError, Downloader, partial_path
from lokal.transfer.netguard import OutboundPolicy, URLRefused
from tests.install.conftest import Fixture, blob, policy_for, sha

SIZE = 3 << 20


def test_a_cut_download_resumes_and_transfers_only_the_rest(fixture: Fixture, tmp_path: Path) -> None:
    data = blob(SIZE)
    url = fixture.add("/m.gguf", data, cut_after=SIZE // 3)
    target = tmp_path / "m.gguf"
    Downloader(policy_for(fixture), backoff=0.01).fetch(url, target, sha256=sha(data))
    assert target.read_bytes() == data
    assert fixture.state.served["/m.gguf"] == SIZE  # a third, then the other two thirds
    ranges = [r for m, p, r in fixture.state.hits if p == "/m.gguf"]
    assert ranges == [None, f"bytes={SIZE // 3}-"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]


def test_a_cut_with_no_retries_left_keeps_the_partial_for_the_next_run(fixture: Fixture, tmp_path: Path) -> None:
    data = blob(SIZE)
    url = fixture.add("/m.gguf", data, cut_after=SIZE // 2)
    target = tmp_path / "m.gguf"
    with pytest.raises(DownloadError, match="partial file is kept"):
        Downloader(policy_for(fixture), retries=0).fetch(url, target)
    assert not target.exists() and partial_path(target).stat().st_size == SIZE // 2
    Downloader(policy_for(fixture)).fetch(url, target, sha256=sha(data))  # next run
    assert target.read_bytes() == data and fixture.state.served["/m.gguf"] == SIZE


def test_a_server_that_cannot_resume_restarts_from_zero(fixture: Fixture, tmp_path: Path) -> None:
    data = blob(SIZE)
    url = fixture.add("/m.gguf", data, cut_after=SIZE // 2, no_range=True)
    target = tmp_path / "m.gguf"
    Downloader(policy_for(fixture), backoff=0.01).fetch(url, target, sha256=sha(data))
    assert target.read_bytes() == data
    assert fixture.state.served["/m.gguf"] == SIZE // 2 + SIZE


def test_a_stall_is_retried(fixture: Fixture, tmp_path: Path) -> None:
    data = blob(SIZE)
    url = fixture.add("/m.gguf", data, stall_after=1 << 20, stall_seconds=2)
    target = tmp_path / "m.gguf"
    started = time.monotonic()
    Downloader(policy_for(fixture, stall_timeout=0.5), backoff=0.01).fetch(url, target, sha256=sha(data))
    assert target.read_bytes() == data and time.monotonic() - started < 10
    assert [r for m, p, r in fixture.state.hits if p == "/m.gguf"][1] == f"bytes={1 << 20}-"


def test_a_sha_mismatch_deletes_the_file_and_names_both_hashes(fixture: Fixture, tmp_path: Path) -> None:
    data = blob(SIZE)
    wrong = blob(SIZE, seed=1)
    url = fixture.add("/m.gguf", data, wrong=wrong)
    with pytest.raises(ChecksumMismatch) as err:
        Downloader(policy_for(fixture)).fetch(url, tmp_path / "m.gguf", sha256=sha(data))
    assert sha(data) in err.value.message and sha(wrong) in err.value.message
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_is_refused_before_downloading(fixture: Fixture, tmp_path: Path) -> None:
    url = fixture.add("/m.gguf", blob(SIZE))
    downloader = Downloader(policy_for(fixture), free_bytes=lambda _: 1000)
    with pytest.raises(InsufficientStorage, match=f"{SIZE} bytes needed.*1000 bytes free") as err:
        downloader.fetch(url, tmp_path / "m.gguf")
    assert err.value.status == 507
    assert list(tmp_path.iterdir()) == []  # refused after the headers: not a byte written


def test_two_requests_for_one_file_share_one_download(fixture: Fixture, tmp_path: Path) -> None:
    data = blob(SIZE)
    url = fixture.add("/m.gguf", data, rate=6 << 20)
    downloader = Downloader(policy_for(fixture))
    results: list[object] = []
    seen: list[list[int]] = [[], []]

    def get(i: int) -> None:
        results.append(downloader.fetch(url, tmp_path / "m.gguf", sha256=sha(data),
                                        on_progress=lambda done, total: seen[i].append(done)))

    threads = [threading.Thread(target=get, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.1)
    for t in threads:
        t.join(30)
    assert results == [tmp_path / "m.gguf"] * 2
    assert fixture.state.gets("/m.gguf") == 1 and fixture.state.served["/m.gguf"] == SIZE
    assert seen[1] and seen[1][-1] == SIZE  # the joiner saw the progress too


def test_cancel_keeps_the_partial_and_the_next_fetch_resumes(fixture: Fixture, tmp_path: Path) -> None:
    data = blob(SIZE)
    url = fixture.add("/m.gguf", data, rate=4 << 20)
    target = tmp_path / "m.gguf"
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    with pytest.raises(Cancelled):
        Downloader(policy_for(fixture)).fetch(url, target, cancel=cancel)
    time.sleep(0.3)
    assert not target.exists()
    kept = partial_path(target).stat().st_size
    assert 0 < kept < SIZE
    fixture.state.behaviour["/m.gguf"].rate = None
    Downloader(policy_for(fixture)).fetch(url, target, sha256=sha(data))
    assert target.read_bytes() == data
    assert fixture.state.served["/m.gguf"] < SIZE + (1 << 20)  # the rest, not the whole again


# Outbound rules -------------------------------------------------------------------------

@pytest.mark.parametrize("location, rule", [
    ("http://127.0.0.1:{port}/m.gguf", "loopback"),
    ("http://169.254.169.254/latest/meta-data/", "metadata"),
    ("http://[::1]:{port}/m.gguf", "loopback"),
    ("https://10.1.2.3/m.gguf", "private"),
    ("file:///etc/passwd", "scheme"),
])
def test_redirects_are_checked_again(fixture: Fixture, tmp_path: Path, location: str, rule: str) -> None:
    fixture.add("/m.gguf", b"x" * 10)
    url = fixture.add("/go", b"", redirect=location.format(port=fixture.port))
    # Only the redirecting host itself is allowed, by host:port: its redirect target is not.
    policy = OutboundPolicy(allowed_hosts=frozenset({f"127.0.0.1:{fixture.port}"}))
    if "127.0.0.1" in location:  # the same host, but another port is not allowed
        url = fixture.add("/go", b"", redirect=f"http://127.0.0.1:{fixture.port + 1}/m.gguf")
    with pytest.raises(URLRefused, match=rule if "127.0.0.1" not in location else "plain http|loopback"):
        Downloader(policy).fetch(url, tmp_path / "m.gguf")
    assert list(tmp_path.iterdir()) == []


def test_a_host_resolving_to_a_private_address_is_refused(tmp_path: Path) -> None:
    policy = OutboundPolicy(resolver=lambda host, port: ["192.168.1.20"])
    with pytest.raises(URLRefused, match="internal.example resolves to 192.168.1.20, a private address"):
        policy.check("https://internal.example/m.gguf")
    policy = OutboundPolicy(resolver=lambda host, port: ["93.184.215.14", "fd00::1"])
    with pytest.raises(URLRefused, match="unique-local"):
        policy.check("https://mixed.example/m.gguf")


def test_plain_http_and_loopback_need_the_allow_list() -> None:
    with pytest.raises(URLRefused, match="plain http is allowed only to hosts in ALLOWED_DOWNLOAD_HOSTS"):
        OutboundPolicy(resolver=lambda h, p: ["93.184.215.14"]).check("http://example.org/x")
    with pytest.raises(URLRefused, match="loopback"):
        OutboundPolicy().check("https://127.0.0.1/x")
    assert OutboundPolicy(allowed_hosts=frozenset({"127.0.0.1"})).check("http://127.0.0.1:9/x").address == "127.0.0.1"


def test_an_oversized_file_is_refused(fixture: Fixture, tmp_path: Path) -> None:
    url = fixture.add("/big.gguf", blob(SIZE))
    with pytest.raises(URLRefused, match="over the size cap"):
        Downloader(policy_for(fixture, max_bytes=SIZE - 1)).fetch(url, tmp_path / "big.gguf")
    assert list(tmp_path.iterdir()) == []
