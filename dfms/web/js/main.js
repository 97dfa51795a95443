// The app's shell: sign-in, the top bar, navigation, the client-side router.
//
// Routes: /                   my files (root)       /app/folder/<id>   a folder
//         /app/trash          the trash             /app/shares        my share links
//         /app/search?q=      search results        /app/share/<tok>   a share link's page
//         /app/admin/users    accounts (admin)      /app/admin/cluster nodes (admin)
//         /app/signin, /app/signup

import {
  api, currentUser, onSessionChange, setReauthHandler, signIn, signOut, signUp,
} from "./api.js";
import { startEvents, stopEvents } from "./events.js";
import { renderFiles, view } from "./files.js";
import { renderAdminCluster, renderAdminUsers } from "./admin.js";
import { renderSearch, renderSharePage, renderShares, renderTrash } from "./pages.js";
import { el, errorMessage, field, formatBytes, modal, replace } from "./ui.js";
import { render as renderUploads, setUploadListener } from "./uploads.js";

const root = document.getElementById("app");
let shell = null; // {main, nav, usage, search}

export function navigate(path, { replaceState = false } = {}) {
  if (path !== location.pathname + location.search) {
    history[replaceState ? "replaceState" : "pushState"](null, "", path);
  }
  route();
}

// Same-origin links navigate inside the app (downloads and new windows excepted).
document.addEventListener("click", (event) => {
  const link = event.target.closest("a[href]");
  if (!link || link.target || link.hasAttribute("download") || event.defaultPrevented) return;
  if (event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey) return;
  const url = new URL(link.href);
  if (url.origin !== location.origin) return;
  if (url.pathname !== "/" && !url.pathname.startsWith("/app/")) return;
  event.preventDefault();
  navigate(url.pathname + url.search);
});
window.addEventListener("popstate", () => route());

function authForm(mode) {
  const email = el("input", { type: "email", name: "email", autocomplete: "email", required: true });
  const password = el("input", { type: "password", name: "password", required: true,
    autocomplete: mode === "signup" ? "new-password" : "current-password" });
  const display = el("input", { type: "text", name: "display_name", autocomplete: "name" });
  const fields = [field("Email", email), field("Password", password,
    mode === "signup" ? "At least 8 characters; a long passphrase is best." : null)];
  if (mode === "signup") fields.splice(1, 0, field("Name", display));
  const submit = () => (mode === "signup"
    ? signUp(email.value.trim(), password.value, display.value.trim())
    : signIn(email.value.trim(), password.value));
  return { fields, submit, email };
}

function renderAuthPage(mode) {
  stopEvents();
  shell = null;
  const { fields, submit, email } = authForm(mode);
  const error = el("p", { class: "error-text", role: "alert" });
  const button = el("button", { type: "submit", class: "primary" },
    mode === "signup" ? "Create account" : "Sign in");
  const form = el("form", { novalidate: true }, fields, error, el("div", { class: "buttons" },
    button));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.disabled = true;
    try {
      await submit();
      const next = new URLSearchParams(location.search).get("next");
      navigate(next && next.startsWith("/") ? next : "/", { replaceState: true });
    } catch (err) {
      error.textContent = errorMessage(err);
      button.disabled = false;
    }
  });
  const other = mode === "signup"
    ? el("p", {}, "Have an account? ", el("a", { href: "/app/signin" }, "Sign in"))
    : el("p", {}, "New here? ", el("a", { href: "/app/signup" }, "Create an account"));
  replace(root, el("main", { id: "main", class: "card" },
    el("h1", {}, mode === "signup" ? "Create your DFMS account" : "Sign in to DFMS"),
    form, other));
  email.focus();
}

// A session that can no longer be refreshed: sign in again over the page, which
// keeps its state (open dialogs, uploads, the folder) and then goes on.
let reauthPending = null;
setReauthHandler(() => {
  reauthPending ||= modal("Your session has ended", (close) => {
    const { fields, email } = authForm("signin");
    const who = currentUser()?.email;
    if (who) email.value = who;
    const error = el("p", { class: "error-text", role: "alert" });
    const form = el("form", { novalidate: true }, el("p", {}, "Sign in again to go on."),
      fields, error, el("div", { class: "buttons" },
        el("button", { type: "submit", class: "primary" }, "Sign in")));
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      try {
        await signIn(email.value.trim(), form.password.value);
        close(true);
      } catch (err) { error.textContent = errorMessage(err); }
    });
    return form;
  }).then((ok) => {
    reauthPending = null;
    if (!ok) {
      signOut();
      navigate("/app/signin", { replaceState: true });
      throw new Error("signed out");
    }
  });
  return reauthPending;
});

onSessionChange((next) => {
  if (!next) navigate("/app/signin", { replaceState: true });
});

