// Small DOM helpers: elements, dialogs, toasts and formatting. No framework: the app
// renders each view from data and re-renders it after a change.

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on") && typeof value === "function") {
      node.addEventListener(key.slice(2), value);
    } else if (key in node && typeof value !== "string") node[key] = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function replace(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];

export function formatBytes(n) {
  if (n === null || n === undefined) return "";
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) { value /= 1024; unit += 1; }
  return unit === 0 ? `${n} B` : `${value.toFixed(value < 10 ? 1 : 0)} ${UNITS[unit]}`;
}

export function formatDate(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

export function typeLabel(item) {
  if (item.type === "folder") return "Folder";
  return item.mime_type || "File";
}

export function toast(message, kind = "info", timeoutMs = 6000) {
  const box = document.getElementById("toasts");
  const node = el("div", { class: `toast ${kind}`, role: kind === "error" ? "alert" : null },
    message);
  box.append(node);
  setTimeout(() => node.remove(), timeoutMs);
}

export function errorMessage(err) {
  return err && err.message ? err.message : String(err);
}

// A modal <dialog>: focus moves into it, Escape closes it, and focus returns to
// where it was. ``build(close)`` answers the dialog's content.
export function modal(title, build, className = "") {
  const opener = document.activeElement;
  return new Promise((resolve) => {
    const heading = el("h2", { id: `dlg-${Math.random().toString(36).slice(2)}` }, title);
    const dialog = el("dialog", { class: className, "aria-labelledby": heading.id });
    let result;
    const close = (value) => { result = value; dialog.close(); };
    dialog.addEventListener("close", () => {
      dialog.remove();
      if (opener && opener.isConnected) opener.focus();
      resolve(result);
    });
    dialog.append(el("div", { class: "body" }, heading, build(close)));
    document.body.append(dialog);
    dialog.showModal();
  });
}

// A form in a modal: ``fields`` are elements; ``submit(form)`` may throw to show the error
// and keep the dialog open, or answer the dialog's value.
export function formDialog(title, fields, submitLabel, submit, { danger = false } = {}) {
  return modal(title, (close) => {
    const error = el("p", { class: "error-text", role: "alert" });
    const button = el("button", { type: "submit", class: danger ? "primary danger" : "primary" },
      submitLabel);
    const form = el("form", { novalidate: true },
      fields, error,
      el("div", { class: "buttons" },
        el("button", { type: "button", onclick: () => close(undefined) }, "Cancel"), button));
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      button.disabled = true;
      try {
        close(await submit(form));
      } catch (err) {
        error.textContent = errorMessage(err);
        button.disabled = false;
      }
    });
    return form;
  });
}

export function confirmDialog(title, message, confirmLabel, { danger = true } = {}) {
  return formDialog(title, [el("p", {}, message)], confirmLabel, async () => true, { danger });
}

// A labelled input; its hint is also its description, read out with it.
export function field(label, input, hint) {
  input.id ||= `f-${Math.random().toString(36).slice(2)}`;
  const note = hint ? el("p", { class: "hint", id: `${input.id}-hint` }, hint) : null;
  if (note) input.setAttribute("aria-describedby", note.id);
  return el("div", {}, el("label", { for: input.id }, label), input, note);
}

// The header of a table's last column, which holds each row's buttons: named, not empty.
export function actionsHeader() {
  return el("th", { class: "actions" }, el("span", { class: "visually-hidden" }, "Actions"));
}

export function saveBlob(blob, name) {
  const url = URL.createObjectURL(blob);
  const link = el("a", { href: url, download: name, class: "hidden" });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    return false;
  }
}
