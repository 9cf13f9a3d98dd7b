// Providers and their models: list, add, edit (the models list is replaced
// as a whole), delete. A provider or model still used by an AI API key
// cannot go: the API answers 409 and the dialog says which keys to look at.

import { ApiError, api } from "../api.js";
import { KIND_LABELS, debounce, fmtInt, h, icon, nextId, timeAgo } from "../dom.js";
import {
  FormErrors,
  confirmDialog,
  errorCallout,
  field,
  modal,
  pageHeader,
  toast,
  withBusy,
} from "../ui.js";

const ENCODINGS = [
  ["", "Auto (from name)"],
  ["o200k_base", "o200k_base"],
  ["cl100k_base", "cl100k_base"],
];

/** The API names models as a Python list (['a', 'b']); show them as a plain list. */
function plainList(text) {
  return String(text || "").replace(/\[([^\]]*)\]/g, (_, inner) => inner.replaceAll("'", ""));
}

/* What each kind needs: the form shows only these (docs/providers.md). */
const KIND_FORM = {
  openai: {
    hint: "The Chat Completions API of OpenAI, vLLM, Ollama, DeepSeek, Groq…",
    url: "https://api.openai.com/v1",
  },
  anthropic: {
    hint: "Anthropic's Messages API.",
    url: "https://api.anthropic.com/v1",
    counting: true,
  },
  gemini: {
    hint: "The Gemini API; the key goes in the x-goog-api-key header.",
    url: "https://generativelanguage.googleapis.com/v1beta",
    counting: true,
  },
  azure_openai: {
    hint: "An Azure OpenAI resource: each model is served by a deployment.",
    url: "https://<resource>.openai.azure.com",
    azure: true,
  },
};
const AZURE_API_VERSION = "2024-10-21";

function keysLink(provider, text = "See its keys") {
  return h("a", { href: `#/keys?provider=${encodeURIComponent(provider.name)}` }, text);
}

