"""Screenshots of the web app's main pages, desktop and phone width, into docs/.

Starts a throwaway cluster (tests/cluster.yaml, in a temp data dir; or ``--cluster`` to
use one `dfms up` is running), makes an admin account with the CLI, fills it with a few
folders and files through the page itself, and photographs each page with Debian's
chromium driven by Playwright (as tests/integration/test_web_app.py does). Run it
under the shared lock:

    flock /tmp/dfms-heavy.lock .venv/bin/python tools/web_screenshots.py
"""

from __future__ import annotations

import argparse
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any

from playwright.sync_api import sync_playwright

from dfms.localstack.handle import ClusterHandle, attach, make_data_dir

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
PASSWORD = "a long passphrase for the screenshots"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def png(width: int, height: int) -> bytes:
    """A small gradient image, so the preview has something to show."""
    rows = b"".join(b"\0" + bytes(v for x in range(width) for v in
                                  (40 + x * 180 // width, 90 + y * 120 // height, 200))
                    for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b""))


def sample_files(folder: Path) -> dict[str, Path]:
    files = {
        "holiday.png": png(480, 300),
        "notes.md": b"# Notes\n\n- ship the web app\n- screenshots for the docs\n" * 20,
        "budget-2026.csv": b"month,amount\n" + b"".join(
            f"{m},{m * 137}\n".encode() for m in range(1, 13)),
        "report.pdf": b"%PDF-1.4\n% placeholder\n" + os.urandom(200_000),
        "dataset.bin": os.urandom(3 * 1024 * 1024),
    }
    paths = {}
    for name, data in files.items():
        paths[name] = folder / name
        paths[name].write_bytes(data)
    return paths


def make_admin(cluster: ClusterHandle, email: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DFMS_")}
    subprocess.run([sys.executable, "-m", "dfms", "--data-dir", str(cluster.data_dir), "admin",
                    "create-user", "--admin", "--email", email, "--password", PASSWORD],
                   check=True, capture_output=True, env=env, timeout=120)


def sign_in(page: Any, email: str) -> None:
    page.goto("/app/signin")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="My files").wait_for()


def action(page: Any, name: str, label: str) -> None:
    page.get_by_role("button", name=f"Actions for {name}", exact=True).click()
    page.get_by_role("dialog").get_by_role("button", name=label, exact=True).click()


def new_folder(page: Any, name: str) -> None:
    page.get_by_role("button", name="New folder").click()
    page.get_by_label("Folder name").fill(name)
    page.get_by_role("button", name="Create", exact=True).click()
    page.locator(f'#file-list tr[data-name="{name}"]').wait_for()


def populate(page: Any, files: dict[str, Path], v2: Path) -> str:
    """Folders, files, a second version, something in the trash; the share link made."""
    for name in ("Photos", "Projects", "Reports"):
        new_folder(page, name)
    page.set_input_files("#upload-input", [str(p) for p in files.values()])
    for name in files:
        page.locator(f'#file-list tr[data-name="{name}"]').wait_for()
    page.set_input_files("#upload-input", [str(v2)])
    page.locator(".uploads").get_by_text("uploaded as version 2").wait_for()
    page.get_by_role("button", name="Clear finished").click()
    action(page, "budget-2026.csv", "Share link…")
    page.get_by_label("Download limit").fill("10")
    page.get_by_role("button", name="Create link").click()
    link = str(page.locator("#share-link").input_value())
    page.get_by_role("button", name="Done").click()
    action(page, "dataset.bin", "Delete")
    page.get_by_role("button", name="Move to trash").click()
    page.locator('#file-list tr[data-name="dataset.bin"]').wait_for(state="detached")
    return link


def shoot(page: Any, out: Path, name: str) -> None:
    page.wait_for_timeout(300)  # let toasts and focus settle
    page.screenshot(path=str(out / f"web-{name}.png"))
    print(f"docs/web-{name}.png")


def desktop_pages(page: Any, out: Path, files: dict[str, Path], v2: Path) -> str:
    link = populate(page, files, v2)
    page.reload()
    page.locator('#file-list tr[data-name="notes.md"]').wait_for()
    shoot(page, out, "files-desktop")
    action(page, "notes.md", "Versions")
    page.get_by_role("dialog").locator("tr[data-version]").nth(1).wait_for()
    shoot(page, out, "versions-desktop")
    page.keyboard.press("Escape")
    action(page, "holiday.png", "Preview")
    page.get_by_role("dialog").locator("img").wait_for()
    shoot(page, out, "preview-desktop")
    page.keyboard.press("Escape")
    page.get_by_label("Search files and folders").fill("rep")
    page.locator("#search-results table").wait_for()
    shoot(page, out, "search-desktop")
    for path, name, ready in (("/app/trash", "trash", "#trash-list"),
                              ("/app/shares", "shares", "#share-list"),
                              ("/app/admin/users", "users", "#user-list"),
                              ("/app/admin/cluster", "cluster", "#node-list")):
        page.goto(path)
        page.locator(ready).wait_for()
        shoot(page, out, f"{name}-desktop")
    return link


def phone_pages(page: Any, out: Path, email: str) -> None:
    page.goto("/app/signin")
    page.get_by_label("Email").wait_for()
    shoot(page, out, "signin-phone")
    sign_in(page, email)
    page.locator('#file-list tr[data-name="notes.md"]').wait_for()
    shoot(page, out, "files-phone")
    page.get_by_role("button", name="Actions for holiday.png", exact=True).click()
    shoot(page, out, "menu-phone")


def run(base_url: str, cluster: ClusterHandle, out: Path) -> None:
    email = f"admin-{os.urandom(3).hex()}@example.com"
    make_admin(cluster, email)
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        files = sample_files(Path(tmp))
        (Path(tmp) / "v2").mkdir()
        v2 = Path(tmp) / "v2" / "notes.md"
        v2.write_bytes(files["notes.md"].read_bytes() + b"\n- and a second version\n")
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        desk = browser.new_context(base_url=base_url, viewport=DESKTOP,
                                   color_scheme="light").new_page()
        desk.goto("/app/signin")
        desk.get_by_label("Email").wait_for()
        shoot(desk, out, "signin-desktop")
        sign_in(desk, email)
        link = desktop_pages(desk, out, files, v2)
        stranger = browser.new_context(viewport=PHONE, color_scheme="light").new_page()
        stranger.goto(link)
        stranger.locator("#share-download").wait_for()
        shoot(stranger, out, "share-page-phone")
        phone_pages(browser.new_context(base_url=base_url, viewport=PHONE,
                                        color_scheme="light").new_page(), out, email)
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cluster", help="data dir (or cluster.json) of a running cluster")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    if args.cluster:
        cluster = attach(args.cluster)
        run(cluster.gateway_url, cluster, args.out)
        return
    data_dir = make_data_dir("dfms-shots-")
    cluster = ClusterHandle(data_dir=data_dir / "cluster")
    cluster.data_dir.mkdir()
    cluster.start(config=ROOT / "tests" / "cluster.yaml")
    try:
        run(cluster.gateway_url, cluster, args.out)
    finally:
        if cluster.stop() == 0:
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
