// What can be done to a file or folder: the item menu and its dialogs (rename, move,
// delete, download, preview, versions, share).

import { api, fetchBlob } from "./api.js";
import { navigate, refreshUsage } from "./main.js";
import {
  actionsHeader, confirmDialog, copyText, el, errorMessage, field, formDialog, formatBytes,
  formatDate, modal, replace, saveBlob, toast,
} from "./ui.js";

const TEXT_LIMIT = 1024 * 1024;
const PREVIEW_LIMIT = 50 * 1024 * 1024;
const itemPath = (item) => (item.type === "folder" ? `/folders/${item.id}` : `/files/${item.id}`);

export function newFolderDialog(parentId, reload) {
  const name = el("input", { type: "text", name: "name", required: true });
  return formDialog("New folder", [field("Folder name", name)], "Create", async () => {
    if (!name.value.trim()) throw new Error("Give the folder a name.");
    await api("POST", "/folders", { json: { name: name.value.trim(), parent_id: parentId } });
    toast(`Folder “${name.value.trim()}” created`);
    await reload();
  });
}

export function renameDialog(item, reload) {
  const name = el("input", { type: "text", name: "name", value: item.name, required: true });
  const done = formDialog(`Rename “${item.name}”`, [field("New name", name)], "Rename",
    async () => {
      await api("PATCH", itemPath(item), { json: { name: name.value.trim() } });
      toast(`Renamed to “${name.value.trim()}”`);
      await reload();
    });
  const dot = item.type === "file" ? item.name.lastIndexOf(".") : -1;
  name.setSelectionRange(0, dot > 0 ? dot : item.name.length);
  return done;
}

// A folder picker: browse from the root, choose where the items go.
async function pickFolder(title, exclude) {
  let current = { id: null, name: "My files", parent: undefined };
  return modal(title, (close) => {
    const list = el("ul", { class: "picker-list", "aria-label": "Folders" });
    const where = el("p", { "aria-live": "polite" });
    const show = async () => {
      where.textContent = `In: ${current.name}`;
      replace(list, el("li", { class: "hint" }, "Loading…"));
      try {
        const page = await api("GET", `/folders/${current.id || "root"}/contents`,
          { query: { per_page: 1 } });
        const up = current.id ? el("li", {}, el("button", { type: "button", onclick: () => {
          current = current.parent;
          show();
        } }, "↑ Up")) : null;
        replace(list, up, page.folders.filter((f) => !exclude.has(f.id)).map((f) =>
          el("li", {}, el("button", { type: "button", class: "folder", onclick: () => {
            current = { id: f.id, name: f.name, parent: current };
            show();
          } }, f.name))));
        list.querySelector("button")?.focus();
      } catch (err) { replace(list, el("li", { class: "error-text" }, errorMessage(err))); }
    };
    show();
    return el("div", {}, where, list, el("div", { class: "buttons" },
      el("button", { type: "button", onclick: () => close(undefined) }, "Cancel"),
      el("button", { type: "button", class: "primary", onclick: () => close(current) },
        "Move here")));
  });
}

export async function moveItems(items, reload) {
  const target = await pickFolder(items.length === 1 ? `Move “${items[0].name}”`
    : `Move ${items.length} items`, new Set(items.filter((i) => i.type === "folder")
    .map((i) => i.id)));
  if (!target) return;
  let moved = 0;
  for (const item of items) {
    const json = item.type === "folder" ? { parent_id: target.id } : { folder_id: target.id };
    try {
      await api("PATCH", itemPath(item), { json });
      moved += 1;
    } catch (err) { toast(`${item.name}: ${errorMessage(err)}`, "error"); }
  }
  if (moved) toast(`Moved ${moved} item${moved > 1 ? "s" : ""} to ${target.name}`);
  await reload();
}

export async function deleteItems(items, reload) {
  const what = items.length === 1 ? `“${items[0].name}”` : `${items.length} items`;
  const ok = await confirmDialog(`Delete ${what}?`,
    "Deleted items go to the trash, where they can be restored until they are purged.",
    "Move to trash");
  if (!ok) return;
  let deleted = 0;
  for (const item of items) {
    try {
      await api("DELETE", itemPath(item), { query: item.type === "folder"
        ? { recursive: "true" } : null });
      deleted += 1;
    } catch (err) { toast(`${item.name}: ${errorMessage(err)}`, "error"); }
  }
  if (deleted) toast(`${what} moved to the trash`);
  await reload();
  refreshUsage();
}

export async function download(item, version = null) {
  try {
    const path = version ? `/files/${item.id}/versions/${version}/download`
      : `/files/${item.id}/download`;
    saveBlob(await fetchBlob(path), item.name);
  } catch (err) { toast(`${item.name}: ${errorMessage(err)}`, "error"); }
}

function previewKind(item) {
  const mime = item.mime_type || "";
  if (mime.startsWith("image/")) return "image";
  if (mime === "application/pdf") return "pdf";
  if (mime.startsWith("text/") || /json|xml|javascript|yaml|csv/.test(mime)) return "text";
  return null;
}

export function canPreview(item) {
  return item.type === "file" && previewKind(item) !== null && item.size <= PREVIEW_LIMIT;
}

