// Trash, share links, search results, and the page of a share link (no account needed).

import { api, errorOf } from "./api.js";
import { openItemMenu } from "./actions.js";
import { folderHref } from "./files.js";
import { refreshUsage } from "./main.js";
import {
  confirmDialog, el, errorMessage, field, formatBytes, formatDate, replace, toast, typeLabel,
} from "./ui.js";

function failure(main, title, err) {
  replace(main, el("h1", {}, title), el("p", { class: "notice", role: "alert" },
    errorMessage(err)));
}

// --- trash -------------------------------------------------------------------------------

async function restore(item, reload) {
  try {
    await api("POST", `/trash/${item.id}/restore`);
  } catch (err) {
    if (err.status !== 409) throw err;
    const ok = await confirmDialog("The name is taken",
      `Something named “${item.name}” is already where it goes back to. Restore it under a `
      + "new name (“… (restored)”)?", "Restore as a copy", { danger: false });
    if (!ok) return;
    await api("POST", `/trash/${item.id}/restore`, { query: { rename: "true" } });
  }
  toast(`“${item.name}” restored`);
  await reload();
  refreshUsage();
}

export async function renderTrash(main) {
  document.title = "Trash · DFMS";
  const state = { items: [], cursor: null, total: 0 };
  const load = async (more = false) => {
    const page = await api("GET", "/trash", { query: { per_page: 50,
      cursor: more ? state.cursor : null } });
    state.items = more ? [...state.items, ...page.items] : page.items;
    state.cursor = page.next_cursor;
    state.total = page.total;
    paint();
  };
  const act = (fn) => () => fn().catch((err) => toast(errorMessage(err), "error"));
  const purge = (item) => act(async () => {
    if (!await confirmDialog(`Delete “${item.name}” forever?`,
      "It cannot be restored afterwards.", "Delete forever")) return;
    await api("DELETE", `/trash/${item.id}`);
    toast(`“${item.name}” deleted forever`);
    await load();
    refreshUsage();
  });
  const empty = act(async () => {
    if (!await confirmDialog("Empty the trash?", `All ${state.total} items are deleted forever.`,
      "Empty trash")) return;
    await api("DELETE", "/trash");
    toast("Trash emptied");
    await load();
    refreshUsage();
  });
  const paint = () => replace(main, el("h1", {}, "Trash"),
    el("div", { class: "toolbar" }, el("span", {}, `${state.total} items`),
      el("span", { class: "spacer" }),
      el("button", { type: "button", class: "danger", disabled: !state.total, onclick: empty },
        "Empty trash")),
    state.items.length ? el("table", { class: "list", id: "trash-list" },
      el("thead", {}, el("tr", {}, el("th", {}, "Name"), el("th", { class: "col-path" }, "From"),
        el("th", { class: "num" }, "Size"), el("th", { class: "col-modified" }, "Deleted"),
        el("th", { class: "actions" }, el("span", { class: "visually-hidden" }, "Actions")))),
      el("tbody", {}, state.items.map((item) => el("tr", { "data-name": item.name },
        el("td", { class: "name" }, el("span", { class: item.type === "folder" ? "folder" : null }, item.name)),
        el("td", { class: "col-path" }, item.original_path),
        el("td", { class: "num" }, item.type === "folder" ? "" : formatBytes(item.size)),
        el("td", { class: "col-modified" }, formatDate(item.deleted_at)),
        el("td", { class: "actions" },
          el("button", { type: "button", "aria-label": `Restore ${item.name}`,
            onclick: act(() => restore(item, () => load())) }, "Restore"),
          el("button", { type: "button", class: "danger", "aria-label":
            `Delete ${item.name} forever`, onclick: purge(item) }, "Delete forever"))))))
      : el("p", { class: "empty" }, "The trash is empty."),
    state.cursor ? el("div", { class: "more" }, el("button", { type: "button",
      onclick: act(() => load(true)) }, "Load more")) : null);
  try { await load(); } catch (err) { failure(main, "Trash", err); }
}

// --- share links -------------------------------------------------------------------------

export async function renderShares(main) {
  document.title = "Shared links · DFMS";
  const load = async () => {
    const page = await api("GET", "/shares", { query: { per_page: 100 } });
    replace(main, el("h1", {}, "Shared links"),
      el("p", { class: "hint" }, "Links are shown only when created; here you can see how "
        + "they are used and revoke them. Create one from a file's menu."),
      page.items.length ? el("table", { class: "list", id: "share-list" },
        el("thead", {}, el("tr", {}, el("th", {}, "File"), el("th", {}, "State"),
          el("th", { class: "num" }, "Downloads"), el("th", { class: "col-modified" }, "Expires"),
          el("th", { class: "actions" }, el("span", { class: "visually-hidden" }, "Actions")))),
        el("tbody", {}, page.items.map((s) => el("tr", { "data-share": s.id },
          el("td", { class: "name" }, s.file_name, s.has_password ? " (password)" : ""),
          el("td", {}, s.state),
          el("td", { class: "num" }, `${s.download_count}${s.max_downloads ? ` / ${s.max_downloads}` : ""}`),
          el("td", { class: "col-modified" }, formatDate(s.expires_at)),
          el("td", { class: "actions" }, s.state === "active" ? el("button", { type: "button",
            class: "danger", "aria-label": `Revoke the link to ${s.file_name}`,
            onclick: async () => {
              try {
                await api("DELETE", `/shares/${s.id}`);
                toast("Link revoked");
                await load();
              } catch (err) { toast(errorMessage(err), "error"); }
            } }, "Revoke") : null)))))
        : el("p", { class: "empty" }, "No share links yet."));
  };
  try { await load(); } catch (err) { failure(main, "Shared links", err); }
}

