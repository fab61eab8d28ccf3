"""The "Publish from your backend" examples of docs/clients.md (curl, Node's
fetch, Python), each run as written against a real gateway; the README's
copy is checked to be the same text. (The Rust one runs in the crate's
tests: clients/rust/tests/readme.rs.)"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from typing import Dict, List, Tuple

import pytest

from conftest import ADMIN_KEY, ROOT

DOCS = (ROOT / "docs" / "clients.md").read_text()
SECTION = DOCS.split("## Publish from your backend", 1)[1].split("\n## ", 1)[0]


def blocks(text: str, lang: str) -> List[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def env(admin: str) -> Dict[str, str]:
    return {**os.environ, "HERALD_ADMIN": admin, "HERALD_KEY": ADMIN_KEY}


def history_titles(admin: str) -> int:
    from herald_client import Publisher

    with Publisher(admin, ADMIN_KEY) as herald:
        return len(herald.history("news")["messages"])


def test_curl(gateway: Tuple[str, str]) -> None:
    admin, _ = gateway
    [sh] = blocks(SECTION, "sh")
    before = history_titles(admin)
    out = subprocess.run(["bash", "-c", sh], env=env(admin), capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert '"id"' in out.stdout
    assert history_titles(admin) == before + 1


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_node_fetch(gateway: Tuple[str, str]) -> None:
    admin, _ = gateway
    [js] = blocks(SECTION, "js")
    out = subprocess.run(
        ["node", "--input-type=module", "-e", js], env=env(admin), capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    assert re.fullmatch(r"[0-9a-f]{8}-\d+\n", out.stdout), out.stdout


def test_python(gateway: Tuple[str, str]) -> None:
    admin, _ = gateway
    [py] = blocks(SECTION, "python")
    out = subprocess.run([sys.executable, "-c", py], env=env(admin), capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert re.fullmatch(r"[0-9a-f]{8}-\d+\n", out.stdout), out.stdout


def test_the_readme_shows_the_same_curl() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Publish from your backend", 1)[1].split("\n## ", 1)[0]
    assert blocks(section, "sh") == blocks(SECTION, "sh")
