"""The web app (dfms/web) in a real browser: Debian's chromium driven by Playwright,
against the session's cluster. Each scenario signs up its own account through the page
and saves a screenshot of every page it has open under its tmp dir when it fails."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.support.api import PASSWORD
from tests.support.cluster import ClusterHandle

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)",
                allow_module_level=True)

Page = Any  # playwright.sync_api.Page: the module is only importable when installed
MIB = 1024 * 1024
TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def base_url(cluster: ClusterHandle) -> str:
    return cluster.gateway_url.rstrip("/")


@contextlib.contextmanager
def screenshots_on_failure(tmp_path: Path, *pages: Page) -> Iterator[None]:
    """Screenshots of every page when the scenario fails; and it fails when the browser
    refused anything under the Content-Security-Policy (new_page records the reports)."""
    try:
        yield
        refused = [m for page in pages for m in page.csp_reports]
        assert not refused, f"the Content-Security-Policy refused: {refused}"
    except BaseException:
        for i, page in enumerate(pages):
            with contextlib.suppress(Exception):
                page.screenshot(path=str(tmp_path / f"failure-{i}.png"), full_page=True)
        print(f"screenshots of the failure: {tmp_path}")
        raise


def new_page(browser: Any, base_url: str) -> Page:
    context = browser.new_context(base_url=base_url, accept_downloads=True)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.csp_reports = []
    page.on("pageerror", lambda exc: print(f"page error: {exc}"))
    page.on("console", lambda msg: page.csp_reports.append(msg.text)
            if "Content Security Policy" in msg.text else None)
    return page


def sign_up(page: Page) -> str:
    email = f"web-{os.urandom(6).hex()}@example.com"
    page.goto("/")
    page.wait_for_url(re.compile(r"/app/signin"))
    page.get_by_role("link", name="Create an account").click()
    page.get_by_label("Email").fill(email)
    page.get_by_label("Name").fill("Web Tester")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()
    page.get_by_role("heading", name="My files").wait_for()
    return email


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def row(page: Page, name: str) -> Any:
    return page.locator(f'#file-list tr[data-name="{name}"]')


def expect_row(page: Page, name: str, size_text: str | None = None) -> None:
    target = row(page, name)
    target.wait_for()
    if size_text is not None:
        sync_api.expect(target.locator("td.size")).to_have_text(size_text)


def item_action(page: Page, name: str, action: str) -> None:
    page.get_by_role("button", name=f"Actions for {name}", exact=True).click()
    page.get_by_role("dialog").get_by_role("button", name=action, exact=True).click()


def drop_file(page: Page, name: str, data: bytes) -> None:
    """A real drop event on the drop zone, carrying a File, as a drag from the desktop does."""
    page.evaluate("""([name, bytes]) => {
        const dt = new DataTransfer();
        dt.items.add(new File([new Uint8Array(bytes)], name, {type: "text/plain"}));
        const zone = document.getElementById("dropzone");
        zone.dispatchEvent(new DragEvent("dragover", {dataTransfer: dt, bubbles: true}));
        zone.dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true}));
    }""", [name, list(data)])


def download(page: Page, name: str, action: str = "Download") -> bytes:
    with page.expect_download() as info:
        item_action(page, name, action)
    path = info.value.path()
    assert path is not None
    return Path(path).read_bytes()


def api_get(page: Page, path: str) -> Any:
    """An API call with the page's own session (what the app stored in localStorage)."""
    return page.evaluate("""async (path) => {
        const s = JSON.parse(localStorage.getItem("dfms.session"));
        const r = await fetch("/api/v1" + path, {headers: {Authorization: "Bearer " + s.access}});
        return r.json();
    }""", path)


def test_sign_up_sign_out_and_sign_in(browser: Any, base_url: str, tmp_path: Path) -> None:
    page = new_page(browser, base_url)
    with screenshots_on_failure(tmp_path, page):
        email = sign_up(page)
        page.get_by_role("button", name="Sign out").click()
        page.wait_for_url(re.compile(r"/app/signin"))
        page.get_by_label("Email").fill(email)
        page.get_by_label("Password").fill("not the password")
        page.get_by_role("button", name="Sign in").click()
        sync_api.expect(page.get_by_role("alert")).to_contain_text("incorrect")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.get_by_role("heading", name="My files").wait_for()
        # The session survives a reload (tokens in localStorage).
        page.reload()
        page.get_by_role("heading", name="My files").wait_for()


