// One AI API key: its configuration (secrets masked), recent usage with a
// per-day chart, its audit trail, and the actions: edit, enable/disable,
// rotate the client token, delete (behind "Confirm Delete?").

import { ApiError, api } from "../api.js";
import { OUTCOMES, outcomeCounts, usageChart, usageTable } from "../chart.js";
import {
  STATUS_LABELS,
  USAGE_LIMIT_LABELS,
  fmtDateTime,
  fmtInt,
  fmtRelative,
  fmtLimit,
  h,
  icon,
  statusBadge,
  timeAgo,
} from "../dom.js";
import { confirmDialog, copyText, errorCallout, pageHeader, toast, tokenDialog, withBusy } from "../ui.js";
import { deleteKeyDialog, providerModelLabel } from "./keys.js";

const USAGE_POLICY_EXPLAIN = {
  reject: "Requests over a limit are refused; output stops at the output limit.",
  use_anyway: "Requests over a limit go through and are flagged.",
};

const BUDGET_PERIOD_LABELS = { day: "Day", week: "Week", month: "Month", total: "Total" };

/** "used of budget", with a meter; or "No budget". */
function budgetValue(key) {
  const budget = key.budget_tokens || 0;
  if (!budget) return h("span", { "data-testid": "key-budget" }, "No budget");
  const used = key.budget_used || 0;
  return h(
    "span",
    { class: "budget", "data-testid": "key-budget" },
    h("span", {}, `${fmtInt(used)} of ${fmtInt(budget)} tokens used`),
    h("meter", {
      class: "budget__meter",
      min: 0,
      max: budget,
      value: Math.min(used, budget),
      low: budget * 0.75,
      high: budget * 0.9,
      optimum: 0,
      "aria-label": "Budget used",
    }),
  );
}

function budgetPeriodValue(key) {
  const label = BUDGET_PERIOD_LABELS[key.budget_period] || key.budget_period || "—";
  return h("span", { "data-testid": "key-budget-period" }, label);
}

function budgetPeriodExplain(key) {
  if (!key.budget_tokens) return "Applies once a budget is set.";
  if (!key.budget_resets_at) return "Never resets.";
  return h(
    "span",
    { "data-testid": "key-budget-resets" },
    "Resets ",
    h("time", { datetime: key.budget_resets_at }, fmtDateTime(key.budget_resets_at)),
    ` (${fmtRelative(key.budget_resets_at)})`,
  );
}

function rateValue(value, unit) {
  return value ? `${fmtInt(value)} ${unit} per minute` : "No limit";
}

function prop(label, value, explain) {
  return [
    h("dt", {}, label),
    h("dd", {}, value, explain ? h("span", { class: "explain" }, explain) : null),
  ];
}

function notFound(main, id) {
  document.title = "Key not found · AI Gateway";
  main.append(
    pageHeader({
      trail: [["AI Gateway", "#/keys"], ["AI API Keys", "#/keys"], ["Not found"]],
      title: "AI API key not found",
      subtitle: `No AI API key has the id ${id}. It may have been deleted.`,
      actions: [h("a", { class: "btn", href: "#/keys" }, "Back to the list")],
    }),
  );
}

