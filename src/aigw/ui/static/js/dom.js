// Small DOM helpers. Everything the console renders goes through h()/svg():
// text is always set as text (never parsed as HTML), so data from the API
// cannot inject markup.

const SVG_NS = "http://www.w3.org/2000/svg";

function applyAttrs(el, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.setAttribute("class", value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "text") el.textContent = value;
    else if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (key === "value" && "value" in el && el.tagName !== "BUTTON") el.value = value;
    else if (key === "checked" || key === "selected" || key === "disabled") el[key] = Boolean(value);
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
}

function appendChildren(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
}

/** Create an HTML element: h("a", {href: "#/keys", class: "x"}, "text", otherNode). */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  applyAttrs(el, attrs);
  appendChildren(el, children);
  return el;
}

/** Create an SVG element (for icons and charts). */
export function svg(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "text") el.textContent = value;
    else el.setAttribute(key, String(value));
  }
  appendChildren(el, children);
  return el;
}

const ICONS = {
  plus: "M12 5v14M5 12h14",
  search: "M11 19a8 8 0 1 1 0-16 8 8 0 0 1 0 16Zm10 2-4.35-4.35",
  edit: "M12 20h9M16.5 3.5a2.1 2.1 0 0 1 3 3L7 19l-4 1 1-4Z",
  trash: "M3 6h18M8 6V4h8v2m2 0-1 14H7L6 6",
  rotate: "M21 12a9 9 0 1 1-3-6.7L21 8M21 3v5h-5",
  copy: "M9 9h11v11H9zM5 15H4V4h11v1",
  check: "M20 6 9 17l-5-5",
  eye: "M2 12s3.5-7 10-7 10 7 10 7-3.5 7-10 7S2 12 2 12Zm10 3a3 3 0 1 0 0-6 3 3 0 0 0 0 6Z",
  eyeOff: "M3 3l18 18M10.6 10.6a3 3 0 0 0 4.2 4.2M9.9 5.2A10 10 0 0 1 12 5c6.5 0 10 7 10 7a17 17 0 0 1-3.2 4M6.6 6.6C3.8 8.4 2 12 2 12s3.5 7 10 7c1.6 0 3-.4 4.3-1",
  warn: "M12 3 2 20h20L12 3Zm0 6v5m0 3v.5",
  alert: "M12 22a10 10 0 1 0 0-20 10 10 0 0 0 0 20Zm0-14v5m0 3v.5",
  info: "M12 22a10 10 0 1 0 0-20 10 10 0 0 0 0 20Zm0-11v6m0-9v.5",
  key: "M15 7a4 4 0 1 1-3.9 4.9L4 19v2h3v-2h2v-2h2l1.1-1.1A4 4 0 0 1 15 7Zm1 2.5h.01",
  server: "M4 4h16v6H4zM4 14h16v6H4zM8 7h.01M8 17h.01",
  close: "M6 6l12 12M18 6 6 18",
  power: "M12 3v9M6.4 6.4a8 8 0 1 0 11.2 0",
  chevronLeft: "M15 18l-6-6 6-6",
  chevronRight: "M9 18l6-6-6-6",
  logout: "M15 4h4v16h-4M10 17l5-5-5-5M15 12H3",
};

/** A stroke icon, hidden from assistive technology (its button carries the label). */
export function icon(name, cls = "btn__icon") {
  return svg(
    "svg",
    {
      class: cls,
      viewBox: "0 0 24 24",
      fill: "none",
      stroke: "currentColor",
      "stroke-width": 2,
      "stroke-linecap": "round",
      "stroke-linejoin": "round",
      "aria-hidden": "true",
      focusable: "false",
    },
    svg("path", { d: ICONS[name] }),
  );
}

export function brandMark(cls = "brand__mark") {
  return svg(
    "svg",
    { class: cls, viewBox: "0 0 32 32", "aria-hidden": "true", focusable: "false" },
    svg("rect", { width: 32, height: 32, rx: 8, fill: "#4f46e5" }),
    svg("path", {
      d: "M9 22 16 8l7 14M11.5 17h9",
      fill: "none",
      stroke: "#fff",
      "stroke-width": 2.6,
      "stroke-linecap": "round",
      "stroke-linejoin": "round",
    }),
  );
}

let uid = 0;
/** A document-unique id for label/aria wiring. */
export function nextId(prefix = "id") {
  uid += 1;
  return `${prefix}-${uid}`;
}

export function debounce(fn, ms) {
  let timer;
  const wrapped = (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
  wrapped.cancel = () => clearTimeout(timer);
  return wrapped;
}

const intFormat = new Intl.NumberFormat();
export const fmtInt = (n) => (typeof n === "number" ? intFormat.format(n) : "—");

/** 0 means "no limit" for token limits. */
export const fmtLimit = (n) => (n === 0 ? "Unlimited" : `${fmtInt(n)} tokens`);
export const fmtLimitShort = (n) => (n === 0 ? "Unlimited" : fmtInt(n));

export const USAGE_LIMIT_LABELS = { reject: "Reject", use_anyway: "Use Anyway" };
export const STATUS_LABELS = { enabled: "Enabled", disabled: "Disabled" };
export const KIND_LABELS = {
  openai: "OpenAI-compatible",
  anthropic: "Anthropic",
  gemini: "Google Gemini",
  azure_openai: "Azure OpenAI",
};

const dateTimeFormat = new Intl.DateTimeFormat(undefined, {
  dateStyle: "medium",
  timeStyle: "short",
});
const relFormat = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });

export function fmtDateTime(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : dateTimeFormat.format(date);
}

export function fmtRelative(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "—";
  const seconds = (date.getTime() - Date.now()) / 1000;
  const steps = [
    [60, "second"],
    [3600, "minute"],
    [86400, "hour"],
    [86400 * 30, "day"],
    [86400 * 365, "month"],
  ];
  const abs = Math.abs(seconds);
  if (abs < 45) return "just now";
  let unit = "year";
  let divisor = 86400 * 365;
  const divisors = { second: 1, minute: 60, hour: 3600, day: 86400, month: 86400 * 30 };
  for (const [limit, name] of steps) {
    if (abs < limit) {
      unit = name;
      divisor = divisors[name];
      break;
    }
  }
  return relFormat.format(Math.round(seconds / divisor), unit);
}

/** A <time> showing "3 minutes ago" with the exact date as its tooltip. */
export function timeAgo(iso) {
  return h("time", { datetime: iso, title: fmtDateTime(iso) }, fmtRelative(iso));
}

export function statusBadge(status) {
  return h(
    "span",
    { class: `badge badge--${status === "enabled" ? "enabled" : "disabled"}` },
    STATUS_LABELS[status] || status,
  );
}

/** Parse "#/keys/abc?x=1" into {path: ["keys","abc"], query: URLSearchParams}. */
export function parseHash(hash = location.hash) {
  const raw = hash.replace(/^#/, "");
  const [pathPart, queryPart = ""] = raw.split("?");
  const path = pathPart.split("/").filter(Boolean).map(decodeURIComponent);
  return { path, query: new URLSearchParams(queryPart) };
}
