// Live notifications: GET /api/v1/events (Server-Sent Events; /work/notes/sse_contract.md).
//
// EventSource cannot send headers, so each connection starts with a single-use ticket
// (POST /events/tickets) put in the URL; the browser's own reconnect would reuse a spent
// ticket, so reconnecting is done here, with backoff, from the last event id (the server
// replays what was missed). Events of this tab's own actions (``origin`` is our client
// id) change nothing; others refresh the open folder and show a toast. A gateway
// without the endpoint (404) leaves the app as it is, without live updates.

import { CLIENT_ID, api } from "./api.js";
import { view } from "./files.js";
import { refreshUsage } from "./main.js";
import { toast } from "./ui.js";

let source = null;
let lastId = null;
let backoff = 1000;
let timer = null;
let running = false;
let reloadTimer = null;

export function stopEvents() {
  running = false;
  clearTimeout(timer);
  if (source) source.close();
  source = null;
}

export function startEvents() {
  if (running) return;
  running = true;
  connect();
}

async function connect() {
  if (!running) return;
  let ticket;
  try {
    ticket = (await api("POST", "/events/tickets")).ticket;
  } catch (err) {
    if (err.status === 404 || err.status === 405) { running = false; return; } // no SSE here
    return retryLater(err.retryAfter);
  }
  const query = new URLSearchParams({ ticket });
  if (lastId) query.set("last_event_id", lastId);
  source = new EventSource(`/api/v1/events?${query}`);
  source.onopen = () => { backoff = 1000; };
  source.onerror = () => {
    if (source && source.readyState === EventSource.CLOSED) {
      source = null;
      retryLater(null);
    }
  };
  for (const type of Object.keys(HANDLERS)) {
    source.addEventListener(type, (event) => receive(type, event));
  }
}

function retryLater(seconds) {
  if (!running) return;
  const wait = seconds ? seconds * 1000 : backoff;
  backoff = Math.min(backoff * 2, 30_000);
  timer = setTimeout(connect, wait);
}

function receive(type, event) {
  if (event.lastEventId) lastId = event.lastEventId;
  let data;
  try { data = JSON.parse(event.data); } catch { return; }
  HANDLERS[type](data, data.origin === CLIENT_ID);
}

// The open folder is reloaded once for a burst of changes made elsewhere (this tab
// reloads after its own actions itself).
function reloadIf(mine, ...folders) {
  if (mine || !view.reload || view.folderId === undefined) return;
  const open = view.folderId || null;
  if (folders.some((f) => (f ?? null) === open)) {
    clearTimeout(reloadTimer);
    reloadTimer = setTimeout(() => view.reload && view.reload(), 300);
  }
}

const elsewhere = (data, mine, text) => {
  if (!mine) toast(text);
};

const HANDLERS = {
  "file.uploaded": (d, mine) => {
    reloadIf(mine, d.folder_id);
    refreshUsage();
    elsewhere(d, mine, d.version > 1 ? `“${d.name}” has a new version (${d.version})`
      : `“${d.name}” was uploaded`);
  },
  "file.moved": (d, mine) => {
    reloadIf(mine, d.folder_id, d.old_folder_id);
    elsewhere(d, mine, d.name !== d.old_name ? `“${d.old_name}” was renamed to “${d.name}”`
      : `“${d.name}” was moved`);
  },
  "file.deleted": (d, mine) => {
    reloadIf(mine, d.folder_id);
    elsewhere(d, mine, `“${d.name}” was moved to the trash`);
  },
  "file.restored": (d, mine) => {
    reloadIf(mine, d.folder_id);
    elsewhere(d, mine, `“${d.name}” was restored`);
  },
  "folder.restored": (d, mine) => {
    reloadIf(mine, d.parent_id);
    elsewhere(d, mine, `Folder “${d.name}” was restored`);
  },
  "folder.created": (d, mine) => {
    reloadIf(mine, d.parent_id);
    elsewhere(d, mine, `Folder “${d.name}” was created`);
  },
  "folder.moved": (d, mine) => {
    reloadIf(mine, d.parent_id, d.old_parent_id);
    elsewhere(d, mine, d.name !== d.old_name
      ? `Folder “${d.old_name}” was renamed to “${d.name}”` : `Folder “${d.name}” was moved`);
  },
  "folder.deleted": (d, mine) => {
    reloadIf(mine, d.parent_id);
    elsewhere(d, mine, `Folder “${d.name}” was moved to the trash`);
    // The open folder itself (or one inside it) may be gone: its reload says so.
    if (!mine && view.folderId === d.folder_id && view.reload) view.reload();
  },
  "file.version_restored": (d, mine) => {
    reloadIf(mine, d.folder_id);
    elsewhere(d, mine, `“${d.name}”: version ${d.restored_from} restored`);
  },
  "upload.failed": (d) => {
    toast(d.reason === "quota_exceeded" ? `“${d.name}” was not stored: your quota is full`
      : `The upload of “${d.name}” expired before it was completed`, "error", 10_000);
  },
  "share.used": (d) => toast(`Your shared link to “${d.name}” was used (${d.download_count})`),
  "quota.warning": (d) => {
    refreshUsage();
    toast(`Your storage is ${Math.round(d.percent)}% full`, "error", 10_000);
  },
  "stream.reset": () => { if (view.reload) view.reload(); },
  "node.health_changed": (d) => toast(`Node ${d.node_id} is ${d.new}`, d.new === "down"
    ? "error" : "info"),
  "chunk.under_replicated": (d) => toast(`A chunk has ${d.replicas} of ${d.wanted} replicas`,
    "error"),
};
