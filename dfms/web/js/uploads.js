// Uploads: a queue shown in a panel, each with a progress bar, speed, cancel and retry.
//
// Files up to LARGE_BYTES go in one streamed POST /files/upload. Larger ones go through
// the multipart API: the upload id is remembered in localStorage under the file's
// folder, name, size and modification time, so that after a reload (or a dropped
// connection) picking or dropping the same file again sends only the parts the server
// lacks. Each part's SHA-256 is computed here: a stored part is kept only when its
// digest matches, and the server verifies every part it receives.

import { API, ApiError, CLIENT_ID, api, bearer } from "./api.js";
import { el, formatBytes, replace, toast } from "./ui.js";

export const LARGE_BYTES = 16 * 1024 * 1024;
const PART_BYTES = 8 * 1024 * 1024;
const RESUME_PREFIX = "dfms.upload:";
const MAX_PARALLEL = 2;

const items = [];
let panel = null;
let onDone = () => {};

export function setUploadListener(fn) { onDone = fn; }

const resumeKey = (folder, file) =>
  `${RESUME_PREFIX}${folder || "root"}:${file.size}:${file.lastModified}:${file.name}`;

export function pendingResumes() {
  const found = [];
  for (let i = 0; i < localStorage.length; i += 1) {
    const key = localStorage.key(i);
    if (key && key.startsWith(RESUME_PREFIX)) {
      try { found.push({ key, ...JSON.parse(localStorage.getItem(key)) }); } catch { /* */ }
    }
  }
  return found;
}

export function enqueue(files, folderId) {
  for (const file of files) {
    items.push({ file, folderId, state: "queued", loaded: 0, speed: 0, xhr: null, error: "" });
  }
  pump();
  render();
}

function pump() {
  const running = items.filter((item) => item.state === "running").length;
  const next = items.filter((item) => item.state === "queued").slice(0, MAX_PARALLEL - running);
  for (const item of next) run(item);
}

async function run(item) {
  item.state = "running";
  item.loaded = 0;
  item.error = "";
  item.cancelled = false;
  render();
  try {
    const result = item.file.size > LARGE_BYTES ? await multipart(item) : await single(item);
    item.state = "done";
    item.loaded = item.file.size;
    const what = result.unchanged ? "unchanged" : result.version > 1
      ? `uploaded as version ${result.version}` : "uploaded";
    item.note = what;
    onDone(result, item.folderId);
  } catch (err) {
    item.state = item.cancelled ? "cancelled" : "failed";
    item.error = item.cancelled ? "" : err.message;
    if (!item.cancelled) toast(`${item.file.name}: ${err.message}`, "error");
  }
  item.xhr = null;
  render();
  pump();
}

// One request with upload progress (fetch cannot report it), its JSON answer or an ApiError.
function send(item, method, path, body, headers, base = 0) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    item.xhr = xhr;
    xhr.open(method, API + path);
    xhr.setRequestHeader("X-DFMS-Client-Id", CLIENT_ID);
    for (const [key, value] of Object.entries(headers)) xhr.setRequestHeader(key, value);
    let last = { t: performance.now(), loaded: 0 };
    xhr.upload.onprogress = (event) => {
      const now = performance.now();
      if (now - last.t > 400) {
        const rate = ((event.loaded - last.loaded) * 1000) / (now - last.t);
        item.speed = item.speed ? item.speed * 0.6 + rate * 0.4 : rate;
        last = { t: now, loaded: event.loaded };
      }
      item.loaded = base + event.loaded;
      renderItem(item);
    };
    xhr.onload = () => {
      let parsed = null;
      try { parsed = JSON.parse(xhr.responseText || "null"); } catch { /* */ }
      if (xhr.status >= 200 && xhr.status < 300) resolve(parsed);
      else reject(new ApiError(xhr.status, parsed?.error?.code ?? `http_${xhr.status}`,
        parsed?.error?.message ?? `upload failed (${xhr.status})`));
    };
    xhr.onerror = () => reject(new ApiError(0, "network", "the connection was lost"));
    xhr.onabort = () => reject(new ApiError(0, "cancelled", "cancelled"));
    xhr.send(body);
  });
}

