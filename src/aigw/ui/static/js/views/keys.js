// The AI API key list: search (debounced), filters, sort, cursor paging.
// Filters live in the hash query (#/keys?q=…&status=…) so a reload or a
// shared link shows the same list; the admin token never does.

import { api } from "../api.js";
import {
  USAGE_LIMIT_LABELS,
  debounce,
  fmtInt,
  fmtLimitShort,
  h,
  icon,
  statusBadge,
  timeAgo,
} from "../dom.js";
import { confirmDialog, errorCallout, pageHeader, toast } from "../ui.js";

const PAGE_SIZE = 20;
const SORTS = [
  ["-created_at", "Newest first"],
  ["created_at", "Oldest first"],
  ["alias", "Alias A–Z"],
  ["-alias", "Alias Z–A"],
  ["-updated_at", "Recently updated"],
  ["updated_at", "Least recently updated"],
];
const FILTER_KEYS = ["q", "status", "provider", "model", "usage_limit", "sort"];

/** The provider/model pair as one <select> value. */
const pairValue = (provider, model) => JSON.stringify([provider, model ?? null]);

export function providerModelLabel(provider, model) {
  return h(
    "span",
    { class: "pm" },
    h("span", { class: "pm__provider" }, provider),
    h("span", { class: "pm__sep", "aria-hidden": "true" }, "/"),
    h("span", { class: "pm__model" }, model),
  );
}

export function deleteKeyDialog(key) {
  return confirmDialog({
    title: "Confirm Delete?",
    message: h(
      "div",
      { class: "stack" },
      h("p", {}, "Delete the AI API key ", h("strong", {}, `“${key.alias}”`), "?"),
      h(
        "p",
        { class: "muted" },
        "Applications using its client token stop working at once. Its usage history stays readable. This cannot be undone.",
      ),
    ),
    confirmLabel: "Delete",
    danger: true,
    action: () => api.deleteKey(key.id),
  });
}

