// My files: one folder's subfolders and files, with breadcrumbs, sorting, paging by
// cursor, selection, upload (picker and drag and drop) and the actions on an item.

import { api } from "./api.js";
import {
  deleteItems, moveItems, openItemMenu, newFolderDialog,
} from "./actions.js";
import { navigate } from "./main.js";
import { el, errorMessage, formatBytes, formatDate, replace, toast, typeLabel } from "./ui.js";
import { enqueue } from "./uploads.js";

const PER_PAGE = 50;
const SORTS = { name: "Name", size: "Size", updated_at: "Modified" };
const names = new Map(); // folder id -> {name, parent_id}, for breadcrumbs

// What is on screen; a change elsewhere (an event, an upload) reloads it.
export const view = {
  folderId: undefined, sort: "name", order: "asc", reload: null, state: null,
};

export function folderHref(id) { return id ? `/app/folder/${id}` : "/"; }

export async function folderPath(folderId) {
  const path = [];
  let id = folderId;
  while (id && path.length < 64) {
    if (!names.has(id)) {
      const page = await api("GET", `/folders/${id}/contents`, { query: { per_page: 1 } });
      names.set(id, { name: page.folder.name, parent_id: page.folder.parent_id });
    }
    const entry = names.get(id);
    path.unshift({ id, name: entry.name });
    id = entry.parent_id;
  }
  return path;
}

function breadcrumbs(path) {
  const crumbs = [{ id: null, name: "My files" }, ...path];
  return el("nav", { class: "breadcrumbs", "aria-label": "Breadcrumb" },
    el("ol", {}, crumbs.map((c, i) => el("li", {}, i === crumbs.length - 1
      ? el("span", { "aria-current": "page" }, c.name)
      : el("a", { href: folderHref(c.id) }, c.name)))));
}

function sortFolders(folders) {
  const key = view.sort === "updated_at" ? "updated_at" : "name";
  const sorted = [...folders].sort((a, b) => (a[key] < b[key] ? -1 : a[key] > b[key] ? 1 : 0));
  return view.order === "desc" ? sorted.reverse() : sorted;
}

function header(state) {
  const sortable = (key, cls) => {
    const active = view.sort === key;
    const aria = active ? (view.order === "asc" ? "ascending" : "descending") : null;
    return el("th", { class: cls, "aria-sort": aria, scope: "col" },
      el("button", { type: "button", "data-sort": key, onclick: () => {
        view.order = active && view.order === "asc" ? "desc" : "asc";
        view.sort = key;
        state.load();
      } }, SORTS[key], active ? el("span", { "aria-hidden": "true" },
        view.order === "asc" ? " ▲" : " ▼") : null));
  };
  const all = el("input", { type: "checkbox", "aria-label": "Select all" });
  all.checked = state.items.length > 0 && state.selected.size === state.items.length;
  all.addEventListener("change", () => {
    state.selected = new Set(all.checked ? state.items.map((i) => i.id) : []);
    state.paint();
  });
  return el("thead", {}, el("tr", {}, el("th", { class: "check" }, all),
    sortable("name"), sortable("size", "num"), el("th", { class: "col-type", scope: "col" },
      "Type"), sortable("updated_at", "col-modified"),
    el("th", { class: "actions" }, el("span", { class: "visually-hidden" }, "Actions"))));
}

function row(item, state) {
  const check = el("input", { type: "checkbox", "aria-label": `Select ${item.name}` });
  check.checked = state.selected.has(item.id);
  check.addEventListener("change", () => {
    if (check.checked) state.selected.add(item.id); else state.selected.delete(item.id);
    state.paint();
  });
  const open = item.type === "folder"
    ? el("a", { href: folderHref(item.id), class: "item-name folder" }, item.name)
    : el("button", { type: "button", class: "link item-name",
      onclick: () => openItemMenu(item, state.load) }, item.name);
  return el("tr", { class: state.selected.has(item.id) ? "selected" : null,
    "data-name": item.name, "data-type": item.type },
  el("td", { class: "check" }, check),
  el("td", { class: "name" }, open),
  el("td", { class: "num size" }, item.type === "folder" ? "" : formatBytes(item.size)),
  el("td", { class: "col-type" }, typeLabel(item)),
  el("td", { class: "col-modified" }, formatDate(item.updated_at)),
  el("td", { class: "actions" }, el("button", { type: "button",
    "aria-label": `Actions for ${item.name}`, onclick: () => openItemMenu(item, state.load) },
  "⋯")));
}