export async function renderKeyDetail(main, ctx) {
  const { id, tab } = ctx.params;
  let key;
  try {
    key = await api.getKey(id, ctx.signal);
  } catch (error) {
    if (error instanceof ApiError && (error.status === 404 || error.status === 422)) {
      notFound(main, id);
      return;
    }
    throw error;
  }
  if (ctx.signal.aborted) return;
  document.title = `${key.alias} · AI Gateway`;
  const base = `#/keys/${encodeURIComponent(key.id)}`;
  const banner = h("div", { class: "stack banner" });

  /* ----- actions ----- */
  const toggle = h(
    "button",
    { type: "button", class: "btn", "data-testid": "toggle-status" },
    icon("power"),
    h("span", {}, key.status === "enabled" ? "Disable" : "Enable"),
  );
  toggle.addEventListener("click", () =>
    withBusy(toggle, async () => {
      const status = key.status === "enabled" ? "disabled" : "enabled";
      try {
        const saved = await api.updateKey(key.id, { status }, key.version);
        toast(`“${saved.alias}” is now ${STATUS_LABELS[saved.status].toLowerCase()}`);
        ctx.reload();
      } catch (error) {
        showError(error);
      }
    }),
  );
  const rotate = h(
    "button",
    { type: "button", class: "btn" },
    icon("rotate"),
    h("span", {}, "Rotate token"),
  );
  rotate.addEventListener("click", async () => {
    const rotated = await confirmDialog({
      title: "Rotate the client token?",
      message: h(
        "div",
        { class: "stack" },
        h(
          "p",
          {},
          "A new token is issued and shown once. The current one (",
          h("code", {}, `${key.token_prefix}…`),
          ") stops working immediately.",
        ),
        h("p", { class: "muted" }, "Update every application that uses this key right after."),
      ),
      confirmLabel: "Rotate token",
      danger: true,
      action: () => api.rotateToken(key.id),
    });
    if (!rotated) return;
    await tokenDialog({ alias: rotated.alias, token: rotated.token, rotated: true });
    ctx.reload();
  });
  const del = h(
    "button",
    { type: "button", class: "btn btn--danger-ghost" },
    icon("trash"),
    h("span", {}, "Delete"),
  );
  del.addEventListener("click", async () => {
    if (await deleteKeyDialog(key)) {
      toast(`Deleted “${key.alias}”`);
      ctx.navigate("#/keys");
    }
  });

  function showError(error) {
    if (error instanceof ApiError && error.status === 412) {
      banner.replaceChildren(
        h(
          "div",
          { class: "callout callout--danger", role: "alert", "data-testid": "stale" },
          icon("alert", "callout__icon"),
          h(
            "div",
            { class: "callout__body" },
            h("strong", {}, "This key was changed by someone else — reload."),
            h("span", {}, "Nothing was saved. Reload to see the latest version, then try again."),
            h(
              "div",
              {},
              h("button", { type: "button", class: "btn btn--sm", onclick: () => ctx.reload() }, "Reload"),
            ),
          ),
        ),
      );
    } else {
      banner.replaceChildren(errorCallout(error));
    }
  }

  if (key.status === "disabled") {
    banner.append(
      h(
        "div",
        { class: "callout callout--info", "data-testid": "disabled-note" },
        icon("info", "callout__icon"),
        h(
          "div",
          { class: "callout__body" },
          h(
            "span",
            {},
            h("strong", {}, "This key is disabled."),
            " The proxy answers its client token with 403 key_disabled until you enable it.",
          ),
        ),
      ),
    );
  }

  main.append(
    pageHeader({
      trail: [["AI Gateway", "#/keys"], ["AI API Keys", "#/keys"], [key.alias]],
      title: key.alias,
      titleExtra: statusBadge(key.status),
      subtitle: providerModelLabel(key.provider, key.model),
      actions: [
        h("a", { class: "btn", href: `${base}/edit` }, icon("edit"), h("span", {}, "Edit")),
        toggle,
        rotate,
        del,
      ],
    }),
    banner,
    h(
      "nav",
      { class: "tabs", "aria-label": "Key sections" },
      h("a", { href: base, "aria-current": tab === "overview" ? "page" : undefined }, "Overview"),
      h("a", { href: `${base}/activity`, "aria-current": tab === "activity" ? "page" : undefined }, "Activity"),
    ),
  );

  if (tab === "activity") {
    await renderActivity(main, ctx, key);
    return;
  }

  /* ----- overview ----- */
  const idCopy = h(
    "button",
    { type: "button", class: "btn btn--ghost btn--sm btn--icon", "aria-label": "Copy key id", title: "Copy id" },
    icon("copy"),
  );
  idCopy.addEventListener("click", async () => {
    if (await copyText(key.id)) toast("Key id copied");
  });

  const config = h(
    "section",
    { class: "card", "aria-labelledby": "config-title" },
    h("div", { class: "card__header" }, h("h2", { id: "config-title" }, "Configuration")),
    h(
      "div",
      { class: "card__body" },
      h(
        "dl",
        { class: "props", "data-testid": "key-props" },
        prop("Provider/Model", providerModelLabel(key.provider, key.model)),
        prop("Status", statusBadge(key.status)),
        prop("API key code", h("span", { class: "secret", "data-testid": "key-code-masked" }, key.key_code_masked), "Stored encrypted; only this masked form is ever shown."),
        prop("Client token", h("span", { class: "secret" }, `${key.token_prefix}…`), "Prefix only: the full token was shown once."),
        prop("Input limit", fmtLimit(key.input_limit), "Per request"),
        prop("Output limit", fmtLimit(key.output_limit), "Per response"),
        prop("Usage limit", USAGE_LIMIT_LABELS[key.usage_limit] || key.usage_limit, USAGE_POLICY_EXPLAIN[key.usage_limit]),
        prop("Budget", budgetValue(key), "Input + output tokens in the current period"),
        prop("Budget period", budgetPeriodValue(key), budgetPeriodExplain(key)),
        prop("Request rate", h("span", { "data-testid": "key-rpm" }, rateValue(key.rpm_limit, "requests"))),
        prop("Token rate", h("span", { "data-testid": "key-tpm" }, rateValue(key.tpm_limit, "tokens"))),
      ),
    ),
  );
  const record = h(
    "section",
    { class: "card", "aria-labelledby": "record-title" },
    h("div", { class: "card__header" }, h("h2", { id: "record-title" }, "Record")),
    h(
      "div",
      { class: "card__body" },
      h(
        "dl",
        { class: "props" },
        prop("ID", h("span", { class: "id-line" }, h("span", { class: "mono" }, key.id), idCopy)),
        prop(
          "Proxy base URL",
          h("span", { class: "mono" }, `${location.origin}/v1`),
          "Applications send the client token here as their OpenAI API key.",
        ),
        prop("Created", h("span", {}, fmtDateTime(key.created_at), " · ", timeAgo(key.created_at))),
        prop("Updated", h("span", {}, fmtDateTime(key.updated_at), " · ", timeAgo(key.updated_at))),
        prop("Version", h("span", { "data-testid": "key-version" }, String(key.version))),
      ),
    ),
  );
  const usage = usageCard(key, ctx);
  main.append(h("div", { class: "stack" }, h("div", { class: "grid-2" }, config, record), usage.card));
  await usage.load();
}