// --- search ------------------------------------------------------------------------------

let searchSeq = 0;

export async function renderSearch(main, q) {
  document.title = `Search: ${q} · DFMS`;
  const seq = ++searchSeq;
  if (!main.querySelector("#search-results")) {
    replace(main, el("h1", {}, "Search"), el("div", { id: "search-results",
      "aria-live": "polite" }));
  }
  const box = main.querySelector("#search-results");
  if (!q) return replace(box, el("p", { class: "empty" }, "Type in the search box."));
  try {
    const page = await api("GET", "/search", { query: { q, per_page: 50 } });
    if (seq !== searchSeq) return null; // a newer query is on its way
    main.querySelector("h1").textContent = `Results for “${q}”`;
    return replace(box, page.items.length ? el("table", { class: "list" },
      el("thead", {}, el("tr", {}, el("th", {}, "Name"), el("th", { class: "col-path" }, "Path"),
        el("th", { class: "num" }, "Size"), el("th", { class: "col-type" }, "Type"))),
      el("tbody", {}, page.items.map((hit) => el("tr", { "data-name": hit.name },
        el("td", { class: "name" }, hit.type === "folder"
          ? el("a", { href: folderHref(hit.id), class: "folder" }, hit.name)
          : el("button", { type: "button", class: "link",
            onclick: () => openItemMenu(hit, () => renderSearch(main, q)) }, hit.name)),
        el("td", { class: "col-path" }, hit.path),
        el("td", { class: "num" }, hit.type === "folder" ? "" : formatBytes(hit.size)),
        el("td", { class: "col-type" }, typeLabel(hit))))))
      : el("p", { class: "empty" }, `Nothing matches “${q}”.`));
  } catch (err) {
    if (seq === searchSeq) replace(box, el("p", { class: "error-text" }, errorMessage(err)));
    return null;
  }
}

// --- a share link's page (for anyone holding the link) -----------------------------------

function fileNameOf(resp) {
  const cd = resp.headers.get("Content-Disposition") || "";
  const star = cd.match(/filename\*=UTF-8''([^;]+)/i);
  if (star) return decodeURIComponent(star[1]);
  const plain = cd.match(/filename="([^"]*)"/i);
  return plain ? plain[1] : "shared file";
}

const SHARE_ERRORS = {
  404: "This link does not exist.",
  410: "This link has expired, was revoked, or its file is no longer available.",
  429: "Too many attempts; try again in a minute.",
};

async function probeShare(token, password) {
  const headers = password ? { "X-Share-Password": encodeURIComponent(password) } : {};
  const resp = await fetch(`/s/${encodeURIComponent(token)}`, { method: "HEAD", headers });
  if (resp.ok) return { name: fileNameOf(resp), size: Number(resp.headers.get("Content-Length")) };
  if (resp.status === 401) return { needsPassword: true };
  const err = await errorOf(resp);
  err.message = SHARE_ERRORS[resp.status] || err.message;
  throw err;
}

export async function renderSharePage(root, token) {
  document.title = "Shared file · DFMS";
  const card = el("main", { id: "main", class: "card" }, el("h1", {}, "Shared file"),
    el("p", { class: "hint" }, "Loading…"));
  replace(root, card);
  const show = (info, password) => {
    const query = password ? `?password=${encodeURIComponent(password)}` : "";
    replace(card, el("h1", {}, "Shared file"),
      el("p", { class: "share-name" }, el("strong", {}, info.name)),
      el("p", { class: "hint" }, formatBytes(info.size)),
      el("a", { class: "button primary", id: "share-download", download: info.name,
        href: `/s/${encodeURIComponent(token)}${query}` }, "Download"),
      el("p", { class: "hint" }, "Shared with DFMS. ", el("a", { href: "/" }, "Sign in")));
  };
  const askPassword = (wrong) => {
    const input = el("input", { type: "password", name: "password", required: true,
      autocomplete: "off" });
    const error = el("p", { class: "error-text", role: "alert" },
      wrong ? "Wrong password." : "");
    const form = el("form", { novalidate: true }, field("Password", input), error,
      el("div", { class: "buttons" }, el("button", { type: "submit", class: "primary" },
        "Open")));
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      try {
        const info = await probeShare(token, input.value);
        if (info.needsPassword) askPassword(true); else show(info, input.value);
      } catch (err) { error.textContent = errorMessage(err); }
    });
    replace(card, el("h1", {}, "Shared file"), el("p", {}, "This link needs a password."),
      form);
    input.focus();
  };
  try {
    const info = await probeShare(token, null);
    if (info.needsPassword) askPassword(false); else show(info, null);
  } catch (err) {
    replace(card, el("h1", {}, "Shared file"), el("p", { class: "notice", role: "alert" },
      errorMessage(err)));
  }
}