function toolbar(state) {
  const picker = el("input", { type: "file", multiple: true, id: "upload-input",
    class: "visually-hidden" });
  picker.addEventListener("change", () => {
    enqueue([...picker.files], state.folderId);
    picker.value = "";
  });
  const chosen = state.items.filter((i) => state.selected.has(i.id));
  return el("div", { class: "toolbar" },
    el("label", { class: "button primary", for: "upload-input" }, "Upload files"), picker,
    el("button", { type: "button", onclick: () => newFolderDialog(state.folderId, state.load) },
      "New folder"),
    el("span", { class: "spacer" }),
    chosen.length ? [
      el("span", { "aria-live": "polite" }, `${chosen.length} selected`),
      el("button", { type: "button", onclick: () => moveItems(chosen, state.load) }, "Move…"),
      el("button", { type: "button", class: "danger",
        onclick: () => deleteItems(chosen, state.load) }, "Delete"),
      el("button", { type: "button", onclick: () => { state.selected.clear(); state.paint(); } },
        "Clear selection"),
    ] : null);
}

function dropZone(state, content) {
  const zone = el("section", { class: "dropzone", id: "dropzone",
    "aria-label": "Files; drop files here to upload them" }, content);
  zone.addEventListener("dragover", (event) => {
    if (![...event.dataTransfer.types].includes("Files")) return;
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    const files = [...event.dataTransfer.files];
    if (files.length) enqueue(files, state.folderId);
  });
  return zone;
}

export async function renderFiles(main, folderId) {
  const state = { folderId, items: [], selected: new Set(), cursor: null, total: 0 };
  view.folderId = folderId;
  view.reload = () => state.load();
  view.state = state;
  state.paint = () => paint(main, state);
  state.load = async () => {
    state.cursor = null;
    state.items = [];
    state.selected.clear();
    await fetchPage(state, true);
    state.paint();
  };
  state.more = async () => { await fetchPage(state, false); state.paint(); };
  replace(main, el("h1", {}, "My files"), el("p", { class: "hint" }, "Loading…"));
  try {
    state.path = await folderPath(folderId);
    await state.load();
    document.title = `${state.path.at(-1)?.name ?? "My files"} · DFMS`;
  } catch (err) {
    replace(main, el("h1", {}, "My files"), el("p", { class: "notice", role: "alert" },
      err.status === 404 ? "This folder does not exist (or is in the trash)." : errorMessage(err)),
    el("p", {}, el("a", { href: "/" }, "Back to my files")));
  }
}

async function fetchPage(state, first) {
  const page = await api("GET", `/folders/${state.folderId || "root"}/contents`, { query: {
    sort: view.sort, order: view.order, per_page: PER_PAGE, cursor: first ? null : state.cursor,
  } });
  if (first) state.items = [...sortFolders(page.folders), ...page.files];
  else state.items = [...state.items, ...page.files];
  for (const f of page.folders) names.set(f.id, { name: f.name, parent_id: f.parent_id });
  state.cursor = page.next_cursor;
  state.total = page.total_files;
  state.folderCount = page.folders.length;
}

function paint(main, state) {
  if (view.state !== state || view.reload === null) return; // another page is open
  const focused = focusSelector(main, document.activeElement);
  const title = state.path.at(-1)?.name ?? "My files";
  const shownFiles = state.items.length - state.folderCount;
  const table = state.items.length
    ? el("table", { class: "list", id: "file-list" }, header(state),
      el("tbody", {}, state.items.map((item) => row(item, state))))
    : el("p", { class: "empty" }, "Nothing here yet. Upload files or drop them here.");
  replace(main, breadcrumbs(state.path), el("h1", {}, title), toolbar(state),
    dropZone(state, [table, state.cursor ? el("div", { class: "more" },
      el("p", { class: "hint" }, `${shownFiles} of ${state.total} files shown`),
      el("button", { type: "button", onclick: () => state.more().catch(
        (err) => toast(errorMessage(err), "error")) }, "Load more")) : null]));
  if (focused) main.querySelector(focused)?.focus();
}

// The control that has the focus, as a selector that finds it again after a repaint: a
// keyboard user who sorts or ticks a box stays where they were.
function focusSelector(main, node) {
  if (!node || !main.contains(node)) return null;
  const label = node.getAttribute("aria-label");
  if (label) return `[aria-label="${CSS.escape(label)}"]`;
  return node.dataset.sort ? `[data-sort="${CSS.escape(node.dataset.sort)}"]` : null;
}

export function openFolder(id) { navigate(folderHref(id)); }
