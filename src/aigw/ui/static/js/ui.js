// Shared interface pieces: toasts, modal dialogs (focus-trapped, Esc cancels),
// the confirm dialog, the one-time token reveal, form fields with inline errors.

import { ApiError } from "./api.js";
import { h, icon, nextId } from "./dom.js";

/* ---------------- Toasts ---------------- */

/** A short message in a live region: polite for news, assertive for failures. */
export function toast(message, { kind = "success", timeout } = {}) {
  // A modal dialog makes the rest of the page inert (and hidden from assistive
  // technology), so while one is open its own live regions carry the message.
  const dialogs = document.querySelectorAll("dialog[open]");
  const host = dialogs.length ? dialogs[dialogs.length - 1] : document;
  const region = host.querySelector(kind === "error" ? "[data-live=alerts]" : "[data-live=toasts]");
  if (!region) return;
  const item = h(
    "div",
    { class: `toast toast--${kind}` },
    h("span", { class: "toast__msg" }, message),
    h(
      "button",
      {
        type: "button",
        class: "btn btn--ghost btn--sm",
        "aria-label": "Dismiss notification",
        onclick: () => item.remove(),
      },
      icon("close"),
    ),
  );
  region.append(item);
  setTimeout(() => item.remove(), timeout ?? (kind === "error" ? 9000 : 5000));
}

/* ---------------- Dialogs ---------------- */

const FOCUSABLE =
  'a[href], button:not([disabled]), input:not([disabled]):not([type="hidden"]), select:not([disabled]), textarea:not([disabled]), [tabindex]:not([tabindex="-1"])';

function focusables(root) {
  return [...root.querySelectorAll(FOCUSABLE)].filter(
    (el) => el.offsetParent !== null || el === document.activeElement,
  );
}

/**
 * Open a modal <dialog>. Tab and Shift+Tab cycle inside it, Esc cancels
 * (unless busy), and focus returns to the opener when it closes.
 * Returns {dialog, body, footer, close(value), setBusy(bool), closed: Promise}.
 */
export function modal({ title, description, wide = false, role, initialFocus } = {}) {
  const titleId = nextId("dialog-title");
  const descId = description ? nextId("dialog-desc") : undefined;
  const body = h("div", { class: "modal__body" });
  if (description) body.append(h("p", { id: descId }, description));
  const footer = h("div", { class: "modal__footer" });
  const dialog = h(
    "dialog",
    {
      class: `modal${wide ? " modal--wide" : ""}`,
      "aria-labelledby": titleId,
      "aria-describedby": descId,
      role,
    },
    h("div", { class: "modal__header" }, h("h2", { id: titleId }, title)),
    body,
    footer,
    h("div", { class: "toasts", role: "status", "aria-live": "polite", "data-live": "toasts" }),
    h("div", { class: "toasts toasts--alert", role: "alert", "aria-live": "assertive", "data-live": "alerts" }),
  );
  const opener = document.activeElement;
  let busy = false;
  let resolveClosed;
  const closed = new Promise((resolve) => {
    resolveClosed = resolve;
  });

  dialog.addEventListener("keydown", (event) => {
    if (event.key !== "Tab") return;
    const items = focusables(dialog);
    if (items.length === 0) {
      event.preventDefault();
      return;
    }
    const first = items[0];
    const last = items[items.length - 1];
    if (event.shiftKey && (document.activeElement === first || !dialog.contains(document.activeElement))) {
      event.preventDefault();
      last.focus();
    } else if (!event.shiftKey && document.activeElement === last) {
      event.preventDefault();
      first.focus();
    }
  });
  dialog.addEventListener("cancel", (event) => {
    if (busy) event.preventDefault();
  });
  dialog.addEventListener("close", () => {
    dialog.remove();
    if (opener && opener.isConnected && typeof opener.focus === "function") opener.focus();
    resolveClosed(dialog.returnValue);
  });

  document.body.append(dialog);
  const api = {
    dialog,
    body,
    footer,
    closed,
    close(value = "") {
      if (dialog.open) dialog.close(value);
    },
    setBusy(value) {
      busy = value;
      dialog.setAttribute("aria-busy", value ? "true" : "false");
    },
    show() {
      dialog.showModal();
      const target =
        (typeof initialFocus === "function" ? initialFocus() : initialFocus) ||
        dialog.querySelector("[autofocus]") ||
        focusables(body)[0] ||
        focusables(footer)[0];
      if (target) target.focus();
    },
  };
  return api;
}

