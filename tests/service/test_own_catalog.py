"""The README's "Your own catalog" commands, run as written on a tiny folder of images.

The commands are read from the README itself (its ```bash blocks in that section), so the test
fails when the README's commands stop working: `visnet index build` on a folder of category
folders, `visnet samples`, then `visnet serve`, a real process on a free port, searched and
browsed over HTTP. Only the paths change: the tiny folder for the example catalog, a temporary
folder for `data/my-index`; the committed default models run as the README names them.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from service_helpers import free_port, wait_ready

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "catalog"
PER_CATEGORY = 2  # images of each example category copied into the tiny folder


def readme_commands(section: str = "## Your own catalog") -> list[list[str]]:
    """The shell commands of the README section's ```bash blocks, continuation lines joined and
    comments dropped, each split into words."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(section)
    end = text.find("\n## ", start + len(section))
    body = text[start : end if end > 0 else len(text)]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", body, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(words)
    return commands


def tiny_folder(root: Path) -> Path:
    """A folder of category folders: the first images of each example category."""
    folder = root / "shop"
    for category in sorted(p for p in (EXAMPLE / "images").iterdir() if p.is_dir()):
        (folder / category.name).mkdir(parents=True)
        for image in sorted(category.iterdir())[:PER_CATEGORY]:
            shutil.copy(image, folder / category.name / image.name)
    return folder


def localised(words: list[str], catalog: Path, index: Path, port: int) -> list[str]:
    """A README command with this test's paths: the tiny folder for the example catalog (a CSV
    or the example's folder), a temporary index for data/my-index, and a free port to serve on."""
    visnet = Path(sys.executable).parent / "visnet"
    out = []
    for word in words:
        if word.endswith("bin/visnet"):
            word = str(visnet)
        elif word.startswith("examples/catalog"):
            word = str(catalog)
        elif word.startswith("data/my-index"):
            word = str(index) + word[len("data/my-index") :]
        elif word.startswith("models/"):
            word = str(ROOT / word)
        out.append(word)
    if out[1:2] == ["serve"]:
        out += ["--port", str(port)]
    return out


def test_readme_commands_index_a_folder_of_images_and_serve_it(tmp_path: Path) -> None:
    commands = readme_commands()
    verbs = [words[1:3] for words in commands]
    assert ["index", "build"] in verbs and ["serve", "--index"] in verbs, commands
    catalog, index, port = tiny_folder(tmp_path), tmp_path / "my-index", free_port()
    products = sorted(f"{p.parent.name}.{p.stem}" for p in catalog.glob("*/*"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("VISNET_")}
    env["VISNET_CACHE"] = str(tmp_path / "cache")  # the ONNX export lands here, not in ~/.cache

    for words in commands:
        command = localised(words, catalog, index, port)
        if command[1] != "serve":
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, f"{shlex.join(command)}\n{done.stdout}\n{done.stderr}"
            continue
        server = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        try:
            ready = wait_ready(port, server)
            assert ready.status_code == 200 and ready.json()["products"] == len(products)
            check_served(f"http://127.0.0.1:{port}", catalog, products)
        finally:
            server.send_signal(signal.SIGINT)
            output = server.communicate(timeout=30)[0].decode()
        assert server.returncode == 0, output


def check_served(base: str, catalog: Path, products: list[str]) -> None:
    """What a new user checks first: every product listed under its folder's id and category,
    each image found first by a search with its own file, look-alikes from the same catalog."""
    with httpx.Client(base_url=base, timeout=60) as client:
        listed = client.get("/v1/products", params={"limit": 100}).json()
        assert sorted(p["id"] for p in listed["products"]) == products
        assert all(p["id"].startswith(p["category"] + ".") for p in listed["products"])
        for image in sorted(catalog.glob("*/*"))[:3]:
            with image.open("rb") as f:
                found = client.post("/v1/search", files={"image": (image.name, f)})
            assert found.status_code == 200, found.text
            first = found.json()["queries"][0]["results"][0]
            assert first["product_id"] == f"{image.parent.name}.{image.stem}"
            assert client.get(first["image_url"]).status_code == 200
        similar = client.get(f"/v1/products/{products[0]}/similar", params={"k": 3}).json()
        assert similar["results"] and {r["product_id"] for r in similar["results"]} <= set(products)
        assert products[0] not in {r["product_id"] for r in similar["results"]}