/** The add/edit dialog. Resolves when closed; calls onSaved(provider) after a save. */
function providerDialog(existing, onSaved) {
  const editing = Boolean(existing);
  const dlg = modal({
    title: editing ? `Edit ${existing.name}` : "Add a provider",
    wide: true,
  });
  const formId = nextId("provider-form");

  const name = field({
    id: "p-name",
    label: "Name",
    required: true,
    hint: "Letters, digits, dot, dash and underscore; unique. Keys refer to the provider by this name.",
    control: h("input", {
      id: "p-name",
      type: "text",
      maxlength: 64,
      autocomplete: "off",
      spellcheck: "false",
      value: existing ? existing.name : "",
    }),
  });
  const kindSelect = h(
    "select",
    { id: "p-kind" },
    Object.entries(KIND_LABELS).map(([value, label]) => h("option", { value }, label)),
  );
  kindSelect.value = existing ? existing.kind : "openai";
  const kind = field({
    id: "p-kind",
    label: "Kind",
    required: true,
    hint: KIND_FORM[kindSelect.value]?.hint,
    control: kindSelect,
  });
  const apiVersion = field({
    id: "p-api-version",
    label: "API version",
    hint: `The api-version of every call; ${AZURE_API_VERSION} when left empty.`,
    optional: true,
    control: h("input", {
      id: "p-api-version",
      type: "text",
      maxlength: 32,
      autocomplete: "off",
      spellcheck: "false",
      placeholder: AZURE_API_VERSION,
      value: existing?.api_version || "",
    }),
  });
  const countingSelect = h(
    "select",
    { id: "p-input-counting" },
    h("option", { value: "tiktoken" }, "The gateway (tiktoken estimate)"),
    h("option", { value: "upstream" }, "The provider's token counter"),
  );
  countingSelect.value = existing?.input_counting || "tiktoken";
  const counting = field({
    id: "p-input-counting",
    label: "Input limits counted by",
    hint: "The provider's counter is exact for its models and asked only for keys with an input limit; when it does not answer in time, the estimate plus the margin decides.",
    control: countingSelect,
  });
  const margin = field({
    id: "p-counting-margin",
    label: "Fallback margin (%)",
    hint: "Added to the estimate when the provider's counter is down.",
    control: h("input", {
      id: "p-counting-margin",
      type: "number",
      min: 0,
      max: 100,
      step: 1,
      value: String(existing?.counting_margin ?? 10),
    }),
  });
  const baseUrl = field({
    id: "p-base-url",
    label: "Base URL",
    required: true,
    hint: "For example https://api.openai.com/v1",
    control: h("input", {
      id: "p-base-url",
      type: "url",
      inputmode: "url",
      autocomplete: "off",
      spellcheck: "false",
      placeholder: "https://api.openai.com/v1",
      value: existing ? existing.base_url : "",
    }),
  });

  /* Models: repeatable rows, name + encoding (+ deployment for Azure). */
  const rows = [];
  const rowList = h("ul", { class: "model-rows", "aria-label": "Models" });
  const modelsError = h("p", { class: "field-error", id: "p-models-error", hidden: true });
  const modelsGroup = h(
    "fieldset",
    { id: "p-models", "aria-describedby": "p-models-hint" },
    h("legend", {}, "Models", h("span", { class: "req", "aria-hidden": "true" }, " *")),
    rowList,
  );
  const addModel = h(
    "button",
    { type: "button", class: "btn btn--sm" },
    icon("plus"),
    h("span", {}, "Add model"),
  );

  function addRow(model = { name: "", encoding: "" }, focus = false) {
    const rowId = nextId("p-model");
    const input = h("input", {
      id: rowId,
      type: "text",
      autocomplete: "off",
      spellcheck: "false",
      maxlength: 128,
      placeholder: "e.g. gpt-4o-mini",
      value: model.name,
      "data-role": "model-name",
    });
    const encoding = h(
      "select",
      { "aria-label": "Token encoding", "data-role": "model-encoding" },
      ENCODINGS.map(([value, label]) => h("option", { value }, label)),
    );
    encoding.value = model.encoding || "";
    const deployment = h("input", {
      type: "text",
      autocomplete: "off",
      spellcheck: "false",
      maxlength: 64,
      placeholder: "Deployment (default: the model name)",
      value: model.deployment || "",
      "aria-label": "Deployment",
      "data-role": "model-deployment",
      hidden: !KIND_FORM[kindSelect.value]?.azure,
    });
    const remove = h(
      "button",
      { type: "button", class: "btn btn--ghost btn--icon", title: "Remove model" },
      icon("trash"),
    );
    const error = h("p", { class: "field-error", id: `${rowId}-error`, hidden: true });
    const label = h("label", { for: rowId, class: "visually-hidden" }, "Model name");
    const li = h("li", { class: "model-row" }, label, input, encoding, deployment, remove, error);
    const row = { li, input, encoding, deployment, errorId: `${rowId}-error`, control: input, focus: input, label: "Model" };
    const relabel = () => {
      const n = rows.indexOf(row) + 1;
      label.textContent = `Model ${n} name`;
      encoding.setAttribute("aria-label", `Model ${n} token encoding`);
      deployment.setAttribute("aria-label", `Model ${n} deployment`);
      remove.setAttribute("aria-label", `Remove model ${input.value || n}`);
      row.label = `Model ${n}`;
    };
    row.relabel = relabel;
    input.addEventListener("input", relabel);
    remove.addEventListener("click", () => {
      rows.splice(rows.indexOf(row), 1);
      li.remove();
      rows.forEach((r) => r.relabel());
      (rows[0]?.input || addModel).focus();
    });
    rows.push(row);
    rowList.append(li);
    rows.forEach((r) => r.relabel());
    if (focus) input.focus();
  }
  for (const model of existing ? existing.models : [{ name: "", encoding: "" }]) addRow(model);
  addModel.addEventListener("click", () => addRow(undefined, true));

  const summarySlot = h("div");
  const submit = h(
    "button",
    { type: "submit", class: "btn btn--primary", form: formId },
    editing ? "Save changes" : "Add provider",
  );
  const form = h(
    "form",
    { id: formId, novalidate: true, class: "form-section" },
    summarySlot,
    name.wrapper,
    h("div", { class: "field-row" }, kind.wrapper, baseUrl.wrapper),
    apiVersion.wrapper,
    h("div", { class: "field-row" }, counting.wrapper, margin.wrapper),
    h(
      "div",
      { class: "field" },
      modelsGroup,
      modelsError,
      h(
        "p",
        { class: "hint", id: "p-models-hint" },
        "The encoding counts tokens with tiktoken; Auto picks it from the model name. Models still used by a key cannot be removed.",
      ),
      h("div", {}, addModel),
    ),
  );
  dlg.body.append(form);
  dlg.footer.append(
    h("button", { type: "button", class: "btn", onclick: () => dlg.close("cancel") }, "Cancel"),
    submit,
  );

  /** Show only the fields the chosen kind takes. */
  function applyKind() {
    const spec = KIND_FORM[kindSelect.value] || {};
    const hint = kind.wrapper.querySelector(".hint");
    if (hint) hint.textContent = spec.hint || "";
    baseUrl.control.placeholder = spec.url || "";
    const hintUrl = baseUrl.wrapper.querySelector(".hint");
    if (hintUrl) hintUrl.textContent = `For example ${spec.url || "https://api.openai.com/v1"}`;
    apiVersion.wrapper.hidden = !spec.azure;
    counting.wrapper.hidden = !spec.counting;
    margin.wrapper.hidden = !spec.counting || countingSelect.value !== "upstream";
    for (const row of rows) row.deployment.hidden = !spec.azure;
  }
  kindSelect.addEventListener("change", applyKind);
  countingSelect.addEventListener("change", applyKind);
  applyKind();

  const modelsEntry = { control: modelsGroup, errorId: "p-models-error", focus: addModel, label: "Models" };
  const errors = new FormErrors(summarySlot, {});
  function refreshFieldMap() {
    errors.fields = {
      name: name,
      kind: kind,
      base_url: baseUrl,
      api_version: apiVersion,
      input_counting: counting,
      counting_margin: margin,
      models: modelsEntry,
    };
    rows.forEach((row, index) => {
      errors.fields[`models.${index}.name`] = row;
      errors.fields[`models.${index}`] = row;
      errors.fields[`models.${index}.encoding`] = row;
      errors.fields[`models.${index}.deployment`] = row;
    });
  }
  refreshFieldMap();

  function readBody() {
    const spec = KIND_FORM[kindSelect.value] || {};
    const models = rows.map((row) => ({
      name: row.input.value.trim(),
      encoding: row.encoding.value || undefined,
      deployment: (spec.azure && row.deployment.value.trim()) || undefined,
    }));
    const body = {
      name: name.control.value.trim(),
      kind: kindSelect.value,
      base_url: baseUrl.control.value.trim(),
      models,
    };
    // Only the settings the kind takes are sent (the API refuses the others).
    if (spec.azure) body.api_version = apiVersion.control.value.trim() || AZURE_API_VERSION;
    if (spec.counting) {
      body.input_counting = countingSelect.value;
      const pct = Number.parseInt(margin.control.value, 10);
      body.counting_margin = Number.isNaN(pct) ? margin.control.value : pct;
    } else if (editing && existing.input_counting === "upstream") {
      body.input_counting = "tiktoken"; // the new kind has no counter to ask
    }
    if (!editing) return body;
    const changes = {};
    for (const key of ["name", "kind", "base_url", "api_version", "input_counting", "counting_margin"]) {
      if (body[key] !== undefined && body[key] !== existing[key]) changes[key] = body[key];
    }
    const sameModels =
      JSON.stringify(models.map((m) => [m.name, m.encoding || null, m.deployment || null])) ===
      JSON.stringify(existing.models.map((m) => [m.name, m.encoding, m.deployment || null]));
    if (!sameModels) changes.models = models;
    return changes;
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    refreshFieldMap();
    errors.clear();
    const body = readBody();
    if (editing && Object.keys(body).length === 0) {
      dlg.close("cancel");
      toast("Nothing changed");
      return;
    }
    dlg.setBusy(true);
    await withBusy(submit, async () => {
      try {
        const saved = editing
          ? await api.updateProvider(existing.id, body, existing.version)
          : await api.createProvider(body);
        dlg.setBusy(false);
        dlg.close("saved");
        toast(editing ? `Saved “${saved.name}”` : `Added provider “${saved.name}”`);
        onSaved(saved);
      } catch (error) {
        dlg.setBusy(false);
        if (!(error instanceof ApiError)) throw error;
        let summary;
        if (error.status === 412) {
          summary = errors.show(error, {
            heading: "This provider was changed by someone else — reload.",
            extra: h(
              "div",
              {},
              h(
                "button",
                {
                  type: "button",
                  class: "btn btn--sm",
                  onclick: () => {
                    dlg.close("stale");
                    onSaved(null);
                  },
                },
                "Reload",
              ),
            ),
          });
        } else if (error.code === "model_in_use") {
          error.detail = plainList(error.detail);
          summary = errors.show(error, {
            heading: "A model you removed is still used by an AI API key",
            extra: h("span", {}, keysLink(existing, "See this provider's keys")),
          });
          errors.setField("models", "Keep the models that keys still use.");
        } else if (error.code === "provider_name_taken") {
          error.errors = [{ field: "name", message: "Another provider already has this name", type: "taken" }];
          summary = errors.show(error);
        } else {
          summary = errors.show(error, {
            mapField: (f) => (f && /^models\.\d+$/.test(f) ? `${f}.name` : f),
          });
        }
        const firstInvalid = form.querySelector('[aria-invalid="true"]:not(fieldset)');
        (firstInvalid || summary).focus();
      }
    });
  });

  dlg.show();
  name.control.focus();
  return dlg.closed;
}