/** An error callout for a dialog or form: "title" plus the API's detail. */
export function errorCallout(error, extra) {
  const title = error instanceof ApiError ? error.title : "Something went wrong";
  const detail = error instanceof ApiError ? error.detail : String(error?.message || error);
  return h(
    "div",
    { class: "callout callout--danger", role: "alert" },
    icon("alert", "callout__icon"),
    h(
      "div",
      { class: "callout__body" },
      h("strong", {}, title),
      detail && detail !== title ? h("span", {}, detail) : null,
      extra || null,
    ),
  );
}

/**
 * Ask before doing something. With `action`, the dialog stays open while it
 * runs and shows its error in place (e.g. a 409 "still in use") instead of
 * closing. Resolves to the action's result (or true), or false when cancelled.
 */
export function confirmDialog({
  title,
  message,
  confirmLabel = "Confirm",
  danger = false,
  action,
  explainError,
  retryable = () => true,
}) {
  const dlg = modal({ title, role: danger ? "alertdialog" : undefined });
  const messageNode = typeof message === "string" ? h("p", {}, message) : message;
  dlg.body.append(messageNode);
  const errorSlot = h("div");
  dlg.body.append(errorSlot);
  const cancel = h(
    "button",
    { type: "button", class: "btn", onclick: () => dlg.close("cancel") },
    "Cancel",
  );
  const confirm = h(
    "button",
    { type: "button", class: `btn ${danger ? "btn--danger" : "btn--primary"}` },
    confirmLabel,
  );
  dlg.footer.append(cancel, confirm);

  let result = false;
  confirm.addEventListener("click", async () => {
    if (!action) {
      result = true;
      dlg.close("confirm");
      return;
    }
    errorSlot.replaceChildren();
    dlg.setBusy(true);
    confirm.disabled = true;
    cancel.disabled = true;
    confirm.setAttribute("aria-busy", "true");
    try {
      result = (await action()) ?? true;
      dlg.setBusy(false);
      dlg.close("confirm");
    } catch (error) {
      dlg.setBusy(false);
      confirm.disabled = false;
      cancel.disabled = false;
      confirm.removeAttribute("aria-busy");
      errorSlot.replaceChildren(errorCallout(error, explainError ? explainError(error) : null));
      if (!retryable(error)) {
        confirm.hidden = true;
        cancel.textContent = "Close";
      }
      cancel.focus();
    }
  });
  // Destructive actions start on Cancel, so Enter never deletes by accident.
  dlg.show();
  (danger ? cancel : confirm).focus();
  return dlg.closed.then(() => result);
}

/** Copy text; falls back to selecting an input and execCommand on plain-HTTP origins. */
export async function copyText(text, input) {
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
      return true;
    }
  } catch {
    /* fall through to the legacy path */
  }
  if (input) {
    input.focus();
    input.select();
    try {
      return document.execCommand("copy");
    } catch {
      return false;
    }
  }
  return false;
}

/**
 * Show a freshly issued client token, once. Nothing keeps it after the
 * dialog closes: not storage, not the URL, not the page.
 */
export function tokenDialog({ alias, token, rotated = false }) {
  const dlg = modal({ title: rotated ? "New client token" : "Your client token", wide: true });
  const inputId = nextId("token");
  const input = h("input", {
    id: inputId,
    type: "text",
    readonly: true,
    value: token,
    spellcheck: "false",
    autocomplete: "off",
    "aria-describedby": `${inputId}-warn`,
    "data-testid": "client-token",
  });
  const copyLabel = h("span", {}, "Copy");
  const copyButton = h(
    "button",
    { type: "button", class: "btn btn--primary", "data-testid": "copy-token" },
    icon("copy"),
    copyLabel,
  );
  copyButton.addEventListener("click", async () => {
    const ok = await copyText(token, input);
    if (ok) {
      copyButton.replaceChildren(icon("check"), h("span", {}, "Copied"));
      toast("Client token copied to clipboard");
      setTimeout(() => copyButton.replaceChildren(icon("copy"), copyLabel), 2500);
    } else {
      input.select();
      toast("Copy is blocked here: the token is selected, press Ctrl+C / ⌘C", { kind: "error" });
    }
  });
  input.addEventListener("focus", () => input.select());

  const origin = location.origin;
  dlg.body.append(
    h(
      "div",
      { class: "callout callout--warning", id: `${inputId}-warn` },
      icon("warn", "callout__icon"),
      h(
        "div",
        { class: "callout__body" },
        h("strong", {}, "Copy it now: you will not see it again."),
        h(
          "span",
          {},
          "aigw stores only a hash of this token. If it is lost, rotate the token to issue a new one.",
        ),
      ),
    ),
    h(
      "div",
      { class: "field token-box" },
      h("label", { for: inputId }, `Client token for ${alias}`),
      h("div", { class: "input-group" }, input, copyButton),
      rotated
        ? h("p", { class: "hint" }, "The previous token stopped working when this one was issued.")
        : null,
    ),
    h(
      "details",
      { class: "table-alt" },
      h("summary", {}, "How applications use it"),
      h(
        "p",
        { class: "hint" },
        "Any OpenAI SDK works: point it at the gateway and pass the token as the API key.",
      ),
      h(
        "pre",
        { class: "snippet" },
        `from openai import OpenAI\nclient = OpenAI(base_url="${origin}/v1", api_key="aigw-…")`,
      ),
    ),
  );
  const done = h(
    "button",
    { type: "button", class: "btn", onclick: () => dlg.close("done") },
    "I've stored it",
  );
  dlg.footer.append(done);
  dlg.show();
  copyButton.focus();
  return dlg.closed;
}