def test_upload_by_picker_and_drop_then_download(browser: Any, base_url: str,
                                                 tmp_path: Path) -> None:
    page = new_page(browser, base_url)
    with screenshots_on_failure(tmp_path, page):
        sign_up(page)
        one = write(tmp_path, "one.bin", os.urandom(3 * MIB))
        two = write(tmp_path, "two notes.txt", b"hello from the picker\n" * 100)
        page.set_input_files("#upload-input", [str(one), str(two)])
        drop_file(page, "dropped.txt", b"dropped into the page\n")
        expect_row(page, "one.bin", "3.0 MiB")
        expect_row(page, "two notes.txt", "2.1 KiB")
        expect_row(page, "dropped.txt", "22 B")
        assert len(page.locator(".upload.done").all()) == 3
        # Search as you type: results without pressing Enter.
        page.get_by_label("Search files and folders").press_sequentially("note", delay=50)
        page.wait_for_url(re.compile(r"/app/search\?q=note"))
        best = page.locator("#search-results tr[data-name]").first
        sync_api.expect(best).to_have_attribute("data-name", "two notes.txt")
        page.get_by_role("link", name="My files").click()
        body = download(page, "one.bin")
        assert hashlib.sha256(body).hexdigest() == hashlib.sha256(one.read_bytes()).hexdigest()


def test_folder_move_rename_delete_restore(browser: Any, base_url: str,
                                           tmp_path: Path) -> None:
    page = new_page(browser, base_url)
    with screenshots_on_failure(tmp_path, page):
        sign_up(page)
        page.set_input_files("#upload-input", [str(write(tmp_path, "plan.txt", b"plan\n"))])
        expect_row(page, "plan.txt", "5 B")
        page.get_by_role("button", name="New folder").click()
        page.get_by_label("Folder name").fill("Projects")
        page.get_by_role("button", name="Create", exact=True).click()
        expect_row(page, "Projects")
        # Move: pick the target folder in the picker.
        item_action(page, "plan.txt", "Move…")
        dialog = page.get_by_role("dialog")
        dialog.get_by_role("button", name="Projects", exact=True).click()
        sync_api.expect(dialog).to_contain_text("In: Projects")
        dialog.get_by_role("button", name="Move here").click()
        row(page, "plan.txt").wait_for(state="detached")
        page.locator("#file-list").get_by_role("link", name="Projects", exact=True).click()
        page.get_by_role("heading", name="Projects").wait_for()
        sync_api.expect(page.get_by_role("navigation", name="Breadcrumb")).to_contain_text(
            "My files")
        expect_row(page, "plan.txt", "5 B")
        # Rename.
        item_action(page, "plan.txt", "Rename")
        page.get_by_label("New name").fill("plan-v2.txt")
        page.get_by_role("button", name="Rename", exact=True).click()
        expect_row(page, "plan-v2.txt")
        # Delete to the trash, then restore from it.
        item_action(page, "plan-v2.txt", "Delete")
        page.get_by_role("button", name="Move to trash").click()
        row(page, "plan-v2.txt").wait_for(state="detached")
        page.get_by_role("link", name="Trash").click()
        trash_row = page.locator('#trash-list tr[data-name="plan-v2.txt"]')
        sync_api.expect(trash_row).to_contain_text("/Projects")
        page.get_by_role("button", name="Restore plan-v2.txt").click()
        trash_row.wait_for(state="detached")
        page.get_by_role("link", name="My files").click()
        page.locator("#file-list").get_by_role("link", name="Projects", exact=True).click()
        expect_row(page, "plan-v2.txt", "5 B")