function usageCard(key, ctx) {
  const periodId = "usage-period";
  const period = h(
    "select",
    { id: periodId },
    h("option", { value: "7" }, "Last 7 days"),
    h("option", { value: "14" }, "Last 14 days"),
    h("option", { value: "30" }, "Last 30 days"),
  );
  period.value = "14";
  const content = h("div", { class: "card__body", "aria-live": "polite", "data-testid": "usage" });
  const card = h(
    "section",
    { class: "card", "aria-labelledby": "usage-title" },
    h(
      "div",
      { class: "card__header" },
      h(
        "div",
        {},
        h("h2", { id: "usage-title" }, "Recent usage"),
        h("p", {}, "Requests proxied with this key and the tokens the gateway counted."),
      ),
      h(
        "div",
        { class: "usage-head" },
        h("label", { for: periodId, class: "visually-hidden" }, "Period"),
        period,
      ),
    ),
    content,
  );

  async function load() {
    const days = Number(period.value);
    const end = new Date();
    const start = new Date(Date.UTC(end.getUTCFullYear(), end.getUTCMonth(), end.getUTCDate() - (days - 1)));
    content.replaceChildren(h("div", { class: "skeleton" }));
    let data;
    try {
      data = await api.keyUsage(key.id, { from: start.toISOString(), to: end.toISOString() }, ctx.signal);
    } catch (error) {
      if (error.name === "AbortError") return;
      if (error instanceof ApiError && (error.status === 404 || error.status === 405)) {
        content.replaceChildren(emptyUsage());
        return;
      }
      content.replaceChildren(errorCallout(error));
      return;
    }
    if (ctx.signal.aborted) return;
    const totals = data.totals || {};
    if (!totals.requests) {
      content.replaceChildren(emptyUsage());
      return;
    }
    const counts = outcomeCounts(totals);
    const bucketDays = fillDays(data.days || [], start, end);
    const exceeded = (totals.input_limit_exceeded || 0) + (totals.output_limit_exceeded || 0);
    content.replaceChildren(
      h(
        "dl",
        { class: "stats" },
        h("div", { class: "stat" }, h("dt", {}, "Requests"), h("dd", {}, fmtInt(totals.requests))),
        h("div", { class: "stat" }, h("dt", {}, "Input tokens"), h("dd", {}, fmtInt(totals.input_tokens))),
        h("div", { class: "stat" }, h("dt", {}, "Output tokens"), h("dd", {}, fmtInt(totals.output_tokens))),
      ),
      h(
        "ul",
        { class: "outcomes", "aria-label": "Requests by outcome" },
        OUTCOMES.map(([name, label]) =>
          h(
            "li",
            { "data-outcome": name },
            h("span", { class: `swatch o-${name}`, "aria-hidden": "true" }),
            `${label} `,
            h("b", {}, fmtInt(counts[name] || 0)),
          ),
        ),
        exceeded
          ? h("li", {}, h("span", { class: "badge badge--warn badge--plain" }, `${fmtInt(exceeded)} over a limit`))
          : null,
      ),
      endpointTable(totals.by_endpoint || {}),
      usageChart(bucketDays, { width: innerWidth(content) }),
      h("details", { class: "table-alt" }, h("summary", {}, "Show as a table"), usageTable(bucketDays)),
      driftTable(data.drift || []),
    );
  }

  period.addEventListener("change", load);
  return { card, load };
}