/* ---------------- Form fields with inline errors ---------------- */

/**
 * A labelled control with a hint and an error slot, wired for assistive tech:
 * the control is described by its error (when shown) and its hint.
 */
export function field({ id, label, required = false, hint, control, optional = false }) {
  const hintId = hint ? `${id}-hint` : null;
  const errorId = `${id}-error`;
  if (hintId) control.setAttribute("aria-describedby", hintId);
  if (required) control.setAttribute("aria-required", "true");
  const wrapper = h(
    "div",
    { class: "field", "data-field": id },
    h(
      "label",
      { for: id },
      label,
      required ? h("span", { class: "req", "aria-hidden": "true" }, " *") : null,
      optional ? h("span", { class: "muted" }, " (optional)") : null,
    ),
    control,
    h("p", { class: "field-error", id: errorId, hidden: true }),
    hint ? h("p", { class: "hint", id: hintId }, hint) : null,
  );
  return { wrapper, control, errorId, hintId, focus: control, label };
}

/** A radio group (fieldset role=radiogroup) with the same hint/error wiring. */
export function radioField({ id, label, name, required = false, hint, options, value }) {
  const hintId = hint ? `${id}-hint` : null;
  const errorId = `${id}-error`;
  const radios = options.map((option, index) =>
    h("input", {
      type: "radio",
      name,
      id: `${id}-${index}`,
      value: option.value,
      checked: option.value === value,
    }),
  );
  const group = h(
    "fieldset",
    {
      id,
      role: "radiogroup",
      "aria-describedby": hintId,
      "aria-required": required ? "true" : undefined,
    },
    h(
      "legend",
      {},
      label,
      required ? h("span", { class: "req", "aria-hidden": "true" }, " *") : null,
    ),
    h(
      "div",
      { class: "choices" },
      options.map((option, index) =>
        h("label", { class: "choice", for: `${id}-${index}` }, radios[index], option.label),
      ),
    ),
  );
  const wrapper = h(
    "div",
    { class: "field", "data-field": id },
    group,
    h("p", { class: "field-error", id: errorId, hidden: true }),
    hint ? h("p", { class: "hint", id: hintId }, hint) : null,
  );
  return {
    label,
    wrapper,
    control: group,
    errorId,
    hintId,
    focus: radios[0],
    get value() {
      return radios.find((radio) => radio.checked)?.value;
    },
    set value(next) {
      for (const radio of radios) radio.checked = radio.value === next;
    },
  };
}

const FRIENDLY = {
  missing: "This field is required.",
  int_parsing: "Enter a whole number.",
  int_type: "Enter a whole number.",
  int_from_float: "Enter a whole number.",
};

/** Turn a pydantic message into a sentence an operator reads at a glance. */
export function friendlyMessage(error) {
  if (FRIENDLY[error.type]) return FRIENDLY[error.type];
  let message = String(error.message || "Invalid value.");
  if (error.type === "string_too_short" && /at least 1 character/.test(message)) {
    return "This field is required.";
  }
  message = message.replace(/^Value error, /, "").replace(/^Input should be /, "Must be ");
  message = message.replace(/^String should /, "Must ");
  message = message.charAt(0).toUpperCase() + message.slice(1);
  return /[.!?]$/.test(message) ? message : `${message}.`;
}

/**
 * Errors for one form: inline next to each field (aria-invalid, described by
 * the message) and listed in a summary at the top with links to the fields.
 * `fields` maps an API field name ("alias", "models.0.name") to a field().
 */