// With the access token; once more after a refresh when it was refused.
async function authed(item, method, path, body, headers, base) {
  try {
    return await send(item, method, path, body,
      { ...headers, Authorization: `Bearer ${await bearer()}` }, base);
  } catch (err) {
    if (err.status !== 401 || item.cancelled) throw err;
    return send(item, method, path, body,
      { ...headers, Authorization: `Bearer ${await bearer(true)}` }, base);
  }
}

function single(item) {
  const headers = { "X-File-Name": encodeURIComponent(item.file.name) };
  if (item.folderId) headers["X-Folder-Id"] = item.folderId;
  return authed(item, "POST", "/files/upload", item.file, headers, 0);
}

async function sha256Hex(blob) {
  const digest = await crypto.subtle.digest("SHA-256", await blob.arrayBuffer());
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

async function openUpload(item, key) {
  const saved = JSON.parse(localStorage.getItem(key) || "null");
  if (saved) {
    try {
      const status = await api("GET", `/files/upload/multipart/${saved.upload_id}`);
      if (status.state === "open" || status.state === "uploading") return { ...saved, status };
    } catch (err) {
      if (err.status !== 404 && err.status !== 410) throw err;
    }
    localStorage.removeItem(key);
  }
  const init = await api("POST", "/files/upload/multipart/init", { json: {
    file_name: item.file.name, file_size: item.file.size, folder_id: item.folderId || null } });
  const partSize = Math.max(PART_BYTES, init.part_size_min,
    Math.ceil(item.file.size / init.max_parts));
  const record = { upload_id: init.upload_id, part_size: partSize, name: item.file.name,
    size: item.file.size, folder_id: item.folderId || null, started: Date.now() };
  localStorage.setItem(key, JSON.stringify(record));
  return { ...record, status: { parts: [] } };
}

async function multipart(item) {
  const key = resumeKey(item.folderId, item.file);
  const upload = await openUpload(item, key);
  item.uploadId = upload.upload_id;
  const stored = new Map(upload.status.parts.map((p) => [p.part_number, p]));
  const count = Math.max(1, Math.ceil(item.file.size / upload.part_size));
  const parts = [];
  for (let n = 1; n <= count; n += 1) {
    const start = (n - 1) * upload.part_size;
    const blob = item.file.slice(start, Math.min(item.file.size, start + upload.part_size));
    const sha = await sha256Hex(blob);
    if (item.cancelled) throw new ApiError(0, "cancelled", "cancelled");
    const have = stored.get(n);
    if (!(have && have.size === blob.size && have.sha256 === sha)) {
      await authed(item, "PUT", `/files/upload/multipart/${upload.upload_id}/part/${n}`, blob,
        { "X-Content-SHA256": sha }, start);
    }
    item.loaded = start + blob.size;
    parts.push({ part_number: n, sha256: sha });
    renderItem(item);
  }
  const result = await api("POST", `/files/upload/multipart/${upload.upload_id}/complete`,
    { json: { parts } });
  localStorage.removeItem(key);
  return result;
}

function cancel(item) {
  item.cancelled = true;
  if (item.state === "queued") item.state = "cancelled";
  if (item.xhr) item.xhr.abort();
  if (item.uploadId) {
    localStorage.removeItem(resumeKey(item.folderId, item.file));
    api("DELETE", `/files/upload/multipart/${item.uploadId}`).catch(() => {});
  }
  render();
}

function retry(item) {
  item.state = "queued";
  pump();
  render();
}

export async function discardResume(entry) {
  localStorage.removeItem(entry.key);
  try { await api("DELETE", `/files/upload/multipart/${entry.upload_id}`); } catch { /* gone */ }
  render();
}

// --- the panel --------------------------------------------------------------------------

function statusText(item) {
  const size = formatBytes(item.file.size);
  switch (item.state) {
    case "queued": return `Waiting · ${size}`;
    case "running": {
      const pct = item.file.size ? Math.floor((item.loaded / item.file.size) * 100) : 100;
      const speed = item.speed ? ` · ${formatBytes(Math.round(item.speed))}/s` : "";
      return `${pct}% of ${size}${speed}`;
    }
    case "done": return `Done · ${size} · ${item.note}`;
    case "cancelled": return "Cancelled";
    default: return `Failed: ${item.error}`;
  }
}

function renderItem(item) {
  if (!item.node) return;
  const bar = item.node.querySelector("progress");
  bar.max = item.file.size || 1;
  bar.value = item.state === "done" ? bar.max : item.loaded;
  item.node.querySelector(".status").textContent = statusText(item);
}

function itemNode(item) {
  const actions = [];
  if (item.state === "running" || item.state === "queued") {
    actions.push(el("button", { type: "button", onclick: () => cancel(item),
      "aria-label": `Cancel upload of ${item.file.name}` }, "Cancel"));
  }
  if (item.state === "failed" || item.state === "cancelled") {
    actions.push(el("button", { type: "button", onclick: () => retry(item),
      "aria-label": `Retry upload of ${item.file.name}` }, "Retry"));
  }
  item.node = el("li", { class: `upload ${item.state}`, "data-name": item.file.name },
    el("div", { class: "row" }, el("span", { class: "fname", title: item.file.name },
      item.file.name), actions),
    el("progress", { "aria-label": `Upload of ${item.file.name}` }),
    el("div", { class: "status" }));
  renderItem(item);
  return item.node;
}

function resumeNode(entry) {
  const picker = el("input", { type: "file", class: "visually-hidden",
    id: `resume-${entry.upload_id}`, "aria-label": `Choose ${entry.name} again to resume` });
  picker.addEventListener("change", () => {
    if (picker.files.length) enqueue([...picker.files], entry.folder_id);
  });
  return el("li", { class: "upload failed", "data-resume": entry.name },
    el("div", { class: "row" }, el("span", { class: "fname" }, entry.name),
      el("label", { class: "button", for: picker.id }, "Resume…"), picker,
      el("button", { type: "button", onclick: () => discardResume(entry) }, "Discard")),
    el("div", { class: "status" },
      `Interrupted · ${formatBytes(entry.size)} · choose the file again to resume`));
}

export function render() {
  if (!panel) {
    panel = el("section", { class: "uploads hidden", "aria-label": "Uploads" });
    document.body.append(panel);
    // Nothing the keyboard reaches may hide behind the panel (WCAG 2.4.11): app.css
    // keeps this much room below the page and scrolls the focus above it.
    new ResizeObserver(() => document.documentElement.style.setProperty("--uploads-room",
      `${panel.offsetHeight ? panel.offsetHeight + 16 : 0}px`)).observe(panel);
  }
  const active = new Set(items.map((i) => resumeKey(i.folderId, i.file)));
  const resumes = pendingResumes().filter((entry) => !active.has(entry.key));
  if (!items.length && !resumes.length) {
    panel.classList.add("hidden");
    return;
  }
  const busy = items.some((i) => i.state === "running" || i.state === "queued");
  const clear = el("button", { type: "button", onclick: () => {
    for (let i = items.length - 1; i >= 0; i -= 1) {
      if (items[i].state === "done" || items[i].state === "cancelled") items.splice(i, 1);
    }
    render();
  } }, "Clear finished");
  replace(panel,
    el("header", {}, el("h2", {}, busy ? "Uploading…" : "Uploads"), clear),
    el("ul", {}, resumes.map(resumeNode), items.map(itemNode)));
  panel.classList.remove("hidden");
}

// A page closed mid-upload loses the bytes in flight: ask first.
window.addEventListener("beforeunload", (event) => {
  if (items.some((i) => i.state === "running" && i.file.size <= LARGE_BYTES)) {
    event.preventDefault();
  }
});