def test_new_version_and_restore_the_old_one(browser: Any, base_url: str,
                                             tmp_path: Path) -> None:
    page = new_page(browser, base_url)
    with screenshots_on_failure(tmp_path, page):
        sign_up(page)
        first = tmp_path / "v1"
        first.mkdir()
        second = tmp_path / "v2"
        second.mkdir()
        page.set_input_files("#upload-input", [str(write(first, "report.txt", b"first\n"))])
        expect_row(page, "report.txt", "6 B")
        page.set_input_files("#upload-input",
                             [str(write(second, "report.txt", b"second draft\n"))])
        expect_row(page, "report.txt", "13 B")
        sync_api.expect(page.locator(".uploads")).to_contain_text("uploaded as version 2")
        item_action(page, "report.txt", "Versions")
        dialog = page.get_by_role("dialog")
        sync_api.expect(dialog.locator("tr[data-version]")).to_have_count(2)
        dialog.get_by_role("button", name="Restore version 1").click()
        sync_api.expect(dialog.locator("tr[data-version]")).to_have_count(3)
        dialog.get_by_role("button", name="Close").click()
        expect_row(page, "report.txt", "6 B")
        assert download(page, "report.txt") == b"first\n"


def test_share_link_opens_in_a_signed_out_browser(browser: Any, base_url: str,
                                                  tmp_path: Path) -> None:
    page = new_page(browser, base_url)
    stranger = new_page(browser, base_url)
    with screenshots_on_failure(tmp_path, page, stranger):
        sign_up(page)
        data = os.urandom(MIB + 7)
        page.set_input_files("#upload-input", [str(write(tmp_path, "shared.bin", data))])
        expect_row(page, "shared.bin", "1.0 MiB")
        item_action(page, "shared.bin", "Share link…")
        page.get_by_label("Download limit").fill("3")
        page.get_by_label("Password").fill("open sesame")
        page.get_by_role("button", name="Create link").click()
        link = page.locator("#share-link").input_value()
        assert "/app/share/" in link
        page.get_by_role("button", name="Done").click()
        stranger.goto(link)
        stranger.get_by_label("Password").fill("wrong")
        stranger.get_by_role("button", name="Open").click()
        sync_api.expect(stranger.get_by_role("alert")).to_contain_text("Wrong password")
        stranger.get_by_label("Password").fill("open sesame")
        stranger.get_by_role("button", name="Open").click()
        sync_api.expect(stranger.locator(".share-name")).to_have_text("shared.bin")
        with stranger.expect_download() as info:
            stranger.locator("#share-download").click()
        assert Path(info.value.path()).read_bytes() == data
        page.get_by_role("link", name="Shared links").click()
        sync_api.expect(page.locator("#share-list")).to_contain_text("1 / 3")
        page.get_by_role("button", name="Revoke the link to shared.bin").click()
        sync_api.expect(page.locator("#share-list")).to_contain_text("revoked")


def test_large_upload_resumes_after_a_reload(browser: Any, base_url: str,
                                             tmp_path: Path) -> None:
    page = new_page(browser, base_url)
    with screenshots_on_failure(tmp_path, page):
        sign_up(page)
        data = os.urandom(60 * MIB)
        big = write(tmp_path, "big.bin", data)
        part = re.compile(r"/multipart/[^/]+/part/(\d+)$")
        with page.expect_response(lambda r: part.search(r.url) is not None
                                  and r.request.method == "PUT" and r.ok
                                  and part.search(r.url).group(1) == "2"):
            page.set_input_files("#upload-input", [str(big)])
        page.reload()  # mid-way: parts 1 and 2 are stored, the rest is not
        resume = page.locator('.uploads li[data-resume="big.bin"]')
        sync_api.expect(resume).to_contain_text("choose the file again to resume")
        sent_after_reload: list[str] = []
        page.on("request", lambda r: sent_after_reload.append(r.url)
                if part.search(r.url) and r.method == "PUT" else None)
        resume.locator("input[type=file]").set_input_files(str(big))
        expect_row(page, "big.bin", "60 MiB")
        resent = sorted(int(part.search(u).group(1)) for u in sent_after_reload)
        assert resent and 1 not in resent and 2 not in resent, resent
        listing = api_get(page, "/folders/root/contents")
        (stored,) = [f for f in listing["files"] if f["name"] == "big.bin"]
        assert stored["sha256"] == hashlib.sha256(data).hexdigest()
        assert stored["size"] == len(data)


