// Administration (role admin): accounts, and the cluster's nodes and figures.

import { api } from "./api.js";
import {
  actionsHeader, confirmDialog, el, errorMessage, field, formDialog, formatBytes, formatDate,
  replace, toast,
} from "./ui.js";

const GIB = 1024 ** 3;

function failure(main, title, err) {
  replace(main, title ? el("h1", {}, title) : null, el("p", { class: "notice", role: "alert" },
    err.status === 403 ? "Only administrators can see this page." : errorMessage(err)));
}

function editUser(user, reload) {
  const role = el("select", { name: "role" }, ["user", "admin"].map((r) =>
    el("option", { value: r, selected: r === user.role }, r)));
  const quota = el("input", { type: "number", name: "quota", min: "0", step: "0.1",
    value: user.quota_bytes === null ? "" : String(user.quota_bytes / GIB) });
  const active = el("input", { type: "checkbox", name: "active", checked: user.is_active });
  return formDialog(`Edit ${user.email}`, [
    field("Role", role),
    field("Quota (GiB)", quota, "Empty: the default quota."),
    el("label", { class: "inline" }, active, "Account is active"),
  ], "Save", async () => {
    await api("PATCH", `/admin/users/${user.id}`, { json: {
      role: role.value, is_active: active.checked,
      quota_bytes: quota.value === "" ? null : Math.round(Number(quota.value) * GIB),
    } });
    toast(`${user.email} updated`);
    await reload();
  });
}

const USERS_PER_PAGE = 100;

function userRow(u, reload) {
  return el("tr", {},
    el("td", { class: "name" }, u.email), el("td", {}, u.role),
    el("td", { class: "num" }, formatBytes(u.used_bytes)),
    el("td", { class: "num col-type" }, formatBytes(u.effective_quota_bytes)),
    el("td", {}, u.is_active ? "yes" : "no"),
    el("td", { class: "actions" }, el("button", { type: "button",
      "aria-label": `Edit ${u.email}`, onclick: () => editUser(u, reload) }, "Edit")));
}

function userTable(page, reload) {
  return el("table", { class: "list", id: "user-list" },
    el("thead", {}, el("tr", {}, el("th", {}, "Email"), el("th", {}, "Role"),
      el("th", { class: "num" }, "Used"), el("th", { class: "num col-type" }, "Quota"),
      el("th", {}, "Active"), actionsHeader())),
    el("tbody", {}, page.items.map((u) => userRow(u, reload))));
}

// Offset pages, as the API has them: "Previous" / "Next" around "1-100 of 2,345".
function pager(page, state, reload) {
  const first = (page.page - 1) * page.per_page;
  const go = (delta) => () => { state.page += delta; reload(); };
  return el("p", { class: "more" },
    el("button", { type: "button", disabled: page.page <= 1, onclick: go(-1) }, "Previous"),
    ` ${page.total ? first + 1 : 0}–${first + page.items.length} of ${page.total} users `,
    el("button", { type: "button", disabled: first + page.items.length >= page.total,
      onclick: go(1) }, "Next"));
}

export async function renderAdminUsers(main) {
  document.title = "Users · DFMS";
  const state = { q: "", page: 1 };
  const results = el("div", {});
  const load = async () => {
    const query = { per_page: USERS_PER_PAGE, page: state.page };
    if (state.q) query.q = state.q;
    try {
      const page = await api("GET", "/admin/users", { query });
      replace(results, userTable(page, load), pager(page, state, load));
    } catch (err) { failure(results, "", err); }
  };
  // Outside what a reload replaces, so typing keeps the focus.
  const filter = el("input", { type: "search", name: "q", autocomplete: "off" });
  let timer;
  filter.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => { state.q = filter.value.trim(); state.page = 1; load(); }, 250);
  });
  replace(main, el("h1", {}, "Users"), field("Filter by email", filter), results);
  await load();
}

function figure(label, value) {
  return el("div", {}, el("dt", {}, label), el("dd", {}, value));
}

async function drain(node, reload) {
  if (!await confirmDialog(`Drain ${node.id}?`, "Its chunks are copied to other nodes and it "
    + "then leaves the ring.", "Drain")) return;
  try {
    await api("POST", `/admin/nodes/${node.id}/drain`);
    toast(`Draining ${node.id}`);
    await reload();
  } catch (err) { toast(errorMessage(err), "error"); }
}

export async function renderAdminCluster(main) {
  document.title = "Cluster · DFMS";
  const load = async () => {
    const c = await api("GET", "/admin/cluster");
    replace(main, el("h1", {}, "Cluster"), el("dl", { class: "stats" },
      figure("Chunks", String(c.chunk_count)),
      figure("Stored", formatBytes(c.stored_bytes)),
      figure("Logical", formatBytes(c.logical_bytes)),
      figure("Dedup ratio", c.dedup_ratio === null ? "–" : c.dedup_ratio.toFixed(2)),
      figure("Under-replicated", String(c.under_replicated_chunks)),
      figure("At risk", String(c.chunks_at_risk)),
      figure("Repair queue", String(c.repair_queue_length)),
      figure("Replicas / quorum", `${c.replicas_n} / ${c.write_quorum_w}`),
      figure("Last scrub", formatDate(c.scrub.last_pass_done_at) || "–")),
    el("h2", {}, "Nodes"), el("table", { class: "list", id: "node-list" },
      el("thead", {}, el("tr", {}, el("th", {}, "Node"), el("th", {}, "Health"),
        el("th", { class: "col-type" }, "State"), el("th", { class: "num" }, "Latency"),
        el("th", { class: "num" }, "Stored"), actionsHeader())),
      el("tbody", {}, c.nodes.map((n) => el("tr", { "data-node": n.id },
        el("td", { class: "name" }, n.id, el("div", { class: "hint" }, n.endpoint)),
        el("td", {}, n.health),
        el("td", { class: "col-type" }, n.ring_state || n.admin_state),
        el("td", { class: "num" }, n.last_probe_latency_ms === null ? "–"
          : `${n.last_probe_latency_ms.toFixed(1)} ms`),
        el("td", { class: "num" }, formatBytes(n.bytes)),
        el("td", { class: "actions" }, n.admin_state === "active" ? el("button", {
          type: "button", "aria-label": `Drain ${n.id}`, onclick: () => drain(n, load) },
        "Drain") : null))))));
  };
  try { await load(); } catch (err) { failure(main, "Cluster", err); }
}