const ENDPOINT_LABELS = [
  ["chat.completions", "Chat Completions"],
  ["responses", "Responses"],
  ["embeddings", "Embeddings"],
  ["messages", "Messages"],
];

/** Requests and tokens per /v1 endpoint (endpoints with no request are left out). */
function endpointTable(byEndpoint) {
  const known = new Map(ENDPOINT_LABELS);
  const names = [...ENDPOINT_LABELS.map(([name]) => name), ...Object.keys(byEndpoint).filter((n) => !known.has(n))];
  const rows = names.filter((name) => byEndpoint[name] && byEndpoint[name].requests);
  if (!rows.length) return null;
  // Scrolls inside its card on a phone instead of widening the page.
  const wrap = h("div", { class: "table-wrap" });
  const table = h(
    "table",
    { class: "data", "data-testid": "usage-by-endpoint" },
    h("caption", { class: "visually-hidden" }, "Requests and tokens by endpoint"),
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        h("th", { scope: "col" }, "Endpoint"),
        h("th", { scope: "col", class: "num" }, "Requests"),
        h("th", { scope: "col", class: "num" }, "Input tokens"),
        h("th", { scope: "col", class: "num" }, "Output tokens"),
      ),
    ),
    h(
      "tbody",
      {},
      rows.map((name) => {
        const figures = byEndpoint[name];
        return h(
          "tr",
          { "data-endpoint": name },
          h("th", { scope: "row" }, known.get(name) || name),
          h("td", { class: "num" }, fmtInt(figures.requests || 0)),
          h("td", { class: "num" }, fmtInt(figures.input_tokens || 0)),
          h("td", { class: "num" }, fmtInt(figures.output_tokens || 0)),
        );
      }),
    ),
  );
  wrap.append(table);
  return wrap;
}

// Above this share the gateway's and the upstream's counts are shown as apart.
const DRIFT_WARN = 0.02;

/** One cell: the gateway's count against the upstream's, and their difference. */
function driftCell(requests, gateway, upstream) {
  if (!requests) return h("td", { class: "num muted" }, "—");
  const diff = gateway - upstream;
  const share = upstream ? diff / upstream : diff ? 1 : 0;
  const sign = diff > 0 ? "+" : diff < 0 ? "−" : "±";
  const label = `${sign}${fmtInt(Math.abs(diff))} (${sign}${(Math.abs(share) * 100).toFixed(1)} %)`;
  return h(
    "td",
    { class: "num", title: `${fmtInt(requests)} requests: gateway ${fmtInt(gateway)}, upstream ${fmtInt(upstream)}` },
    `${fmtInt(gateway)} / ${fmtInt(upstream)} `,
    Math.abs(share) > DRIFT_WARN
      ? h("span", { class: "badge badge--warn badge--plain" }, label)
      : h("span", { class: "muted" }, label),
  );
}