def test_an_upload_in_one_window_appears_in_another(browser: Any, base_url: str,
                                                    tmp_path: Path) -> None:
    """Two windows on one account: the second one's open folder follows the first's upload
    through the live events (GET /api/v1/events), without a reload."""
    page = new_page(browser, base_url)
    other = page.context.new_page()  # same context: same storage, so the same session
    other.csp_reports = []
    with screenshots_on_failure(tmp_path, page, other):
        sign_up(page)
        probe = page.evaluate("""async () => {
            const s = JSON.parse(localStorage.getItem("dfms.session"));
            const r = await fetch("/api/v1/events/tickets",
                                  {method: "POST", headers: {Authorization: "Bearer " + s.access}});
            return r.status;
        }""")
        if probe == 404:
            pytest.skip("this gateway has no live events (GET /api/v1/events)")
        other.goto("/")
        other.get_by_role("heading", name="My files").wait_for()
        other.wait_for_timeout(1000)  # its event stream is open
        page.set_input_files("#upload-input", [str(write(tmp_path, "live.txt", b"live\n"))])
        expect_row(page, "live.txt", "5 B")
        row(other, "live.txt").wait_for(timeout=5000)
        sync_api.expect(other.locator("#toasts")).to_contain_text("“live.txt” was uploaded")
        page.get_by_role("button", name="New folder").click()
        page.get_by_label("Folder name").fill("Made elsewhere")
        page.get_by_role("button", name="Create", exact=True).click()
        row(other, "Made elsewhere").wait_for(timeout=5000)


def test_multi_select_move_and_delete(browser: Any, base_url: str, tmp_path: Path) -> None:
    page = new_page(browser, base_url)
    with screenshots_on_failure(tmp_path, page):
        sign_up(page)
        names = ["a.txt", "b.txt", "c.txt"]
        page.set_input_files("#upload-input", [str(write(tmp_path, n, n.encode())) for n in names])
        for name in names:
            expect_row(page, name, "5 B")
        page.get_by_role("button", name="New folder").click()
        page.get_by_label("Folder name").fill("Archive")
        page.get_by_role("button", name="Create", exact=True).click()
        expect_row(page, "Archive")
        page.get_by_label("Select a.txt").check()
        page.get_by_label("Select b.txt").check()
        sync_api.expect(page.locator(".toolbar")).to_contain_text("2 selected")
        page.get_by_role("button", name="Move…").click()
        dialog = page.get_by_role("dialog")
        dialog.get_by_role("button", name="Archive", exact=True).click()
        sync_api.expect(dialog).to_contain_text("In: Archive")
        dialog.get_by_role("button", name="Move here").click()
        row(page, "a.txt").wait_for(state="detached")
        row(page, "b.txt").wait_for(state="detached")
        page.locator("#file-list").get_by_role("link", name="Archive", exact=True).click()
        page.get_by_role("heading", name="Archive").wait_for()
        expect_row(page, "a.txt")
        page.get_by_label("Select all").check()
        page.get_by_role("button", name="Delete").click()
        page.get_by_role("button", name="Move to trash").click()
        sync_api.expect(page.locator("#dropzone")).to_contain_text("Nothing here yet")
        page.get_by_role("link", name="Trash").click()
        sync_api.expect(page.locator("#trash-list tbody tr")).to_have_count(2)


def test_a_session_that_cannot_be_refreshed_signs_in_again_over_the_page(
        browser: Any, base_url: str, tmp_path: Path) -> None:
    """Both tokens spoilt (as when the refresh token expired or was revoked): the next
    call asks for the password over the page, then goes on where it was."""
    page = new_page(browser, base_url)
    with screenshots_on_failure(tmp_path, page):
        email = sign_up(page)
        page.get_by_role("button", name="New folder").click()
        page.get_by_label("Folder name").fill("Inbox")
        page.get_by_role("button", name="Create", exact=True).click()
        page.locator("#file-list").get_by_role("link", name="Inbox", exact=True).click()
        page.get_by_role("heading", name="Inbox").wait_for()
        # Another tab of the same browser stores spoilt tokens; this one sees the change.
        spoiler = page.context.new_page()
        spoiler.goto("/app/signin?probe")
        spoiler.evaluate("""() => {
            const s = JSON.parse(localStorage.getItem("dfms.session"));
            localStorage.setItem("dfms.session", JSON.stringify(
                {...s, access: "spoilt", refresh: "spoilt", accessExp: 0}));
        }""")
        spoiler.close()
        page.get_by_role("button", name="New folder").click()
        page.get_by_label("Folder name").fill("Later")
        page.get_by_role("button", name="Create", exact=True).click()
        relogin = page.get_by_role("dialog", name="Your session has ended")
        sync_api.expect(relogin.get_by_label("Email")).to_have_value(email)
        relogin.get_by_label("Password").fill(PASSWORD)
        relogin.get_by_role("button", name="Sign in").click()
        expect_row(page, "Later")
        sync_api.expect(page.get_by_role("heading", name="Inbox")).to_be_visible()


