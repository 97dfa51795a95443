"""Accessibility audit of the web app (dfms/web): the axe-core engine that
axe-playwright-python ships (a pinned copy of axe.min.js, injected into the page: nothing
is fetched) runs in Debian's chromium on every page a person sees, at a desktop width and
at a phone width, in the light and the dark colour scheme. A violation of impact
"serious" or "critical" fails the test; "moderate" and "minor" ones are printed. A
page wider than the viewport (scrolling sideways on a phone) fails it too.

axe's defaults (WCAG 2.0/2.1 A and AA and its best practices) plus WCAG 2.2's target size
(2.5.8, off by default in axe): a phone is used with a finger. axe does not judge the
keyboard focus indicator, so test_keyboard_focus_is_visible_and_not_hidden walks the
pages with Tab and checks it itself."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe

from tests.integration.test_web_app import (
    CHROMIUM,
    Page,
    _set_quota,
    api_get,
    expect_row,
    item_action,
    new_page,
    row,
    screenshots_on_failure,
    sign_up,
    sync_api,
    write,
)
from tests.support.api import PASSWORD
from tests.support.cluster import ClusterHandle

AXE_OPTIONS = {"resultTypes": ["violations"], "rules": {"target-size": {"enabled": True}}}
FAILING = ("serious", "critical")
# Non-text contrast (WCAG 1.4.11) of the focus ring against what is around it.
FOCUS_CONTRAST = 3.0
VIEWPORTS = {
    "desktop": ({"width": 1280, "height": 800}, "light"),
    "phone": ({"width": 390, "height": 844}, "light"),
    "desktop-dark": ({"width": 1280, "height": 800}, "dark"),
    "phone-dark": ({"width": 390, "height": 844}, "dark"),
}


@dataclass
class Viewport:
    name: str
    size: dict[str, int]
    scheme: str


@dataclass
class Audit:
    """axe on one page after another; what it found, by how much it matters."""
    viewport: Viewport
    axe: Any = field(default_factory=Axe)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    pages: list[str] = field(default_factory=list)

    def __call__(self, page: Page, name: str) -> None:
        self.pages.append(name)
        results = self.axe.run(page, options=AXE_OPTIONS).response
        assert len(results["passes"]) > 10, f"axe checked next to nothing on {name}"
        for v in results["violations"]:
            targets = "; ".join(" ".join(map(str, n["target"])) for n in v["nodes"][:6])
            line = (f"[{self.viewport.name}] {name}: {v['id']} ({v['impact']}) "
                    f"{v['help']} -- {len(v['nodes'])} node(s): {targets}")
            (self.failures if v["impact"] in FAILING else self.notes).append(line)
        for v in results["incomplete"]:  # what axe could not decide: for a person to look
            self.notes.append(f"[{self.viewport.name}] {name}: needs review: {v['id']} "
                              f"({len(v['nodes'])} node(s))")
        # Reflow (WCAG 1.4.10), which axe does not check: nothing scrolls sideways.
        wide = page.evaluate("document.documentElement.scrollWidth")
        if wide > self.viewport.size["width"]:
            self.failures.append(f"[{self.viewport.name}] {name}: the page is {wide} px "
                                 f"wide, wider than the {self.viewport.size['width']} px "
                                 "viewport (it scrolls sideways)")

    def check(self) -> None:
        print(f"[{self.viewport.name}] axe ran on {len(self.pages)} pages: "
              + ", ".join(self.pages))
        for line in self.notes:
            print(f"moderate/minor: {line}")
        assert not self.failures, "serious or critical accessibility violations:\n" + \
            "\n".join(self.failures)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def base_url(cluster: ClusterHandle) -> str:
    return cluster.gateway_url.rstrip("/")


@pytest.fixture(params=list(VIEWPORTS))
def viewport(request: pytest.FixtureRequest) -> Viewport:
    size, scheme = VIEWPORTS[request.param]
    return Viewport(request.param, size, scheme)


@pytest.fixture(scope="module")
def admin_email(cluster: ClusterHandle) -> str:
    """An administrator, made with the CLI as test_web_app.test_admin_pages does."""
    email = f"a11y-admin-{os.urandom(4).hex()}@example.com"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DFMS_")}
    subprocess.run([sys.executable, "-m", "dfms", "--data-dir", str(cluster.data_dir),
                    "admin", "create-user", "--admin", "--email", email, "--password",
                    PASSWORD], check=True, capture_output=True, env=env, timeout=120)
    return email


def open_page(browser: Any, base_url: str, viewport: Viewport) -> Page:
    page = new_page(browser, base_url)
    page.set_viewport_size(viewport.size)
    page.emulate_media(color_scheme=viewport.scheme)  # type: ignore[arg-type]
    return page


def close_dialog(page: Page) -> None:
    page.keyboard.press("Escape")
    sync_api.expect(page.locator("dialog")).to_have_count(0)


def test_sign_in_and_sign_up_pages(browser: Any, base_url: str, viewport: Viewport,
                                   tmp_path: Path) -> None:
    page = open_page(browser, base_url, viewport)
    audit = Audit(viewport)
    with screenshots_on_failure(tmp_path, page):
        page.goto("/app/signin")
        page.get_by_role("heading", name="Sign in to DFMS").wait_for()
        audit(page, "sign-in")
        page.get_by_label("Email").fill("nobody@example.com")
        page.get_by_label("Password").fill("not the password")
        page.get_by_role("button", name="Sign in").click()
        sync_api.expect(page.get_by_role("alert")).not_to_be_empty()
        audit(page, "sign-in, refused")
        page.get_by_role("link", name="Create an account").click()
        page.get_by_role("heading", name="Create your DFMS account").wait_for()
        audit(page, "sign-up")
        audit.check()


def files_with_uploads(page: Page, audit: Audit, tmp_path: Path) -> None:
    """A folder with files and a subfolder, the upload panel with one upload held in
    flight, then done; the new-folder dialog and a selection on the way."""
    audit(page, "files, empty")
    page.get_by_role("button", name="New folder").click()
    page.get_by_label("Folder name").fill("Projects")
    audit(page, "new folder dialog")
    page.get_by_role("button", name="Create", exact=True).click()
    expect_row(page, "Projects")
    held: list[Any] = []
    page.route("**/api/v1/files/upload", lambda route: held.append(route))
    page.set_input_files("#upload-input", [str(write(tmp_path, "report.txt", b"first\n"))])
    sync_api.expect(page.locator(".uploads")).to_contain_text("Uploading")
    audit(page, "files, upload in progress")
    for route in held:
        route.continue_()
    page.unroute("**/api/v1/files/upload")
    expect_row(page, "report.txt", "6 B")
    names = ["notes.txt", "photo.svg"]
    page.set_input_files("#upload-input", [str(write(tmp_path, "notes.txt", b"notes\n")),
                                           str(write(tmp_path, "photo.svg", b"<svg/>\n"))])
    for name in names:
        expect_row(page, name)
    audit(page, "files, uploads done")
    page.get_by_label("Select notes.txt").check()
    sync_api.expect(page.locator(".toolbar")).to_contain_text("1 selected")
    audit(page, "files, one selected")
    page.get_by_role("button", name="Clear selection").click()


def item_dialogs(page: Page, audit: Audit, tmp_path: Path) -> None:
    """The item menu and every dialog it opens."""
    page.get_by_role("button", name="Actions for report.txt", exact=True).click()
    page.get_by_role("dialog", name="report.txt").wait_for()
    audit(page, "item menu")
    close_dialog(page)
    second = tmp_path / "v2"
    second.mkdir()
    page.set_input_files("#upload-input", [str(write(second, "report.txt", b"second\n\n"))])
    sync_api.expect(page.locator(".uploads")).to_contain_text("uploaded as version 2")
    item_action(page, "report.txt", "Versions")
    sync_api.expect(page.get_by_role("dialog").locator("tr[data-version]")).to_have_count(2)
    audit(page, "versions dialog")
    close_dialog(page)
    item_action(page, "report.txt", "Preview")
    page.get_by_role("dialog").locator("pre").wait_for()
    audit(page, "preview dialog")
    close_dialog(page)
    for action, name in (("Rename", "rename dialog"), ("Move…", "move dialog"),
                         ("Delete", "delete confirmation"), ("Share link…", "share dialog")):
        item_action(page, "report.txt", action)
        page.get_by_role("dialog").get_by_role("button").first.wait_for()
        audit(page, name)
        close_dialog(page)


def share_and_trash(page: Page, audit: Audit) -> None:
    item_action(page, "notes.txt", "Share link…")
    page.get_by_label("Password").fill("open sesame")
    page.get_by_role("button", name="Create link").click()
    page.locator("#share-link").wait_for()
    audit(page, "share link created")
    page.get_by_role("button", name="Done").click()
    item_action(page, "photo.svg", "Delete")
    page.get_by_role("button", name="Move to trash").click()
    row(page, "photo.svg").wait_for(state="detached")
    page.get_by_role("link", name="Trash").click()
    page.locator('#trash-list tr[data-name="photo.svg"]').wait_for()
    audit(page, "trash")
    page.get_by_role("link", name="Shared links").click()
    page.locator("#share-list").wait_for()
    audit(page, "shared links")
    page.get_by_label("Search files and folders").press_sequentially("report", delay=30)
    page.locator("#search-results tr[data-name]").first.wait_for()
    audit(page, "search results")
    page.goto("/app/no-such-page")
    page.get_by_role("heading", name="Not found").wait_for()
    audit(page, "not found")


def test_files_pages_and_dialogs(browser: Any, base_url: str, cluster: ClusterHandle,
                                 viewport: Viewport, tmp_path: Path) -> None:
    page = open_page(browser, base_url, viewport)
    audit = Audit(viewport)
    with screenshots_on_failure(tmp_path, page):
        email = sign_up(page)
        files_with_uploads(page, audit, tmp_path)
        item_dialogs(page, audit, tmp_path)
        share_and_trash(page, audit)
        # Usage near the quota: the warning colours.
        quota = api_get(page, "/storage/usage")["used_bytes"] + 1
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, _set_quota(cluster.postgres_dsn, email, quota)).result()
        page.goto("/")
        sync_api.expect(page.locator(".usage")).to_contain_text("almost full")
        audit(page, "files, storage almost full")
        audit.check()


def share_link(page: Page, tmp_path: Path, name: str, password: str | None) -> str:
    page.set_input_files("#upload-input", [str(write(tmp_path, name, b"shared\n"))])
    expect_row(page, name)
    item_action(page, name, "Share link…")
    if password:
        page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Create link").click()
    link: str = page.locator("#share-link").input_value()
    page.get_by_role("button", name="Done").click()
    return link


def test_share_link_pages_signed_out(browser: Any, base_url: str, viewport: Viewport,
                                     tmp_path: Path) -> None:
    owner = open_page(browser, base_url, viewport)
    stranger = open_page(browser, base_url, viewport)
    audit = Audit(viewport)
    with screenshots_on_failure(tmp_path, owner, stranger):
        sign_up(owner)
        locked = share_link(owner, tmp_path, "locked.txt", "open sesame")
        plain = share_link(owner, tmp_path, "plain.txt", None)
        stranger.goto(locked)
        stranger.get_by_label("Password").wait_for()
        audit(stranger, "share link, password prompt")
        stranger.get_by_label("Password").fill("wrong")
        stranger.get_by_role("button", name="Open").click()
        sync_api.expect(stranger.get_by_role("alert")).to_contain_text("Wrong password")
        audit(stranger, "share link, wrong password")
        stranger.goto(plain)
        sync_api.expect(stranger.locator(".share-name")).to_have_text("plain.txt")
        audit(stranger, "share link, download")
        stranger.goto("/app/share/no-such-token")
        sync_api.expect(stranger.get_by_role("alert")).to_contain_text("does not exist")
        audit(stranger, "share link, unknown")
        audit.check()


def test_admin_pages(browser: Any, base_url: str, admin_email: str, viewport: Viewport,
                     tmp_path: Path) -> None:
    page = open_page(browser, base_url, viewport)
    audit = Audit(viewport)
    with screenshots_on_failure(tmp_path, page):
        page.goto("/app/signin")
        page.get_by_label("Email").fill(admin_email)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.get_by_role("link", name="Users").click()
        page.get_by_label("Filter by email").fill(admin_email)
        sync_api.expect(page.locator("#user-list tbody tr")).to_have_count(1)
        audit(page, "admin users")
        page.get_by_role("button", name=f"Edit {admin_email}").click()
        page.get_by_label("Quota (GiB)").wait_for()
        audit(page, "admin edit user dialog")
        close_dialog(page)
        page.get_by_role("link", name="Cluster").click()
        page.locator("#node-list tbody tr").first.wait_for()
        audit(page, "admin cluster")
        audit.check()


# --- keyboard focus ---------------------------------------------------------------------

FOCUS_PROBE = """() => {
  const a = document.activeElement;
  if (!a || a === document.body) return null;
  // A visually hidden file input shows its focus on its label (app.css).
  const shown = a.classList.contains("visually-hidden") && a.labels && a.labels.length
    ? a.labels[0] : a;
  const style = getComputedStyle(shown);
  let back = shown.parentElement;
  while (back && getComputedStyle(back).backgroundColor.match(/^rgba\\(.*, 0\\)$|transparent/)) {
    back = back.parentElement;
  }
  const r = shown.getBoundingClientRect();
  const x = Math.min(Math.max(r.left + r.width / 2, 0), innerWidth - 1);
  const y = Math.min(Math.max(r.top + r.height / 2, 0), innerHeight - 1);
  const top = document.elementFromPoint(x, y);
  return {
    name: (a.getAttribute("aria-label") || (a.labels && a.labels[0] && a.labels[0].textContent)
      || a.textContent || a.tagName).trim().slice(0, 40),
    width: style.outlineStyle === "none" ? 0 : parseFloat(style.outlineWidth),
    ring: style.outlineColor,
    around: back ? getComputedStyle(back).backgroundColor : "rgb(255, 255, 255)",
    inView: r.bottom > 0 && r.top < innerHeight && r.right > 0 && r.left < innerWidth,
    covered: !!top && !shown.contains(top) && !top.contains(shown),
  };
}"""


def _rgb(css: str) -> tuple[float, float, float]:
    parts = [float(p) for p in re.findall(r"[\d.]+", css)[:3]]
    return parts[0], parts[1], parts[2]


def contrast(a: str, b: str) -> float:
    def lum(css: str) -> float:
        chans = [c / 255 for c in _rgb(css)]
        lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in chans]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]
    hi, lo = sorted((lum(a), lum(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def tab_through(page: Page, where: str, steps: int, problems: list[str]) -> list[str]:
    """Press Tab ``steps`` times; every element that takes the focus must show a ring of
    at least 2 px with 3:1 against its surroundings and not be hidden behind anything."""
    seen: list[str] = []
    for _ in range(steps):
        page.keyboard.press("Tab")
        info = page.evaluate(FOCUS_PROBE)
        if info is None:
            continue
        seen.append(info["name"])
        ratio = contrast(info["ring"], info["around"])
        what = f"{where}: {info['name']!r}"
        if info["width"] < 2:
            problems.append(f"{what} has no focus ring")
        elif ratio < FOCUS_CONTRAST:
            problems.append(f"{what}: focus ring {info['ring']} on {info['around']} is "
                            f"{ratio:.2f}:1")
        if not info["inView"] or info["covered"]:
            problems.append(f"{what} is focused out of sight (covered or off screen)")
    return seen


def test_keyboard_focus_is_visible_and_not_hidden(browser: Any, base_url: str,
                                                  viewport: Viewport, tmp_path: Path) -> None:
    """Tab from the top of the sign-in page and of a folder whose finished uploads are
    still listed in the panel, then through the item menu."""
    page = open_page(browser, base_url, viewport)
    problems: list[str] = []
    with screenshots_on_failure(tmp_path, page):
        page.goto("/app/signin")
        page.get_by_role("heading", name="Sign in to DFMS").wait_for()
        seen = tab_through(page, "sign-in", 6, problems)  # from the email field, round
        assert "Skip to content" in seen and "Create an account" in seen, seen
        sign_up(page)
        names = [f"file-{i}.txt" for i in range(8)]
        page.set_input_files("#upload-input", [str(write(tmp_path, n, b"x\n")) for n in names])
        for name in names:
            expect_row(page, name)
        page.get_by_role("link", name="DFMS", exact=True).focus()
        seen = tab_through(page, "files", 20 + 3 * len(names), problems)
        assert "Actions for file-7.txt" in seen and "Clear finished" in seen, seen
        # Sorting from the keyboard repaints the table; the focus stays on the button.
        page.locator('button[data-sort="size"]').focus()
        page.keyboard.press("Enter")
        sync_api.expect(page.locator("th[aria-sort=ascending]")).to_contain_text("Size")
        sync_api.expect(page.locator('button[data-sort="size"]')).to_be_focused()
        page.get_by_role("button", name="Actions for file-0.txt").focus()
        page.keyboard.press("Enter")
        page.get_by_role("dialog").wait_for()
        tab_through(page, "item menu", 8, problems)
        close_dialog(page)
        assert not problems, "keyboard focus problems:\n" + "\n".join(problems)
