"""Hot reload with a Kubernetes ConfigMap volume: the kubelet never edits a file in place.

It writes every key into a new timestamped directory, points a `..data_tmp` symlink at it and
renames that over `..data` (one atomic step), then removes the old directory. The file the
server reads, `container.json`, is a symlink to `..data/container.json` that never changes
itself. The server must notice the swap and load the new container, as the kubelet does it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import httpx
from support import ServerProcess, minimal_container, wait_until


class ConfigMapVolume:
    """A directory laid out and updated the way the kubelet's atomic writer does it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.generation = 0
        root.mkdir()

    def write(self, files: dict[str, str]) -> None:
        self.generation += 1
        new = self.root / f"..2026_12_06_10_00_00.{self.generation:09d}"
        new.mkdir()
        for name, text in files.items():
            (new / name).write_text(text)
        old = (self.root / "..data").resolve() if (self.root / "..data").exists() else None
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(new.name)
        os.rename(tmp, self.root / "..data")  # the atomic swap
        for name in files:
            link = self.root / name
            if not link.is_symlink():
                link.symlink_to(f"..data/{name}")
        if old is not None:
            shutil.rmtree(old)


def version(server: ServerProcess) -> str:
    return httpx.get(server.url + "/healthz").json()["container"]["version"]


def test_container_from_a_configmap_reloads_when_the_kubelet_swaps_it(tmp_path):
    volume = ConfigMapVolume(tmp_path / "config")
    first = json.dumps(minimal_container(version="1"))
    volume.write({"container.json": first})
    with ServerProcess(tmp_path, volume.root / "container.json") as server:
        assert version(server) == "1"

        # same size and same mtime as the first file: only the swap itself tells them apart
        second = first.replace('"version": "1"', '"version": "2"')
        assert len(second) == len(first)
        stamp = os.stat(volume.root / "container.json").st_mtime_ns
        volume.write({"container.json": second})
        os.utime(volume.root / "container.json", ns=(stamp, stamp))
        wait_until(lambda: version(server) == "2", timeout=10)
        assert "container reloaded: test version 2" in server.logs()

        # a broken update is refused and the running container stays, as with a plain file
        volume.write({"container.json": "{ not json"})
        wait_until(lambda: "keeping the running one" in server.logs(), timeout=10)
        assert version(server) == "2"

        third = json.dumps(minimal_container(version="3"))
        volume.write({"container.json": third})
        wait_until(lambda: version(server) == "3", timeout=10)