export async function renderProviders(main, ctx) {
  document.title = "Providers · AI Gateway";
  let cursor = null;
  let query = "";
  let controller = null;

  const list = h("ul", { class: "provider-list", "aria-label": "Providers", id: "provider-list" });
  const status = h("p", { class: "muted", "aria-live": "polite" });
  const more = h("button", { type: "button", class: "btn", hidden: true }, "Load more");
  const add = h(
    "button",
    { type: "button", class: "btn btn--primary" },
    icon("plus"),
    h("span", {}, "Add provider"),
  );
  const search = h("input", {
    type: "search",
    id: "provider-search",
    placeholder: "Search by name…",
    autocomplete: "off",
    "aria-controls": "provider-list",
  });

  main.append(
    pageHeader({
      trail: [["AI Gateway", "#/keys"], ["Providers"]],
      title: "Providers",
      subtitle: "The upstream APIs the gateway calls, and the models AI API keys may use.",
      actions: [add],
    }),
    h(
      "div",
      { class: "card", role: "search", "aria-label": "Filter providers" },
      h(
        "div",
        { class: "toolbar" },
        h(
          "div",
          { class: "search" },
          h("label", { for: "provider-search", class: "visually-hidden" }, "Search providers by name"),
          icon("search", "search__icon"),
          search,
        ),
        status,
      ),
    ),
    h("div", { class: "stack section-gap", id: "providers" }, list, h("div", {}, more)),
  );

  function card(provider) {
    const titleId = nextId("provider");
    const edit = h(
      "button",
      { type: "button", class: "btn btn--sm", "aria-label": `Edit ${provider.name}` },
      icon("edit"),
      h("span", {}, "Edit"),
    );
    edit.addEventListener("click", () => providerDialog(provider, () => reload()));
    const del = h(
      "button",
      { type: "button", class: "btn btn--sm btn--danger-ghost", "aria-label": `Delete ${provider.name}` },
      icon("trash"),
      h("span", {}, "Delete"),
    );
    del.addEventListener("click", async () => {
      const deleted = await confirmDialog({
        title: "Delete provider?",
        message: h(
          "div",
          { class: "stack" },
          h(
            "p",
            {},
            "Delete ",
            h("strong", {}, `“${provider.name}”`),
            ` and its ${provider.models.length === 1 ? "model" : `${provider.models.length} models`}?`,
          ),
          h("p", { class: "muted" }, "A provider that AI API keys still use cannot be deleted."),
        ),
        confirmLabel: "Delete provider",
        danger: true,
        action: () => api.deleteProvider(provider.id),
        retryable: (error) => error.code !== "provider_in_use",
        explainError: (error) =>
          error.code === "provider_in_use"
            ? h("span", {}, "Delete those keys or move them to another provider first. ", keysLink(provider), ".")
            : null,
      });
      if (deleted) {
        toast(`Deleted provider “${provider.name}”`);
        reload();
      }
    });
    return h(
      "li",
      { class: "card provider", "aria-labelledby": titleId, "data-provider": provider.name },
      h(
        "div",
        { class: "card__header" },
        h("h2", { id: titleId }, provider.name),
        h("span", { class: "badge badge--kind badge--plain" }, KIND_LABELS[provider.kind] || provider.kind),
      ),
      h(
        "div",
        { class: "card__body" },
        h("p", { class: "provider__url" }, provider.base_url),
        h(
          "div",
          {},
          h(
            "div",
            { class: "provider__models-head" },
            h("h3", { class: "form-section__title" }, `Models (${fmtInt(provider.models.length)})`),
            keysLink(provider, "View keys"),
          ),
          h(
            "ul",
            { class: "chips" },
            provider.models.map((model) =>
              h("li", { class: "chip" }, model.name, h("small", {}, model.encoding)),
            ),
          ),
        ),
      ),
      h(
        "div",
        { class: "card__footer" },
        h("span", {}, "Updated ", timeAgo(provider.updated_at)),
        h("div", { class: "pager" }, edit, del),
      ),
    );
  }

  async function load(append) {
    if (controller) controller.abort();
    controller = new AbortController();
    const signal = controller.signal;
    list.setAttribute("aria-busy", "true");
    try {
      const data = await api.listProviders({ q: query, limit: 24, cursor: append ? cursor : undefined }, signal);
      if (signal.aborted || ctx.signal.aborted) return;
      if (!append) list.replaceChildren();
      list.append(...data.items.map(card));
      cursor = data.next_cursor;
      more.hidden = !cursor;
      status.textContent = `${fmtInt(data.total)} ${data.total === 1 ? "provider" : "providers"}`;
      if (!list.children.length) {
        list.append(
          h(
            "li",
            { class: "card" },
            h(
              "div",
              { class: "empty" },
              icon("server", "empty__icon"),
              h("h2", {}, query ? "No providers match" : "No providers yet"),
              h(
                "p",
                {},
                query
                  ? "Try another name."
                  : "Add the upstream API your applications should reach, with the models keys may use.",
              ),
              query ? null : h("button", { type: "button", class: "btn btn--primary", onclick: () => openAdd() }, "Add provider"),
            ),
          ),
        );
      }
    } catch (error) {
      if (error.name === "AbortError") return;
      list.replaceChildren(h("li", {}, errorCallout(error)));
    } finally {
      list.removeAttribute("aria-busy");
    }
  }

  function reload() {
    cursor = null;
    return load(false);
  }

  function openAdd() {
    providerDialog(null, () => reload());
  }

  add.addEventListener("click", openAdd);
  more.addEventListener("click", () => withBusy(more, () => load(true)));
  const searchLater = debounce(() => {
    query = search.value.trim();
    reload();
  }, 300);
  search.addEventListener("input", searchLater);
  ctx.signal.addEventListener("abort", () => {
    searchLater.cancel();
    controller?.abort();
  });
  await reload();
}