export async function renderKeyList(main, ctx) {
  document.title = "AI API Keys · AI Gateway";
  const state = {
    q: ctx.query.get("q") || "",
    status: ctx.query.get("status") || "",
    provider: ctx.query.get("provider") || "",
    model: ctx.query.get("model") || "",
    usage_limit: ctx.query.get("usage_limit") || "",
    sort: ctx.query.get("sort") || "-created_at",
    cursors: [null],
    page: 0,
  };
  let listController = null;
  let providers = [];
  // Providers fill the Provider/Model filter and decide what the empty state says.
  const providersReady = api.allProviders(ctx.signal).catch(() => []);

  /* ----- toolbar ----- */
  const search = h("input", {
    type: "search",
    id: "key-search",
    placeholder: "Search by alias…",
    value: state.q,
    autocomplete: "off",
    spellcheck: "false",
    "aria-controls": "key-results",
  });
  const statusSelect = h(
    "select",
    { id: "filter-status", "aria-label": "Status" },
    h("option", { value: "" }, "All statuses"),
    h("option", { value: "enabled" }, "Enabled"),
    h("option", { value: "disabled" }, "Disabled"),
  );
  const pmSelect = h(
    "select",
    { id: "filter-provider-model", "aria-label": "Provider/Model" },
    h("option", { value: "" }, "All models"),
  );
  const usageSelect = h(
    "select",
    { id: "filter-usage-limit", "aria-label": "Usage limit" },
    h("option", { value: "" }, "Any usage limit"),
    h("option", { value: "reject" }, "Reject"),
    h("option", { value: "use_anyway" }, "Use Anyway"),
  );
  const sortSelect = h(
    "select",
    { id: "sort", "aria-label": "Sort by" },
    SORTS.map(([value, label]) => h("option", { value }, label)),
  );
  statusSelect.value = state.status;
  usageSelect.value = state.usage_limit;
  sortSelect.value = state.sort;
  const clearButton = h(
    "button",
    { type: "button", class: "btn btn--ghost btn--sm", hidden: true },
    "Clear filters",
  );

  const toolbar = h(
    "form",
    { class: "toolbar", role: "search", "aria-label": "Filter AI API keys", onsubmit: (e) => e.preventDefault() },
    h(
      "div",
      { class: "search" },
      h("label", { for: "key-search", class: "visually-hidden" }, "Search by alias"),
      icon("search", "search__icon"),
      search,
    ),
    statusSelect,
    pmSelect,
    usageSelect,
    sortSelect,
    clearButton,
  );

  /* ----- results ----- */
  const tbody = h("tbody");
  const table = h(
    "table",
    { class: "data responsive", id: "key-results" },
    h("caption", { class: "visually-hidden" }, "AI API keys"),
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        h("th", { scope: "col" }, "Alias"),
        h("th", { scope: "col" }, "Provider / Model"),
        h("th", { scope: "col" }, "Status"),
        h("th", { scope: "col", class: "num" }, "Input limit"),
        h("th", { scope: "col", class: "num" }, "Output limit"),
        h("th", { scope: "col" }, "Usage limit"),
        h("th", { scope: "col" }, "Updated"),
        h("th", { scope: "col" }, h("span", { class: "visually-hidden" }, "Actions")),
      ),
    ),
    tbody,
  );
  const resultsSlot = h("div", { class: "table-wrap" }, table);
  const countText = h("span", { "aria-live": "polite", "data-testid": "result-count" });
  const prev = h(
    "button",
    { type: "button", class: "btn btn--sm", "aria-label": "Previous page" },
    icon("chevronLeft"),
    h("span", {}, "Previous"),
  );
  const next = h(
    "button",
    { type: "button", class: "btn btn--sm", "aria-label": "Next page" },
    h("span", {}, "Next"),
    icon("chevronRight"),
  );
  const footer = h("div", { class: "card__footer" }, countText, h("div", { class: "pager" }, prev, next));

  main.append(
    pageHeader({
      trail: [["AI Gateway", "#/keys"], ["AI API Keys"]],
      title: "AI API Keys",
      subtitle:
        "Each key unlocks one provider model for your applications, within the token limits you set.",
      actions: [
        h("a", { class: "btn btn--primary", href: "#/keys/new" }, icon("plus"), h("span", {}, "Create")),
      ],
    }),
    h("section", { class: "card", "aria-label": "AI API key list" }, toolbar, resultsSlot, footer),
  );

  /* ----- behaviour ----- */
  const hasFilters = () =>
    Boolean(state.q || state.status || state.provider || state.model || state.usage_limit);

  function syncHash() {
    const params = new URLSearchParams();
    for (const key of FILTER_KEYS) {
      const value = state[key];
      if (value && !(key === "sort" && value === "-created_at")) params.set(key, value);
    }
    const qs = params.toString();
    history.replaceState(null, "", qs ? `#/keys?${qs}` : "#/keys");
    clearButton.hidden = !hasFilters();
  }

  function skeleton() {
    tbody.replaceChildren(
      ...Array.from({ length: 4 }, () =>
        h(
          "tr",
          { "aria-hidden": "true" },
          Array.from({ length: 8 }, (_, i) =>
            h("td", { class: i === 0 ? "cell-primary" : undefined }, h("div", { class: "skeleton" })),
          ),
        ),
      ),
    );
  }

  function row(key) {
    const view = `#/keys/${encodeURIComponent(key.id)}`;
    const deleteButton = h(
      "button",
      {
        type: "button",
        class: "btn btn--ghost btn--sm btn--danger-ghost",
        "aria-label": `Delete ${key.alias}`,
        title: "Delete",
      },
      icon("trash"),
    );
    deleteButton.addEventListener("click", async () => {
      if (await deleteKeyDialog(key)) {
        toast(`Deleted “${key.alias}”`);
        load();
      }
    });
    return h(
      "tr",
      { "data-key-id": key.id },
      h(
        "td",
        { class: "cell-primary", "data-label": "Alias" },
        h("a", { class: "row-link", href: view }, key.alias),
        h("span", { class: "cell-sub mono", title: "Client token prefix" }, `${key.token_prefix}…`),
      ),
      h("td", { "data-label": "Provider / Model", "data-col": "pm" }, providerModelLabel(key.provider, key.model)),
      h("td", { "data-label": "Status", "data-col": "status" }, statusBadge(key.status)),
      h("td", { class: "num", "data-label": "Input limit", "data-col": "input" }, fmtLimitShort(key.input_limit)),
      h("td", { class: "num", "data-label": "Output limit", "data-col": "output" }, fmtLimitShort(key.output_limit)),
      h("td", { "data-label": "Usage limit", "data-col": "usage" }, USAGE_LIMIT_LABELS[key.usage_limit] || key.usage_limit),
      h("td", { "data-label": "Updated", "data-col": "updated" }, timeAgo(key.updated_at)),
      h(
        "td",
        { class: "cell-actions" },
        h(
          "a",
          {
            class: "btn btn--ghost btn--sm",
            href: `${view}/edit`,
            "aria-label": `Edit ${key.alias}`,
            title: "Edit",
          },
          icon("edit"),
        ),
        deleteButton,
      ),
    );
  }

  function emptyState() {
    const filtered = hasFilters();
    const noProviders = providers.length === 0;
    return h(
      "tr",
      {},
      h(
        "td",
        { colspan: 8, class: "cell-primary" },
        h(
          "div",
          { class: "empty" },
          icon(filtered ? "search" : "key", "empty__icon"),
          h("h2", {}, filtered ? "No keys match" : "No AI API keys yet"),
          h(
            "p",
            {},
            filtered
              ? "Try another search term or clear the filters."
              : noProviders
                ? "Register an upstream provider and its models first, then create a key for it."
                : "Create a key to let an application call a provider's model through the gateway.",
          ),
          filtered
            ? h("button", { type: "button", class: "btn", onclick: () => clearFilters() }, "Clear filters")
            : noProviders
              ? h("a", { class: "btn btn--primary", href: "#/providers" }, "Add a provider")
              : h("a", { class: "btn btn--primary", href: "#/keys/new" }, icon("plus"), h("span", {}, "Create")),
        ),
      ),
    );
  }

  async function load() {
    if (listController) listController.abort();
    listController = new AbortController();
    const signal = listController.signal;
    ctx.signal.addEventListener("abort", () => listController?.abort(), { once: true });
    table.setAttribute("aria-busy", "true");
    if (!tbody.children.length) skeleton();
    try {
      const data = await api.listKeys(
        {
          q: state.q.trim(),
          status: state.status,
          provider: state.provider,
          model: state.model,
          usage_limit: state.usage_limit,
          sort: state.sort,
          limit: PAGE_SIZE,
          cursor: state.cursors[state.page] || undefined,
        },
        signal,
      );
      if (!data.items.length && state.page > 0) {
        // The last key of a later page was deleted: show the page before it.
        state.page -= 1;
        load();
        return;
      }
      if (!data.items.length) providers = await providersReady;
      if (signal.aborted) return;
      tbody.replaceChildren(...(data.items.length ? data.items.map(row) : [emptyState()]));
      const start = state.page * PAGE_SIZE;
      countText.textContent =
        data.total === 0
          ? "No keys"
          : `Showing ${fmtInt(start + 1)}–${fmtInt(start + data.items.length)} of ${fmtInt(data.total)} ${data.total === 1 ? "key" : "keys"}`;
      state.cursors[state.page + 1] = data.next_cursor;
      prev.disabled = state.page === 0;
      next.disabled = !data.next_cursor;
      footer.hidden = data.total === 0 && !hasFilters();
    } catch (error) {
      if (error.name === "AbortError") return;
      tbody.replaceChildren(h("tr", {}, h("td", { colspan: 8, class: "cell-primary" }, errorCallout(error))));
      countText.textContent = "";
    } finally {
      if (!signal.aborted) table.removeAttribute("aria-busy");
    }
  }

  function refilter() {
    state.cursors = [null];
    state.page = 0;
    syncHash();
    load();
  }

  function clearFilters() {
    Object.assign(state, { q: "", status: "", provider: "", model: "", usage_limit: "" });
    search.value = "";
    statusSelect.value = "";
    pmSelect.value = "";
    usageSelect.value = "";
    refilter();
    search.focus();
  }

  const searchLater = debounce(() => {
    state.q = search.value;
    refilter();
  }, 300);
  ctx.signal.addEventListener("abort", () => searchLater.cancel(), { once: true });
  search.addEventListener("input", searchLater);
  search.addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      searchLater.cancel();
      state.q = search.value;
      refilter();
    }
  });
  statusSelect.addEventListener("change", () => {
    state.status = statusSelect.value;
    refilter();
  });
  usageSelect.addEventListener("change", () => {
    state.usage_limit = usageSelect.value;
    refilter();
  });
  sortSelect.addEventListener("change", () => {
    state.sort = sortSelect.value;
    refilter();
  });
  pmSelect.addEventListener("change", () => {
    const [provider, model] = pmSelect.value ? JSON.parse(pmSelect.value) : ["", ""];
    state.provider = provider || "";
    state.model = model || "";
    refilter();
  });
  clearButton.addEventListener("click", clearFilters);
  prev.addEventListener("click", () => {
    if (state.page > 0) {
      state.page -= 1;
      load();
    }
  });
  next.addEventListener("click", () => {
    if (state.cursors[state.page + 1]) {
      state.page += 1;
      load();
    }
  });

  clearButton.hidden = !hasFilters();
  skeleton();
  const listed = load();
  providers = await providersReady;
  if (ctx.signal.aborted) return;
  for (const provider of providers) {
    pmSelect.append(
      h(
        "optgroup",
        { label: provider.name },
        h("option", { value: pairValue(provider.name, null) }, `${provider.name} — all models`),
        provider.models.map((m) =>
          h("option", { value: pairValue(provider.name, m.name) }, `${provider.name} / ${m.name}`),
        ),
      ),
    );
  }
  if (state.provider) {
    const wanted = pairValue(state.provider, state.model || null);
    if (![...pmSelect.options].some((o) => o.value === wanted)) {
      pmSelect.append(h("option", { value: wanted }, `${state.provider} / ${state.model || "all models"}`));
    }
    pmSelect.value = wanted;
  }
  await listed;
}