def test_cancel_and_retry_an_upload(browser: Any, base_url: str, tmp_path: Path) -> None:
    page = new_page(browser, base_url)
    with screenshots_on_failure(tmp_path, page):
        sign_up(page)
        data = os.urandom(40 * MIB)
        big = write(tmp_path, "cancel-me.bin", data)
        entry = page.locator('.uploads li[data-name="cancel-me.bin"]')
        with page.expect_response(lambda r: "/part/1" in r.url and r.ok):
            page.set_input_files("#upload-input", [str(big)])
        sync_api.expect(entry.locator("progress")).to_be_visible()
        sync_api.expect(entry.locator(".status")).to_contain_text(re.compile(r"\d+% of 40 MiB"))
        page.get_by_role("button", name="Cancel upload of cancel-me.bin").click()
        sync_api.expect(entry.locator(".status")).to_have_text("Cancelled")
        assert row(page, "cancel-me.bin").count() == 0
        page.get_by_role("button", name="Retry upload of cancel-me.bin").click()
        expect_row(page, "cancel-me.bin", "40 MiB")
        sync_api.expect(entry.locator(".status")).to_contain_text("Done")


def test_restore_onto_a_taken_name_offers_a_renamed_copy(browser: Any, base_url: str,
                                                         tmp_path: Path) -> None:
    page = new_page(browser, base_url)
    with screenshots_on_failure(tmp_path, page):
        sign_up(page)
        first, second = tmp_path / "1", tmp_path / "2"
        first.mkdir()
        second.mkdir()
        page.set_input_files("#upload-input", [str(write(first, "memo.txt", b"old memo\n"))])
        expect_row(page, "memo.txt", "9 B")
        item_action(page, "memo.txt", "Delete")
        page.get_by_role("button", name="Move to trash").click()
        row(page, "memo.txt").wait_for(state="detached")
        page.set_input_files("#upload-input", [str(write(second, "memo.txt", b"new\n"))])
        expect_row(page, "memo.txt", "4 B")
        page.get_by_role("link", name="Trash").click()
        page.get_by_role("button", name="Restore memo.txt").click()
        clash = page.get_by_role("dialog", name="The name is taken")
        clash.get_by_role("button", name="Restore as a copy").click()
        page.locator('#trash-list tr[data-name="memo.txt"]').wait_for(state="detached")
        page.get_by_role("link", name="My files").click()
        expect_row(page, "memo.txt", "4 B")
        expect_row(page, "memo (restored).txt", "9 B")


def test_usage_warns_when_the_quota_is_nearly_full(browser: Any, base_url: str,
                                                   cluster: ClusterHandle,
                                                   tmp_path: Path) -> None:
    page = new_page(browser, base_url)
    with screenshots_on_failure(tmp_path, page):
        email = sign_up(page)
        page.set_input_files("#upload-input", [str(write(tmp_path, "f.bin", os.urandom(MIB)))])
        expect_row(page, "f.bin", "1.0 MiB")
        sync_api.expect(page.locator(".usage")).not_to_have_class(re.compile(r"\bwarn\b"))
        # An administrator lowers the quota to just above what is used (95 %).
        # (Playwright's sync API runs a loop in this thread: the query runs in another.)
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, _set_quota(cluster.postgres_dsn, email,
                                                int(MIB / 0.95))).result()
        page.reload()
        usage = page.locator(".usage")
        sync_api.expect(usage).to_have_class(re.compile(r"\bwarn\b"))
        sync_api.expect(usage).to_contain_text("almost full")