export class FormErrors {
  constructor(summarySlot, fields) {
    this.summarySlot = summarySlot;
    this.fields = fields;
    this.shown = new Set();
  }

  clearField(name) {
    const entry = this.fields[name];
    if (!entry || !this.shown.has(name)) return;
    const errorEl = document.getElementById(entry.errorId);
    if (errorEl) {
      errorEl.hidden = true;
      errorEl.textContent = "";
    }
    entry.control.removeAttribute("aria-invalid");
    entry.control.setAttribute("aria-describedby", entry.hintId || "");
    if (!entry.hintId) entry.control.removeAttribute("aria-describedby");
    this.shown.delete(name);
  }

  clear() {
    for (const name of [...this.shown]) this.clearField(name);
    this.summarySlot.replaceChildren();
  }

  /** Mark one field (several API fields may share one control); false when unknown. */
  setField(name, message) {
    const entry = this.fields[name];
    if (!entry) return false;
    const errorEl = document.getElementById(entry.errorId);
    if (!errorEl) return false;
    if (errorEl.hidden) errorEl.textContent = message;
    else if (!errorEl.textContent.includes(message)) errorEl.textContent += ` ${message}`;
    errorEl.hidden = false;
    entry.control.setAttribute("aria-invalid", "true");
    entry.control.setAttribute(
      "aria-describedby",
      [entry.errorId, entry.hintId].filter(Boolean).join(" "),
    );
    this.shown.add(name);
    return true;
  }

  /** Show an ApiError: per-field messages plus a summary; returns the summary node. */
  show(error, { heading, mapField = (f) => f, extra } = {}) {
    this.clear();
    const items = [];
    const seen = new Set();
    for (const fieldError of error.errors || []) {
      const name = mapField(fieldError.field);
      const message = friendlyMessage(fieldError);
      const label = this.fields[name]?.label;
      const dedupe = `${this.fields[name]?.errorId || name}|${message}`;
      if (seen.has(dedupe)) continue;
      seen.add(dedupe);
      if (name && this.setField(name, message)) {
        const target = this.fields[name].focus;
        items.push(
          h(
            "li",
            {},
            h(
              "a",
              {
                href: `#${target.id}`,
                onclick: (event) => {
                  event.preventDefault();
                  target.focus();
                },
              },
              `${label || name}: ${message}`,
            ),
          ),
        );
      } else {
        items.push(h("li", {}, fieldError.field ? `${fieldError.field}: ${message}` : message));
      }
    }
    const count = items.length;
    const title =
      heading ||
      (count > 1
        ? `There are ${count} problems to fix`
        : count === 1
          ? "There is a problem to fix"
          : error.title);
    const summary = h(
      "div",
      { class: "callout callout--danger", tabindex: "-1", "data-testid": "form-errors" },
      icon("alert", "callout__icon"),
      h(
        "div",
        { class: "callout__body" },
        h("strong", {}, title),
        count === 0 && error.detail && error.detail !== error.title ? h("span", {}, error.detail) : null,
        count > 0 ? h("ul", {}, items) : null,
        extra || null,
      ),
    );
    this.summarySlot.replaceChildren(summary);
    return summary;
  }
}

/** Put a button into its busy state while `work` runs. */
export async function withBusy(button, work) {
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  try {
    return await work();
  } finally {
    button.disabled = false;
    button.removeAttribute("aria-busy");
  }
}

/** Breadcrumbs: [["AI Gateway", "#/keys"], ["AI API Keys"]] — the last one is the current page. */
export function crumbs(items) {
  return h(
    "nav",
    { class: "crumbs", "aria-label": "Breadcrumb" },
    h(
      "ol",
      {},
      items.map(([label, href], index) =>
        h(
          "li",
          {},
          index === items.length - 1
            ? h("span", { "aria-current": "page" }, label)
            : h("a", { href }, label),
        ),
      ),
    ),
  );
}

/** The standard page header: breadcrumbs, an h1 that receives focus on navigation, actions. */
export function pageHeader({ trail, title, titleExtra, subtitle, actions }) {
  return h(
    "header",
    { class: "page-header" },
    h(
      "div",
      { class: "page-header__text" },
      crumbs(trail),
      h(
        "div",
        { class: "title-row" },
        h("h1", { tabindex: "-1", "data-page-title": true }, title),
        titleExtra || null,
      ),
      subtitle ? h("p", { class: "page-header__sub" }, subtitle) : null,
    ),
    actions && actions.length ? h("div", { class: "page-header__actions" }, actions) : null,
  );
}
