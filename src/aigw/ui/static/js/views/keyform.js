// Create and edit an AI API key. The form is `novalidate` so every message
// looks the same: what the page can see for itself (a required field left
// blank, a limit out of range) is shown before anything is sent, in the shape
// of the API's 422; the API stays the judge of the rest, and its
// `errors[].field` are shown next to their fields. Edits send only what
// changed, with If-Match on the version read.

import { ApiError, api } from "../api.js";
import { KIND_LABELS, h, icon } from "../dom.js";
import {
  FormErrors,
  errorCallout,
  field,
  pageHeader,
  radioField,
  toast,
  tokenDialog,
  withBusy,
} from "../ui.js";

const BUDGET_NUMBERS = ["budget_tokens", "rpm_limit", "tpm_limit"];

const pairValue = (provider, model) => JSON.stringify([provider, model]);

// The API's upper bounds (src/aigw/apikeys/models.py: MAX_LIMIT, MAX_BUDGET, MAX_RPM).
const MAX_LIMIT = 10000000;
const MAX_BUDGET = 1000000000000;
const MAX_RPM = 10000000;

const BUDGET_PERIODS = [
  ["day", "Day"],
  ["week", "Week (from Monday)"],
  ["month", "Month"],
  ["total", "Total (never resets)"],
];

function numberInput(id, value, max = MAX_LIMIT) {
  return h("input", {
    id,
    name: id,
    type: "number",
    inputmode: "numeric",
    min: 0,
    max,
    step: 1,
    value: value === undefined ? "" : String(value),
  });
}

/** "" → undefined (omitted: "required" on create), else the number as typed. */
function readNumber(input) {
  const raw = input.value.trim();
  if (raw === "") return input.validity.badInput ? Number.NaN : undefined;
  return Number(raw);
}