/** Per model: the gateway's token counts next to the upstream's (drift). */
function driftTable(drift) {
  if (!drift.length) return null;
  return h(
    "div",
    { class: "drift", "data-testid": "drift" },
    h("h3", {}, "Counting check"),
    h(
      "p",
      { class: "muted" },
      "The gateway's token counts next to what the upstream reported, over the requests where both count the same text. A gap means a model's counting rules are off.",
    ),
    h(
      "table",
      { class: "data" },
      h("caption", { class: "visually-hidden" }, "Gateway and upstream token counts per model"),
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          h("th", { scope: "col" }, "Model"),
          h("th", { scope: "col", class: "num" }, "Input: gateway / upstream"),
          h("th", { scope: "col", class: "num" }, "Output: gateway / upstream"),
        ),
      ),
      h(
        "tbody",
        {},
        drift.map((row) =>
          h(
            "tr",
            { "data-model": row.model },
            h("td", { class: "mono" }, row.model),
            driftCell(row.input_requests, row.input_tokens, row.upstream_input_tokens),
            driftCell(row.output_requests, row.output_tokens, row.upstream_output_tokens),
          ),
        ),
      ),
    ),
  );
}

function innerWidth(el) {
  const style = getComputedStyle(el);
  return el.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
}

function emptyUsage() {
  return h(
    "div",
    { class: "empty" },
    icon("server", "empty__icon"),
    h("h3", {}, "No usage yet"),
    h("p", {}, "Requests made with this key's client token through /v1 show up here."),
  );
}

/** One bucket per UTC day from start to end, whether or not the API sent it. */
function fillDays(days, start, end) {
  const byDate = new Map(days.map((d) => [String(d.date).slice(0, 10), d]));
  const out = [];
  for (let t = start.getTime(); t <= end.getTime(); t += 86400000) {
    const date = new Date(t).toISOString().slice(0, 10);
    out.push(byDate.get(date) || { date, requests: 0, input_tokens: 0, output_tokens: 0, by_outcome: {} });
  }
  return out;
}

const ACTION_LABELS = {
  create: "Created",
  update: "Updated",
  delete: "Deleted",
  token_rotated: "Client token rotated",
  secret_replaced: "API key code replaced",
};

function show(value) {
  if (value === null || value === undefined) return "—";
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

function changesList(entry) {
  const before = entry.before || {};
  const after = entry.after || {};
  const names = [...new Set([...Object.keys(before), ...Object.keys(after)])].filter(
    (name) => !["updated_at", "created_at", "version", "id"].includes(name),
  );
  if (entry.action === "create" || entry.action === "delete") return null;
  const changed = names.filter((name) => JSON.stringify(before[name]) !== JSON.stringify(after[name]));
  if (!changed.length) return null;
  return h(
    "ul",
    { class: "changes" },
    changed.map((name) =>
      h(
        "li",
        {},
        h("span", { class: "muted" }, `${name}: `),
        name in before ? h("del", {}, show(before[name])) : null,
        name in before && name in after ? " → " : null,
        name in after ? h("ins", {}, show(after[name])) : null,
      ),
    ),
  );
}

async function renderActivity(main, ctx, key) {
  const list = h("ol", { class: "timeline", "aria-label": "Changes to this key, newest first" });
  const more = h("button", { type: "button", class: "btn btn--sm", hidden: true }, "Load older entries");
  const footer = h("div", { class: "card__footer" }, h("span", {}, "Secrets are never recorded in the audit log."), more);
  main.append(
    h(
      "section",
      { class: "card", "aria-labelledby": "activity-title" },
      h(
        "div",
        { class: "card__header" },
        h("div", {}, h("h2", { id: "activity-title" }, "Activity"), h("p", {}, "Who changed this key, and what changed.")),
      ),
      list,
      footer,
    ),
  );
  let cursor;
  async function load() {
    const page = await api.audit({ entity_type: "api_key", entity_id: key.id, limit: 25, cursor }, ctx.signal);
    if (ctx.signal.aborted) return;
    for (const entry of page.items) {
      list.append(
        h(
          "li",
          {},
          h("time", { datetime: entry.at, title: fmtDateTime(entry.at) }, fmtDateTime(entry.at)),
          h(
            "div",
            {},
            h("span", { class: "what" }, ACTION_LABELS[entry.action] || entry.action),
            h("span", { class: "muted" }, ` by ${entry.actor}`),
            changesList(entry),
          ),
        ),
      );
    }
    if (!list.children.length) list.append(h("li", {}, h("span", { class: "muted" }, "No recorded changes.")));
    cursor = page.next_cursor;
    more.hidden = !cursor;
  }
  more.addEventListener("click", () => withBusy(more, load));
  await load();
}