export function preview(item) {
  const kind = previewKind(item);
  let url = null;
  return modal(item.name, (close) => {
    const box = el("div", { class: "preview-content" }, el("p", { class: "hint" }, "Loading…"));
    (async () => {
      const blob = await fetchBlob(`/files/${item.id}/download`);
      if (kind === "text") {
        const text = await blob.slice(0, TEXT_LIMIT).text();
        // Focusable to scroll it with the keyboard; a named region, as aria-label needs a role.
        replace(box, el("pre", { tabindex: "0", role: "region", "aria-label": "File content" },
          text));
      } else {
        url = URL.createObjectURL(blob.type ? blob : new Blob([blob], { type: item.mime_type }));
        replace(box, kind === "image" ? el("img", { src: url, alt: item.name })
          : el("iframe", { src: url, title: item.name }));
      }
    })().catch((err) => replace(box, el("p", { class: "error-text" }, errorMessage(err))));
    return el("div", {}, box, el("div", { class: "buttons" },
      el("button", { type: "button", onclick: () => download(item) }, "Download"),
      el("button", { type: "button", class: "primary", onclick: () => close() }, "Close")));
  }, "preview").finally(() => url && URL.revokeObjectURL(url));
}

export function versionsDialog(item, reload) {
  return modal(`Versions of “${item.name}”`, (close) => {
    const body = el("div", {}, el("p", { class: "hint" }, "Loading…"));
    const load = async () => {
      const list = await api("GET", `/files/${item.id}/versions`);
      replace(body, el("table", { class: "list" },
        el("thead", {}, el("tr", {}, el("th", {}, "Version"), el("th", { class: "num" }, "Size"),
          el("th", { class: "col-modified" }, "Created"), actionsHeader())),
        el("tbody", {}, list.items.map((v) => el("tr", { "data-version": v.version },
          el("td", {}, `v${v.version}`, v.current ? " (current)" : ""),
          el("td", { class: "num" }, formatBytes(v.size)),
          el("td", { class: "col-modified" }, formatDate(v.created_at)),
          el("td", { class: "actions" },
            el("button", { type: "button", "aria-label": `Download version ${v.version}`,
              onclick: () => download(item, v.version) }, "Download"),
            v.current ? null : el("button", { type: "button",
              "aria-label": `Restore version ${v.version}`, onclick: async () => {
                try {
                  await api("POST", `/files/${item.id}/versions/${v.version}/restore`);
                  toast(`Version ${v.version} restored as the current version`);
                  await load();
                  await reload();
                } catch (err) { toast(errorMessage(err), "error"); }
              } }, "Restore")))))));
    };
    load().catch((err) => replace(body, el("p", { class: "error-text" }, errorMessage(err))));
    return el("div", {}, body, el("div", { class: "buttons" },
      el("button", { type: "button", class: "primary", onclick: () => close() }, "Close")));
  });
}

const EXPIRIES = [["3600", "1 hour"], ["86400", "1 day"], ["604800", "7 days"],
  ["2592000", "30 days"]];

export function shareLinkOf(created) {
  return `${location.origin}/app/share/${encodeURIComponent(created.token)}`;
}

export function shareDialog(item) {
  const expiry = el("select", { name: "expiry" },
    EXPIRIES.map(([v, label]) => el("option", { value: v, selected: v === "604800" }, label)));
  const limit = el("input", { type: "number", name: "max_downloads", min: "1", inputmode: "numeric" });
  const password = el("input", { type: "password", name: "password", autocomplete: "new-password" });
  return formDialog(`Share “${item.name}”`, [
    field("Link expires after", expiry),
    field("Download limit", limit, "Leave empty for no limit."),
    field("Password", password, "Optional: whoever opens the link must type it."),
  ], "Create link", async () => {
    const json = { expires_in_s: Number(expiry.value) };
    if (limit.value) json.max_downloads = Number(limit.value);
    if (password.value) json.password = password.value;
    return api("POST", `/files/${item.id}/share`, { json });
  }).then((created) => created && showShareLink(created));
}

function showShareLink(created) {
  const link = shareLinkOf(created);
  return modal("Share link created", (close) => {
    const input = el("input", { type: "text", readonly: true, value: link, id: "share-link",
      "aria-label": "Share link" });
    return el("div", {},
      el("p", {}, "Anyone with this link can download the file until it expires. It is shown "
        + "only now: copy it."),
      el("div", { class: "share-link" }, input, el("button", { type: "button", onclick: async () => {
        input.select();
        toast(await copyText(link) ? "Link copied" : "Press Ctrl+C to copy the link");
      } }, "Copy")),
      el("p", { class: "hint" }, "Direct download: ", el("code", {}, created.url)),
      el("div", { class: "buttons" },
        el("button", { type: "button", class: "primary", onclick: () => close() }, "Done")));
  });
}

// The menu of one item: every action, as buttons (keyboard and phone friendly).
export function openItemMenu(item, reload) {
  const run = (fn) => (close) => () => { close(); fn(); };
  const entries = item.type === "folder" ? [
    ["Open", run(() => navigate(`/app/folder/${item.id}`))],
  ] : [
    canPreview(item) ? ["Preview", run(() => preview(item))] : null,
    ["Download", run(() => download(item))],
    ["Versions", run(() => versionsDialog(item, reload))],
    ["Share link…", run(() => shareDialog(item))],
  ];
  entries.push(["Rename", run(() => renameDialog(item, reload))],
    ["Move…", run(() => moveItems([item], reload))],
    ["Delete", run(() => deleteItems([item], reload))]);
  const details = item.type === "file"
    ? `${formatBytes(item.size)} · ${item.mime_type} · version ${item.version} · `
      + `modified ${formatDate(item.updated_at)}` : `Folder · modified ${formatDate(item.updated_at)}`;
  return modal(item.name, (close) => el("div", {},
    el("p", { class: "hint" }, details),
    el("div", { class: "menu-list", role: "group", "aria-label": `Actions for ${item.name}` },
      entries.filter(Boolean).map(([label, action]) =>
        el("button", { type: "button", onclick: action(close) }, label))),
    el("div", { class: "buttons" },
      el("button", { type: "button", onclick: () => close() }, "Close"))));
}