export async function renderKeyForm(main, ctx) {
  const editingId = ctx.params.id;
  const [providers, key] = await Promise.all([
    api.allProviders(ctx.signal),
    editingId ? api.getKey(editingId, ctx.signal) : Promise.resolve(null),
  ]);
  if (ctx.signal.aborted) return;
  const editing = Boolean(key);
  document.title = `${editing ? `Edit ${key.alias}` : "Create AI API key"} · AI Gateway`;
  const detailHref = editing ? `#/keys/${encodeURIComponent(key.id)}` : "#/keys";

  /* ----- fields (the seed's labels, in the seed's order) ----- */
  const alias = field({
    id: "f-alias",
    label: "API Key Alias",
    required: true,
    hint: "A unique name for the key, such as the team or application that uses it (up to 64 characters).",
    control: h("input", {
      id: "f-alias",
      name: "alias",
      type: "text",
      maxlength: 64,
      autocomplete: "off",
      spellcheck: "false",
      value: key ? key.alias : "",
    }),
  });

  const pmSelect = h(
    "select",
    { id: "f-provider-model", name: "provider_model" },
    h("option", { value: "" }, providers.length ? "Choose a provider and model…" : "No providers yet"),
    providers.map((provider) =>
      h(
        "optgroup",
        { label: `${provider.name} · ${KIND_LABELS[provider.kind] || provider.kind}` },
        provider.models.map((model) =>
          h("option", { value: pairValue(provider.name, model.name) }, `${provider.name} / ${model.name}`),
        ),
      ),
    ),
  );
  if (key) {
    const current = pairValue(key.provider, key.model);
    if (![...pmSelect.options].some((o) => o.value === current)) {
      pmSelect.append(h("option", { value: current }, `${key.provider} / ${key.model}`));
    }
    pmSelect.value = current;
  }
  const providerModel = field({
    id: "f-provider-model",
    label: "Provider/Model",
    required: true,
    hint: providers.length
      ? "The upstream model this key may call. Applications cannot ask for another one."
      : h(
          "span",
          {},
          "Register a provider and its models first: ",
          h("a", { href: "#/providers" }, "open Providers"),
          ".",
        ),
    control: pmSelect,
  });

  const status = radioField({
    id: "f-status",
    name: "status",
    label: "Status",
    required: true,
    options: [
      { value: "enabled", label: "Enable" },
      { value: "disabled", label: "Disable" },
    ],
    value: key ? key.status : "disabled",
    hint: editing
      ? "A disabled key is refused by the proxy (403) until it is enabled again."
      : "A disabled key is refused by the proxy. New keys start disabled until you enable them.",
  });

  const keyCodeInput = h("input", {
    id: "f-key-code",
    name: "key_code",
    type: "password",
    autocomplete: "new-password",
    spellcheck: "false",
    autocapitalize: "off",
    maxlength: 4096,
    placeholder: editing ? `Leave blank to keep ${key.key_code_masked}` : "",
  });
  const reveal = h(
    "button",
    {
      type: "button",
      class: "btn",
      "aria-pressed": "false",
      "aria-controls": "f-key-code",
      "aria-label": "Show API key code",
    },
    icon("eye"),
  );
  reveal.addEventListener("click", () => {
    const showing = keyCodeInput.type === "text";
    keyCodeInput.type = showing ? "password" : "text";
    reveal.setAttribute("aria-pressed", showing ? "false" : "true");
    reveal.setAttribute("aria-label", showing ? "Show API key code" : "Hide API key code");
    reveal.replaceChildren(icon(showing ? "eye" : "eyeOff"));
  });
  const keyCode = field({
    id: "f-key-code",
    label: "API Key Code",
    required: !editing,
    optional: false,
    hint: editing
      ? `Currently ${key.key_code_masked}. Leave blank to keep it; a new code replaces the old one.`
      : "The provider's secret key. aigw stores it encrypted and never shows it in full again.",
    control: keyCodeInput,
  });
  // The reveal button sits beside the input without breaking the label wiring.
  const keyCodeGroup = h("div", { class: "input-group" });
  keyCode.wrapper.replaceChild(keyCodeGroup, keyCodeInput);
  keyCodeGroup.append(keyCodeInput, reveal);

  const inputLimit = field({
    id: "f-input-limit",
    label: "Input Limit",
    required: true,
    hint: "Maximum input tokens per request. 0 = unlimited.",
    control: numberInput("f-input-limit", key ? key.input_limit : ""),
  });
  const outputLimit = field({
    id: "f-output-limit",
    label: "Output Limit",
    hint: "Maximum output tokens per response. 0 = unlimited.",
    control: numberInput("f-output-limit", key ? key.output_limit : 0),
  });
  const usageLimit = radioField({
    id: "f-usage-limit",
    name: "usage_limit",
    label: "Usage Limit",
    options: [
      { value: "reject", label: "Reject" },
      { value: "use_anyway", label: "Use Anyway" },
    ],
    value: key ? key.usage_limit : "reject",
    hint: "When a request goes over a limit: Reject refuses it (and ends output at the limit); Use Anyway lets it through and flags it.",
  });

  const budgetTokens = field({
    id: "f-budget-tokens",
    label: "Token Budget",
    hint: "Tokens (input + output) this key may use per period, across all its requests. 0 = no budget.",
    control: numberInput("f-budget-tokens", key ? key.budget_tokens ?? 0 : 0, MAX_BUDGET),
  });
  const periodSelect = h(
    "select",
    { id: "f-budget-period", name: "budget_period" },
    BUDGET_PERIODS.map(([value, label]) => h("option", { value }, label)),
  );
  periodSelect.value = key ? key.budget_period ?? "month" : "month";
  const budgetPeriod = field({
    id: "f-budget-period",
    label: "Budget Period",
    hint: "Calendar periods in the gateway's budget time zone (UTC unless set). Total never resets.",
    control: periodSelect,
  });
  const rpmLimit = field({
    id: "f-rpm-limit",
    label: "Requests per Minute",
    hint: "0 = no limit.",
    control: numberInput("f-rpm-limit", key ? key.rpm_limit ?? 0 : 0, MAX_RPM),
  });
  const tpmLimit = field({
    id: "f-tpm-limit",
    label: "Tokens per Minute",
    hint: "0 = no limit.",
    control: numberInput("f-tpm-limit", key ? key.tpm_limit ?? 0 : 0, MAX_BUDGET),
  });

  const fields = {
    alias,
    provider: providerModel,
    model: providerModel,
    provider_model: providerModel,
    status,
    key_code: keyCode,
    input_limit: inputLimit,
    output_limit: outputLimit,
    usage_limit: usageLimit,
    budget_tokens: budgetTokens,
    budget_period: budgetPeriod,
    rpm_limit: rpmLimit,
    tpm_limit: tpmLimit,
  };

  /* ----- layout ----- */
  const summarySlot = h("div", { class: "form-banner-slot" });
  const submit = h(
    "button",
    { type: "submit", class: "btn btn--primary" },
    editing ? "Save changes" : "Create",
  );
  const form = h(
    "form",
    { class: "card form", novalidate: true, "aria-labelledby": "form-title", id: "key-form" },
    summarySlot,
    h(
      "div",
      { class: "form-section" },
      h("h2", { class: "form-section__title" }, "Key"),
      alias.wrapper,
      providerModel.wrapper,
      status.wrapper,
    ),
    h(
      "div",
      { class: "form-section" },
      h("h2", { class: "form-section__title" }, "Upstream secret"),
      keyCode.wrapper,
    ),
    h(
      "div",
      { class: "form-section" },
      h("h2", { class: "form-section__title" }, "Token limits"),
      h("div", { class: "field-row" }, inputLimit.wrapper, outputLimit.wrapper),
      usageLimit.wrapper,
    ),
    h(
      "div",
      { class: "form-section", "data-testid": "budget-section" },
      h("h2", { class: "form-section__title" }, "Budget and rates"),
      h("div", { class: "field-row" }, budgetTokens.wrapper, budgetPeriod.wrapper),
      h("div", { class: "field-row" }, rpmLimit.wrapper, tpmLimit.wrapper),
    ),
    h(
      "div",
      { class: "form-actions" },
      h("a", { class: "btn", href: detailHref }, "Cancel"),
      submit,
    ),
  );
  const header = pageHeader({
    trail: editing
      ? [
          ["AI Gateway", "#/keys"],
          ["AI API Keys", "#/keys"],
          [key.alias, detailHref],
          ["Edit"],
        ]
      : [["AI Gateway", "#/keys"], ["AI API Keys", "#/keys"], ["Create"]],
    title: editing ? `Edit ${key.alias}` : "Create AI API key",
    subtitle: editing
      ? "Changes apply to the proxy within a second. Fields marked * are required."
      : "Fields marked * are required. The client token is shown once, right after you create the key.",
  });
  header.querySelector("h1").id = "form-title";
  main.append(header, h("div", { class: "form-layout" }, form, editing ? editAside(key) : createAside()));

  const errors = new FormErrors(summarySlot, fields);
  // Editing a field clears its error: the message is about the old value.
  const clearOn = (name, el, type = "input") => el.addEventListener(type, () => errors.clearField(name));
  clearOn("alias", alias.control);
  for (const name of ["provider", "model", "provider_model"]) clearOn(name, pmSelect, "change");
  clearOn("status", status.control, "change");
  clearOn("key_code", keyCodeInput);
  clearOn("input_limit", inputLimit.control);
  clearOn("output_limit", outputLimit.control);
  clearOn("usage_limit", usageLimit.control, "change");
  clearOn("budget_tokens", budgetTokens.control);
  clearOn("budget_period", periodSelect, "change");
  clearOn("rpm_limit", rpmLimit.control);
  clearOn("tpm_limit", tpmLimit.control);

  function readBody() {
    const [provider, model] = pmSelect.value ? JSON.parse(pmSelect.value) : [undefined, undefined];
    const body = {
      alias: alias.control.value,
      provider,
      model,
      status: status.value,
      key_code: keyCodeInput.value === "" ? undefined : keyCodeInput.value,
      input_limit: readNumber(inputLimit.control),
      output_limit: readNumber(outputLimit.control),
      usage_limit: usageLimit.value,
      budget_tokens: readNumber(budgetTokens.control),
      budget_period: periodSelect.value,
      rpm_limit: readNumber(rpmLimit.control),
      tpm_limit: readNumber(tpmLimit.control),
    };
    if (!editing) {
      for (const name of ["output_limit", ...BUDGET_NUMBERS]) if (body[name] === undefined) body[name] = 0;
      return body;
    }
    const changes = {};
    for (const [name, value] of Object.entries(body)) {
      if (name === "key_code") {
        if (value !== undefined) changes.key_code = value;
      } else if (value === undefined) {
        // Blank on edit: send null so the API says what it needs.
        if (name === "input_limit" || name === "output_limit" || name === "alias") changes[name] = null;
      } else if (value !== key[name]) changes[name] = value;
    }
    if (changes.provider !== undefined || changes.model !== undefined) {
      changes.provider = provider;
      changes.model = model;
    }
    return changes;
  }

  /** Problems the page can see without asking the server, as the API would word them. */
  function problemsInPage() {
    const problems = [];
    const missing = (name) => problems.push({ field: name, type: "missing", message: "Field required" });
    if (alias.control.value.trim() === "") missing("alias");
    if (pmSelect.value === "") missing("provider_model");
    if (!editing && keyCodeInput.value === "") missing("key_code");
    for (const [name, control, required] of [
      ["input_limit", inputLimit.control, true],
      ["output_limit", outputLimit.control, false],
      // Blank means 0 on create; on edit a blank would be sent as null, so it is asked for.
      ["budget_tokens", budgetTokens.control, editing],
      ["rpm_limit", rpmLimit.control, editing],
      ["tpm_limit", tpmLimit.control, editing],
    ]) {
      const value = readNumber(control);
      if (value === undefined) {
        if (required) missing(name);
      } else if (Number.isNaN(value) || !Number.isInteger(value)) {
        problems.push({ field: name, type: "int_parsing", message: "Enter a whole number" });
      } else if (value < Number(control.min)) {
        problems.push({ field: name, type: "greater_than_equal", message: `Input should be greater than or equal to ${control.min}` });
      } else if (value > Number(control.max)) {
        problems.push({ field: name, type: "less_than_equal", message: `Input should be less than or equal to ${control.max}` });
      }
    }
    if (!BUDGET_PERIODS.some(([value]) => value === periodSelect.value)) {
      problems.push({ field: "budget_period", type: "literal_error", message: "Choose a period" });
    }
    return problems;
  }

  function focusFirstProblem(summary) {
    const firstInvalid = form.querySelector('[aria-invalid="true"]');
    const target = firstInvalid
      ? firstInvalid.matches("fieldset")
        ? firstInvalid.querySelector("input")
        : firstInvalid
      : summary;
    target.focus();
  }

  function showStale() {
    errors.clear();
    const reload = h(
      "button",
      { type: "button", class: "btn btn--sm", onclick: () => ctx.reload() },
      icon("rotate"),
      h("span", {}, "Reload"),
    );
    const banner = h(
      "div",
      { class: "callout callout--danger", tabindex: "-1", role: "alert", "data-testid": "stale" },
      icon("alert", "callout__icon"),
      h(
        "div",
        { class: "callout__body" },
        h("strong", {}, "This key was changed by someone else — reload."),
        h(
          "span",
          {},
          "Someone saved a newer version after you opened this form. Reload to edit the latest version (your changes here are not saved).",
        ),
        h("div", {}, reload),
      ),
    );
    summarySlot.replaceChildren(banner);
    banner.focus();
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    errors.clear();
    const problems = problemsInPage();
    if (problems.length) {
      focusFirstProblem(errors.show(new ApiError(422, { title: "Check the form", errors: problems })));
      return;
    }
    const body = readBody();
    if (editing && Object.keys(body).length === 0) {
      toast("Nothing changed");
      ctx.navigate(detailHref);
      return;
    }
    for (const name of ["input_limit", "output_limit", ...BUDGET_NUMBERS]) {
      if (Number.isNaN(body[name])) body[name] = "not a number";
    }
    await withBusy(submit, async () => {
      try {
        if (editing) {
          const saved = await api.updateKey(key.id, body, key.version);
          toast(`Saved changes to “${saved.alias}”`);
          ctx.navigate(`#/keys/${encodeURIComponent(saved.id)}`);
        } else {
          const created = await api.createKey(body);
          toast(`Created “${created.alias}”`);
          await tokenDialog({ alias: created.alias, token: created.token });
          ctx.navigate(`#/keys/${encodeURIComponent(created.id)}`);
        }
      } catch (error) {
        if (!(error instanceof ApiError)) throw error;
        if (error.status === 412) {
          showStale();
          return;
        }
        if (error.code === "alias_taken") {
          error.errors = [{ field: "alias", message: "Another AI API key already has this alias", type: "alias_taken" }];
        } else if (error.status === 404 && editing) {
          summarySlot.replaceChildren(
            errorCallout(error, h("a", { href: "#/keys" }, "Back to the AI API keys")),
          );
          return;
        }
        focusFirstProblem(errors.show(error));
      }
    });
  });

  if (!editing) alias.control.focus();
}

function asideCard(title, steps) {
  return h(
    "aside",
    { class: "card aside", "aria-labelledby": "aside-title" },
    h("div", { class: "card__header" }, h("h2", { id: "aside-title" }, title)),
    h(
      "div",
      { class: "card__body" },
      h(
        "ol",
        {},
        steps.map(([head, text]) => h("li", {}, h("div", {}, h("strong", {}, head), text))),
      ),
    ),
  );
}

function createAside() {
  return asideCard("What happens next", [
    ["Copy the client token", "It is shown once, right after Create. aigw keeps only a hash of it."],
    [
      "Point the application at the gateway",
      `Any OpenAI SDK works: base URL ${location.origin}/v1, the token as the API key.`,
    ],
    ["Enable the key", "New keys start disabled; enable it when the application is ready."],
    ["Watch its usage", "The key's page shows requests, tokens and outcomes per day."],
  ]);
}

function editAside(key) {
  return asideCard("About changes", [
    ["Applied within a second", "Every gateway process picks up a new status or limit almost at once."],
    [
      "The key code stays secret",
      `Only its masked form (${key.key_code_masked}) is ever shown; type a new one to replace it.`,
    ],
    ["The client token is unchanged", "Use Rotate token on the key's page to issue a new one."],
  ]);
}
