// Console entry point: the shell (top bar, navigation), hash routing and
// sign-in gating. Routes: #/keys, #/keys/new, #/keys/<id>, #/keys/<id>/edit,
// #/keys/<id>/activity, #/providers.

import { onUnauthorized, session } from "./api.js";
import { brandMark, h, icon, parseHash } from "./dom.js";
import { errorCallout, pageHeader } from "./ui.js";
import { renderKeyDetail } from "./views/keydetail.js";
import { renderKeyForm } from "./views/keyform.js";
import { renderKeyList } from "./views/keys.js";
import { renderProviders } from "./views/providers.js";
import { renderSignIn } from "./views/signin.js";

const root = document.getElementById("app");

const ROUTES = [
  { nav: "keys", view: renderKeyList, match: (p) => p[0] === "keys" && p.length === 1 },
  { nav: "keys", view: renderKeyForm, match: (p) => p[0] === "keys" && p[1] === "new" && p.length === 2 },
  {
    nav: "keys",
    view: renderKeyDetail,
    match: (p) => p[0] === "keys" && p.length === 2,
    params: (p) => ({ id: p[1], tab: "overview" }),
  },
  {
    nav: "keys",
    view: renderKeyDetail,
    match: (p) => p[0] === "keys" && p.length === 3 && p[2] === "activity",
    params: (p) => ({ id: p[1], tab: "activity" }),
  },
  {
    nav: "keys",
    view: renderKeyForm,
    match: (p) => p[0] === "keys" && p.length === 3 && p[2] === "edit",
    params: (p) => ({ id: p[1] }),
  },
  { nav: "providers", view: renderProviders, match: (p) => p[0] === "providers" && p.length === 1 },
];

let shell = null;
let current = null;
let signInMessage = "";

function buildShell() {
  const main = h("main", { id: "main", class: "page", tabindex: "-1" });
  const navLinks = {
    keys: h("a", { href: "#/keys" }, "AI API Keys"),
    providers: h("a", { href: "#/providers" }, "Providers"),
  };
  const signOut = h(
    "button",
    { type: "button", class: "btn btn--ghost btn--sm", onclick: () => signOutNow() },
    icon("logout"),
    h("span", { class: "hide-sm" }, "Sign out"),
  );
  const skip = h(
    "a",
    {
      class: "skip-link",
      href: "#main",
      onclick: (event) => {
        event.preventDefault();
        main.focus();
      },
    },
    "Skip to content",
  );
  const topbar = h(
    "header",
    { class: "topbar" },
    h(
      "div",
      { class: "topbar__inner" },
      h(
        "a",
        { class: "brand", href: "#/keys", "aria-label": "AI Gateway home" },
        brandMark(),
        h("span", { class: "hide-sm" }, "AI Gateway"),
      ),
      h("nav", { class: "nav", "aria-label": "Main" }, navLinks.keys, navLinks.providers),
      h(
        "div",
        { class: "topbar__end" },
        h("span", { class: "conn", title: location.host }, location.host),
        signOut,
      ),
    ),
  );
  root.replaceChildren(skip, topbar, main);
  return { main, navLinks };
}

function signOutNow(message = "") {
  session.clear();
  signInMessage = message;
  shell = null;
  if (location.hash !== "#/keys") history.replaceState(null, "", "#/keys");
  route();
}

onUnauthorized(() => {
  signOutNow("The gateway did not accept the admin token anymore. Sign in again.");
});

function notFound(main) {
  document.title = "Not found · AI Gateway";
  main.append(
    pageHeader({ trail: [["AI Gateway", "#/keys"], ["Not found"]], title: "Page not found" }),
    h("p", {}, h("a", { href: "#/keys" }, "Go to the AI API keys")),
  );
}

async function route() {
  if (current) current.controller.abort();
  current = null;
  // A link followed from inside a dialog leaves no dialog behind.
  for (const dialog of document.querySelectorAll("dialog[open]")) dialog.close();

  if (!session.token) {
    shell = null;
    renderSignIn(root, {
      message: signInMessage,
      onSignedIn: () => {
        signInMessage = "";
        route();
      },
    });
    return;
  }

  const { path, query } = parseHash();
  if (path.length === 0) {
    history.replaceState(null, "", "#/keys");
    route();
    return;
  }
  const match = ROUTES.find((r) => r.match(path));
  if (!shell) shell = buildShell();
  for (const [name, link] of Object.entries(shell.navLinks)) {
    if (match && match.nav === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const main = shell.main;
  main.replaceChildren();
  main.setAttribute("aria-busy", "true");
  const controller = new AbortController();
  const mine = { controller };
  current = mine;
  const ctx = {
    signal: controller.signal,
    query,
    params: match && match.params ? match.params(path) : {},
    // A view left behind (the operator navigated elsewhere while it awaited
    // a dialog or a request) must not pull them back.
    navigate(hash) {
      if (!controller.signal.aborted) location.hash = hash;
    },
    reload() {
      if (!controller.signal.aborted) route();
    },
  };
  try {
    if (match) await match.view(main, ctx);
    else notFound(main);
  } catch (error) {
    if (error && error.name === "AbortError") return;
    if (current !== mine) return;
    main.replaceChildren(
      pageHeader({ trail: [["AI Gateway", "#/keys"], ["Error"]], title: "Something went wrong" }),
      errorCallout(error),
    );
  } finally {
    if (current === mine) main.removeAttribute("aria-busy");
  }
  if (current !== mine) return;
  // Move focus to the new page's heading so keyboard and screen-reader users
  // start at the top of what changed (unless the view already placed it).
  if (!main.contains(document.activeElement) && !document.querySelector("dialog[open]")) {
    const heading = main.querySelector("[data-page-title]");
    if (heading) heading.focus({ preventScroll: true });
  }
}

window.addEventListener("hashchange", route);
route();