const NAV = [
  ["/", "My files", (p) => p === "/" || p.startsWith("/app/folder/")],
  ["/app/shares", "Shared links", (p) => p === "/app/shares"],
  ["/app/trash", "Trash", (p) => p === "/app/trash"],
];
const ADMIN_NAV = [
  ["/app/admin/users", "Users", (p) => p === "/app/admin/users"],
  ["/app/admin/cluster", "Cluster", (p) => p === "/app/admin/cluster"],
];

function buildShell() {
  const user = currentUser();
  const search = el("input", { type: "search", id: "search", placeholder: "Search files",
    "aria-label": "Search files and folders", autocomplete: "off" });
  let timer = null;
  search.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      const q = search.value.trim();
      if (q) navigate(`/app/search?q=${encodeURIComponent(q)}`,
        { replaceState: location.pathname === "/app/search" });
    }, 250);
  });
  const nav = el("nav", { "aria-label": "Main" });
  const usage = el("div", { class: "usage", "aria-live": "polite" });
  const main = el("main", { id: "main", tabindex: "-1" });
  replace(root,
    el("header", { class: "topbar" },
      el("a", { class: "brand", href: "/" }, "DFMS"),
      el("div", { class: "search", role: "search" }, search),
      el("div", { class: "user" },
        el("span", { class: "user-name", title: user.email }, user.display_name || user.email),
        el("button", { type: "button", onclick: () => signOut() }, "Sign out"))),
    el("aside", { class: "sidebar" }, nav, usage),
    main);
  shell = { main, nav, usage, search, userId: user.id };
  startEvents();
  refreshUsage();
}

function renderNav(path) {
  const links = [...NAV, ...(currentUser()?.role === "admin" ? ADMIN_NAV : [])];
  replace(shell.nav, el("ul", {}, links.map(([href, label, active]) =>
    el("li", {}, el("a", { href, "aria-current": active(path) ? "page" : null }, label)))));
}

export async function refreshUsage() {
  if (!shell) return;
  try {
    const u = await api("GET", "/storage/usage");
    const quota = u.quota_bytes;
    const ratio = quota ? u.used_bytes / quota : 0;
    shell.usage.classList.toggle("warn", ratio >= 0.9);
    replace(shell.usage,
      el("div", {}, quota ? `${formatBytes(u.used_bytes)} of ${formatBytes(quota)} used`
        : `${formatBytes(u.used_bytes)} used`),
      quota ? el("meter", { min: 0, max: 1, value: ratio, low: 0.75, high: 0.9, optimum: 0,
        "aria-label": "Storage used" }) : null,
      ratio >= 0.9 ? el("p", {}, "Your storage is almost full: empty the trash or delete "
        + "old versions.") : null,
      el("div", { class: "hint" }, `${u.file_count} files`));
  } catch { /* the usage box is a hint; the page works without it */ }
}

export function mainArea() { return shell.main; }

function route() {
  const path = location.pathname;
  const share = path.match(/^\/app\/share\/([^/]+)$/);
  if (share) {
    shell = null;
    stopEvents();
    return renderSharePage(root, decodeURIComponent(share[1]));
  }
  if (path === "/app/signup" || path === "/app/signin") {
    if (currentUser()) return navigate("/", { replaceState: true });
    return renderAuthPage(path === "/app/signup" ? "signup" : "signin");
  }
  if (!currentUser()) {
    const next = path === "/" ? "" : `?next=${encodeURIComponent(path + location.search)}`;
    return navigate(`/app/signin${next}`, { replaceState: true });
  }
  if (!shell || shell.userId !== currentUser().id) buildShell();
  renderNav(path);
  return renderView(path);
}

function renderView(path) {
  const main = shell.main;
  // Only the files view follows live changes; any other page stops it repainting.
  view.reload = null;
  view.folderId = undefined;
  const folder = path.match(/^\/app\/folder\/([^/]+)$/);
  if (path === "/" || folder) return renderFiles(main, folder ? folder[1] : null);
  if (path === "/app/trash") return renderTrash(main);
  if (path === "/app/shares") return renderShares(main);
  if (path === "/app/search") {
    const q = new URLSearchParams(location.search).get("q") || "";
    if (shell.search.value.trim() !== q) shell.search.value = q;
    return renderSearch(main, q);
  }
  if (path === "/app/admin/users") return renderAdminUsers(main);
  if (path === "/app/admin/cluster") return renderAdminCluster(main);
  return replace(main, el("h1", {}, "Not found"),
    el("p", {}, "This page does not exist. ", el("a", { href: "/" }, "Go to my files")));
}

// A finished upload reloads the folder it went to when that is open: once for a burst.
let uploadReload = null;
setUploadListener((file, folderId) => {
  clearTimeout(uploadReload);
  uploadReload = setTimeout(() => {
    if (view.reload && (view.folderId || null) === (folderId || null)) view.reload();
    refreshUsage();
  }, 200);
});
renderUploads();
route();
