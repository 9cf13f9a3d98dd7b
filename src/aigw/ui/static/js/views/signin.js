// Sign in with the admin token. It is checked against the API before it is
// kept, and kept in sessionStorage only: closing the tab signs out.

import { ApiError, api, session } from "../api.js";
import { brandMark, h } from "../dom.js";
import { FormErrors, field, withBusy } from "../ui.js";

export function renderSignIn(root, { message, onSignedIn }) {
  document.title = "Sign in · AI Gateway";
  const input = h("input", {
    id: "admin-token",
    name: "admin-token",
    type: "password",
    autocomplete: "off",
    spellcheck: "false",
    autocapitalize: "off",
  });
  const tokenField = field({
    id: "admin-token",
    label: "Admin token",
    required: true,
    hint: "AIGW_ADMIN_TOKEN, or the admin_token file in the gateway's data folder (aigw serve prints where). It stays in this browser tab only and is never put in a URL.",
    control: input,
  });
  const summary = h("div");
  const errors = new FormErrors(summary, { token: tokenField });
  const submit = h("button", { type: "submit", class: "btn btn--primary" }, "Sign in");
  const form = h("form", { novalidate: true, "aria-labelledby": "signin-title" }, summary, tokenField.wrapper, submit);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    errors.clear();
    const token = input.value.trim();
    if (!token) {
      errors.setField("token", "Enter the admin token.");
      input.focus();
      return;
    }
    if (/[^\x21-\x7e]/.test(token)) {
      // fetch() cannot put such characters in a header, and no valid token has them.
      errors.setField("token", "An admin token has no spaces or special characters: check what was pasted.");
      input.focus();
      return;
    }
    await withBusy(submit, async () => {
      try {
        await api.verifyToken(token);
        session.set(token);
        onSignedIn();
      } catch (error) {
        if (error instanceof ApiError && error.status === 401) {
          errors.setField("token", "This admin token was not accepted by the gateway.");
          input.focus();
          input.select();
        } else {
          errors.show(error instanceof ApiError ? error : new ApiError(0, { title: String(error) }));
        }
      }
    });
  });

  root.replaceChildren(
    h(
      "main",
      { class: "signin", id: "main" },
      h(
        "section",
        { class: "card signin__card" },
        h(
          "div",
          { class: "signin__brand" },
          brandMark(""),
          h(
            "div",
            {},
            h("strong", {}, "AI Gateway"),
            h("span", { class: "muted" }, "Operator console"),
          ),
        ),
        h("h1", { id: "signin-title", class: "visually-hidden" }, "Sign in to the AI Gateway console"),
        message
          ? h("div", { class: "callout callout--info", role: "status" }, h("span", {}, message))
          : null,
        form,
      ),
    ),
  );
  input.focus();
}