async def _set_quota(dsn: str, email: str, quota: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("UPDATE users SET quota_bytes = $2 WHERE email = $1", email, quota)
    finally:
        await conn.close()


def test_a_large_folder_pages_by_cursor_and_sorts(browser: Any, base_url: str,
                                                  tmp_path: Path) -> None:
    page = new_page(browser, base_url)
    with screenshots_on_failure(tmp_path, page):
        sign_up(page)
        files = [write(tmp_path, f"f{i:03d}.txt", b"x" * (i + 1)) for i in range(55)]
        page.set_input_files("#upload-input", [str(f) for f in files])
        sync_api.expect(page.locator(".upload.done")).to_have_count(55, timeout=60_000)
        page.reload()  # the first page only: 50 of 55
        rows = page.locator("#file-list tbody tr")
        sync_api.expect(rows).to_have_count(50)
        sync_api.expect(page.locator(".more")).to_contain_text("50 of 55 files shown")
        page.get_by_role("button", name="Load more").click()
        sync_api.expect(rows).to_have_count(55)
        sync_api.expect(page.get_by_role("button", name="Load more")).to_have_count(0)
        # Sorting by size, largest first: the server sorts, the first page has the largest.
        page.get_by_role("button", name="Size").click()
        sync_api.expect(page.locator("th[aria-sort=ascending]")).to_contain_text("Size")
        page.get_by_role("button", name="Size").click()
        sync_api.expect(page.locator("th[aria-sort=descending]")).to_contain_text("Size")
        sync_api.expect(rows.first).to_have_attribute("data-name", "f054.txt")


def test_admin_pages(browser: Any, base_url: str, cluster: ClusterHandle,
                     tmp_path: Path) -> None:
    """An admin (made with the CLI) sees the accounts and the cluster; a user does not."""
    user_page = new_page(browser, base_url)
    page = new_page(browser, base_url)
    with screenshots_on_failure(tmp_path, page, user_page):
        user_email = sign_up(user_page)
        sync_api.expect(user_page.get_by_role("link", name="Cluster")).to_have_count(0)
        user_page.goto("/app/admin/cluster")
        sync_api.expect(user_page.get_by_role("alert")).to_contain_text("Only administrators")
        email = f"web-admin-{os.urandom(4).hex()}@example.com"
        env = {k: v for k, v in os.environ.items() if not k.startswith("DFMS_")}
        subprocess.run([sys.executable, "-m", "dfms", "--data-dir", str(cluster.data_dir),
                        "admin", "create-user", "--admin", "--email", email, "--password",
                        PASSWORD], check=True, capture_output=True, env=env, timeout=120)
        page.goto("/app/signin")
        page.get_by_label("Email").fill(email)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.get_by_role("link", name="Cluster").click()
        nodes = page.locator("#node-list tbody tr")
        sync_api.expect(nodes.first).to_be_visible()
        assert nodes.count() >= 3
        page.get_by_role("link", name="Users").click()
        # The session cluster holds every test's accounts, more than a page: filter.
        sync_api.expect(page.locator(".more")).to_contain_text("users")
        page.get_by_label("Filter by email").fill(user_email)
        sync_api.expect(page.locator("#user-list tbody tr")).to_have_count(1)
        sync_api.expect(page.locator(".more")).to_contain_text("1–1 of 1 users")
        page.get_by_role("button", name=f"Edit {user_email}").click()
        page.get_by_label("Quota (GiB)").fill("2")
        page.get_by_role("button", name="Save").click()
        user_row = page.locator("#user-list tr", has_text=user_email)
        sync_api.expect(user_row).to_contain_text("2.0 GiB")


def test_keyboard_use_of_the_item_menu(browser: Any, base_url: str, tmp_path: Path) -> None:
    """The menu opens from the keyboard with the focus inside it, Escape closes it, and the
    focus goes back to the button that opened it."""
    page = new_page(browser, base_url)
    with screenshots_on_failure(tmp_path, page):
        sign_up(page)
        page.set_input_files("#upload-input", [str(write(tmp_path, "k.txt", b"keys\n"))])
        expect_row(page, "k.txt", "5 B")
        opener = page.get_by_role("button", name="Actions for k.txt")
        opener.focus()
        page.keyboard.press("Enter")
        dialog = page.get_by_role("dialog", name="k.txt")
        sync_api.expect(dialog).to_be_visible()
        assert page.evaluate("document.activeElement.closest('dialog') !== null")
        page.keyboard.press("Escape")
        sync_api.expect(dialog).to_have_count(0)
        sync_api.expect(opener).to_be_focused()
        # Tab reaches the upload picker, whose label then shows the focus ring.
        page.get_by_role("button", name="New folder").focus()
        page.keyboard.press("Shift+Tab")
        assert page.evaluate("document.activeElement.id") == "upload-input"
